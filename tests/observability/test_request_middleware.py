"""``app.middleware.RequestMiddleware`` on a small Starlette app: the request id, the metrics and
the body limit behave as the three middlewares it replaced did (asgi-correlation-id's, the
metrics one, the body-limit one)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from app.middleware import RequestMiddleware
from app.observability.logs import current_request_id
from app.observability.metrics import Metrics

LIMIT = 100
HEX32 = re.compile(r"[0-9a-f]{32}")


async def echo(request: Request) -> JSONResponse:
    """What the app sees: its request id header(s) and the context variable."""
    seen = [value for name, value in request.headers.items() if name == "x-request-id"]
    return JSONResponse(
        {"headers": seen, "context": current_request_id()}, headers={"X-Other": "1"}
    )


async def upload(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


async def events(_request: Request) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream")


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(str(current_request_id()))
    await websocket.receive_text()
    await websocket.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(metrics: Metrics) -> TestClient:
    app = Starlette(
        routes=[
            Route("/items/{id}", echo),
            Route("/upload", upload, methods=["POST"]),
            Route("/events", events),
            WebSocketRoute("/ws", socket),
        ]
    )
    app.add_middleware(RequestMiddleware, metrics=metrics, body_limit=LIMIT)
    return TestClient(app)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_request_id_made_up_kept_or_replaced(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    made = client.get("/items/1")
    request_id = made.headers["x-request-id"]
    assert HEX32.fullmatch(request_id)
    assert made.json() == {"headers": [request_id], "context": request_id}
    assert list(made.headers.keys())[-1] == "x-request-id"  # appended last, after the app's

    kept = client.get("/items/1", headers={"X-Request-ID": "trace.42"})
    assert kept.headers["x-request-id"] == "trace.42"
    assert kept.json() == {"headers": ["trace.42"], "context": "trace.42"}

    with caplog.at_level(logging.WARNING, logger="asgi_correlation_id"):
        refused = client.get(
            "/items/1", headers=[("X-Request-ID", "a b"), ("X-Request-ID", "second")]
        )
    fresh = refused.headers["x-request-id"]
    assert HEX32.fullmatch(fresh)
    assert refused.json() == {"headers": [fresh], "context": fresh}  # one header, replaced
    assert [r.getMessage() for r in caplog.records if r.name == "asgi_correlation_id"] == [
        f"Generated new request ID ({fresh}), since request header value failed validation"
    ]

    empty = client.get("/items/1", headers={"X-Request-ID": ""})
    assert HEX32.fullmatch(empty.headers["x-request-id"])


def test_requests_counted_by_template_and_timed(client: TestClient, metrics: Metrics) -> None:
    client.get("/items/1")
    client.get("/items/2")
    client.get("/nowhere")
    assert (
        sample(
            metrics, "dockyard_http_requests_total", route="/items/{id}", method="GET", status="200"
        )
        == 2
    )
    assert (
        sample(
            metrics, "dockyard_http_requests_total", route="unmatched", method="GET", status="404"
        )
        == 1
    )
    assert (
        sample(
            metrics,
            "dockyard_http_request_duration_seconds_count",
            route="/items/{id}",
            method="GET",
        )
        == 2
    )


def test_event_streams_are_counted_open_not_timed(client: TestClient, metrics: Metrics) -> None:
    with client.stream("GET", "/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert HEX32.fullmatch(response.headers["x-request-id"])
        assert b"data: one" in response.read()
    assert sample(metrics, "dockyard_open_connections", kind="sse") == 0
    assert (
        sample(metrics, "dockyard_http_requests_total", route="/events", method="GET", status="200")
        == 1
    )
    assert (
        sample(
            metrics, "dockyard_http_request_duration_seconds_count", route="/events", method="GET"
        )
        is None
    )


def test_websockets_counted_open_with_a_request_id(client: TestClient, metrics: Metrics) -> None:
    with client.websocket_connect("/ws", headers={"X-Request-ID": "ws.1"}) as ws:
        assert ws.receive_text() == "ws.1"
        assert sample(metrics, "dockyard_open_connections", kind="websocket") == 1
        ws.send_text("bye")
    assert sample(metrics, "dockyard_open_connections", kind="websocket") == 0


def test_bodies_over_the_limit(client: TestClient, metrics: Metrics) -> None:
    assert client.post("/upload", content=b"x" * LIMIT).text == str(LIMIT)
    declared = client.post("/upload", content=b"x" * (LIMIT + 1))
    assert declared.status_code == 413
    assert declared.headers["content-type"] == "application/problem+json"
    assert HEX32.fullmatch(declared.headers["x-request-id"])
    assert declared.json()["code"] == "PAYLOAD_TOO_LARGE"

    def chunks() -> bytes:
        yield b"x" * 60
        yield b"x" * 60

    streamed = client.post("/upload", content=chunks())
    assert streamed.status_code == 413
    assert streamed.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert (
        sample(
            metrics, "dockyard_http_requests_total", route="/upload", method="POST", status="413"
        )
        == 1
    )  # refused while the app read it: the route is known
    assert (
        sample(
            metrics, "dockyard_http_requests_total", route="unmatched", method="POST", status="413"
        )
        == 1
    )  # refused before routing
