"""Fixtures for the runtime adapters that need a real engine.

The Podman service is started once per session on a private socket. Without Podman the tests are
skipped, unless ``DOCKYARD_REQUIRE_PODMAN=1`` (set by CI), where they fail instead.
Run ``scripts/setup-podman.sh`` once (as root) to install and configure Podman.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.runtime.docker import DockerRuntime
from tests.support.podman import PodmanService, ensure_test_images, podman_available, start_service


@pytest.fixture(scope="session")
def podman_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanService]:
    if not podman_available():
        message = "podman (and /bin/busybox) not installed: run scripts/setup-podman.sh"
        if os.environ.get("DOCKYARD_REQUIRE_PODMAN") == "1":
            pytest.fail(f"DOCKYARD_REQUIRE_PODMAN=1 but {message}")
        pytest.skip(message)
    ensure_test_images()
    directory: Path = tmp_path_factory.mktemp("podman")
    service = start_service(directory)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def podman_url(podman_service: PodmanService) -> str:
    return podman_service.base_url


@pytest.fixture
def container_id(podman_url: str) -> Iterator[str]:
    """A fresh Dockyard container id whose engine containers are removed after the test."""
    import docker

    cid = f"t{uuid.uuid4().hex[:12]}"
    yield cid
    client = docker.DockerClient(base_url=podman_url)
    try:
        for c in client.containers.list(
            all=True, filters={"label": f"dockyard.dev/container-id={cid}"}
        ):
            c.remove(force=True)
    finally:
        client.close()


@pytest.fixture
async def runtime(podman_url: str) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(podman_url, readiness_timeout=20, crashloop_restarts=2, stop_timeout=1)
    try:
        yield rt
    finally:
        await rt.close()
