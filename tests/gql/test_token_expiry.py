"""Expired tokens on open sockets (issue 16): a GraphQL WebSocket is closed at the token's
expiry and refuses operations after it; an SSE log stream ends with a `reauthenticate` event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.auth import LocalKeys
from app.domain.logtime import to_ns
from app.domain.principal import Principal
from app.server import create_app
from app.services import containers as svc
from app.services.streams import LogChunk, LogEvent
from app.settings import Settings
from tests.gql.clients import ws_subscribe
from tests.support.sse import iter_events

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
STATUS = "subscription($id: ID!) { containerStatus(id: $id) { id status revision } }"


@pytest.fixture
def strict_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path, database_url=database_url, runtime="none", auth_leeway_seconds=0
    )


@pytest.fixture
def strict_app(strict_settings: Settings) -> Iterator[FastAPI]:
    application = create_app(strict_settings)
    yield application
    application.state.dockyard.ctx.engine.dispose()


def _short_token(settings: Settings, ttl: int = 2) -> tuple[str, float]:
    token = LocalKeys(settings).mint(subject="alice", roles=[], ttl_seconds=ttl)
    return token, float(int(time.time()) + ttl)


def test_websocket_is_closed_when_its_token_expires(
    strict_app: FastAPI, strict_settings: Settings
) -> None:
    state = strict_app.state.dockyard
    container_id = svc.create_container(
        ctx=state.ctx, principal=Principal("alice"), data={"name": "web", "image": "x:1"}
    ).id
    token, expires = _short_token(strict_settings)
    with (
        TestClient(strict_app) as client,
        client.websocket_connect("/graphql", subprotocols=[TRANSPORT_WS]) as ws,
    ):
        ws_subscribe(ws, token, STATUS, {"id": container_id})
        assert ws.receive_json()["type"] == "next"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()  # nothing changes: the next message is the close at expiry
        assert closed.value.code == 4403
        assert closed.value.reason == "token expired: reconnect with a fresh token"
        assert time.time() >= expires


def test_legacy_websocket_is_closed_when_its_token_expires(
    strict_app: FastAPI, strict_settings: Settings
) -> None:
    token, _ = _short_token(strict_settings, ttl=1)
    with (
        TestClient(strict_app) as client,
        client.websocket_connect("/graphql", subprotocols=[LEGACY_WS]) as ws,
    ):
        ws.send_json({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        assert ws.receive_json()["type"] == "connection_ack"
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                ws.receive_json()  # keep-alives until the close
        assert closed.value.code == 4403


async def test_operations_after_expiry_are_refused(strict_app: FastAPI) -> None:
    """The per-operation check, on the context a WebSocket keeps for its whole life."""
    from app.gql.context import Context

    state = strict_app.state.dockyard
    context = Context(state, None)
    context._principal = Principal("alice", valid_until=time.time() - 1)
    from app.domain.errors import Unauthenticated

    with pytest.raises(Unauthenticated, match="expired"):
        await context.call(svc.list_containers, page=1, rows_per_page=10, all_users=False)
    mutation = 'mutation { createContainer(input: {name: "late", image: "x:1"}) { id } }'
    from app.gql.schema import schema

    result = await schema.execute(mutation, context_value=context)
    assert result.errors is not None
    assert result.errors[0].extensions == {"code": "UNAUTHENTICATED"}
    page = svc.list_containers(
        ctx=state.ctx, principal=Principal("alice"), page=1, rows_per_page=10, all_users=False
    )
    assert page.total == 0  # nothing was written after expiry


class FollowingStreams:
    """A streams provider behind the real interface: two lines, then nothing (follow)."""

    def __init__(self) -> None:
        self.after: list[str | None] = []

    async def logs(
        self,
        container_id: str,
        *,
        tail: int | None,
        follow: bool,
        since: datetime | None = None,
        after: str | None = None,
    ) -> AsyncIterator[LogChunk]:
        self.after.append(after)
        ns = to_ns(datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC))
        first = 0 if after is None else int(after.rsplit("-", 1)[1]) + 1
        for k in range(first, first + 2):
            yield LogChunk.of([LogEvent(ns, k, f"line {k}", "stdout", 1)])
        await asyncio.Event().wait()  # following: no more lines

    async def status(self, container_id: str) -> AsyncIterator[object]:
        await asyncio.Event().wait()
        yield None


def test_sse_stream_ends_at_token_expiry_and_resumes_with_a_fresh_token(
    strict_app: FastAPI, strict_settings: Settings
) -> None:
    state = strict_app.state.dockyard
    streams = FollowingStreams()
    state.streams = streams
    container_id = svc.create_container(
        ctx=state.ctx, principal=Principal("alice"), data={"name": "web", "image": "x:1"}
    ).id
    token, expires = _short_token(strict_settings)
    path = f"/v1/containers/{container_id}/logs"
    with TestClient(strict_app) as client:
        with client.stream("GET", path, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status_code == 200
            events = [e for e in iter_events(response.iter_lines()) if e.event != "comment"]
        assert time.time() >= expires
        assert [e.event for e in events] == ["message", "message", "reauthenticate"]
        assert "token expired" in events[-1].json()["reason"]
        last_id = events[1].id
        assert last_id is not None
        fresh, _ = _short_token(strict_settings, ttl=1)
        headers = {"Authorization": f"Bearer {fresh}", "Last-Event-ID": last_id}
        with client.stream("GET", path, headers=headers) as response:
            resumed = [e for e in iter_events(response.iter_lines()) if e.event != "comment"]
        assert [e.json()["line"] for e in resumed[:2]] == ["line 2", "line 3"]
        assert resumed[-1].event == "reauthenticate"
        expired = client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert expired.status_code == 401
    assert streams.after == [None, last_id]
