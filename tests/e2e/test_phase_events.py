"""Deploy phases arriving live on real Podman: the REST status events and the GraphQL
``containerStatus`` subscription of a `dockyard serve` process, watched while a revision deploys."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.podman import HTTPD_V1, HTTPD_V2, PodmanService
from tests.support.server import Server
from tests.support.serving import bearer, serve_env, serving
from tests.support.sse import iter_events

pytestmark = pytest.mark.podman

ORDER = ["accepted", "scheduled", "imageReady", "started", "ready", "serving"]
PHASE_FIELDS = "phases { phase at durationMs reason }"


@pytest.fixture
def server(tmp_path: Path, database_url: str, podman_service: PodmanService) -> Iterator[Server]:
    env = serve_env(tmp_path, database_url, podman_service, DOCKYARD_SSE_HEARTBEAT_SECONDS="0.5")
    with serving(env, tmp_path / "server.log", bearer(tmp_path)) as server:
        yield server


def deployed(event: dict[str, Any], revision: int) -> bool:
    return event["status"] == "deployed" and event["readyRevision"] == revision


def sse_until_deployed(
    server: Server, container_id: str, revision: int, into: list[dict[str, Any]]
) -> None:
    """The status events of the container into ``into`` until ``revision`` is deployed."""
    with httpx.stream(
        "GET",
        f"{server.url}/v1/containers/{container_id}/events",
        headers=server.headers,
        timeout=httpx.Timeout(30, read=60),
    ) as response:
        assert response.status_code == 200, response.read()
        for event in iter_events(response.iter_lines()):
            if event.event == "comment":
                continue
            assert event.event == "status", event
            into.append(event.json())
            if deployed(into[-1], revision):
                return


def graphql_until_deployed(ws: Any, container_id: str, revision: int) -> list[dict[str, Any]]:
    emitted: list[dict[str, Any]] = []
    while not emitted or not deployed(emitted[-1], revision):
        message = json.loads(ws.recv(timeout=60))
        assert message["type"] == "next", message
        emitted.append(message["payload"]["data"]["containerStatus"])
    return emitted


def phase_names(event: dict[str, Any]) -> list[str]:
    return [p["phase"] for p in event["phases"]]


def assert_arrived_in_order(events: list[dict[str, Any]], revision: int) -> None:
    """Each event of ``revision`` carries a prefix of the phase order, growing, from before
    serving up to every phase; at least two events brought new phases."""
    lists = [phase_names(e) for e in events if e["revision"] == revision]
    assert lists, events
    for names in lists:
        assert names == ORDER[: len(names)], lists
    assert [len(names) for names in lists] == sorted(len(names) for names in lists), lists
    assert "serving" not in lists[0] and lists[-1] == ORDER, lists
    assert len({len(names) for names in lists}) >= 2, lists


def test_status_events_and_the_subscription_emit_each_phase_as_it_happens(
    server: Server,
) -> None:
    created = server.api(
        "POST", "/v1/containers", json={"name": "phased", "image": HTTPD_V1, "ram": "64Mi"}
    )
    assert created.status_code == 201, created.text
    container_id = created.json()["id"]
    server.wait_for(container_id, lambda c: deployed(c, 1))

    # Both watchers are open before revision 2 exists: they see its deploy from the start.
    sse_events: list[dict[str, Any]] = []
    url = f"ws://127.0.0.1:{server.port}/graphql"
    with connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "connection_init", "payload": server.headers}))
        assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
        query = (
            "subscription($id: ID!) { containerStatus(id: $id) "
            f"{{ status revision readyRevision {PHASE_FIELDS} }} }}"
        )
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": "status",
                    "payload": {"query": query, "variables": {"id": container_id}},
                }
            )
        )
        first = json.loads(ws.recv(timeout=30))["payload"]["data"]["containerStatus"]
        assert first["revision"] == 1 and phase_names(first) == ORDER  # revision 1, as now
        reader = threading.Thread(
            target=sse_until_deployed, args=(server, container_id, 2, sse_events), daemon=True
        )
        reader.start()
        while not sse_events:  # the SSE stream is open: its first event arrived
            reader.join(timeout=0.05)
            assert reader.is_alive() or sse_events
        updated = server.api("PUT", f"/v1/containers/{container_id}", json={"image": HTTPD_V2})
        assert updated.status_code == 200, updated.text
        emitted = graphql_until_deployed(ws, container_id, 2)
        ws.send(json.dumps({"type": "complete", "id": "status"}))
    reader.join(timeout=60)
    assert not reader.is_alive()

    recorded = server.api("GET", f"/v1/containers/{container_id}/revisions").json()["items"][0]
    assert recorded["revisionNumber"] == 2
    for events in (sse_events, emitted):
        assert_arrived_in_order(events, 2)
        # the last event's phases are the revision's recorded timeline, field for field
        assert events[-1]["phases"] == recorded["phases"]
    assert sse_events[0]["revision"] == 1 and phase_names(sse_events[0]) == ORDER
