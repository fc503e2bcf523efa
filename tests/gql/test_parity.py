"""REST and GraphQL are one API: the same scenario over both clients gives the same results.

Shaped like Strawberry's ``tests/http``: behaviour is written once against ``ApiClient`` and
parametrized over the transports; ``test_transports_agree`` then compares the two transcripts.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.gql.clients import CLIENTS, ApiClient, Outcome
from tests.support.bodies import HELLO

Header = Callable[..., dict[str, str]]
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def make(kind: str, client: TestClient, headers: dict[str, str]) -> ApiClient:
    return CLIENTS[kind](client, headers)


def normalise(value: Any, *, ids: dict[str, str], subject: str) -> Any:
    """Hide what legitimately differs between two runs: ids, times, URL slugs, the user."""
    if isinstance(value, dict):
        return {key: normalise(item, ids=ids, subject=subject) for key, item in value.items()}
    if isinstance(value, list):
        return [normalise(item, ids=ids, subject=subject) for item in value]
    if isinstance(value, str):
        if value in ids:
            return ids[value]
        if value == subject:
            return "<user>"
        if RFC3339.match(value):
            return "<time>"
        if re.fullmatch(r"[a-z2-7]{26}\.localhost:8000", value):
            return "<slug>.localhost:8000"
        if tagged := re.fullmatch(r"([a-z0-9-]+)---[a-z2-7]{26}\.localhost:8000", value):
            return f"{tagged[1]}---<slug>.localhost:8000"
    return value


def scenario(api: ApiClient, intruder: ApiClient, anonymous: ApiClient) -> list[Outcome]:
    """Every operation and every error class, in an order that exercises the lifecycle."""
    created = api.create(HELLO)
    assert created.code is None, created
    container_id = created.data["id"]
    assert created.data["status"] == "deploying"
    assert created.data["cpu"] == 1.0
    steps = [
        created,
        api.get(container_id),
        api.list(),
        api.update(container_id, {"image": "nginxdemos/hello:updated", "env": {"FOO": "x"}}),
        api.update(container_id, {"command": ["/bin/server"], "port": "8080"}),
        api.revisions(container_id),
        api.revisions(container_id, page=2, rows_per_page=2),
        api.rollback(container_id, 1),
        api.get(container_id),
        api.gpu_models(),
        # BAD_USER_INPUT, naming each field as the service does
        api.create({"image": "nginx"}),
        api.create({"name": "Bad_Name", "image": "nginx:1", "cpu": 0, "env": {"1X": "y"}}),
        api.create({**HELLO, "name": "gpus", "desiredGPUs": ["no-such-gpu"]}),
        api.update(container_id, {"ram": "lots"}),
        api.list(page=0, rows_per_page=101),
        api.revisions(container_id, rows_per_page=0),
        api.rollback(container_id, 99),
        # CONFLICT
        api.create(HELLO),
        # FORBIDDEN
        intruder.get(container_id),
        intruder.update(container_id, {"image": "nginx:2"}),
        intruder.delete(container_id),
        intruder.list(all=True),
        # UNAUTHENTICATED
        anonymous.get(container_id),
        anonymous.list(),
        anonymous.create(HELLO),
        # NOT_FOUND
        api.get(str(uuid.uuid4())),
        api.get("not-a-uuid"),
        api.delete(container_id),
        api.get(container_id),
        api.delete(container_id),
        api.revisions(container_id),
    ]
    return steps


EXPECTED_CODES = [None] * 10 + ["BAD_USER_INPUT"] * 7 + ["CONFLICT"] + ["FORBIDDEN"] * 4
EXPECTED_CODES += ["UNAUTHENTICATED"] * 3 + ["NOT_FOUND"] * 2 + [None] + ["NOT_FOUND"] * 3


def run(kind: str, client: TestClient, auth: Header, subject: str) -> list[Outcome]:
    return scenario(
        make(kind, client, auth(subject)),
        make(kind, client, auth(f"{subject}-intruder")),
        make(kind, client, {}),
    )


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_scenario(kind: str, client: TestClient, auth: Header) -> None:
    steps = run(kind, client, auth, "alice")
    assert [step.code for step in steps] == EXPECTED_CODES
    assert steps[3].data["image"] == "nginxdemos/hello:updated"
    assert steps[3].data["env"] == {"FOO": "x"}
    assert steps[3].data["port"] == "80"  # partial update keeps what was not sent
    assert [r["revisionNumber"] for r in steps[5].data["items"]] == [3, 2, 1]
    assert steps[6].data["total"] == 3 and len(steps[6].data["items"]) == 1
    assert steps[7].data["image"] == HELLO["image"] and steps[7].data["revision"] == 4
    assert {f["field"] for f in steps[10].fields} == {"name", "image"}
    assert {f["field"] for f in steps[11].fields} == {"name", "cpu", "env.1X"}
    assert [f["field"] for f in steps[16].fields] == ["revisionNumber"]


def test_transports_agree(client: TestClient, auth: Header) -> None:
    transcripts = {}
    for kind in CLIENTS:
        subject = f"user-{kind}"
        steps = run(kind, client, auth, subject)
        ids = {steps[0].data["id"]: "<id>"}
        transcripts[kind] = [
            normalise(
                {"data": s.data, "code": s.code, "fields": s.fields}, ids=ids, subject=subject
            )
            for s in steps
        ]
    for rest, graphql in zip(transcripts["rest"], transcripts["graphql"], strict=True):
        assert graphql == rest


def test_reads_are_identical_json(client: TestClient, auth: Header) -> None:
    """Same database state, both transports: byte-for-byte the same objects."""
    rest = make("rest", client, auth("alice"))
    graphql = make("graphql", client, auth("alice"))
    container_id = rest.create(HELLO).data["id"]
    graphql.update(container_id, {"gpu": 1, "desiredGPUs": ["a100"]})
    rest.create({**HELLO, "name": "second"})
    for read in (
        lambda api: api.get(container_id),
        lambda api: api.list(),
        lambda api: api.list(page=2, rows_per_page=1),
        lambda api: api.revisions(container_id),
        lambda api: api.gpu_models(),
    ):
        assert read(graphql) == read(rest)


def test_redeploy_agrees(client: TestClient, auth: Header) -> None:
    transcripts = {}
    for kind in CLIENTS:
        subject = f"redeploy-{kind}"
        api = make(kind, client, auth(subject))
        container_id = api.create(HELLO).data["id"]
        steps = [
            api.redeploy(container_id),
            make(kind, client, auth(f"{subject}-intruder")).redeploy(container_id),
            make(kind, client, {}).redeploy(container_id),
            api.redeploy(str(uuid.uuid4())),
        ]
        assert [s.code for s in steps] == [None, "FORBIDDEN", "UNAUTHENTICATED", "NOT_FOUND"]
        assert steps[0].data["revision"] == 2
        transcripts[kind] = [
            normalise(
                {"data": s.data, "code": s.code}, ids={container_id: "<id>"}, subject=subject
            )
            for s in steps
        ]
    assert transcripts["graphql"] == transcripts["rest"]
