"""Chaos on real services (issue 16): the leader of two `dockyard serve` replicas is killed with
SIGKILL in the middle of deploys; the standby takes over and everything acknowledged converges.

Real Podman, a real shared database (SQLite here, PostgreSQL in the CI's second pass) and a
real Redis bus; the test kills only the server process it started.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth import LocalKeys
from app.settings import Settings
from tests.e2e.test_log_streams import (
    bearer,
    graphql_ws,
    serve_env,
    statuses_until_deployed,
    take_lines,
)
from tests.support.podman import HTTPD_V1, HTTPD_V2, LOGGER, PodmanService, start_service
from tests.support.server import Server, free_port
from tests.support.sse import iter_events

pytestmark = pytest.mark.podman



def served_eventually(server: Server, container: dict[str, Any], timeout: float = 15) -> int:
    """The status code through ``server``'s data plane once it converged. After a failure a
    replica's Caddy is reprogrammed from the database within its resync period (2 s), and a
    config load can close a connection that arrives during the swap (a known data-plane
    limit, docs/dataplane.md): the guarantee checked here is convergence, so transient 502/503
    and dropped connections are retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = server.through_ingress(container).status_code
        except httpx.TransportError:
            status = 0
        if status == 200 or time.monotonic() > deadline:
            return status
        time.sleep(0.2)

def test_killing_the_leader_mid_deploy_loses_nothing_acknowledged(
    tmp_path: Path, database_url: str, podman_service: PodmanService, redis_url: str
) -> None:
    env = serve_env(
        tmp_path,
        database_url,
        podman_service,
        DOCKYARD_BROADCAST_URL=redis_url,
        # Podman on a loaded 2-core machine once left a container created but not started for
        # 30 s: the guarantee here is about lost writes, not start-up speed.
        DOCKYARD_READINESS_TIMEOUT_SECONDS="120",
    )
    a = Server(env, free_port(), tmp_path / "a.log", headers=bearer(tmp_path))
    b = Server(env, free_port(), tmp_path / "b.log", headers=bearer(tmp_path))
    a.start()
    time.sleep(1)  # A wins the election before B exists
    b.start()
    try:
        acknowledged: dict[str, str] = {}
        for n in range(3):
            body = {"name": f"web-{n}", "image": HTTPD_V1, "port": 8080, "ram": "64Mi"}
            created = a.api("POST", "/v1/containers", json=body)
            assert created.status_code == 201, created.text
            acknowledged[created.json()["id"]] = HTTPD_V1
        # An update acknowledged by the follower while the leader is busy deploying.
        first = next(iter(acknowledged))
        updated = b.api("PUT", f"/v1/containers/{first}", json={"image": HTTPD_V2})
        assert updated.status_code == 200, updated.text
        acknowledged[first] = HTTPD_V2
        before = [b.api("GET", f"/v1/containers/{cid}").json() for cid in acknowledged]
        unfinished = [
            c["id"]
            for c in before
            if c["status"] != "deployed" or c["readyRevision"] != c["revision"]
        ]

        a.kill()  # SIGKILL: no shutdown, the leader's lock dies with it
        # Mid-deploy: work the dead leader had not finished, which only B can complete.
        assert unfinished, before

        for container_id, image in acknowledged.items():
            state = b.wait_for(
                container_id,
                lambda c, image=image: c["status"] == "deployed" and c["image"] == image,
                timeout=120,
            )
            assert served_eventually(b, state) == 200
        listed = b.api("GET", "/v1/containers", params={"rowsPerPage": 100}).json()
        assert {item["id"] for item in listed["items"]} == set(acknowledged)
        revisions = b.api("GET", f"/v1/containers/{first}/revisions").json()
        assert [r["revisionNumber"] for r in revisions["items"]] == [2, 1]
    finally:
        # The engine containers carry this run's label: the session removes them.
        b.stop()
        a.stop()


def _start_redis(directory: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        assert process.poll() is None and time.monotonic() < deadline, "redis did not start"
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=10)


@dataclass
class BusReplicas:
    a: Server
    b: Server
    redis: subprocess.Popen[bytes]
    directory: Path
    port: int

    def restart_redis(self) -> None:
        self.redis = _start_redis(self.directory, self.port)


@pytest.fixture
def bus_replicas(
    tmp_path: Path, database_url: str, podman_service: PodmanService
) -> Iterator[BusReplicas]:
    """Two replicas on a Redis bus of their own (the test stops and restarts it)."""
    port = free_port()
    redis = _start_redis(tmp_path, port)
    env = serve_env(
        tmp_path, database_url, podman_service, DOCKYARD_BROADCAST_URL=f"redis://127.0.0.1:{port}"
    )
    a = Server(env, free_port(), tmp_path / "a.log", headers=bearer(tmp_path))
    b = Server(env, free_port(), tmp_path / "b.log", headers=bearer(tmp_path))
    a.start()
    time.sleep(1)
    b.start()
    replicas = BusReplicas(a, b, redis, tmp_path, port)
    try:
        yield replicas
    finally:
        b.stop()
        a.stop()
        if replicas.redis.poll() is None:
            _stop(replicas.redis)


BODY = {"image": HTTPD_V1, "port": 8080, "ram": "64Mi"}


def test_bus_outage_keeps_reads_and_writes_and_converges(bus_replicas: BusReplicas) -> None:
    """Redis (the bus) stops under two replicas: reads and writes keep working, and a write
    made on the follower still converges (the leader's periodic resync reads the database)."""
    a, b = bus_replicas.a, bus_replicas.b
    _stop(bus_replicas.redis)
    created = b.api("POST", "/v1/containers", json={**BODY, "name": "during-outage"})
    assert created.status_code == 201, created.text
    assert b.api("GET", "/v1/containers").status_code == 200
    state = b.wait_for(created.json()["id"], lambda c: c["status"] == "deployed", timeout=120)
    # Served by the leader's ingress (a follower learns routes over the bus).
    assert served_eventually(a, state) == 200


def test_live_status_resumes_after_the_bus_restarts(bus_replicas: BusReplicas) -> None:
    b = bus_replicas.b
    _stop(bus_replicas.redis)
    bus_replicas.restart_redis()  # back, same address
    time.sleep(3)
    web = b.api("POST", "/v1/containers", json={**BODY, "name": "after-outage"})
    assert web.status_code == 201, web.text
    with graphql_ws(b) as ws:
        statuses = statuses_until_deployed(ws, web.json()["id"], op="1", fields="status")
    assert statuses[-1] == "deployed"


def test_podman_service_restart_under_a_running_platform(
    tmp_path: Path, database_url: str, podman_service: PodmanService
) -> None:
    """The engine API (a `podman system service` of this test's own) stops under a running
    `dockyard serve` and comes back on the same socket: reads keep working, a write made while it
    is down is acknowledged and deployed once it is back, running containers keep serving."""
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    engine = start_service(engine_dir)
    env = serve_env(tmp_path, database_url, engine)
    server = Server(env, free_port(), tmp_path / "serve.log", headers=bearer(tmp_path))
    server.start()
    try:
        first = server.api("POST", "/v1/containers", json={**BODY, "name": "before"})
        assert first.status_code == 201, first.text
        running = server.wait_for(first.json()["id"], lambda c: c["status"] == "deployed")

        engine.stop()
        assert server.api("GET", "/v1/containers").status_code == 200
        assert served_eventually(server, running) == 200  # conmon keeps it running
        second = server.api("POST", "/v1/containers", json={**BODY, "name": "while-down"})
        assert second.status_code == 201, second.text

        engine = start_service(engine_dir)  # back, same socket
        server.wait_for(second.json()["id"], lambda c: c["status"] == "deployed", timeout=120)
        again = server.wait_for(first.json()["id"], lambda c: c["status"] == "deployed")
        assert served_eventually(server, again) == 200
    finally:
        server.stop()
        engine.stop()


PG_CTL = Path("/usr/lib/postgresql/15/bin/pg_ctl")
REPO = Path(__file__).resolve().parents[2]


def _postgres(directory: Path, port: int) -> str:
    started = subprocess.run(
        ["bash", str(REPO / "scripts" / "start-postgres.sh"), str(directory), str(port)],
        check=True,
        capture_output=True,
        text=True,
    )
    return started.stdout.strip()


def _pg_ctl(directory: Path, *args: str) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_CTL), "-D", str(directory / "data"), *args],
        check=True,
        capture_output=True,
    )


def test_postgres_restart_under_a_running_platform(
    tmp_path: Path, podman_service: PodmanService
) -> None:
    """A PostgreSQL of this test's own stops under a running `dockyard serve` and comes back:
    meanwhile the API says why (503 UNAVAILABLE, never a 500 or a wrong 409); afterwards reads,
    writes and deploys work again without a restart. (The built-in ingress looks routes up in the
    database, so it does not serve during the outage; the Caddy ingress replaces it.)"""
    if not PG_CTL.exists():
        pytest.skip("PostgreSQL 15 is not installed (apt-get install postgresql-15)")
    # Outside pytest's root-only tmp directory: the server runs as the postgres user.
    pg_dir = Path(tempfile.mkdtemp(prefix="dockyard-chaos-pg-"))
    port = free_port()
    url = _postgres(pg_dir, port)
    env = serve_env(tmp_path, url, podman_service)
    server = Server(env, free_port(), tmp_path / "serve.log", headers=bearer(tmp_path))
    server.start()
    try:
        first = server.api("POST", "/v1/containers", json={**BODY, "name": "before"})
        assert first.status_code == 201, first.text
        running = server.wait_for(first.json()["id"], lambda c: c["status"] == "deployed")

        _pg_ctl(pg_dir, "-m", "fast", "stop")
        for method, path, body in [
            ("GET", "/v1/containers", None),
            ("POST", "/v1/containers", {**BODY, "name": "while-down"}),
        ]:
            response = server.api(method, path, json=body)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "UNAVAILABLE"

        _postgres(pg_dir, port)  # the same cluster, back on the same port
        deadline = time.monotonic() + 60
        while server.api("GET", "/v1/containers").status_code != 200:
            assert time.monotonic() < deadline, "reads did not come back"
            time.sleep(0.5)
        second = server.api("POST", "/v1/containers", json={**BODY, "name": "after"})
        assert second.status_code == 201, second.text
        server.wait_for(second.json()["id"], lambda c: c["status"] == "deployed", timeout=120)
        names = {c["name"] for c in server.api("GET", "/v1/containers").json()["items"]}
        assert names == {"before", "after"}
        assert served_eventually(server, running) == 200
    finally:
        server.stop()
        with contextlib.suppress(subprocess.CalledProcessError):
            _pg_ctl(pg_dir, "-m", "immediate", "stop")
        shutil.rmtree(pg_dir, ignore_errors=True)


def test_sse_stream_ends_at_token_expiry_and_resumes_without_loss(
    tmp_path: Path, database_url: str, podman_service: PodmanService
) -> None:
    """A real log stream (Podman, a container printing numbered lines) ends with
    `event: reauthenticate` when its token expires; reconnecting with a fresh token and
    Last-Event-ID continues after the last line received, losing none."""
    env = serve_env(tmp_path, database_url, podman_service, DOCKYARD_AUTH_LEEWAY_SECONDS="0")
    server = Server(env, free_port(), tmp_path / "serve.log", headers=bearer(tmp_path))
    server.start()
    try:
        body = {"name": "counter", "image": LOGGER, "port": 8080, "ram": "64Mi"}
        created = server.api("POST", "/v1/containers", json=body)
        assert created.status_code == 201, created.text
        container_id = created.json()["id"]  # it prints lines; it never opens its port
        keys = LocalKeys(Settings(data_dir=tmp_path))
        short = keys.mint(subject="alice", roles=[], ttl_seconds=3)
        url = f"{server.url}/v1/containers/{container_id}/logs"
        with httpx.stream(
            "GET",
            url,
            params={"tail": 0},
            headers={"Authorization": f"Bearer {short}"},
            timeout=httpx.Timeout(30, read=15),
        ) as response:
            assert response.status_code == 200
            events = [e for e in iter_events(response.iter_lines()) if e.event != "comment"]
        assert events[-1].event == "reauthenticate", [e.event for e in events[-3:]]
        lines = [e for e in events if e.event == "message"]
        stdout = [int(e.json()["line"].split()[1]) for e in lines if e.json()["stream"] == "stdout"]
        assert stdout, "no line before expiry"
        fresh = keys.mint(subject="alice", roles=[], ttl_seconds=60)
        headers = {"Authorization": f"Bearer {fresh}", "Last-Event-ID": str(lines[-1].id)}
        with httpx.stream(
            "GET", url, headers=headers, timeout=httpx.Timeout(30, read=15)
        ) as response:
            resumed = take_lines(iter_events(response.iter_lines()), 10)
        again = [
            int(e.json()["line"].split()[1]) for e in resumed if e.json()["stream"] == "stdout"
        ]
        assert again and again[0] <= stdout[-1] + 1, (stdout[-3:], again[:3])  # nothing lost
    finally:
        server.stop()
