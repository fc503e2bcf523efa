"""Deploy latency: Dockyard's POST → `deployed` against a raw engine run → first TCP accept.

Both paths start the same busybox httpd image on the same Podman service in the same run, ten
times each, interleaved; the script prints the medians and their ratio (target: at most 1.3).
Run as root on a machine with Podman (scripts/setup-podman.sh):

    .venv/bin/python bench/deploy.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
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
    RUN_LABELS,
    ensure_test_images,
    label_this_run,
    start_service,
)

POLL = 0.005


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_tcp(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(POLL)
    raise TimeoutError(f"port {port} never opened")


def raw_run(client: docker.DockerClient) -> float:
    """`run` the image with a published port, then connect until the port accepts."""
    start = time.monotonic()
    container = client.containers.run(
        HTTPD_V1, detach=True, ports={"8080/tcp": ("127.0.0.1", None)}, labels=RUN_LABELS
    )
    try:
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
        wait_tcp(port, start + 60)
        return time.monotonic() - start
    finally:
        container.remove(force=True)


def dockyard_deploy(api: httpx.Client, n: int) -> float:
    """POST a container, then poll until its status is `deployed`."""
    start = time.monotonic()
    created = api.post(
        "/v1/containers", json={"name": f"bench-{n}", "image": HTTPD_V1, "port": 8080}
    )
    created.raise_for_status()
    container_id = created.json()["id"]
    while True:
        status = api.get(f"/v1/containers/{container_id}").json()["status"]
        if status == "deployed":
            elapsed = time.monotonic() - start
            break
        if status == "failed" or time.monotonic() - start > 60:
            raise RuntimeError(f"deploy {n} ended {status}")
        time.sleep(POLL)
    api.delete(f"/v1/containers/{container_id}").raise_for_status()
    return elapsed


def wait_engine_empty(client: docker.DockerClient) -> None:
    """Wait until every container of this run is gone (other engine users are left alone)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            mine = {"label": f"{RUN_LABEL}={RUN_ID}"}
            if not client.containers.list(all=True, filters=mine, ignore_removed=True):
                return
        except docker.errors.APIError:  # Podman: 500 for a container removed mid-listing
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the engine still runs containers")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
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
        try:
            token = LocalKeys(Settings(data_dir=work)).mint(
                subject="bench", roles=[], ttl_seconds=3600
            )
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                timeout=30,
                headers={"Authorization": f"Bearer {token}"},
            ) as api:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if api.get("/healthz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                raw_run(client)  # warm the engine's caches once for both paths
                raw, ours = [], []
                for n in range(args.runs):
                    raw.append(raw_run(client))
                    ours.append(dockyard_deploy(api, n))
                    wait_engine_empty(client)  # no removal overlaps the next measurement
        finally:
            client.close()
            server.terminate()
            server.wait(timeout=30)
            engine.stop()
    raw_median, our_median = statistics.median(raw), statistics.median(ours)
    print(f"runs: {args.runs}")
    print(
        f"raw engine run -> first TCP accept: median {raw_median * 1000:.0f} ms "
        f"(min {min(raw) * 1000:.0f}, max {max(raw) * 1000:.0f})"
    )
    print(
        f"dockyard POST -> deployed:          median {our_median * 1000:.0f} ms "
        f"(min {min(ours) * 1000:.0f}, max {max(ours) * 1000:.0f})"
    )
    print(f"ratio: {our_median / raw_median:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
