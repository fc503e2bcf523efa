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

from tests.gql.clients import CLIENTS, ApiClient, GraphQLClient, Outcome
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


Scenario = Callable[[str, TestClient, Header, str], list[Outcome]]
"""Steps of one user (``subject``) over one transport (``kind``)."""


def assert_transports_agree(scenario: Scenario, client: TestClient, auth: Header) -> None:
    """Run ``scenario`` over each transport as a user of its own; the transcripts (ids, times,
    slugs and the user normalised) must be equal step by step."""
    transcripts = {}
    for kind in CLIENTS:
        subject = f"user-{kind}"
        steps = scenario(kind, client, auth, subject)
        ids = {steps[0].data["id"]: "<id>"}
        transcripts[kind] = [
            normalise(
                {"data": s.data, "code": s.code, "fields": s.fields}, ids=ids, subject=subject
            )
            for s in steps
        ]
    for rest, graphql in zip(transcripts["rest"], transcripts["graphql"], strict=True):
        assert graphql == rest


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
    assert_transports_agree(run, client, auth)


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


@pytest.mark.parametrize("port", [80, "80"])
def test_a_port_as_number_or_string_is_accepted_by_both(
    client: TestClient, auth: Header, port: int | str
) -> None:
    for kind in CLIENTS:
        api = make(kind, client, auth(f"port-{kind}"))
        created = api.create({**HELLO, "port": port})
        assert created.code is None, (kind, created)
        assert created.data["port"] == "80"
        updated = api.update(created.data["id"], {"port": 8080})
        assert updated.code is None and updated.data["port"] == "8080", (kind, updated)
        # a revision's spec.port has the type of the container's port: a string
        revisions = api.revisions(created.data["id"]).data["items"]
        assert [r["spec"]["port"] for r in revisions] == ["8080", "80"], kind
    # an inline literal too
    graphql = make("graphql", client, auth("port-literal"))
    assert isinstance(graphql, GraphQLClient)
    result = graphql.execute(
        'mutation { createContainer(input: {name: "lit", image: "nginx:1", port: 81}) { port } }'
    )
    assert result == {"data": {"createContainer": {"port": "81"}}}


@pytest.mark.parametrize("port", [True, "eighty", 70000, [80]])
def test_a_bad_port_is_refused_alike(client: TestClient, auth: Header, port: object) -> None:
    outcomes = {
        kind: make(kind, client, auth(f"bad-port-{kind}")).create({**HELLO, "port": port})
        for kind in CLIENTS
    }
    assert outcomes["rest"].code == outcomes["graphql"].code == "BAD_USER_INPUT"
    assert outcomes["rest"].fields == outcomes["graphql"].fields
    assert [f["field"] for f in outcomes["rest"].fields] == ["port"]


@pytest.mark.parametrize(
    "body", [b"{not json", b"[1, 2", b"", b'"a string"', b"42", b"[1]"], ids=repr
)
def test_malformed_json_gets_the_same_problem_from_both(
    client: TestClient, auth: Header, body: bytes
) -> None:
    headers = {**auth("alice"), "Content-Type": "application/json"}
    rest = client.post("/v1/containers", content=body, headers=headers)
    graphql = client.post("/graphql", content=body, headers=headers)
    for response in (rest, graphql):
        assert response.status_code in (400, 422), response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert graphql.status_code == 400 and graphql.json()["code"] == "MALFORMED_JSON"
    assert [e["field"] for e in graphql.json()["errors"]] == ["body"]
    if rest.status_code == 400:  # not JSON at all: the very same answer
        strip = lambda r: {  # noqa: E731
            k: v for k, v in r.json().items() if k not in ("instance", "requestId")
        }
        assert strip(graphql) == strip(rest)
