"""Completed list items reused per selection (``app.gql.execution``): the same answers as without
the cache, for every kind of selection, and never a stale or foreign item."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from graphql import parse

from app.gql import types as gql_types
from app.gql.execution import selection_signature
from app.gql.schema import schema

Header = Callable[..., dict[str, str]]
FIELDS = (
    "id name createdBy image cpu ram gpu ephemeralStorage command arguments env port "
    "dateCreated dateUpdated status statusReason urls desiredGPUs revision readyRevision "
    "scaling { minInstances maxInstances concurrency scaleToZeroAfterSeconds } "
    "traffic { revision latest percent } probes"
)


def gql(client: TestClient, headers: dict[str, str], query: str, **variables: Any) -> Any:
    response = client.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def rest_items(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = client.get("/v1/containers", headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


@pytest.fixture
def alice(client: TestClient, auth: Header) -> dict[str, str]:
    headers = auth("alice")
    for name in ("web", "db"):
        created = client.post(
            "/v1/containers",
            json={"name": name, "image": "busybox:1.36", "port": 8080, "env": {"A": name}},
            headers=headers,
        )
        assert created.status_code == 201, created.text
    return headers


def test_repeated_list_answers_the_same_and_reuses_completed_items(
    client: TestClient, alice: dict[str, str]
) -> None:
    query = "{ containers { items { " + FIELDS + " } } }"
    first = gql(client, alice, query)["containers"]["items"]
    second = gql(client, alice, query)["containers"]["items"]
    assert first == second
    # The same JSON as REST's items (the types mirror REST field for field).
    rest = rest_items(client, alice)
    for rest_item, item in zip(rest, first, strict=True):
        traffic = item.pop("traffic")
        assert traffic == [{k: t[k] for k in traffic[0]} for t in rest_item["traffic"]]
        assert {k: rest_item[k] for k in item} == item
    # The listed objects now hold their completed selection.
    ids = {item["id"] for item in rest}
    listed = [obj for _view, obj in gql_types._CONTAINER_OBJECTS.values() if obj.id in ids]
    assert len(listed) == 2 and all(obj.completed_selections for obj in listed)


def test_aliases_and_selection_shape_are_part_of_the_key(
    client: TestClient, alice: dict[str, str]
) -> None:
    plain = gql(client, alice, "{ containers { items { name port } } }")
    aliased = gql(client, alice, "{ containers { items { n: name port } } }")
    fewer = gql(client, alice, "{ containers { items { name } } }")
    typed = gql(client, alice, "{ containers { items { __typename name } } }")
    assert [i["name"] for i in plain["containers"]["items"]] == ["db", "web"]
    assert aliased["containers"]["items"] == [
        {"n": "db", "port": "8080"},
        {"n": "web", "port": "8080"},
    ]
    assert fewer["containers"]["items"] == [{"name": "db"}, {"name": "web"}]
    assert typed["containers"]["items"][0] == {"__typename": "Container", "name": "db"}
    # Asked again after the others: still its own shape.
    assert gql(client, alice, "{ containers { items { name port } } }") == plain


def test_directives_follow_the_variables_of_each_request(
    client: TestClient, alice: dict[str, str]
) -> None:
    query = "query($env: Boolean!) { containers { items { name env @include(if: $env) } } }"
    with_env = gql(client, alice, query, env=True)["containers"]["items"]
    without = gql(client, alice, query, env=False)["containers"]["items"]
    assert with_env == [{"name": "db", "env": {"A": "db"}}, {"name": "web", "env": {"A": "web"}}]
    assert without == [{"name": "db"}, {"name": "web"}]


def test_fields_with_resolvers_still_resolve(client: TestClient, alice: dict[str, str]) -> None:
    query = "{ containers { items { name revisions { revisionNumber } } } }"
    for _ in range(2):
        items = gql(client, alice, query)["containers"]["items"]
        assert items == [
            {"name": "db", "revisions": [{"revisionNumber": 1}]},
            {"name": "web", "revisions": [{"revisionNumber": 1}]},
        ]
    query = "{ containers { items { name revisions { revisionNumber } } } }"
    client.put(
        "/v1/containers/" + rest_items(client, alice)[0]["id"],
        json={"image": "busybox:1.37"},
        headers=alice,
    ).raise_for_status()
    items = gql(client, alice, query)["containers"]["items"]
    assert items[0]["revisions"] == [{"revisionNumber": 2}, {"revisionNumber": 1}]


def test_a_changed_row_is_never_answered_from_the_cache(
    client: TestClient, alice: dict[str, str]
) -> None:
    query = "{ containers { items { name image revision env } } }"
    before = gql(client, alice, query)["containers"]["items"]
    assert before[0] == {"name": "db", "image": "busybox:1.36", "revision": 1, "env": {"A": "db"}}
    db = rest_items(client, alice)[0]["id"]
    client.put(
        f"/v1/containers/{db}", json={"image": "busybox:1.37", "env": {"B": "2"}}, headers=alice
    ).raise_for_status()
    after = gql(client, alice, query)["containers"]["items"]
    assert after[0] == {"name": "db", "image": "busybox:1.37", "revision": 2, "env": {"B": "2"}}
    assert after[1] == before[1]


def test_each_caller_sees_only_their_own_items(
    client: TestClient, alice: dict[str, str], auth: Header
) -> None:
    bob = auth("bob")
    client.post(
        "/v1/containers", json={"name": "bobs", "image": "busybox:1.36"}, headers=bob
    ).raise_for_status()
    query = "{ containers { total items { name createdBy } } }"
    for _ in range(2):
        assert gql(client, alice, query)["containers"] == {
            "total": 2,
            "items": [{"name": "db", "createdBy": "alice"}, {"name": "web", "createdBy": "alice"}],
        }
        assert gql(client, bob, query)["containers"] == {
            "total": 1,
            "items": [{"name": "bobs", "createdBy": "bob"}],
        }


def _item_selection(document: str) -> Any:
    operation = parse(document).definitions[0]
    containers = operation.selection_set.selections[0]  # type: ignore[attr-defined]
    items = containers.selection_set.selections[0]
    return items.selection_set


@pytest.mark.parametrize(
    ("document", "cacheable"),
    [
        ("{ containers { items { name port } } }", True),
        ("{ containers { items { a: name scaling { concurrency } } } }", True),
        ("{ containers { items { __typename traffic { percent } } } }", True),
        ("{ containers { items { name phases { phase } } } }", False),  # a resolver
        ("{ containers { items { revisions(page: 1) { revisionNumber } } } }", False),
        ("query($v: Boolean!) { containers { items { name @skip(if: $v) } } }", False),
        ("{ containers { items { ...F } } } fragment F on Container { name }", False),
        ("{ containers { items { ... on Container { name } } } }", False),
    ],
)
def test_which_selections_are_cached(document: str, cacheable: bool) -> None:
    container_type = schema._schema.type_map["Container"]
    signature = selection_signature(container_type, [_item_selection(document)])  # type: ignore[arg-type]
    assert (signature is not None) is cacheable
