"""Scaling and traffic over both transports: the same scenario gives the same results, and the
same refusals name the same fields (the shape of ``test_parity.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.deps import AppState
from app.runtime.base import Capabilities
from tests.gql.clients import CLIENTS, Outcome
from tests.gql.test_parity import assert_transports_agree, make
from tests.support.bodies import HELLO

Header = Callable[..., dict[str, str]]
KNATIVE = "Knative Serving is required (this cluster runs plain Deployments)"
SPLIT = [{"revision": 1, "percent": 90}, {"latest": True, "percent": 10, "tag": "canary"}]


def serverless_scenario(kind: str, client: TestClient, auth: Header, subject: str) -> list[Outcome]:
    api = make(kind, client, auth(subject))
    intruder = make(kind, client, auth(f"{subject}-intruder"))
    anonymous = make(kind, client, {})
    created = api.create({**HELLO, "scaling": {"minInstances": 1, "concurrency": 20}})
    assert created.code is None, created
    container_id = created.data["id"]
    return [
        created,
        api.update(container_id, {"scaling": {"maxInstances": 4}}),
        api.set_traffic(container_id, SPLIT),
        api.get(container_id),
        api.revisions(container_id),
        api.set_traffic(
            container_id,
            [{"revision": 2, "percent": 100}, {"revision": 1, "percent": 0, "tag": "old"}],
        ),
        api.rollback(container_id, 1),
        api.revisions(container_id),
        # BAD_USER_INPUT
        api.create(
            {**HELLO, "name": "bad-scale", "scaling": {"minInstances": -1, "concurrency": 0}}
        ),
        api.update(container_id, {"scaling": {"maxInstances": 1000}}),
        api.set_traffic(container_id, [{"latest": True, "percent": 90}]),
        api.set_traffic(
            container_id,
            [{"revision": 9, "percent": 50}, {"latest": True, "percent": 50, "tag": "Bad"}],
        ),
        api.set_traffic(
            container_id,
            [
                {"latest": True, "percent": 50, "tag": "a"},
                {"revision": 1, "percent": 50, "tag": "a"},
            ],
        ),
        api.set_traffic(container_id, [{"revision": 1, "latest": True, "percent": 100}]),
        api.set_traffic(container_id, []),
        # FORBIDDEN, UNAUTHENTICATED, NOT_FOUND
        intruder.set_traffic(container_id, SPLIT),
        anonymous.set_traffic(container_id, SPLIT),
        api.set_traffic("00000000-0000-0000-0000-000000000000", SPLIT),
    ]


EXPECTED_CODES = [None] * 8 + ["BAD_USER_INPUT"] * 7 + ["FORBIDDEN", "UNAUTHENTICATED", "NOT_FOUND"]


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_serverless_scenario(kind: str, client: TestClient, auth: Header) -> None:
    steps = serverless_scenario(kind, client, auth, "alice")
    assert [step.code for step in steps] == EXPECTED_CODES
    created, updated, routed, read, revisions, pinned, rolled_back, after = (
        step.data for step in steps[:8]
    )
    assert created["scaling"] == {
        "minInstances": 1,
        "maxInstances": 100,
        "concurrency": 20,
        "scaleToZeroAfterSeconds": 900,
    }
    assert created["traffic"] == [
        {"revision": None, "latest": True, "percent": 100, "tag": None, "url": None}
    ]
    # an update merges the given scaling sub-fields
    assert updated["scaling"]["maxInstances"] == 4 and updated["scaling"]["concurrency"] == 20
    assert updated["revision"] == 2
    # traffic makes no new revision; latest resolves to no revision while none is ready
    assert routed["revision"] == 2 and routed["dateUpdated"] >= updated["dateUpdated"]
    slug_host = routed["urls"][0]
    assert routed["urls"] == [slug_host, f"canary---{slug_host}"]
    assert routed["traffic"] == [
        {"revision": 1, "latest": False, "percent": 90, "tag": None, "url": None},
        {
            "revision": None,
            "latest": True,
            "percent": 10,
            "tag": "canary",
            "url": f"canary---{slug_host}",
        },
    ]
    assert read == routed
    by_number = {item["revisionNumber"]: item for item in revisions["items"]}
    assert by_number[1]["trafficPercent"] == 90 and by_number[2]["trafficPercent"] == 0
    assert by_number[2]["spec"]["scaling"]["maxInstances"] == 4
    assert by_number[1]["spec"]["scaling"]["maxInstances"] == 100
    assert by_number[2]["instancesDesired"] == 1 and by_number[2]["instancesReady"] == 0
    assert by_number[2]["servingState"] == "" and by_number[2]["stateReason"] == ""
    assert pinned["traffic"][1]["url"] == f"old---{slug_host}"
    # rollback copies revision 1's scaling into revision 3; pinned targets stay pinned
    assert rolled_back["revision"] == 3 and rolled_back["scaling"]["maxInstances"] == 100
    assert [t["revision"] for t in rolled_back["traffic"]] == [2, 1]
    assert {i["revisionNumber"]: i["trafficPercent"] for i in after["items"]} == {
        3: 0,
        2: 100,
        1: 0,
    }
    fields = [{f["field"] for f in step.fields} for step in steps[8:15]]
    assert fields == [
        {"scaling.minInstances", "scaling.concurrency"},
        {"scaling.maxInstances"},
        {"traffic"},
        {"traffic[0].revision", "traffic[1].tag"},
        {"traffic[1].tag"},
        {"traffic[0]"},
        {"traffic"},
    ]


def test_serverless_transports_agree(client: TestClient, auth: Header) -> None:
    assert_transports_agree(serverless_scenario, client, auth)


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_runtime_without_knative_refuses_what_it_cannot_do(
    kind: str, client: TestClient, auth: Header, state: AppState
) -> None:
    state.ctx.capabilities = Capabilities(scale_to_zero=False, traffic_split=False)
    api = make(kind, client, auth("alice"))
    created = api.create(HELLO)
    assert created.data["scaling"]["minInstances"] == 1  # unset means 1 here
    container_id = created.data["id"]
    zero = api.create({**HELLO, "name": "zero", "scaling": {"minInstances": 0}})
    split = api.set_traffic(container_id, [{"latest": True, "percent": 50}] * 2)
    tagged = api.set_traffic(container_id, [{"latest": True, "percent": 100, "tag": "t"}])
    for outcome, field in (
        (zero, "scaling.minInstances"),
        (split, "traffic"),
        (tagged, "traffic[0].tag"),
    ):
        assert outcome.code == "BAD_USER_INPUT"
        (error,) = outcome.fields
        assert error["field"] == field and KNATIVE in error["message"], error
    pinned = api.set_traffic(container_id, [{"revision": 1, "percent": 100}])
    assert [error["field"] for error in pinned.fields] == ["traffic[0].revision"]
    assert KNATIVE in pinned.fields[0]["message"]
    kept = api.set_traffic(container_id, [{"latest": True, "percent": 100}])
    assert kept.code is None and kept.data["traffic"][0]["latest"] is True
    rescaled = api.update(container_id, {"scaling": {"maxInstances": 3}})
    assert rescaled.data["scaling"]["minInstances"] == 1


def test_graphql_inputs_take_the_rest_shape(client: TestClient, auth: Header) -> None:
    """A REST body's ``scaling`` object is a valid GraphQL input unchanged."""
    graphql = make("graphql", client, auth("alice"))
    body: dict[str, Any] = {**HELLO, "scaling": {"minInstances": 2, "scaleToZeroAfterSeconds": 60}}
    created = graphql.create(body)
    assert created.code is None, created
    assert created.data["scaling"]["scaleToZeroAfterSeconds"] == 60
    reset = graphql.update(created.data["id"], {"scaling": None})
    assert reset.data["scaling"]["minInstances"] == 0
