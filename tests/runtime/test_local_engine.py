"""The local engine of `dockyard serve` on real Podman: a supervised `podman system service` when
no socket answers, an engine that appears later picked up without a restart, and the NoRuntime
status while there is none."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.runtime.docker import DockerRuntime
from app.runtime.factory import LOCAL_SOCKETS
from app.runtime.local import (
    NO_RUNTIME_MESSAGE,
    LocalEngine,
    NoRuntime,
    PodmanSupervisor,
    socket_answers,
)
from app.server import create_app
from app.settings import Settings
from tests.support.podman import HTTPD_V1, RUN_INSTANCE, RUN_LABELS, PodmanService, start_service
from tests.support.server import Server
from tests.support.serving import bearer, serving

pytestmark = pytest.mark.podman


def _make(url: str) -> DockerRuntime:
    return DockerRuntime(
        url, readiness_timeout=30, stop_timeout=1, labels=RUN_LABELS, instance=RUN_INSTANCE
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


async def test_starts_supervises_and_stops_a_private_podman_service(
    tmp_path: Path, podman_service: PodmanService
) -> None:
    supervisor = PodmanSupervisor(tmp_path / "podman")
    engine = LocalEngine(make=_make, docker_host=None, candidates=(), supervisor=supervisor)
    try:
        runtime = await engine.engine()
        assert engine.base_url == f"unix://{tmp_path / 'podman' / 'podman.sock'}"
        assert isinstance(await runtime.list_managed(), dict)  # the engine really answers
        process = supervisor.process
        assert process is not None
        # it dies: the next call starts a new one (after the spawn back-off)
        process.kill()
        process.wait()
        supervisor._last_spawn -= 10
        assert isinstance(await engine.list_managed(), dict)
        assert supervisor.process is not None and supervisor.process.pid != process.pid
        pid = supervisor.process.pid
    finally:
        await engine.close()
    assert not _pid_alive(pid)
    assert not socket_answers(str(tmp_path / "podman" / "podman.sock"))


async def test_no_engine_raises_no_runtime_with_the_fix(tmp_path: Path) -> None:
    engine = LocalEngine(
        make=_make, docker_host=None, candidates=(str(tmp_path / "none.sock"),), supervisor=None
    )
    with pytest.raises(NoRuntime, match="install Podman or set DOCKYARD_DOCKER_HOST"):
        await engine.observe("x")
    await engine.close()


@pytest.fixture
def late_socket_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "late"
    directory.mkdir()
    return directory


def _wait(client: TestClient, cid: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = client.get(f"/v1/containers/{cid}").json()
        if ok(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"timed out; last state {body}")


def test_no_runtime_status_then_an_engine_that_appears_is_used(
    tmp_path: Path,
    database_url: str,
    late_socket_dir: Path,
    podman_service: PodmanService,
    auth: Callable[..., dict[str, str]],
) -> None:
    socket_path = late_socket_dir / "podman.sock"
    engine = LocalEngine(
        make=_make, docker_host=None, candidates=(str(socket_path),), supervisor=None
    )
    settings = Settings(data_dir=tmp_path, database_url=database_url, runtime="none")
    app = create_app(settings, runtime=engine)
    late: PodmanService | None = None
    try:
        with TestClient(app) as client:
            client.headers.update(auth("alice"))
            created = client.post(
                "/v1/containers", json={"name": "late", "image": HTTPD_V1, "port": 8080}
            )
            assert created.status_code == 201, created.text
            cid = created.json()["id"]
            body = _wait(client, cid, lambda c: "NoRuntime" in (c["statusReason"] or ""))
            assert body["status"] == "deploying"
            assert NO_RUNTIME_MESSAGE in body["statusReason"]

            late = start_service(late_socket_dir)  # the engine comes up after the server
            body = _wait(client, cid, lambda c: c["status"] == "deployed")
            assert engine.base_url == f"unix://{socket_path}"

            # (An engine that dies mid-call makes the docker SDK leak its socket object, a
            # ResourceWarning at exit: the "comes back" path is covered by the supervisor test.)
            updated = client.put(f"/v1/containers/{cid}", json={"env": {"AGAIN": "1"}})
            assert updated.status_code == 200, updated.text
            _wait(client, cid, lambda c: c["status"] == "deployed" and c["readyRevision"] == 2)
            assert client.delete(f"/v1/containers/{cid}").status_code == 204
    finally:
        if late is not None:
            late.stop()


@pytest.fixture
def serve_without_engine(
    tmp_path: Path, database_url: str, podman_service: PodmanService
) -> Iterator[Server]:
    if any(socket_answers(path) for path in LOCAL_SOCKETS):
        pytest.skip("an engine socket answers on this machine: serve would use it")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DOCKER_HOST", "DOCKYARD_DOCKER_HOST", "DOCKYARD_RUNTIME")
    }
    env.update(
        DOCKYARD_DATA_DIR=str(tmp_path / "data"),
        DOCKYARD_DATABASE_URL=database_url,
        DOCKYARD_READINESS_TIMEOUT_SECONDS="30",
        DOCKYARD_STOP_TIMEOUT_SECONDS="1",
    )
    (tmp_path / "data").mkdir()
    with serving(env, tmp_path / "server.log", bearer(tmp_path / "data")) as server:
        yield server


def test_serve_starts_podman_itself_and_stops_it_on_exit(
    serve_without_engine: Server, tmp_path: Path
) -> None:
    server = serve_without_engine
    created = server.api(
        "POST", "/v1/containers", json={"name": "first", "image": HTTPD_V1, "port": 8080}
    )
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    server.wait_for(cid, lambda c: c["status"] == "deployed")
    assert server.through_ingress(created.json()).status_code == 200
    log = server.log_path.read_text()
    private = tmp_path / "data" / "podman" / "podman.sock"
    assert f"container engine: unix://{private}" in log
    match = re.search(r"started podman system service \(pid (\d+)\)", log)
    assert match, log[-2000:]
    pid = int(match.group(1))
    assert server.api("DELETE", f"/v1/containers/{cid}").status_code == 204
    server.wait_for(cid, lambda c: c.get("status") == 404 or "id" not in c, timeout=30)
    server.stop()
    deadline = time.monotonic() + 20
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pid_alive(pid)


def test_a_killed_serve_takes_its_podman_service_with_it(serve_without_engine: Server) -> None:
    server = serve_without_engine
    deadline = time.monotonic() + 30
    match = None
    while match is None and time.monotonic() < deadline:  # the first resync starts it
        match = re.search(
            r"started podman system service \(pid (\d+)\)", server.log_path.read_text()
        )
        time.sleep(0.1)
    assert match, server.log_path.read_text()[-2000:]
    pid = int(match.group(1))
    assert _pid_alive(pid)
    server.kill()  # SIGKILL: no clean shutdown, the kernel's parent-death signal stops it
    deadline = time.monotonic() + 20
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pid_alive(pid)
