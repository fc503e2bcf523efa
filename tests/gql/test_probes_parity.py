"""``probes`` over both transports: same stored probes, same refusals naming the same paths."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.gql.clients import CLIENTS, Outcome
from tests.gql.test_parity import assert_transports_agree, make
from tests.support.bodies import HELLO

Header = Callable[..., dict[str, str]]
READY = {"readiness": {"httpGet": {"path": "/ready"}, "periodSeconds": 1}}


def scenario(kind: str, client: TestClient, auth: Header, subject: str) -> list[Outcome]:
    api = make(kind, client, auth(subject))
    created = api.create({**HELLO, "probes": READY})
    assert created.code is None, created
    container_id = created.data["id"]
    return [
        created,
        api.update(container_id, {"probes": {"liveness": {"exec": {"command": ["true"]}}}}),
        api.rollback(container_id, 1),
        api.update(container_id, {"probes": None}),
        api.create({**HELLO, "name": "bad", "probes": {"readiness": {"httpGet": {"path": "x"}}}}),
        api.update(
            container_id,
            {"probes": {"liveness": {"tcpSocket": {}, "successThreshold": 2}, "startup": {}}},
        ),
        api.update(container_id, {"probes": {"startupBudgetSeconds": 100000}}),
    ]


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_probes_scenario(kind: str, client: TestClient, auth: Header) -> None:
    steps = scenario(kind, client, auth, "alice")
    assert [s.code for s in steps] == [None] * 4 + ["BAD_USER_INPUT"] * 3
    created, replaced, rolled_back, removed = (s.data for s in steps[:4])
    assert created["probes"]["readiness"] == {
        "httpGet": {"path": "/ready"},
        "initialDelaySeconds": 0,
        "periodSeconds": 1,
        "timeoutSeconds": 1,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    assert set(replaced["probes"]) == {"liveness"}
    assert rolled_back["probes"] == created["probes"]  # probes travel with the revision
    assert removed["probes"] is None
    assert [{f["field"] for f in s.fields} for s in steps[4:]] == [
        {"probes.readiness.httpGet.path"},
        {"probes.liveness.successThreshold", "probes.startup"},
        {"probes.startupBudgetSeconds"},
    ]


def test_probes_transports_agree(client: TestClient, auth: Header) -> None:
    assert_transports_agree(scenario, client, auth)
