"""REST specifics of scaling and traffic: the ``{"traffic": [...]}`` envelope, what a traffic
change does (and does not) write, and views of the observed scale the leader writes."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.deps import AppState
from app.domain.models import Container, ContainerStatus, Revision, ServingState
from app.domain.spec import SCALING_FIELDS
from app.domain.traffic import ENTRY_FIELDS
from app.server import openapi_json
from tests.support.bodies import HELLO


def create(client: TestClient, auth: Any, **changes: Any) -> dict[str, Any]:
    response = client.post("/v1/containers", json={**HELLO, **changes}, headers=auth("alice"))
    assert response.status_code == 201, response.text
    return response.json()


def put_traffic(client: TestClient, auth: Any, container_id: str, body: Any) -> Any:
    return client.put(f"/v1/containers/{container_id}/traffic", json=body, headers=auth("alice"))


def test_the_body_is_an_object_holding_traffic_only(client: TestClient, auth: Any) -> None:
    container_id = create(client, auth)["id"]
    for body, field in (
        ([{"latest": True, "percent": 100}], "body"),
        ({"traffic": [{"latest": True, "percent": 100}], "split": 1}, "split"),
        ({}, "traffic"),
        ({"traffic": {"latest": True}}, "traffic"),
    ):
        response = put_traffic(client, auth, container_id, body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert [error["field"] for error in response.json()["errors"]] == [field]
    malformed = client.put(
        f"/v1/containers/{container_id}/traffic", content=b"{", headers=auth("alice")
    )
    assert malformed.status_code == 400 and malformed.json()["code"] == "MALFORMED_JSON"


def test_traffic_is_stored_without_a_new_revision_and_notifies(
    client: TestClient, auth: Any, state: AppState
) -> None:
    container_id = create(client, auth)["id"]
    heard: list[tuple[str, str]] = []
    state.ctx.listeners.append(lambda cid, kind: heard.append((cid, kind)))
    body = {"traffic": [{"latest": True, "percent": 100, "tag": "main"}]}
    response = put_traffic(client, auth, container_id, body)
    assert response.status_code == 200, response.text
    assert response.json()["revision"] == 1
    assert heard == [(container_id, "traffic")]
    with Session(state.ctx.engine) as session:
        container = session.get(Container, container_id)
        assert container is not None
        assert container.generation == 1
        assert container.traffic == [
            {"revision": None, "latest": True, "percent": 100, "tag": "main"}
        ]
        revisions = session.exec(select(Revision).where(Revision.container_id == container_id))
        assert len(revisions.all()) == 1
    listed = client.get("/v1/containers", headers=auth("alice")).json()["items"][0]
    assert listed["traffic"][0]["tag"] == "main" and len(listed["urls"]) == 2


def test_views_show_the_observed_scale_and_latest_resolved(
    client: TestClient, auth: Any, state: AppState
) -> None:
    container_id = create(client, auth)["id"]
    client.put(f"/v1/containers/{container_id}", json={"env": {}}, headers=auth("alice"))
    body = {"traffic": [{"revision": 1, "percent": 30}, {"latest": True, "percent": 70}]}
    assert put_traffic(client, auth, container_id, body).status_code == 200
    # What the leader writes: revision 2 ready and scaled to zero, revision 1 failed on wake.
    with Session(state.ctx.engine) as session:
        container = session.get(Container, container_id)
        assert container is not None
        container.ready_revision = 2
        container.status = ContainerStatus.DEPLOYED
        container.status_reason = container.status_message = ""
        session.add(container)
        for revision in session.exec(select(Revision).where(Revision.container_id == container_id)):
            if revision.revision_number == 2:
                revision.instances_desired = revision.instances_ready = 0
                revision.serving_state = ServingState.SCALED_TO_ZERO
            else:
                revision.instances_desired, revision.instances_ready = 1, 0
                revision.serving_state = ServingState.FAILED
                revision.state_reason = "CrashLoopBackOff"
                revision.state_message = "exited with code 3"
            session.add(revision)
        session.commit()
    container = client.get(f"/v1/containers/{container_id}", headers=auth("alice")).json()
    assert container["status"] == "deployed"
    assert [(t["revision"], t["percent"]) for t in container["traffic"]] == [(1, 30), (2, 70)]
    items = client.get(f"/v1/containers/{container_id}/revisions", headers=auth("alice")).json()
    states = {
        item["revisionNumber"]: (
            item["instancesDesired"],
            item["instancesReady"],
            item["servingState"],
            item["stateReason"],
            item["trafficPercent"],
        )
        for item in items["items"]
    }
    assert states == {
        2: (0, 0, "scaled-to-zero", "", 70),
        1: (1, 0, "failed", "CrashLoopBackOff", 30),
    }


def test_scaling_defaults_and_the_operator_limit(client: TestClient, auth: Any) -> None:
    body = create(client, auth)
    assert body["scaling"] == {
        "minInstances": 0,
        "maxInstances": 100,
        "concurrency": 80,
        "scaleToZeroAfterSeconds": 900,
    }
    response = client.post(
        "/v1/containers",
        json={**HELLO, "name": "big", "scaling": {"maxInstances": 101, "bogus": 1}},
        headers=auth("alice"),
    )
    assert response.status_code == 422
    errors = {error["field"]: error["message"] for error in response.json()["errors"]}
    assert set(errors) == {"scaling.bogus"}
    assert "allowed fields: minInstances" in errors["scaling.bogus"]
    response = client.post(
        "/v1/containers",
        json={**HELLO, "name": "big", "scaling": {"maxInstances": 101}},
        headers=auth("alice"),
    )
    assert response.json()["errors"] == [
        {"field": "scaling.maxInstances", "message": "must be at most 100"}
    ]


def test_openapi_request_bodies_document_scaling_and_traffic_without_dangling_refs() -> None:
    document = openapi_json()
    assert "#/$defs/" not in document
    paths = json.loads(document)["paths"]
    create_body = paths["/v1/containers"]["post"]["requestBody"]["content"]["application/json"]
    scaling = create_body["schema"]["properties"]["scaling"]["anyOf"][0]
    assert set(scaling["properties"]) == set(SCALING_FIELDS)
    traffic_body = paths["/v1/containers/{id}/traffic"]["put"]["requestBody"]
    items = traffic_body["content"]["application/json"]["schema"]["properties"]["traffic"]
    assert set(items["items"]["properties"]) == set(ENTRY_FIELDS)
