"""The containers list's filters (name search, status), the same over REST and GraphQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

Header = Callable[..., dict[str, str]]
LIST = """query($search: String, $status: ContainerStatus, $rows: Int!) {
  containers(search: $search, status: $status, rowsPerPage: $rows) { total items { name } } }"""


def rest_list(client: TestClient, headers: dict[str, str], **params: Any) -> Any:
    response = client.get("/v1/containers", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["total"], [item["name"] for item in body["items"]]


def gql_list(client: TestClient, headers: dict[str, str], **variables: Any) -> Any:
    body = client.post(
        "/graphql", json={"query": LIST, "variables": {"rows": 10, **variables}}, headers=headers
    ).json()
    assert "errors" not in body, body
    page = body["data"]["containers"]
    return page["total"], [item["name"] for item in page["items"]]


@pytest.fixture
def headers(client: TestClient, auth: Header) -> dict[str, str]:
    alice = auth("alice")
    for name in ("web-a", "web-b", "db"):
        created = client.post(
            "/v1/containers", json={"name": name, "image": "busybox:1.36"}, headers=alice
        )
        assert created.status_code == 201, created.text
    client.post(
        "/v1/containers", json={"name": "web-c", "image": "busybox:1.36"}, headers=auth("bob")
    )
    return alice


@pytest.mark.parametrize("listing", [rest_list, gql_list], ids=["rest", "graphql"])
def test_search_and_status_filter_before_paging(
    client: TestClient, headers: dict[str, str], listing: Any
) -> None:
    assert listing(client, headers, search="web") == (2, ["web-b", "web-a"])
    assert listing(client, headers, search="WEB-A") == (1, ["web-a"])
    assert listing(client, headers, search="%") == (0, [])  # a literal, not a wildcard
    assert listing(client, headers, search="_") == (0, [])  # a literal, not one character
    assert listing(client, headers, search="/") == (0, [])  # the LIKE escape, literal too
    assert listing(client, headers, search="-b") == (1, ["web-b"])
    assert listing(client, headers, status="deploying")[0] == 3  # no runtime: still deploying
    assert listing(client, headers, status="failed") == (0, [])
    assert listing(client, headers, search="db", status="deploying") == (1, ["db"])


def test_bad_filters_name_the_field(client: TestClient, headers: dict[str, str]) -> None:
    bad = client.get("/v1/containers", params={"status": "running"}, headers=headers)
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["status"]
    long = client.get("/v1/containers", params={"search": "x" * 64}, headers=headers)
    assert long.status_code == 422
    assert [e["field"] for e in long.json()["errors"]] == ["search"]

    body = client.post(
        "/graphql",
        json={"query": LIST, "variables": {"rows": 10, "search": "x" * 64}},
        headers=headers,
    ).json()
    error = body["errors"][0]["extensions"]
    assert error["code"] == "BAD_USER_INPUT"
    assert [f["field"] for f in error["fields"]] == ["search"]
    enum = client.post(
        "/graphql",
        json={"query": LIST, "variables": {"rows": 10, "status": "running"}},
        headers=headers,
    ).json()
    assert enum["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
