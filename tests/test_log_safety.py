"""Logs under hostile input (issue 16): expected GraphQL client errors leave no traceback (they
once logged ~2.7 KB each, unauthenticated ones included), and client text cannot forge lines."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app import logsafe
from app.services import containers as svc

Auth = Callable[..., dict[str, str]]


def _formatted(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)


def test_graphql_client_errors_are_not_logged_with_tracebacks(
    client: TestClient, auth: Auth, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client.post("/graphql", json={"query": "{ containers { total } }"})  # no token
    client.post("/graphql", json={"query": "{ nope }"}, headers=auth())  # validation
    client.post(
        "/graphql",
        json={"query": '{ container(id: "a\\nFORGED") { id } }'},
        headers=auth(),
    )  # NOT_FOUND
    client.post(
        "/graphql",
        json={
            "query": "mutation($i: CreateContainerInput!) { createContainer(input: $i) { id } }",
            "variables": {"i": {"name": "x", "image": "a:1", "env": {"K\nFORGED": "v"}}},
        },
        headers=auth(),
    )  # BAD_USER_INPUT
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "Traceback" not in caplog.text


def test_unexpected_graphql_errors_keep_their_traceback(
    client: TestClient,
    auth: Auth,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(**_kwargs: object) -> None:
        raise RuntimeError("bug\nFORGED LINE")

    monkeypatch.setattr(svc, "list_containers", broken)
    caplog.set_level(logging.INFO)
    response = client.post("/graphql", json={"query": "{ containers { total } }"}, headers=auth())
    assert response.json()["errors"][0]["message"] == "internal error; it has been logged"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    text = _formatted(caplog)
    assert "Traceback" in text and "RuntimeError: bug\\x0aFORGED LINE" in text
    assert "\nFORGED LINE" not in text


def test_log_arguments_are_escaped(caplog: pytest.LogCaptureFixture) -> None:
    logsafe.install()
    caplog.set_level(logging.INFO)
    logging.getLogger("dockyard.test").warning(
        "env key %s, id %r, count %d", "A\nFORGED\x1b[31m\x00", "\r\n", 3
    )
    text = _formatted(caplog)
    assert text == (
        "WARNING dockyard.test env key A\\x0aFORGED\\x1b[31m\\x00, id '\\r\\n', count 3"
    )
