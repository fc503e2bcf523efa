"""The API's request body limit (DOCKYARD_MAX_REQUEST_BODY_BYTES): 413 before the body is read
whole, on REST and /graphql, with Content-Length and with chunked bodies; the ingress is not
limited by it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.server import create_app
from app.settings import Settings

LIMIT = 4096
Auth = Callable[..., dict[str, str]]
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def small_app(tmp_path: Path, database_url: str) -> Iterator[FastAPI]:
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, runtime="none", max_request_body_bytes=LIMIT
    )
    application = create_app(settings)
    yield application
    application.state.dockyard.ctx.engine.dispose()


def _chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    while total > 0:
        yield b" " * min(size, total)
        total -= size


def post_containers(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    """The ASGI scope of ``POST /v1/containers`` from 127.0.0.1 with ``headers`` after Host."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/containers",
        "raw_path": b"/v1/containers",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }


@pytest.mark.parametrize("path", ["/v1/containers", "/graphql"])
def test_bodies_over_the_limit_get_413(small_app: FastAPI, auth: Auth, path: str) -> None:
    with TestClient(small_app) as client:
        for headers in ({**auth(), **JSON}, JSON):
            response = client.post(path, content=b" " * (LIMIT + 1), headers=headers)
            assert response.status_code == 413, response.text
            assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
            streamed = client.post(path, content=_chunks(LIMIT * 10), headers=headers)
            # REST authenticates before reading a body without Content-Length at all.
            unread = path.startswith("/v1") and "Authorization" not in headers
            assert streamed.status_code == (401 if unread else 413), streamed.text
        body = b'{"name": "small", "image": "busybox:1.36"}'.ljust(LIMIT)
        if path == "/v1/containers":
            assert client.post(path, content=body, headers=auth()).status_code == 201


async def test_declared_length_over_the_limit_is_refused_unread(small_app: FastAPI) -> None:
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b" " * 1000, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = post_containers((b"content-length", b"50000000"))
    await small_app(scope, receive, send)
    assert reads == 0
    assert sent[0]["status"] == 413


async def test_chunked_body_reading_stops_at_the_limit(small_app: FastAPI, auth: Auth) -> None:
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b" " * 1000, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    token = auth()["Authorization"].encode()
    scope = post_containers((b"authorization", token))
    await small_app(scope, receive, send)
    assert reads == LIMIT // 1000 + 1  # an endless body: read only until it passed the limit
    assert sent[0]["status"] == 413
