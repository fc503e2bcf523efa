"""``GET /v1/containers/{id}/events``: status events carrying the newest revision's phases.

The streams provider here is a small stand-in behind the real ``ContainerStreams`` seam: it plays
the reconciler, recording phases in the database and signalling a change after each, then
deletes the container, so the stream is finite. The same endpoint on real Podman is tested in
``tests/e2e/test_phase_events.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.testclient import TestClient

from app.deps import AppState
from app.domain.principal import Principal
from app.services import containers as svc
from tests.support.phases import record_phases
from tests.support.sse import SseEvent, iter_events


class Reconciling:
    """Plays the reconciler behind the ``ContainerStreams`` seam: each step changes the
    database, then signals a change; a repeated signal with no change must send nothing."""

    def __init__(self, steps: list[Callable[[], None]]) -> None:
        self.steps = steps

    def logs(self, *_: Any, **__: Any) -> AsyncIterator[Any]:
        raise AssertionError("not used")

    async def status(self, container_id: str) -> AsyncIterator[object]:
        for step in self.steps:
            await asyncio.sleep(0.05)
            await asyncio.to_thread(step)
            yield "status"
            yield "status"  # spurious: the stream re-reads and sends nothing new


def events_of(client: TestClient, container_id: str, headers: dict[str, str]) -> list[SseEvent]:
    path = f"/v1/containers/{container_id}/events"
    with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [e for e in iter_events(response.iter_lines()) if e.event != "comment"]


def test_status_events_carry_each_phase_as_it_is_recorded(
    client: TestClient, state: AppState, auth: Callable[..., dict[str, str]]
) -> None:
    alice = Principal("alice")
    container_id = svc.create_container(
        ctx=state.ctx, principal=alice, data={"name": "web", "image": "x:1"}
    ).id
    engine = state.ctx.engine
    order = ["accepted", "scheduled", "imageReady", "started", "ready", "serving"]
    steps: list[Callable[[], None]] = [
        (lambda n=n: record_phases(engine, container_id, 1, order[:n])) for n in range(2, 7)
    ]
    steps.append(
        lambda: svc.delete_container(ctx=state.ctx, principal=alice, container_id=container_id)
    )
    state.streams = Reconciling(steps)

    events = events_of(client, container_id, auth("alice"))

    assert [e.event for e in events] == ["status"] * 6 + ["end"]
    bodies = [e.json() for e in events[:-1]]
    rest = client.get(f"/v1/containers/{container_id}", headers=auth("alice"))
    assert rest.status_code == 404  # deleted by the last step
    # Each event is the container JSON plus the newest revision's phases so far.
    assert {key for key in bodies[0] if key != "phases"} >= {"id", "status", "revision"}
    assert [[p["phase"] for p in body["phases"]] for body in bodies] == [
        order[:n] for n in range(1, 7)
    ]
    last = bodies[-1]["phases"]
    assert [p["durationMs"] for p in last] == [1000.0] * 5 + [None]
    assert last[1]["at"] == "2027-01-15T08:00:01.000000000Z"


def test_status_events_refuse_before_streaming(
    client: TestClient, state: AppState, auth: Callable[..., dict[str, str]]
) -> None:
    container_id = svc.create_container(
        ctx=state.ctx, principal=Principal("alice"), data={"name": "web", "image": "x:1"}
    ).id
    path = f"/v1/containers/{container_id}/events"
    assert client.get(path).status_code == 401
    forbidden = client.get(path, headers=auth("mallory"))
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"] == "application/problem+json"
    unknown = "00000000-0000-0000-0000-000000000000"
    missing = client.get(f"/v1/containers/{unknown}/events", headers=auth())
    assert missing.status_code == 404
