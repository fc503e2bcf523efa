"""The /graphql endpoint: authentication, error codes, masking, query-cost guards, batching."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from graphql import get_introspection_query
from strawberry.extensions import AddValidationRules

from app.deps import AppState
from app.domain.principal import Principal
from app.gql.schema import DEPTH_LIMIT, schema
from app.server import create_app
from app.services import containers as svc
from app.settings import Settings
from tests.support.bodies import HELLO

Header = Callable[..., dict[str, str]]


def post(
    client: TestClient, query: str, headers: dict[str, str] | None = None, **variables: Any
) -> dict[str, Any]:
    response = client.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers or {}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def codes(result: dict[str, Any]) -> list[str | None]:
    return [error.get("extensions", {}).get("code") for error in result.get("errors", [])]


def test_viewer_is_the_token_subject(client: TestClient, auth: Header) -> None:
    result = post(client, "{ viewer { subject roles } }", auth("alice", ["ADMIN"]))
    assert result == {"data": {"viewer": {"subject": "alice", "roles": ["ADMIN"]}}}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic YWxpY2U6cHc="}],
    ids=["missing", "invalid", "not-bearer"],
)
def test_operations_without_a_valid_token_are_unauthenticated(
    client: TestClient, headers: dict[str, str]
) -> None:
    result = post(client, "{ viewer { subject } }", headers)
    assert result["data"] is None
    assert codes(result) == ["UNAUTHENTICATED"]
    assert result["errors"][0]["message"].startswith("invalid_token")


def test_introspection_and_graphiql_need_no_token(client: TestClient) -> None:
    result = post(client, get_introspection_query(descriptions=True))
    assert "errors" not in result
    assert result["data"]["__schema"]["queryType"]["name"] == "Query"
    page = client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()


def test_queries_over_get(client: TestClient, auth: Header) -> None:
    response = client.get(
        "/graphql", params={"query": "{ viewer { subject } }"}, headers=auth("bob")
    )
    assert response.json() == {"data": {"viewer": {"subject": "bob"}}}
    refused = client.get(
        "/graphql",
        params={"query": 'mutation { deleteContainer(id: "x") }'},
        headers=auth("bob"),
    )
    assert refused.status_code == 400  # mutations only over POST


def test_bad_user_input_names_the_fields(client: TestClient, auth: Header) -> None:
    result = post(
        client,
        "mutation($input: CreateContainerInput!) { createContainer(input: $input) { id } }",
        auth(),
        input={"name": "web", "image": "nginx", "ram": "lots"},
    )
    (error,) = result["errors"]
    assert error["extensions"] == {
        "code": "BAD_USER_INPUT",
        "fields": [
            {"field": "image", "message": "must include a tag, e.g. nginx:1.27"},
            {
                "field": "ram",
                "message": "'lots' is not a Kubernetes quantity; use e.g. 512Mi, 2Gi or 1G",
            },
        ],
    }
    assert error["path"] == ["createContainer"]


def test_a_rest_body_is_a_valid_input_unchanged(client: TestClient, auth: Header) -> None:
    body = {**HELLO, "command": None, "arguments": None, "desiredGPUs": None}
    result = post(
        client,
        "mutation($input: CreateContainerInput!) { createContainer(input: $input) "
        "{ name env port cpu command desiredGPUs status } }",
        auth(),
        input=body,
    )
    assert result["data"]["createContainer"] == {
        "name": "hello-world",
        "env": {"FOO": "bar"},
        "port": "80",
        "cpu": 1.0,
        "command": None,
        "desiredGPUs": [],
        "status": "deploying",
    }


def test_unexpected_errors_are_masked(
    client: TestClient, auth: Header, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_kwargs: Any) -> None:
        raise RuntimeError("password=hunter2 at db.internal")

    monkeypatch.setattr(svc, "get_container", broken)
    result = post(client, '{ container(id: "x") { id } }', auth())
    assert result["errors"][0]["message"] == "internal error; it has been logged"
    assert "hunter2" not in str(result)
    assert "extensions" not in result["errors"][0]


def test_graphql_errors_are_not_masked(client: TestClient, auth: Header) -> None:
    result = post(client, "{ viewer { nope } }", auth())
    assert "Cannot query field 'nope'" in result["errors"][0]["message"]


def test_five_hundred_aliases_are_refused(client: TestClient, auth: Header) -> None:
    many = " ".join(f"a{i}: viewer {{ subject }}" for i in range(500))
    result = post(client, f"{{ {many} }}", auth())
    assert result.get("data") is None
    assert result["errors"]


def test_alias_limit(client: TestClient, auth: Header) -> None:
    many = " ".join(f"a{i}: viewer {{ subject }}" for i in range(16))
    result = post(client, f"{{ {many} }}", auth())
    assert result["data"] is None
    assert "aliases" in result["errors"][0]["message"]
    few = " ".join(f"a{i}: viewer {{ subject }}" for i in range(15))
    assert "errors" not in post(client, f"{{ {few} }}", auth())


def test_depth_limit_is_installed(client: TestClient, auth: Header) -> None:
    # Today's schema has no cycles (Revision does not point back to Container), so no query can
    # reach the limit; the guard is there for the day one appears. Introspection is exempt from
    # it by design and bounded by the token limit instead.
    # The limiter's rule is built once (so the validation cache can key on it) and added by
    # an AddValidationRules extension on every operation.
    assert DEPTH_LIMIT.validation_rules
    guards = [ext for ext in schema.extensions if isinstance(ext, functools.partial)]
    assert any(
        guard.func is AddValidationRules and DEPTH_LIMIT.validation_rules[0] in guard.args[0]
        for guard in guards
    )
    deepest = "{ containers { items { revisions { spec } } } }"
    assert "errors" not in post(client, deepest, auth())


def test_token_limit(client: TestClient, auth: Header) -> None:
    fields = " ".join(["subject"] * 2500)
    result = post(client, f"{{ viewer {{ {fields} }} }}", auth())
    assert result["data"] is None
    assert "token" in result["errors"][0]["message"].lower()


@contextmanager
def counting_statements(state: AppState) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(state.ctx.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sa.event.remove(state.ctx.engine, "before_cursor_execute", count)


def test_revisions_of_many_containers_take_constant_statements(
    client: TestClient, auth: Header, state: AppState
) -> None:
    principal = Principal(subject="alice")
    for number in range(50):
        created = svc.create_container(
            ctx=state.ctx, principal=principal, data={"name": f"c{number}", "image": "nginx:1"}
        )
        svc.update_container(
            ctx=state.ctx, principal=principal, container_id=created.id, data={"gpu": 0}
        )
    query = """query($rows: Int!) {
        containers(rowsPerPage: $rows) { items { id revisions { revisionNumber image } } }
    }"""
    counts = {}
    for rows in (1, 50):
        with counting_statements(state) as statements:
            result = post(client, query, auth(), rows=rows)
        items = result["data"]["containers"]["items"]
        assert len(items) == rows
        assert all([r["revisionNumber"] for r in item["revisions"]] == [2, 1] for item in items)
        counts[rows] = len(statements)
    assert counts[50] == counts[1] <= 4, counts


def test_revisions_of_other_users_containers_are_not_leaked(
    client: TestClient, auth: Header, state: AppState
) -> None:
    svc.create_container(
        ctx=state.ctx, principal=Principal(subject="alice"), data={"name": "a", "image": "x:1"}
    )
    admin = post(
        client,
        "{ containers(all: true) { items { revisions { revisionNumber } } } }",
        auth("root", ["ADMIN"]),
    )
    assert admin["data"]["containers"]["items"] == [{"revisions": [{"revisionNumber": 1}]}]


def test_cors_allow_list(settings: Settings) -> None:
    settings.cors_origins = ["https://app.example.com"]
    with TestClient(create_app(settings)) as client:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        allowed = client.options(
            "/graphql", headers={"Origin": "https://app.example.com", **preflight}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        refused = client.options("/graphql", headers={"Origin": "https://evil.test", **preflight})
        assert "access-control-allow-origin" not in refused.headers


def test_variables_of_the_wrong_type_are_bad_user_input(client: TestClient, auth: Header) -> None:
    result = post(
        client,
        "mutation($input: CreateContainerInput!) { createContainer(input: $input) { id } }",
        auth(),
        input={"name": "web", "image": "nginx:1", "cpu": "one"},  # (port 80 is fine: Port)
    )
    (error,) = result["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert [f["field"] for f in error["extensions"]["fields"]] == ["cpu"]
    unknown = post(
        client,
        "mutation($input: CreateContainerInput!) { createContainer(input: $input) { id } }",
        auth(),
        input={"name": "web", "image": "nginx:1", "colour": "blue"},
    )
    assert codes(unknown) == ["BAD_USER_INPUT"]
