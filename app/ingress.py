"""The built-in ingress of the local runtime: ``<slug>.<ingress domain>`` reaches the container.

An ASGI middleware in front of the API. A request whose Host names a container's slug is proxied
to the endpoint of that container's ready revision (as the reconciler last observed it); every
other request goes to the API. Bodies stream both ways, the method and headers pass through, and
``X-Forwarded-*`` tell the container who asked. Traffic moves to a new revision only once it is
ready, and the reconciler keeps the old one running for a drain period after the switch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.services.containers import find_route
from app.services.context import ServiceContext

log = logging.getLogger(__name__)

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
}
SLUG_CACHE_SECONDS = 5.0
BODYLESS = {"GET", "HEAD", "OPTIONS", "DELETE"}

RouteTable = Callable[[], dict[str, str] | None]


def _strip_port(host: str) -> str:
    return host.rsplit(":", 1)[0] if not host.endswith("]") else host


class IngressProxy:
    """Routes container traffic by Host header; everything else falls through to the API."""

    def __init__(self, app: ASGIApp, *, ctx: ServiceContext, routes: RouteTable) -> None:
        self.app = app
        self.ctx = ctx
        self.routes = routes
        self.domain = _strip_port(ctx.ingress_domain.lower())
        self._slugs: dict[str, tuple[float, str | None, str]] = {}
        self._client: httpx.AsyncClient | None = None

    def _slug(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = _strip_port(value.decode("latin-1").lower())
                slug, _, rest = host.partition(".")
                if rest == self.domain and slug:
                    return slug
                return None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        slug = self._slug(scope) if scope["type"] == "http" else None
        if slug is None:
            await self.app(scope, receive, send)
            return
        await self._proxy(slug, scope, receive, send)

    async def _container(self, slug: str, *, fresh: bool = False) -> tuple[str | None, str]:
        cached = self._slugs.get(slug)
        if not fresh and cached is not None and time.monotonic() - cached[0] < SLUG_CACHE_SECONDS:
            return cached[1], cached[2]
        found = await asyncio.to_thread(find_route, ctx=self.ctx, slug=slug)
        container_id, status = found if found is not None else (None, "")
        self._slugs[slug] = (time.monotonic(), container_id, status)
        return container_id, status

    def _endpoint(self, container_id: str) -> str | None:
        table = self.routes()
        return table.get(container_id) if table is not None else None

    async def _proxy(self, slug: str, scope: Scope, receive: Receive, send: Send) -> None:
        container_id, status = await self._container(slug)
        endpoint = self._endpoint(container_id) if container_id is not None else None
        if endpoint is None:
            # Without a route the cached answer may be stale (deleted, or status moved on).
            container_id, status = await self._container(slug, fresh=True)
        if container_id is None:
            await _plain(send, 404, f"no container serves {slug}.{self.domain}\n")
            return
        endpoint = self._endpoint(container_id)
        if endpoint is None and status == "failed":
            # Nothing will heal by waiting: no Retry-After; the status says what to fix.
            await _plain(
                send, 503, "container failed; see its statusReason, fix it and redeploy\n"
            )
            return
        if endpoint is None:
            await _plain(
                send,
                503,
                f"container is {status or 'not ready'}; retry shortly\n",
                retry_after=True,
            )
            return
        request = self._upstream_request(scope, receive, endpoint)
        client = self._client or httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))
        self._client = client
        try:
            response = await client.send(request, stream=True)
        except httpx.ConnectError:
            # The route may have moved to a new revision between lookup and connect; a request
            # without a body can safely go again to the current endpoint.
            retry_endpoint = self._endpoint(container_id)
            if scope["method"] not in BODYLESS or retry_endpoint is None:
                await _plain(
                    send, 502, "the container did not accept the connection\n", retry_after=True
                )
                return
            await asyncio.sleep(0.05)
            try:
                response = await client.send(
                    self._upstream_request(scope, receive, retry_endpoint), stream=True
                )
            except httpx.HTTPError:
                await _plain(
                    send, 502, "the container did not accept the connection\n", retry_after=True
                )
                return
        except httpx.HTTPError as e:
            log.warning("proxying to %s failed: %r", endpoint, e)
            await _plain(send, 502, "the container did not answer\n", retry_after=True)
            return
        try:
            headers = [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in response.headers.multi_items()
                if name.lower() not in HOP_BY_HOP
            ]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    def _upstream_request(self, scope: Scope, receive: Receive, endpoint: str) -> httpx.Request:
        headers: list[tuple[str, str]] = []
        host = ""
        forwarded_for = ""
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name == "host":
                host = value
            if name == "x-forwarded-for":
                forwarded_for = value
                continue
            if name not in HOP_BY_HOP:
                headers.append((name, value))
        client = scope.get("client")
        peer = client[0] if client else ""
        headers.append(("x-forwarded-for", f"{forwarded_for}, {peer}" if forwarded_for else peer))
        headers.append(("x-forwarded-host", host))
        headers.append(("x-forwarded-proto", scope.get("scheme", "http")))
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        url = f"http://{endpoint}{path.decode('latin-1')}" + (
            f"?{query.decode('latin-1')}" if query else ""
        )
        has_body = scope["method"] not in BODYLESS or any(
            n in (b"content-length", b"transfer-encoding") for n, _ in scope["headers"]
        )
        content = _body(receive) if has_body else None
        return httpx.Request(scope["method"], url, headers=headers, content=content)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _plain(send: Send, status: int, text: str, *, retry_after: bool = False) -> None:
    headers: list[Any] = [(b"content-type", b"text/plain; charset=utf-8")]
    if retry_after:
        headers.append((b"retry-after", b"2"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text.encode()})
