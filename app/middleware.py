"""The API's own per-request layer: request id, metrics and the request body limit, in one pure
ASGI middleware (``RequestMiddleware``).

They were three middlewares (``asgi-correlation-id``'s, a metrics one and a body-limit one), each
a coroutine frame and a ``send`` wrapper per request; at a few thousand cached list requests a
second that was a measurable share of the API's CPU (docs/performance.md). Folded here, each
does exactly what it did, in the same order (outermost first):

1. **Request id** (as ``asgi_correlation_id.CorrelationIdMiddleware`` configured by
   ``app.observability``): the client's ``X-Request-ID`` when it is a sane token
   (``valid_request_id``), else a new one (a warning when the client's was refused); the request's
   headers then carry it, the ``correlation_id`` context variable holds it for every log record
   and problem body, and the response gets it as its last header. HTTP and WebSocket.
2. **Metrics**: every HTTP request counted by route template, method and status and timed to the
   end of its response, except event streams, which are counted open instead; open WebSockets.
3. **Body limit** (``app.limits``): a declared ``Content-Length`` over the limit is refused with
   413 before anything is read; a body without one is counted as it streams in and refused as
   soon as it passes the limit.

The library keeps doing what it owns: ``asgi-correlation-id``'s context variable, log filter and
refusal message, ``prometheus-client``'s metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from asgi_correlation_id import correlation_id
from asgi_correlation_id.extensions.sentry import get_sentry_extension
from asgi_correlation_id.middleware import FAILED_VALIDATION_MESSAGE
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.domain.errors import PayloadTooLarge
from app.limits import refuse_too_large
from app.observability.logs import REQUEST_ID_HEADER, new_request_id, valid_request_id
from app.observability.metrics import Metrics, route_template

REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")
log = logging.getLogger("asgi_correlation_id")  # where the library logs its refusals


def _request_id(scope: Scope) -> str:
    """The request's id, written into its headers as the library's ``update_request_header``
    does (the first such header replaced and the others dropped, or one appended)."""
    headers: list[tuple[bytes, bytes]] = list(scope["headers"])
    given = next((value for name, value in headers if name == REQUEST_ID_KEY), None)
    text = given.decode("latin-1") if given is not None else None
    if not text:
        request_id = new_request_id()
    elif not valid_request_id(text):
        request_id = new_request_id()
        log.warning(FAILED_VALIDATION_MESSAGE, request_id)
    else:
        request_id = text
    if request_id != text:
        encoded = request_id.encode("latin-1")
        positions = [i for i, (name, _value) in enumerate(headers) if name == REQUEST_ID_KEY]
        if positions:
            headers[positions[0]] = (REQUEST_ID_KEY, encoded)
            for i in reversed(positions[1:]):
                del headers[i]
        else:
            headers.append((REQUEST_ID_KEY, encoded))
    scope["headers"] = headers
    return request_id


class RequestMiddleware:
    """Request id, metrics and body limit for every API request (see the module)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, body_limit: int) -> None:
        self.app = app
        self.metrics = metrics
        self.body_limit = body_limit
        self._sentry = get_sentry_extension()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            self._identify(scope)
            gauge = self.metrics.open_streams.labels("websocket")
            gauge.inc()
            try:
                await self.app(scope, receive, send)
            finally:
                gauge.dec()
        else:
            await self.app(scope, receive, send)

    def _identify(self, scope: Scope) -> None:
        request_id = _request_id(scope)
        correlation_id.set(request_id)
        self._sentry(request_id)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._identify(scope)
        metrics = self.metrics
        start = time.perf_counter()
        status = 500
        streaming = started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, streaming, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = message.get("headers", ())
                for name, value in headers:
                    if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                        streaming = True
                        metrics.open_streams.labels("sse").inc()
                if request_id := correlation_id.get():
                    message["headers"] = [*headers, (REQUEST_ID_KEY, request_id.encode("latin-1"))]
            await send(message)

        try:
            await self._limited(scope, receive, send_wrapper, lambda: started)
        finally:
            route = route_template(scope)
            method = scope.get("method", "GET")
            metrics.http_requests.labels(route, method, str(status)).inc()
            if streaming:
                metrics.open_streams.labels("sse").dec()
            else:
                metrics.http_latency.labels(route, method).observe(time.perf_counter() - start)

    async def _limited(
        self, scope: Scope, receive: Receive, send: Send, started: Callable[[], bool]
    ) -> None:
        limit = self.body_limit
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await refuse_too_large(send, limit)
                    return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except PayloadTooLarge:
            # Raised while a handler without a DomainError handler read the body.
            if not started():
                await refuse_too_large(send, limit)
