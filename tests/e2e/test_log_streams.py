"""Live logs and status on a real engine: SSE and GraphQL subscriptions of a `dockyard serve`
process whose containers run on Podman."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from websockets.sync.client import connect

from tests.support import serving
from tests.support.podman import HTTPD_V1, LOGGER, PodmanService
from tests.support.server import Server
from tests.support.serving import bearer
from tests.support.sse import SseEvent, iter_events

pytestmark = pytest.mark.podman


def serve_env(
    data_dir: Path, database_url: str, podman: PodmanService, **extra: str
) -> dict[str, str]:
    """The shared `dockyard serve` environment with heartbeats every 0.5 s."""
    heartbeats = {
        "DOCKYARD_SSE_HEARTBEAT_SECONDS": "0.5",
        "DOCKYARD_LOG_DEMAND_HEARTBEAT_SECONDS": "0.5",
    }
    return serving.serve_env(data_dir, database_url, podman, **{**heartbeats, **extra})


@pytest.fixture
def server(tmp_path: Path, database_url: str, podman_service: PodmanService) -> Iterator[Server]:
    env = serve_env(tmp_path, database_url, podman_service)
    with serving.serving(env, tmp_path / "server.log", bearer(tmp_path)) as server:
        yield server


def create(server: Server, image: str = LOGGER, name: str = "logger") -> str:
    body: dict[str, Any] = {"name": name, "image": image, "port": 8080, "ram": "64Mi"}
    created = server.api("POST", "/v1/containers", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def open_logs(
    server: Server, container_id: str, headers: dict[str, str] | None = None, **params: Any
) -> Any:
    return httpx.stream(
        "GET",
        f"{server.url}/v1/containers/{container_id}/logs",
        params=params,
        headers={**server.headers, **(headers or {})},
        timeout=httpx.Timeout(30, read=10),
    )


def events_of(response: httpx.Response) -> Iterator[SseEvent]:
    return iter_events(response.iter_lines())


def take_lines(events: Iterator[SseEvent], count: int) -> list[SseEvent]:
    taken = []
    for event in events:
        if event.event == "message":
            taken.append(event)
            if len(taken) == count:
                break
    return taken


def log_streams(server: Server) -> dict[str, int]:
    return dict(httpx.get(f"{server.url}/readyz", timeout=10).json()["logStreams"])


def wait_streams(server: Server, expected: dict[str, int], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    current = log_streams(server)
    while time.monotonic() < deadline:
        current = log_streams(server)
        if all(current[k] == v for k, v in expected.items()):
            return
        time.sleep(0.1)
    raise AssertionError(f"log streams {current}, expected {expected}")


def test_errors_come_before_any_stream(server: Server, tmp_path: Path) -> None:
    container_id = create(server, HTTPD_V1, "web")
    url = f"{server.url}/v1/containers/{container_id}/logs"
    cases = [
        (httpx.get(url, timeout=10), 401, None),
        (httpx.get(url, headers=bearer(tmp_path, "mallory"), timeout=10), 403, None),
        (server.api("GET", "/v1/containers/00000000-0000-0000-0000-000000000000/logs"), 404, None),
        (server.api("GET", f"/v1/containers/{container_id}/logs?tail=-1"), 422, "tail"),
        (server.api("GET", f"/v1/containers/{container_id}/logs?tail=10001"), 422, "tail"),
        (server.api("GET", f"/v1/containers/{container_id}/logs?since=yesterday"), 422, "since"),
    ]
    for response, status, field in cases:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        if field:
            assert [e["field"] for e in response.json()["errors"]] == [field]


def test_sse_backlog_follow_resume_and_release(server: Server) -> None:
    container_id = create(server)  # it never opens its port: it logs while "deploying"
    deadline = time.monotonic() + 30
    events: list[SseEvent] = []
    while len(events) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
        with open_logs(server, container_id, follow="false", tail=3) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = list(events_of(response))
    assert [e.event for e in events] == ["message"] * 3 + ["end"]
    first = events[0].json()
    assert set(first) == {"timestamp", "line", "stream", "revision"}
    assert first["timestamp"].endswith("Z") and first["revision"] == 1
    assert first["stream"] in ("stdout", "stderr")

    with open_logs(server, container_id, tail=2) as response:
        events_iterator = events_of(response)  # closing it would close the response
        received = take_lines(events_iterator, 12)
        streams = log_streams(server)
        assert streams["upstreamOpen"] == 1 and streams["subscribers"] == 1, streams
    lines = [e.json()["line"] for e in received]
    numbers = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no gap, no duplicate
    assert len({e.id for e in received}) == len(received)
    # The client went away: the server releases its subscription and the upstream stream.
    wait_streams(server, {"subscribers": 0, "pumps": 0, "upstreamOpen": 0})

    # Reconnect after the 4th line: the lines that follow are exactly the ones seen before.
    resume_from = received[3].id
    assert resume_from is not None
    with open_logs(server, container_id, {"Last-Event-ID": resume_from}) as response:
        resumed = take_lines(events_of(response), 8)
    assert [(e.id, e.json()) for e in resumed] == [(e.id, e.json()) for e in received[4:12]]
    wait_streams(server, {"subscribers": 0, "pumps": 0, "upstreamOpen": 0})
    # One upstream per wave of followers at most (the resumed client may have been served
    # from its backlog alone, before its wave's upstream delivered anything).
    assert log_streams(server)["upstreamOpened"] in (1, 2)


def test_idle_streams_get_keep_alives_and_end_on_delete(server: Server) -> None:
    container_id = create(server, HTTPD_V1, "quiet")
    server.wait_for(container_id, lambda c: c["status"] == "deployed")
    with open_logs(server, container_id) as response:
        events = events_of(response)
        assert next(events).comment == "keep-alive"
        assert server.api("DELETE", f"/v1/containers/{container_id}").status_code == 204
        rest = [e.event for e in events]
    assert rest[-1] == "end" and set(rest[:-1]) <= {"comment"}
    wait_streams(server, {"subscribers": 0, "pumps": 0})


@contextlib.contextmanager
def graphql_ws(server: Server) -> Iterator[Any]:
    url = f"ws://127.0.0.1:{server.port}/graphql"
    with connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "connection_init", "payload": server.headers}))
        assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
        yield ws


def statuses_until_deployed(ws: Any, container_id: str, *, op: str, fields: str) -> list[str]:
    """Subscribe to containerStatus on ``ws`` and collect statuses up to `deployed`."""
    ws.send(
        json.dumps(
            {
                "type": "subscribe",
                "id": op,
                "payload": {
                    "query": "subscription($id: ID!) "
                    f"{{ containerStatus(id: $id) {{ {fields} }} }}",
                    "variables": {"id": container_id},
                },
            }
        )
    )
    statuses: list[str] = []
    while "deployed" not in statuses:
        message = json.loads(ws.recv(timeout=30))
        assert message["type"] == "next", message
        statuses.append(message["payload"]["data"]["containerStatus"]["status"])
    return statuses


def test_graphql_subscriptions_carry_live_logs_and_status(server: Server) -> None:
    web_id = create(server, HTTPD_V1, "web")
    container_id = create(server)
    with graphql_ws(server) as ws:
        statuses = statuses_until_deployed(ws, web_id, op="status", fields="status revision")
        # The first state is the one at subscription time (a fast deploy may be done by then).
        assert statuses[-1] == "deployed" and set(statuses) <= {"deploying", "deployed"}
        ws.send(json.dumps({"type": "complete", "id": "status"}))
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": "logs",
                    "payload": {
                        "query": "subscription($id: ID!) { containerLogs(id: $id, tail: 1) "
                        "{ line stream revision timestamp } }",
                        "variables": {"id": container_id},
                    },
                }
            )
        )
        lines = []
        while len(lines) < 6:
            message = json.loads(ws.recv(timeout=10))
            if message.get("id") != "logs":
                continue
            assert message["type"] == "next", message
            lines.append(message["payload"]["data"]["containerLogs"])
        assert {line["stream"] for line in lines} == {"stdout", "stderr"}
        assert all(line["revision"] == 1 for line in lines)
        assert log_streams(server)["upstreamOpen"] == 1
        ws.send(json.dumps({"type": "complete", "id": "logs"}))
        wait_streams(server, {"subscribers": 0, "pumps": 0, "upstreamOpen": 0})


def server_connections(server: Server) -> int:
    """Client connections the server holds open on its port: the data plane (Caddy) owns the
    port and keeps one per client WebSocket; the API behind it sees only pooled connections."""
    pid = server.caddy_pid()
    assert pid is not None
    process = psutil.Process(pid)
    # HAProxy's connections belong to its worker, a child of the master the pid file names.
    return sum(
        1
        for owner in (process, *process.children())
        for c in owner.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == server.port and c.status == psutil.CONN_ESTABLISHED
    )


def readyz(server: Server) -> dict[str, int]:
    return log_streams(server)


def settle(server: Server, key: str, samples: int = 5) -> int:
    """The highest value of a /readyz counter over a few samples (background work comes and
    goes: the reconciler's periodic resync and event watch, the hub's heartbeats)."""
    values = []
    for _ in range(samples):
        values.append(readyz(server)[key])
        time.sleep(0.2)
    return max(values)


def test_clients_that_go_away_release_tasks_connections_and_engine_streams(
    server: Server,
) -> None:
    container_id = create(server)
    with open_logs(server, container_id) as response:  # the logger is printing
        take_lines(events_of(response), 2)
    wait_streams(server, {"subscribers": 0, "pumps": 0, "upstreamOpen": 0})
    tasks = settle(server, "asyncioTasks")
    engine_streams = settle(server, "engineStreams")  # the reconciler's event watch
    assert server.process is not None
    threads = psutil.Process(server.process.pid).num_threads()

    with contextlib.ExitStack() as stack:
        followers = [open_logs(server, container_id, tail=5) for _ in range(20)]
        # Keep the event iterators: dropping one closes its response.
        readers = [events_of(stack.enter_context(follower)) for follower in followers]
        for reader in readers:
            assert len(take_lines(reader, 3)) == 3
        sockets = [stack.enter_context(graphql_ws(server)) for _ in range(3)]
        for n, ws in enumerate(sockets):
            ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "id": f"logs-{n}",
                        "payload": {
                            "query": "subscription($id: ID!) { containerLogs(id: $id) { line } }",
                            "variables": {"id": container_id},
                        },
                    }
                )
            )
            assert json.loads(ws.recv(timeout=10))["type"] == "next"
        busy = readyz(server)
        assert busy["subscribers"] == 23 and busy["upstreamOpen"] == 1, busy
        assert busy["engineStreams"] <= engine_streams + 1  # one upstream for all of them
        assert busy["asyncioTasks"] > tasks
        assert server_connections(server) >= 23
        # Leaving the block closes every client without a goodbye (no `complete`).

    deadline = time.monotonic() + 20
    expected = {"subscribers": 0, "pumps": 0, "upstreamOpen": 0}
    while True:
        current = readyz(server)
        released = all(current[k] == v for k, v in expected.items())
        counts = {"engineStreams": engine_streams, "asyncioTasks": tasks}
        released = released and all(current[k] <= v for k, v in counts.items())
        if released and server_connections(server) == 0:
            break
        assert time.monotonic() < deadline, f"{current}, before: {counts}"
        time.sleep(0.2)
    # No thread per stream: only the worker pool may have grown (its size is bounded).
    assert psutil.Process(server.process.pid).num_threads() <= max(threads, 1) + 8


SERVE_AND_LOG = [
    "/bin/sh",
    "-c",
    "httpd -p 8080 -h /www; i=0; while true; do i=$((i+1)); echo line $i; sleep 0.2; done",
]
"""A revision that serves (busybox httpd in the background) and prints a numbered line every
0.2 s, so it becomes ready and an update makes a real switch with a drain."""


def test_a_follower_sees_every_line_of_both_revisions_across_a_switch(server: Server) -> None:
    body = {"name": "switch", "image": HTTPD_V1, "port": 8080, "command": SERVE_AND_LOG}
    created = server.api("POST", "/v1/containers", json=body)
    assert created.status_code == 201, created.text
    container_id = created.json()["id"]
    server.wait_for(container_id, lambda c: c["status"] == "deployed")
    received: list[dict[str, Any]] = []
    with open_logs(server, container_id, tail=0) as response:
        events = events_of(response)
        received += [e.json() for e in take_lines(events, 5)]
        updated = server.api("PUT", f"/v1/containers/{container_id}", json={"env": {"R": "2"}})
        assert updated.status_code == 200, updated.text
        # Reading blocks while no line comes: see revision 2 deployed (or why not) first.
        switched = server.wait_for(
            container_id,
            lambda c: c["status"] == "failed" or c.get("readyRevision") == 2,
        )
        assert switched["status"] != "failed", switched
        # Read until revision 1 was drained and stopped, and revision 2 printed on for a while.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            received += [e.json() for e in take_lines(events, 1)]
            r2 = [e for e in received if e["revision"] == 2]
            if len(r2) >= 40:
                break
    by_revision: dict[int, list[int]] = {1: [], 2: []}
    for event in received:
        by_revision[event["revision"]].append(int(event["line"].split()[1]))
    one, two = by_revision[1], by_revision[2]
    assert two[:3] == [1, 2, 3], two  # the new revision's first lines are not lost
    assert two == list(range(1, len(two) + 1))
    assert one == list(range(one[0], one[0] + len(one)))  # no gap in the old one either
    # Both were followed at once during the drain: revision 1 printed after revision 2 began.
    order = [event["revision"] for event in received]
    assert order.index(2) < len(order) - 1 - order[::-1].index(1), order
