"""Data plane overhead: wrk through Dockyard's proxy (Caddy) against the same container directly.

Starts its own `podman system service` and `dockyard serve` on 127.0.0.1, deploys one busybox
httpd container, then runs wrk (Debian's `wrk`, installed when missing) at 32 connections against
the container's published port and through the proxy by its host name, interleaved, several
rounds in the same run; prints the medians, the req/s ratio (target >= 0.8x) and the p50 latency
the proxy adds (target <= 1 ms). Run as root on a machine with Podman (scripts/setup-podman.sh):

    .venv/bin/python bench/serverless.py [--rounds 3] [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.auth import LocalKeys
from app.settings import Settings
from tests.support.podman import (
    HTTPD_V1,
    RUN_ID,
    RUN_LABEL,
    ensure_test_images,
    label_this_run,
    start_service,
)

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    assert found is not None, "wrk could not be installed"
    return found


def wrk(
    binary: str, url: str, host: str | None, seconds: int, connections: int
) -> tuple[float, float, int]:
    """(requests per second, p50 latency in ms, socket errors + non-2xx) of one wrk run."""
    command = [binary, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
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


def wait_healthy(api: httpx.Client) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if api.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("dockyard serve did not start")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    binary = ensure_wrk()
    label_this_run()
    ensure_test_images()
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        engine = start_service(work)
        port = free_port()
        env = {
            **os.environ,
            "DOCKYARD_DATA_DIR": str(work),
            "DOCKYARD_RUNTIME": "docker",
            "DOCKYARD_DOCKER_HOST": engine.base_url,
            "DOCKYARD_STOP_TIMEOUT_SECONDS": "0",
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
        )
        client = docker.DockerClient(base_url=engine.base_url, version="1.41")
        direct, proxied = [], []
        try:
            token = LocalKeys(Settings(data_dir=work)).mint(
                subject="bench", roles=[], ttl_seconds=3600
            )
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                timeout=30,
                headers={"Authorization": f"Bearer {token}"},
            ) as api:
                wait_healthy(api)
                created = api.post(
                    "/v1/containers", json={"name": "bench", "image": HTTPD_V1, "port": 8080}
                )
                created.raise_for_status()
                container = created.json()
                deadline = time.monotonic() + 60
                while api.get(f"/v1/containers/{container['id']}").json()["status"] != "deployed":
                    if time.monotonic() > deadline:
                        raise TimeoutError("the container was not deployed")
                    time.sleep(0.05)
                host = container["urls"][0]
                while api.get("/", headers={"Host": host}).status_code != 200:  # routes programmed
                    time.sleep(0.05)
                (engine_container,) = client.containers.list(
                    filters={"label": f"dockyard.dev/container-id={container['id']}"}
                )
                published = engine_container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]
                direct_url = f"http://127.0.0.1:{published['HostPort']}/"
                proxy_url = f"http://127.0.0.1:{port}/"
                wrk(binary, direct_url, None, 2, args.connections)  # warm both paths
                wrk(binary, proxy_url, host, 2, args.connections)
                for _ in range(args.rounds):
                    direct.append(wrk(binary, direct_url, None, args.seconds, args.connections))
                    proxied.append(wrk(binary, proxy_url, host, args.seconds, args.connections))
                api.delete(f"/v1/containers/{container['id']}").raise_for_status()
                deadline = time.monotonic() + 60
                mine = {"label": f"{RUN_LABEL}={RUN_ID}"}
                while client.containers.list(all=True, filters=mine, ignore_removed=True):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
        finally:
            client.close()
            server.terminate()
            server.wait(timeout=30)
            engine.stop()
    direct_rps = statistics.median(r for r, _, _ in direct)
    proxy_rps = statistics.median(r for r, _, _ in proxied)
    direct_p50 = statistics.median(p for _, p, _ in direct)
    proxy_p50 = statistics.median(p for _, p, _ in proxied)
    print(f"wrk, {args.connections} connections, {args.rounds} x {args.seconds}s each, interleaved")
    direct_errors = sum(e for *_, e in direct)
    proxy_errors = sum(e for *_, e in proxied)
    print(f"direct:  {direct_rps:8.0f} req/s  p50 {direct_p50:.2f} ms  errors {direct_errors}")
    print(f"proxied: {proxy_rps:8.0f} req/s  p50 {proxy_p50:.2f} ms  errors {proxy_errors}")
    print(f"throughput ratio: {proxy_rps / direct_rps:.2f}x (target >= 0.8x)")
    print(f"p50 added by the proxy: {proxy_p50 - direct_p50:+.2f} ms (target <= 1 ms)")


if __name__ == "__main__":
    main()
