"""What the tests that run a `dockyard serve` process on Podman share: its environment, tokens its
local key accepts, a started-and-stopped server, and a look at the engine.

The server process itself is ``tests.support.server.Server``; this module builds on it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import docker

from app.auth import LocalKeys
from app.runtime.base import LABEL_CONTAINER_ID
from app.settings import Settings
from tests.support.podman import PodmanService
from tests.support.server import Server, free_port


def serve_env(
    data_dir: Path, database_url: str, podman: PodmanService, **extra: str
) -> dict[str, str]:
    """The environment of a `dockyard serve` on ``podman`` with the test database, short
    readiness/stop timeouts and a 5 s resync; ``extra`` settings override or add."""
    return {
        **os.environ,
        "DOCKYARD_DATA_DIR": str(data_dir),
        "DOCKYARD_DATABASE_URL": database_url,
        "DOCKYARD_RUNTIME": "docker",
        "DOCKYARD_DOCKER_HOST": podman.base_url,
        "DOCKYARD_READINESS_TIMEOUT_SECONDS": "30",
        "DOCKYARD_STOP_TIMEOUT_SECONDS": "1",
        "DOCKYARD_RECONCILE_INTERVAL_SECONDS": "5",
        **extra,
    }


def mint(data_dir: Path, subject: str = "alice", *roles: str, ttl: int = 900) -> str:
    """A token signed with the local key of the server whose data directory is ``data_dir``."""
    keys = LocalKeys(Settings(data_dir=data_dir))
    return keys.mint(subject=subject, roles=list(roles), ttl_seconds=ttl)


def bearer(data_dir: Path, subject: str = "alice", *roles: str) -> dict[str, str]:
    """The Authorization header of a fresh token for the server on ``data_dir``."""
    return {"Authorization": f"Bearer {mint(data_dir, subject, *roles)}"}


@contextlib.contextmanager
def serving(
    env: Mapping[str, str], log_path: Path, headers: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """A started `dockyard serve` on a free port, stopped (with its Caddy) on the way out, also
    when it failed to start."""
    server = Server(dict(env), free_port(), log_path, headers=dict(headers or {}))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def engine_instances(engine_url: str, container_id: str) -> list[str]:
    """The sorted names of the engine containers of a Dockyard container (any state)."""
    client = docker.DockerClient(base_url=engine_url)
    try:
        return sorted(
            c.name
            for c in client.containers.list(
                all=True,
                sparse=True,  # no inspect: Podman answers 500 for one removed meanwhile
                filters={"label": f"{LABEL_CONTAINER_ID}={container_id}"},
            )
        )
    finally:
        client.close()
