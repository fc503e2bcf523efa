"""``GET /v1/containers`` query parameters, validated in one step (``app.rest.routes.ListQuery``):
the answers FastAPI gave when it validated them one by one, recorded before the change."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

Header = Callable[..., dict[str, str]]
NOT_INT = "input should be a valid integer, unable to parse string as an integer"
NOT_BOOL = "input should be a valid boolean, unable to interpret input"


@pytest.fixture
def alice(client: TestClient, auth: Header) -> dict[str, str]:
    headers = auth("alice")
    for n in range(3):
        client.post(
            "/v1/containers", json={"name": f"c-{n}", "image": "busybox:1.36"}, headers=headers
        ).raise_for_status()
    return headers


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ("page=abc", [("page", NOT_INT)]),
        ("page=", [("page", NOT_INT)]),
        ("page=\uff11", [("page", NOT_INT)]),  # a full-width digit is no integer
        ("page=1&page=x", [("page", NOT_INT)]),  # the last of repeated values counts
        ("rowsPerPage=1e1", [("rowsPerPage", NOT_INT)]),
        ("all=maybe", [("all", NOT_BOOL)]),
        ("all=", [("all", NOT_BOOL)]),
        (
            "page=abc&rowsPerPage=xyz&all=q",
            [("page", NOT_INT), ("rowsPerPage", NOT_INT), ("all", NOT_BOOL)],
        ),
    ],
)
def test_malformed_parameters_are_422_naming_each(
    client: TestClient, alice: dict[str, str], query: str, errors: list[tuple[str, str]]
) -> None:
    response = client.get(f"/v1/containers?{query}", headers=alice)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"]
    body = response.json()
    assert body == {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "code": "BAD_USER_INPUT",
        "detail": "; ".join(f"{field}: {message}" for field, message in errors),
        "errors": [{"field": field, "message": message} for field, message in errors],
        "requestId": response.headers["x-request-id"],
    }


@pytest.mark.parametrize(
    ("query", "page", "rows", "count"),
    [
        ("", 1, 10, 3),
        ("page=2", 2, 10, 0),
        ("page=x&page=1", 1, 10, 3),
        ("page=1.0", 1, 10, 3),
        ("page=%201", 1, 10, 3),
        ("rowsPerPage=2", 1, 2, 2),
        ("rows_per_page=2", 1, 10, 3),  # only the published name counts
        ("all=off", 1, 10, 3),
        ("search=", 1, 10, 3),
        ("unknown=1", 1, 10, 3),
    ],
)
def test_accepted_parameters(
    client: TestClient, alice: dict[str, str], query: str, page: int, rows: int, count: int
) -> None:
    response = client.get(f"/v1/containers?{query}", headers=alice)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["page"], body["rowsPerPage"], len(body["items"]), body["total"]) == (
        page,
        rows,
        count,
        3,
    )


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("page=0", 422, "page"),
        ("page=99999999999", 422, "page"),
        ("rowsPerPage=101", 422, "rowsPerPage"),
        ("search=" + "x" * 64, 422, "search"),
        ("status=bogus", 422, "status"),
        ("after=zzz", 422, "after"),
        ("all=yes", 403, None),
    ],
)
def test_out_of_range_values_are_refused_by_the_service(
    client: TestClient, alice: dict[str, str], query: str, status: int, field: str | None
) -> None:
    response = client.get(f"/v1/containers?{query}", headers=alice)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["instance"] == "/v1/containers"
    if field is not None:
        assert [error["field"] for error in body["errors"]] == [field]


def test_unauthenticated_comes_before_parameters(client: TestClient) -> None:
    response = client.get("/v1/containers?page=abc")
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHENTICATED"
