"""Keyset (cursor) paging of the container list, alongside page numbers, over both transports."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.deps import AppState
from tests.gql.clients import CLIENTS, ApiClient
from tests.support.bodies import HELLO

Header = Callable[..., dict[str, str]]


def make(kind: str, client: TestClient, headers: dict[str, str]) -> ApiClient:
    return CLIENTS[kind](client, headers)


def create(api: ApiClient, n: int) -> list[str]:
    return [api.create({**HELLO, "name": f"c-{i}"}).data["id"] for i in range(n)]


def walk(api: ApiClient, *, rows: int, all: bool = False) -> tuple[list[str], list[int]]:
    """Every id by following nextCursor from page 1, and the page number each page reported."""
    ids: list[str] = []
    pages: list[int] = []
    after = None
    while True:
        data = api.list(rows_per_page=rows, all=all, after=after).data
        ids += [item["id"] for item in data["items"]]
        pages.append(data["page"])
        after = data["nextCursor"]
        if after is None:
            return ids, pages


def same_moment(state: AppState, ids: list[str]) -> None:
    """Give the containers of ``ids`` the oldest creation time of all (equal timestamps)."""
    with state.ctx.engine.begin() as connection:
        first = sa.text("SELECT min(date_created) FROM containers")
        moment = connection.execute(first).scalar_one()
        update = sa.text("UPDATE containers SET date_created = :m WHERE id IN :ids")
        connection.execute(
            update.bindparams(sa.bindparam("ids", expanding=True)), {"m": moment, "ids": ids}
        )


@pytest.mark.parametrize("kind", CLIENTS)
def test_cursor_walk_matches_page_numbers(kind: str, client: TestClient, auth: Header) -> None:
    api = make(kind, client, auth("alice"))
    created = create(api, 7)
    create(make(kind, client, auth("bob")), 2)  # not alice's: never in her list
    pages_by_number = [api.list(page=page, rows_per_page=3).data for page in (1, 2, 3)]
    by_number = [item["id"] for data in pages_by_number for item in data["items"]]
    assert by_number == list(reversed(created))
    ids, pages = walk(api, rows=3)
    assert ids == by_number
    assert pages == [1, 2, 3]
    first = api.list(rows_per_page=3).data
    assert first["total"] == 7 and first["nextCursor"]
    assert api.list(rows_per_page=7).data["nextCursor"] is None  # exactly one full page
    admin = make(kind, client, auth("root", "ADMIN"))
    everyone, _ = walk(admin, rows=4, all=True)
    assert len(everyone) == 9 and set(created) <= set(everyone)


@pytest.mark.parametrize("kind", CLIENTS)
def test_cursor_orders_equal_timestamps_by_id_and_skips_deleted(
    kind: str, client: TestClient, auth: Header, state: AppState
) -> None:
    api = make(kind, client, auth("alice"))
    created = create(api, 6)
    same_moment(state, created)  # ties broken by id
    api.delete(created[2])
    ids, _ = walk(api, rows=2)
    expected = sorted(set(created) - {created[2]}, reverse=True)
    assert ids == expected
    assert [i["id"] for i in api.list(rows_per_page=10).data["items"]] == expected


@pytest.mark.parametrize("kind", CLIENTS)
def test_every_page_by_number_from_either_end(
    kind: str, client: TestClient, auth: Header, state: AppState
) -> None:
    # A page past the middle is looked up from the oldest row: the pages must still be exactly
    # the newest-first slices, ties by id, deleted rows left out, and nothing past the end.
    api = make(kind, client, auth("alice"))
    created = create(api, 8)
    same_moment(state, created[3:5])
    api.delete(created[6])
    newest_first = [i["id"] for i in api.list(rows_per_page=100).data["items"]]
    assert sorted(newest_first) == sorted(set(created) - {created[6]})
    for rows in range(1, 9):
        pages = -(-len(newest_first) // rows)
        for page in range(1, pages + 2):
            data = api.list(page=page, rows_per_page=rows).data
            expected = newest_first[(page - 1) * rows : page * rows]
            assert [i["id"] for i in data["items"]] == expected, (rows, page)
            assert data["total"] == len(newest_first)
            assert (data["nextCursor"] is not None) == (page < pages), (rows, page)
            if data["nextCursor"]:  # the cursor continues where the number left off
                following = api.list(rows_per_page=rows, after=data["nextCursor"]).data
                nxt = newest_first[page * rows : (page + 1) * rows]
                assert [i["id"] for i in following["items"]] == nxt, (rows, page)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    "cursor",
    [
        "nope!",
        _b64("not json"),
        _b64(json.dumps({"a": 1})),
        _b64(json.dumps(["2026-01-01T00:00:00", "a5f0a1e2-0000-4000-8000-000000000000", 2])),
        _b64(json.dumps(["2026-01-01T00:00:00+00:00", "not-a-uuid", 2])),
        _b64(json.dumps(["2026-01-01T00:00:00+00:00", "a5f0a1e2-0000-4000-8000-000000000000"])),
        _b64(json.dumps(["2026-01-01T00:00:00+00:00", "a5f0a1e2-0000-4000-8000-000000000000", 0])),
        _b64(json.dumps([1, 2, 3])),
        _b64(
            json.dumps(["2026-01-01T00:00:00+00:00", "a5f0a1e2-0000-4000-8000-000000000000", 2**40])
        ),
    ],
)
def test_invalid_cursor_is_422_naming_after(
    kind: str, cursor: str, client: TestClient, auth: Header
) -> None:
    outcome = make(kind, client, auth("alice")).list(after=cursor)
    assert outcome.code == "BAD_USER_INPUT"
    assert [f["field"] for f in outcome.fields] == ["after"]


def test_rest_invalid_cursor_problem_and_page_with_after(client: TestClient, auth: Header) -> None:
    bad = client.get("/v1/containers?after=nope", headers=auth("alice"))
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert bad.json()["errors"][0]["field"] == "after"
    api = make("rest", client, auth("alice"))
    create(api, 2)
    cursor = api.list(rows_per_page=1).data["nextCursor"]
    both = client.get(f"/v1/containers?page=2&after={cursor}", headers=auth("alice"))
    assert both.status_code == 422
    assert both.json()["errors"][0]["field"] == "page"
    # a non-admin still may not list everyone's, cursor or not
    refused = client.get(f"/v1/containers?all=true&after={cursor}", headers=auth("alice"))
    assert refused.status_code == 403


@pytest.mark.parametrize("all_users", [False, True])
def test_list_reads_from_the_partial_indexes(
    all_users: bool, client: TestClient, auth: Header, state: AppState
) -> None:
    """Every statement of a list (page, count, by number or cursor) avoids sorting the table."""
    engine = state.ctx.engine
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL picks plans by statistics; the bench measures them at 100k rows")
    api = make("rest", client, auth("root", "ADMIN"))
    create(api, 3)
    statements: list[tuple[str, object]] = []

    # The list runs its compiled statements on the DBAPI cursor (no SQLAlchemy execute events):
    # record what SQLite itself is given, on connections opened from here on.
    def trace(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.set_trace_callback(lambda sql: statements.append((sql, ())))

    engine.dispose()
    sa.event.listen(engine, "connect", trace)
    try:
        cursor = api.list(rows_per_page=1, all=all_users).data["nextCursor"]
        api.list(rows_per_page=1, all=all_users, after=cursor)
    finally:
        sa.event.remove(engine, "connect", trace)
        engine.dispose()
    lists = [(s, p) for s, p in statements if "FROM containers" in s]
    assert len(lists) == 4
    with engine.connect() as connection:
        for statement, parameters in lists:
            plan = str(
                connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            )
            assert "INDEX" in plan, (statement, plan)
            if "IN (" in statement:
                continue  # the page's rows by primary key; sorting those few is fine
            assert "TEMP B-TREE" not in plan, (statement, plan)
            assert "COVERING INDEX" in plan, (statement, plan)  # never reads the table rows
            if "ORDER BY" in statement:
                assert "ix_containers_live_" in plan, (statement, plan)


@pytest.mark.parametrize("kind", CLIENTS)
def test_list_shows_a_change_at_once_and_matches_the_single_get(
    kind: str, client: TestClient, auth: Header
) -> None:
    """List items come from a cache of views keyed by the whole row: a changed row is listed
    changed on the very next request, exactly as ``GET /v1/containers/{id}`` shows it."""
    api = make(kind, client, auth("alice"))
    (container_id,) = create(api, 1)
    before = api.list().data["items"][0]
    assert before == api.get(container_id).data
    updated = api.update(container_id, {**HELLO, "name": "c-0", "env": {"A": "1"}}).data
    after = api.list().data["items"][0]
    assert after["env"] == {"A": "1"} and after["revision"] == before["revision"] + 1
    assert after == api.get(container_id).data == updated
