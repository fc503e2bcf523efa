"""Shared fixtures: a real app on a real database (SQLite per test, or the PostgreSQL named by
DOCKYARD_TEST_DATABASE_URL, emptied between tests) and tokens signed with its local key."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import kubernetes.client
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.auth import LocalKeys
from app.deps import AppState
from app.server import create_app
from app.settings import Settings
from tests.support.kmock_k8s import EmulatorThread
from tests.support.podman import (
    PodmanService,
    ensure_test_images,
    label_this_run,
    podman_available,
    remove_run_containers,
    start_service,
)
from tests.support.redis import start_redis

label_this_run()

TokenFactory = Callable[..., str]
Mint = TokenFactory


def _empty_postgres(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        tables = (
            connection.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            )
            .scalars()
            .all()
        )
        data_tables = [t for t in tables if t != "alembic_version"]
        if data_tables:
            connection.execute(sa.text(f"TRUNCATE {', '.join(data_tables)} CASCADE"))
    engine.dispose()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = os.environ.get("DOCKYARD_TEST_DATABASE_URL")
    if url:
        _empty_postgres(url)
        return url
    return f"sqlite:///{tmp_path / 'dockyard.db'}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url, runtime="none")


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    yield application
    # A test that never started the app (no TestClient) still must not leak pooled connections.
    application.state.dockyard.ctx.engine.dispose()


@pytest.fixture
def state(app: FastAPI) -> AppState:
    dockyard: AppState = app.state.dockyard
    return dockyard


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def _roles(roles: tuple[str | Sequence[str], ...]) -> list[str]:
    """Roles given as ``"ADMIN"`` arguments or as one ``["ADMIN", …]`` sequence."""
    flat: list[str] = []
    for role in roles:
        flat.extend([role] if isinstance(role, str) else role)
    return flat


@pytest.fixture
def token(settings: Settings) -> TokenFactory:
    """``token("alice", "ADMIN")`` or ``token("alice", ["ADMIN"])``: a token the app accepts."""
    keys = LocalKeys(settings)

    def mint(subject: str = "alice", *roles: str | Sequence[str], ttl: int = 600) -> str:
        return keys.mint(subject=subject, roles=_roles(roles), ttl_seconds=ttl)

    return mint


@pytest.fixture
def auth(token: TokenFactory) -> Callable[..., dict[str, str]]:
    """``auth("bob")``: the Authorization header of a fresh token."""

    def headers(subject: str = "alice", *roles: str | Sequence[str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(subject, *roles)}"}

    return headers


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
        # Engine containers outlive the API service: leave none of this run's behind, and never
        # touch another Dockyard's (a developer's `dockyard serve` may share the engine).
        remove_run_containers()
        service.stop()


@pytest.fixture
def podman_url(podman_service: PodmanService) -> str:
    return podman_service.base_url


@pytest.fixture
def k8s() -> Iterator[EmulatorThread]:
    """A Kubernetes API emulator (kmock) served over real HTTP from a background thread."""
    emulator = EmulatorThread().start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def api_client(k8s: EmulatorThread) -> Iterator[kubernetes.client.ApiClient]:
    """The official client, configured for the emulator at http://127.0.0.1:<port>."""
    client = k8s.api_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def postgres_bus_url() -> str:
    """A PostgreSQL for the ``postgres://`` bus (LISTEN/NOTIFY): DOCKYARD_TEST_POSTGRES_BUS_URL,
    which .ci/run points at the PostgreSQL it starts (scripts/start-postgres.sh)."""
    url = os.environ.get("DOCKYARD_TEST_POSTGRES_BUS_URL")
    if not url:
        message = "DOCKYARD_TEST_POSTGRES_BUS_URL is not set (bash scripts/start-postgres.sh DIR)"
        if os.environ.get("DOCKYARD_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"DOCKYARD_REQUIRE_POSTGRES=1 but {message}")
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on 127.0.0.1 and a free port, for the whole session."""
    if shutil.which("redis-server") is None:
        message = "redis-server not installed (apt-get install redis-server)"
        if os.environ.get("DOCKYARD_REQUIRE_REDIS") == "1":
            pytest.fail(f"DOCKYARD_REQUIRE_REDIS=1 but {message}")
        pytest.skip(message)
    directory: Path = tmp_path_factory.mktemp("redis")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = start_redis(directory, port)
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
