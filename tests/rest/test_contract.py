"""The published REST contract says what the API sends (issue 16): every error status, paging
bounds, required body fields; ``Allow`` on 405 names every method; a database that cannot be
reached is a 503 that says so; GraphQL ``Container.revisions`` is paginated like REST."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.deps import AppState

Auth = Callable[..., dict[str, str]]
OPENAPI = json.loads((Path(__file__).parents[2] / "rest" / "openapi.json").read_text())


def _operation(method: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = OPENAPI["paths"][path][method]
    return operation


@pytest.mark.parametrize(
    ("method", "path", "codes"),
    [
        ("post", "/v1/containers", {"400", "401", "409", "413", "422", "503"}),
        ("put", "/v1/containers/{id}", {"400", "401", "403", "404", "409", "413", "422", "503"}),
        ("post", "/v1/containers/{id}/rollback", {"400", "409", "413", "422", "503"}),
        ("get", "/v1/containers", {"401", "422", "503"}),
        ("get", "/v1/containers/{id}/logs", {"401", "403", "404", "422", "503"}),
    ],
)
def test_documented_error_responses(method: str, path: str, codes: set[str]) -> None:
    responses = _operation(method, path)["responses"]
    assert codes <= set(responses)
    for code in codes:
        schema = responses[code]["content"]["application/problem+json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Problem"}
    problem = OPENAPI["components"]["schemas"]["Problem"]
    assert problem["required"] == ["type", "title", "status", "code", "detail"]


def test_paging_bounds_and_required_fields_are_published() -> None:
    for path in ("/v1/containers", "/v1/containers/{id}/revisions"):
        params = {p["name"]: p["schema"] for p in _operation("get", path)["parameters"]}
        assert (params["page"]["minimum"], params["page"]["maximum"]) == (1, 2**31 - 1)
        assert (params["rowsPerPage"]["minimum"], params["rowsPerPage"]["maximum"]) == (1, 100)
    create = _operation("post", "/v1/containers")["requestBody"]["content"]["application/json"]
    assert create["schema"]["required"] == ["name", "image"]
    rollback = _operation("post", "/v1/containers/{id}/rollback")["requestBody"]
    assert rollback["content"]["application/json"]["schema"]["required"] == ["revisionNumber"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/v1/containers/x", "GET, PUT, DELETE"),
        ("PUT", "/v1/containers", "GET, POST"),
        ("GET", "/v1/containers/x/rollback", "POST"),
        ("DELETE", "/graphql", "GET, POST"),
    ],
)
def test_allow_on_405_lists_every_method(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow


def test_unreachable_database_is_a_503(client: TestClient, auth: Auth, state: AppState) -> None:
    # A real PostgreSQL driver against a port nothing listens on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = sa.create_engine(
        f"postgresql+psycopg://nobody@127.0.0.1:{port}/none", connect_args={"connect_timeout": 2}
    )
    healthy = state.ctx.engine
    state.ctx.engine = down
    try:
        read = client.get("/v1/containers", headers=auth())
        # Once retried 60 times and answered 409 "changed concurrently": a wrong reason.
        write = client.post(
            "/v1/containers", json={"name": "a", "image": "busybox:1.36"}, headers=auth()
        )
    finally:
        state.ctx.engine = healthy
        down.dispose()
    for response in (read, write):
        assert response.status_code == 503
        assert response.json()["code"] == "UNAVAILABLE"
        assert response.headers["retry-after"] == "1"
    assert client.get("/v1/containers", headers=auth()).status_code == 200


def test_graphql_revisions_are_paginated(client: TestClient, auth: Auth) -> None:
    created = client.post(
        "/v1/containers", json={"name": "paged", "image": "busybox:1.36"}, headers=auth()
    ).json()
    for n in range(2, 6):
        client.put(
            f"/v1/containers/{created['id']}", json={"image": f"busybox:1.{n}"}, headers=auth()
        )

    def numbers(arguments: str) -> Any:
        field = f"revisions{arguments} {{ revisionNumber }}"
        query = f'{{ container(id: "{created["id"]}") {{ {field} }} }}'
        body = client.post("/graphql", json={"query": query}, headers=auth()).json()
        if "errors" in body:
            return body["errors"][0]["extensions"]
        return [r["revisionNumber"] for r in body["data"]["container"]["revisions"]]

    assert numbers("") == [5, 4, 3, 2, 1]  # old queries keep working
    assert numbers("(page: 2, rowsPerPage: 2)") == [3, 2]
    assert numbers("(rowsPerPage: 101)")["code"] == "BAD_USER_INPUT"
