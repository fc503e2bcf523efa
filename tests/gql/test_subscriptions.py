"""Subscriptions over WebSocket: authentication in connection_init, and the streams seam."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.deps import AppState
from app.domain.logtime import to_ns
from app.domain.principal import Principal
from app.gql import schema as gql_schema
from app.services import containers as svc
from app.services.streams import LogChunk, LogEvent
from tests.gql.clients import ws_subscribe
from tests.support.phases import record_phases

Mint = Callable[..., str]
TRANSPORT_WS = "graphql-transport-ws"
STATUS = "subscription($id: ID!) { containerStatus(id: $id) { id status image revision } }"
LOGS = (
    "subscription($id: ID!) { containerLogs(id: $id, tail: 2) { line stream revision timestamp } }"
)


def create(state: AppState, owner: str = "alice") -> str:
    view = svc.create_container(
        ctx=state.ctx, principal=Principal(subject=owner), data={"name": "web", "image": "x:1"}
    )
    return view.id


def test_connection_init_without_a_valid_token_is_refused(client: TestClient) -> None:
    for payload in ({}, {"Authorization": "Bearer nope"}):
        with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws:
            ws.send_json({"type": "connection_init", "payload": payload})
            with pytest.raises(WebSocketDisconnect) as refused:
                ws.receive_json()
            assert refused.value.code == 4403


def update_image(state: AppState, container_id: str, image: str) -> None:
    """Alice deploys ``image`` as the container's next revision."""
    svc.update_container(
        ctx=state.ctx,
        principal=Principal(subject="alice"),
        container_id=container_id,
        data={"image": image},
    )


def subscribe_status(ws: Any, token: str, container_id: str) -> None:
    """Open a graphql-transport-ws session with ``token`` and subscribe (id "1") to
    ``containerStatus`` of ``container_id``."""
    ws_subscribe(ws, token, STATUS, {"id": container_id})


def test_container_status_emits_the_current_state(
    client: TestClient, token: Mint, state: AppState
) -> None:
    container_id = create(state)
    with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws:
        subscribe_status(ws, token(), container_id)
        first = ws.receive_json()
        assert first == {
            "type": "next",
            "id": "1",
            "payload": {
                "data": {
                    "containerStatus": {
                        "id": container_id,
                        "status": "deploying",
                        "image": "x:1",
                        "revision": 1,
                    }
                }
            },
        }
        ws.send_json({"type": "complete", "id": "1"})


def test_container_status_polls_for_changes_without_streams(
    client: TestClient, token: Mint, state: AppState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gql_schema, "STATUS_POLL_SECONDS", 0.01)
    container_id = create(state)
    with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws:
        subscribe_status(ws, token(), container_id)
        assert ws.receive_json()["payload"]["data"]["containerStatus"]["revision"] == 1
        update_image(state, container_id, "x:2")
        changed = ws.receive_json()["payload"]["data"]["containerStatus"]
        assert (changed["image"], changed["revision"]) == ("x:2", 2)
        ws.send_json({"type": "complete", "id": "1"})


def test_subscriptions_authorize_like_rest(
    client: TestClient, token: Mint, state: AppState
) -> None:
    container_id = create(state, owner="alice")
    with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws:
        subscribe_status(ws, token("mallory"), container_id)
        message = ws.receive_json()
        errors = message["payload"]["errors"] if message["type"] == "next" else message["payload"]
        assert [error["extensions"]["code"] for error in errors] == ["FORBIDDEN"]


def test_logs_without_a_runtime_are_unavailable(
    client: TestClient, token: Mint, state: AppState
) -> None:
    container_id = create(state)
    with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws:
        ws_subscribe(ws, token(), LOGS, {"id": container_id})
        message = ws.receive_json()
        errors = message["payload"]["errors"] if message["type"] == "next" else message["payload"]
        assert errors[0]["extensions"] == {"code": "UNAVAILABLE"}
        assert errors[0]["message"].startswith("no runtime configured")


class FakeStreams:
    """A provider as the runtime and reconciler will supply one, backed by lists."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.changed = threading.Event()  # set by the test thread; the app runs in another

    async def logs(
        self, container_id: str, *, tail: int | None, follow: bool
    ) -> AsyncIterator[LogChunk]:
        self.calls.append(("logs", (container_id, tail, follow)))
        ns = to_ns(datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)) + 250_000_001
        yield LogChunk.of([LogEvent(ns, 0, "listening on :8080", "stdout", 1)])
        yield LogChunk.of([LogEvent(ns, 1, "warning: no TLS", "stderr", None)])

    async def status(self, container_id: str) -> AsyncIterator[object]:
        self.calls.append(("status", container_id))
        await anyio.to_thread.run_sync(self.changed.wait)
        yield "changed"


def test_logs_come_from_the_streams_provider(
    client: TestClient, token: Mint, state: AppState, monkeypatch: pytest.MonkeyPatch
) -> None:
    streams = FakeStreams()
    monkeypatch.setattr(state, "streams", streams)
    container_id = create(state)
    with client.websocket_connect("/graphql", subprotocols=["graphql-ws"]) as ws:  # legacy
        ws_subscribe(ws, token(), LOGS, {"id": container_id}, message="start")
        lines = [ws.receive_json()["payload"]["data"]["containerLogs"] for _ in range(2)]
        assert ws.receive_json() == {"type": "complete", "id": "1"}
    assert lines == [
        {
            "line": "listening on :8080",
            "stream": "stdout",
            "revision": 1,
            "timestamp": "2024-05-01T12:00:00.250000001Z",
        },
        {
            "line": "warning: no TLS",
            "stream": "stderr",
            "revision": None,
            "timestamp": "2024-05-01T12:00:00.250000001Z",
        },
    ]
    assert streams.calls == [("logs", (container_id, 2, True))]


def test_status_changes_come_from_the_streams_provider(
    client: TestClient, token: Mint, state: AppState, monkeypatch: pytest.MonkeyPatch
) -> None:
    streams = FakeStreams()
    monkeypatch.setattr(state, "streams", streams)
    container_id = create(state)
    with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws:
        subscribe_status(ws, token(), container_id)
        assert ws.receive_json()["payload"]["data"]["containerStatus"]["revision"] == 1
        update_image(state, container_id, "x:2")
        streams.changed.set()
        changed = ws.receive_json()["payload"]["data"]["containerStatus"]
        assert (changed["image"], changed["revision"]) == ("x:2", 2)
        assert ws.receive_json() == {"type": "complete", "id": "1"}  # the provider ended
    assert streams.calls == [("status", container_id)]


def test_container_status_emits_each_phase_as_it_is_recorded(
    client: TestClient, token: Mint, state: AppState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phases` on each emitted container: the newest revision's timeline so far; recording a
    phase alone (no status change) emits the container again."""
    monkeypatch.setattr(gql_schema, "STATUS_POLL_SECONDS", 0.01)
    container_id = create(state)
    query = (
        "subscription($id: ID!) { containerStatus(id: $id) "
        "{ status revision phases { phase at durationMs reason } } }"
    )
    order = ["accepted", "scheduled", "imageReady", "started"]
    with client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws:
        ws_subscribe(ws, token(), query, {"id": container_id})
        seen = []
        for n in range(1, len(order) + 1):
            if n > 1:
                record_phases(state.ctx.engine, container_id, 1, order[:n])
            emitted = ws.receive_json()["payload"]["data"]["containerStatus"]
            assert emitted["status"] == "deploying"
            seen.append([p["phase"] for p in emitted["phases"]])
        assert seen == [order[:n] for n in range(1, len(order) + 1)]
        assert [p["durationMs"] for p in emitted["phases"]] == [1000.0, 1000.0, 1000.0, None]
        ws.send_json({"type": "complete", "id": "1"})
    # A query reads the same field from the revisions (batched), equal to revisions[0].phases.
    response = client.post(
        "/graphql",
        json={
            "query": "query($id: ID!) { container(id: $id) { phases { phase at durationMs reason } "
            "revisions { phases { phase at durationMs reason } } } }",
            "variables": {"id": container_id},
        },
        headers={"Authorization": f"Bearer {token()}"},
    )
    container = response.json()["data"]["container"]
    assert container["phases"] == container["revisions"][0]["phases"] == emitted["phases"]
