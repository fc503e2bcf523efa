"""Fixtures for the runtime adapters that need a real engine.

The Podman service is started once per session on a private socket. Without Podman the tests are
skipped, unless ``DOCKYARD_REQUIRE_PODMAN=1`` (set by CI), where they fail instead.
Run ``scripts/setup-podman.sh`` once (as root) to install and configure Podman.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from app.runtime.docker import DockerRuntime
from tests.support.podman import RUN_INSTANCE, RUN_LABELS


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
    rt = DockerRuntime(
        podman_url,
        readiness_timeout=20,
        crashloop_restarts=2,
        stop_timeout=1,
        labels=RUN_LABELS,
        instance=RUN_INSTANCE,
    )
    try:
        yield rt
    finally:
        await rt.close()
