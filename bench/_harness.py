"""What the benches on Podman share: a private Podman service and a ``dockyard serve`` on it, the
raw engine run they are compared with, and waits on the engine and the API.

``dockyard_on_podman()`` labels this run (``tests.support.podman.label_this_run``: every engine
container a Dockyard started from here creates carries the run label), builds the test images,
starts ``podman system service`` in a temporary directory and ``dockyard serve`` on a free
127.0.0.1 port with ``--log-level warning`` (its output goes to the terminal), and yields a
``Bench`` with an authenticated API client. On the way out it stops the server, removes the engine
containers that carry this run's label (and nothing else: a real Dockyard may share the engine)
and stops the Podman service.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx

from app.auth import LocalKeys
from app.settings import Settings
from tests.support.podman import (
    HTTPD_V1,
    RUN_ID,
    RUN_LABEL,
    RUN_LABELS,
    PodmanService,
    ensure_test_images,
    label_this_run,
    start_service,
)
from tests.support.server import free_port

__all__ = [
    "Bench",
    "dockyard_on_podman",
    "ensure_wrk",
    "free_port",
    "mint_token",
    "print_against_raw",
    "published_port",
    "raw_run",
    "remove_run_containers",
    "wait_deployed",
    "wait_healthy",
    "wait_no_containers",
]

RUN_FILTER = f"{RUN_LABEL}={RUN_ID}"
"""The label filter of every engine container this run created."""


def ensure_wrk() -> str:
    """The path of ``wrk``, installed from Debian when missing."""
    found = shutil.which("wrk")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    assert found is not None, "wrk could not be installed"
    return found


def mint_token(data_dir: Path, subject: str = "bench", roles: list[str] | None = None) -> str:
    """A token the ``dockyard serve`` on ``data_dir`` accepts (signed with its local key)."""
    keys = LocalKeys(Settings(data_dir=data_dir))
    return keys.mint(subject=subject, roles=roles or [], ttl_seconds=3600)


def wait_healthy(
    api: httpx.Client, process: subprocess.Popen[bytes] | None = None, timeout: float = 30
) -> None:
    """Wait until the server answers ``/healthz`` with 200 (and has not exited)."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"dockyard serve exited with {process.returncode}")
        try:
            if api.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("dockyard serve did not start")
        time.sleep(0.1)


def count_containers(client: docker.DockerClient, label: str) -> int:
    """Engine containers carrying ``label`` (``key=value``); -1 when the engine failed to list."""
    try:
        found = client.containers.list(
            all=True, sparse=True, filters={"label": label}, ignore_removed=True
        )
    except docker.errors.APIError:  # Podman: 500 for a container removed mid-listing
        return -1
    return len(found)


def wait_no_containers(
    client: docker.DockerClient,
    label: str = RUN_FILTER,
    *,
    what: str = "this run's engine containers",
    poll: float = 0.05,
    timeout: float = 60,
) -> None:
    """Wait until no engine container carries ``label`` (by default: none of this run's)."""
    deadline = time.monotonic() + timeout
    while count_containers(client, label) != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} are still there")
        time.sleep(poll)


def remove_run_containers(engine_url: str) -> None:
    """Force-remove the engine containers this run created (its run label), nothing else."""
    client = docker.DockerClient(base_url=engine_url, version="1.41")
    try:
        for container in client.containers.list(
            all=True, filters={"label": RUN_FILTER}, ignore_removed=True
        ):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
    finally:
        client.close()


def wait_tcp(port: int, deadline: float, poll: float = 0.005) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(poll)
    raise TimeoutError(f"port {port} never opened")


def published_port(container: docker.models.containers.Container) -> int:
    """The 127.0.0.1 port the engine published the container's 8080 on."""
    return int(container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])


def raw_run(client: docker.DockerClient) -> float:
    """`run` the test httpd image with a published port (labelled as this run's), connect until
    the port accepts, remove it; the seconds from `run` to the first accept."""
    start = time.monotonic()
    container = client.containers.run(
        HTTPD_V1, detach=True, ports={"8080/tcp": ("127.0.0.1", None)}, labels=RUN_LABELS
    )
    try:
        container.reload()
        wait_tcp(published_port(container), start + 60)
        return time.monotonic() - start
    finally:
        container.remove(force=True)


def wait_deployed(
    api: httpx.Client, container_id: str, *, poll: float = 0.05, timeout: float = 60
) -> None:
    """Poll the container until its status is ``deployed``; raise if it fails or times out."""
    deadline = time.monotonic() + timeout
    while True:
        status = api.get(f"/v1/containers/{container_id}").json()["status"]
        if status == "deployed":
            return
        if status == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"container {container_id} ended {status}, not deployed")
        time.sleep(poll)


def follow_until_deployed(api: httpx.Client, container_id: str, *, timeout: float = 60) -> None:
    """Follow the container's status events (``GET /v1/containers/{id}/events``, what
    ``dockyard deploy`` does) until one says ``deployed``; raise if it fails or times out. A
    push costs the server nothing while it deploys, where polling every few ms competes with it
    for the CPU and adds half a period on average."""
    path = f"/v1/containers/{container_id}/events"
    with api.stream("GET", path, timeout=timeout) as response:
        response.raise_for_status()
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event == "status":
                status = json.loads(line.removeprefix("data:"))["status"]
                if status == "deployed":
                    return
                if status == "failed":
                    raise RuntimeError(f"container {container_id} failed, not deployed")
            elif line.startswith("data:") and event == "end":
                raise RuntimeError(f"container {container_id} was deleted while deploying")
    raise RuntimeError(f"the events of {container_id} ended before deployed")


@dataclass
class Bench:
    """A running ``dockyard serve`` on a private Podman service."""

    work: Path
    engine: PodmanService
    client: docker.DockerClient
    """The engine's own API (the docker SDK on the private Podman socket)."""
    api: httpx.Client
    """Dockyard's API, authenticated as the user ``bench``."""
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def dockyard_on_podman(env: Mapping[str, str] | None = None) -> Iterator[Bench]:
    """Label this run, build the test images, start Podman and ``dockyard serve`` (runtime
    ``docker`` on that Podman, stop timeout 0, plus ``env``); stop and clean up after."""
    label_this_run()
    ensure_test_images()
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        engine = start_service(work)
        port = free_port()
        server_env = {
            **os.environ,
            "DOCKYARD_DATA_DIR": str(work),
            "DOCKYARD_RUNTIME": "docker",
            "DOCKYARD_DOCKER_HOST": engine.base_url,
            "DOCKYARD_STOP_TIMEOUT_SECONDS": "0",
            **(env or {}),
        }
        command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
        process = subprocess.Popen([*command, "--log-level", "warning"], env=server_env)
        client = docker.DockerClient(base_url=engine.base_url, version="1.41")
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                timeout=30,
                headers={"Authorization": f"Bearer {mint_token(work)}"},
            ) as api:
                wait_healthy(api, process)
                yield Bench(work, engine, client, api, process, port)
        finally:
            process.terminate()
            process.wait(timeout=30)
            client.close()
            try:
                remove_run_containers(engine.base_url)
            finally:
                engine.stop()


def print_against_raw(
    runs: int, raw: list[float], ours: list[float], ours_label: str, *, target: float = 1.3
) -> None:
    """Print the run count, the median (min, max) of the raw engine path and of Dockyard's path
    ``ours_label`` in aligned columns, and the ratio of the medians against ``target``."""
    rows = [("raw engine run -> first TCP accept", raw), (ours_label, ours)]
    width = max(len(label) for label, _ in rows) + 1
    print(f"runs: {runs}")
    for label, seconds in rows:
        print(
            f"{label + ':':<{width}} median {statistics.median(seconds) * 1000:.0f} ms "
            f"(min {min(seconds) * 1000:.0f}, max {max(seconds) * 1000:.0f})"
        )
    ratio = statistics.median(ours) / statistics.median(raw)
    print(f"ratio: {ratio:.2f}x (target <= {target}x)")
