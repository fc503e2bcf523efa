"""Two `dockyard serve` replicas sharing a database, Podman and a real bus: Redis, then
PostgreSQL (LISTEN/NOTIFY).

Replica A starts first and leads (the flock in the shared data directory); B only serves the
API. Clients connected to B must see A's work: log lines pumped by A's single upstream stream,
and status changes written by A's reconciler, including for containers created through B (A
reconciles them because B's write reaches it over the bus). This is also the regression test
of the redis-py pin (with redis-py 8.0-8.1 broadcaster's redis backend delivers nothing) and of
the PostgreSQL bus's limits (NOTIFY payloads under 8000 bytes, one command at a time).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_log_streams import (
    bearer,
    create,
    events_of,
    graphql_ws,
    log_streams,
    open_logs,
    serve_env,
    statuses_until_deployed,
    take_lines,
    wait_streams,
)
from tests.support.podman import HTTPD_V1, PodmanService
from tests.support.server import Server, free_port

pytestmark = pytest.mark.podman


@pytest.fixture(params=["redis", "postgres"])
def replicas(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database_url: str,
    podman_service: PodmanService,
) -> Iterator[tuple[Server, Server]]:
    bus = request.getfixturevalue("redis_url" if request.param == "redis" else "postgres_bus_url")
    env = serve_env(tmp_path, database_url, podman_service, DOCKYARD_BROADCAST_URL=bus)
    a = Server(env, free_port(), tmp_path / "a.log", headers=bearer(tmp_path))
    b = Server(env, free_port(), tmp_path / "b.log", headers=bearer(tmp_path))
    a.start()
    time.sleep(1)  # A wins the election before B exists
    b.start()
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


def test_replica_b_streams_what_leader_a_produces(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    logger_id = create(a)
    with open_logs(b, logger_id, tail=0) as on_b, open_logs(a, logger_id, tail=0) as on_a:
        from_b, from_a = events_of(on_b), events_of(on_a)
        lines_b = take_lines(from_b, 6)
        lines_a = take_lines(from_a, 6)
        assert all(e.json()["revision"] == 1 for e in lines_b)
        assert {e.json()["stream"] for e in lines_b} == {"stdout", "stderr"}
        assert lines_a and lines_b
        # Two subscribers on two replicas, one engine stream, opened by the leader only (a
        # stream the engine ends is reopened, so this waits for it to be open at the moment).
        wait_streams(a, {"upstreamOpen": 1, "pumps": 1})
        assert log_streams(b)["upstreamOpened"] == 0 and log_streams(b)["pumps"] == 0
    wait_streams(a, {"pumps": 0, "upstreamOpen": 0})
    assert log_streams(a)["upstreamOpened"] == 1

    # Created through B, reconciled by A (B's write reached A over Redis), watched on B.
    web_id = create(b, HTTPD_V1, "web")
    with graphql_ws(b) as ws:
        statuses = statuses_until_deployed(ws, web_id, op="1", fields="status readyRevision")
    # The first state is whatever B reads when the subscription starts (a fast deploy may be
    # done by then); each change after it reached B from A over Redis.
    assert statuses[-1] == "deployed" and set(statuses) <= {"deploying", "deployed"}
    assert "this replica now leads" not in b.log_path.read_text()
