"""Log fan-out benchmark: 1, 10 and 100 SSE subscribers of one chatty container, side by side with
a curl reading the engine's own log stream during the same seconds, in one run on Podman.

    PYTHONPATH=. .venv/bin/python bench/logs.py [--seconds 5]

Starts its own `podman system service` and `dockyard serve` on 127.0.0.1, a busybox container that
prints as fast as it can, and stops everything at the end. Prints lines/s per subscriber and in
total, upstream engine streams opened by the server (must stay 1 per phase) and server RSS.
The machine is shared by everything (the container, conmon, Podman, the server, the curls), so
the absolute numbers say more about the machine than the ratios do.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import docker
import httpx
import psutil

from bench._harness import free_port, mint_token, remove_run_containers
from tests.support.podman import (
    PAGE_V1,
    build_image,
    ensure_test_images,
    image_exists,
    label_this_run,
)
from tests.support.podman import start_service as start_podman
from tests.support.server import Server

SPAMMER = "localhost/dockyard-bench-spammer:v1"
SPAMMER_CMD = '["/bin/sh","-c","i=0; while true; do i=$((i+1)); echo spam line $i; done"]'


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def direct_engine(socket_path: str, engine_id: str, seconds: float) -> subprocess.Popen[str]:
    """A curl reading the engine's own follow stream for ``seconds``; its output is the number
    of lines it got. curl, like the SSE clients, so that neither side is limited by a Python
    client (the docker SDK decodes Podman's one-chunk-per-line stream at ~40k lines/s)."""
    url = f"http://d/v1.41/containers/{engine_id}/logs?follow=1&stdout=1&stderr=1&tail=0"
    script = f"timeout {seconds} curl -sN --unix-socket {shlex.quote(socket_path)} '{url}' | wc -l"
    return subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)


COUNT_EVENTS = (
    "/^event: dropped/ { marker = 1; next } "
    '/^data:/ { if (marker) { gsub(/[^0-9]/, ""); dropped += $0; marker = 0 } else lines++ } '
    "END { print lines + 0, dropped + 0 }"
)
"""awk: the lines an SSE client got, and the lines the server dropped because it read slowly."""


def sse_phase(
    server: Server, container_id: str, subscribers: int, seconds: float
) -> list[tuple[int, int]]:
    """(lines received, lines dropped) of each of ``subscribers`` concurrent SSE clients in
    ``seconds``.

    The clients are curl processes piped to awk, so that the load generator (not a Python
    client parsing SSE) is never what limits the measurement.
    """
    url = f"{server.url}/v1/containers/{container_id}/logs?tail=0"
    header = f"Authorization: {server.headers['Authorization']}"
    script = (
        f"timeout {seconds} curl -sN -H {shlex.quote(header)} {shlex.quote(url)}"
        f" | awk {shlex.quote(COUNT_EVENTS)}"
    )
    clients = [
        subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(subscribers)
    ]
    results = []
    for client in clients:
        lines, dropped = (client.communicate()[0] or "0 0").split()
        results.append((int(lines), int(dropped)))
    return results


def server_cpu(pid: int) -> float:
    """CPU seconds the server process has used (user + system)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def streams(server: Server) -> dict[str, int]:
    return dict(httpx.get(f"{server.url}/readyz", timeout=10).json()["logStreams"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    label_this_run()
    ensure_test_images()
    if not image_exists(SPAMMER):
        build_image(SPAMMER, PAGE_V1, SPAMMER_CMD)
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        data_dir = Path(tmp)
        podman = start_podman(data_dir)
        token = mint_token(data_dir)
        env = {
            **os.environ,
            "DOCKYARD_DATA_DIR": str(data_dir),
            "DOCKYARD_RUNTIME": "docker",
            "DOCKYARD_DOCKER_HOST": podman.base_url,
            "DOCKYARD_READINESS_TIMEOUT_SECONDS": "3600",
        }
        server = Server(
            env, free_port(), data_dir / "server.log", headers={"Authorization": f"Bearer {token}"}
        )
        server.start()
        try:
            body = {"name": "spammer", "image": SPAMMER, "port": 8080, "ram": "64Mi"}
            container_id = server.api("POST", "/v1/containers", json=body).json()["id"]
            client = docker.DockerClient(base_url=podman.base_url, version="1.41")
            engine_id = None
            while engine_id is None:
                found = client.containers.list(
                    filters={"label": f"dockyard.dev/container-id={container_id}"}
                )
                engine_id = found[0].id if found else None
                time.sleep(0.3)
            client.close()
            time.sleep(1)
            pid = server.process.pid  # type: ignore[union-attr]
            socket_path = podman.base_url.removeprefix("unix://")
            alone = direct_engine(socket_path, engine_id, args.seconds).communicate()[0]
            print(f"direct engine stream alone: {int(alone) / args.seconds:,.0f} lines/s")
            idle_rss = rss_mib(pid)
            print(f"server RSS idle: {idle_rss:.1f} MiB")
            for subscribers in (1, 10, 100):
                before = streams(server)["upstreamOpened"]
                pumped_before = streams(server)["upstreamLines"]
                cpu_before = server_cpu(pid)
                sampler_rss: list[float] = []
                seen: list[dict[str, int]] = []
                stop = threading.Event()

                def sample(
                    stop: threading.Event = stop,
                    into: list[float] = sampler_rss,
                    streams_seen: list[dict[str, int]] = seen,
                ) -> None:
                    while not stop.wait(0.5):
                        into.append(rss_mib(pid))
                        streams_seen.append(streams(server))

                thread = threading.Thread(target=sample, daemon=True)
                thread.start()
                # The engine's own stream, read beside the subscribers in the same seconds.
                beside = direct_engine(socket_path, engine_id, args.seconds)
                results = sse_phase(server, container_id, subscribers, args.seconds)
                counts = [lines for lines, _ in results]
                dropped = sum(lost for _, lost in results) / args.seconds / subscribers
                direct = int(beside.communicate()[0]) / args.seconds
                cpu = server_cpu(pid) - cpu_before
                stop.set()
                thread.join()
                time.sleep(1.5)  # let the server close the upstream
                opened = streams(server)["upstreamOpened"] - before
                pumped = (streams(server)["upstreamLines"] - pumped_before) / args.seconds
                per = [c / args.seconds for c in counts]
                if not sum(counts):
                    print("no line delivered; /readyz during the phase:", seen)
                total = sum(per)
                peak = max(sampler_rss or [rss_mib(pid)])
                print(
                    f"{subscribers:>3} subscribers: direct {direct:,.0f} lines/s; "
                    f"read by the server's one upstream {pumped:,.0f} lines/s; "
                    f"per subscriber min/mean {min(per):,.0f}/"
                    f"{total / subscribers:,.0f} lines/s, total {total:,.0f} lines/s, "
                    f"mean/direct {total / subscribers / direct:.2f}, "
                    f"total/direct {total / direct:.2f}, "
                    f"dropped for reading slowly {dropped:,.0f} lines/s per subscriber, "
                    f"upstream opened {opened}, "
                    f"subscribers connected (peak) {max(x['subscribers'] for x in seen or [{}])}, "
                    f"RSS peak {peak:.1f} MiB "
                    f"(+{(peak - idle_rss) / subscribers * 1024:.0f} KiB/subscriber), "
                    f"server CPU {cpu / args.seconds:.0%} of a core, "
                    f"{cpu / max(sum(counts), 1) * 1e6:.1f} us per delivered line"
                )
            server.api("DELETE", f"/v1/containers/{container_id}")
            time.sleep(3)
        finally:
            server.stop()
            remove_run_containers(podman.base_url)  # a chatty container left behind fills the disk
            podman.stop()
            if os.environ.get("BENCH_SERVER_LOG"):  # keep the server's log for a post-mortem
                Path(os.environ["BENCH_SERVER_LOG"]).write_text(server.log_path.read_text())


if __name__ == "__main__":
    main()
