"""``GET /v1/containers/{id}/events``: a container's status as a server-sent event stream.

The REST twin of the GraphQL ``containerStatus`` subscription: ``event: status`` with the
container (the ``GET /v1/containers/{id}`` JSON) plus ``phases``, its newest revision's deploy
phases so far, first as it is now and then again after each change, so a watcher sees every
phase (scheduled, imageReady, started, ready, serving or failed) as the reconciler records it.
``event: end`` closes the stream when the container is deleted; ``: keep-alive`` comments keep
idle streams open through proxies; ``event: reauthenticate`` ends it when the token expires.

Authorization runs before the stream starts (401/403/404 are ordinary problem+json answers) and
again at each re-read, through the same service function GraphQL calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentPrincipal, app_state
from app.domain.errors import NotFound
from app.domain.principal import Principal
from app.domain.views import ContainerStatusView
from app.rest.logs import REAUTHENTICATE, sse_response, sse_responses
from app.services import containers as svc
from app.services.context import ServiceContext
from app.services.streams import ContainerStreams, StatusChanges

router = APIRouter(prefix="/v1")
log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How often a server without a streams provider re-reads the container."""
_END = "event: end\ndata: {}\n\n"
_KEEP_ALIVE = ": keep-alive\n\n"


def format_status(view: ContainerStatusView) -> str:
    return f"event: status\ndata: {view.model_dump_json()}\n\n"


async def _signal(changes: StatusChanges, changed: asyncio.Event) -> None:
    try:
        async for _change in changes:
            changed.set()
    finally:
        await changes.aclose()


async def status_stream(
    read: Callable[[], ContainerStatusView],
    first: ContainerStatusView,
    streams: ContainerStreams | None,
    container_id: str,
    *,
    heartbeat: float,
    until: float | None,
) -> AsyncIterator[str]:
    """SSE text: ``first``, then ``read()`` again after each change signal (or every
    ``POLL_SECONDS`` without a provider), sent when it differs from the last one sent; a
    keep-alive comment whenever nothing was sent for ``heartbeat`` seconds.

    The change signals are read by a task of their own that only sets an event: a client going
    away cancels this generator, and the task is cancelled in turn."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    if streams is not None:
        # ``first`` was read before this watch existed: one read once it does, so that a change
        # in between is not lost.
        watcher = asyncio.create_task(
            _signal(streams.status(container_id), changed), name="sse-status-watcher"
        )
        changed.set()
    try:
        yield format_status(first)
        current, sent_at = first, loop.time()
        while True:
            wait = max(0.0, sent_at + heartbeat - loop.time())
            if streams is None:
                wait = min(wait, POLL_SECONDS)
            if until is not None:
                remaining = until - time.time()
                if remaining <= 0:
                    yield REAUTHENTICATE
                    return
                wait = min(wait, remaining)
            signalled = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=wait)
                signalled = True
            if watcher is not None and watcher.done():
                if not watcher.cancelled() and watcher.exception() is not None:
                    log.warning("status stream failed: %s", watcher.exception())
                yield _END
                return
            if signalled or streams is None:
                changed.clear()
                try:
                    latest = await run_in_threadpool(read)
                except NotFound:
                    yield _END
                    return
                if latest != current:
                    current, sent_at = latest, loop.time()
                    yield format_status(latest)
                    continue
            if loop.time() - sent_at >= heartbeat:
                sent_at = loop.time()
                yield _KEEP_ALIVE
    finally:
        if watcher is not None:
            watcher.cancel()


_EVENT_RESPONSES = sse_responses(
    "Server-sent events: `event: status` with the container (as `GET /v1/containers/{id}`) plus "
    "`phases`, its newest revision's deploy phases so far [{phase, at, durationMs, reason}], now "
    "and after each change; `event: end` when the container is deleted; `event: reauthenticate` "
    "when the token expires; `: keep-alive` comments",
    [
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (503, "The database cannot be reached"),
    ],
)


def _reader(
    ctx: ServiceContext, principal: Principal, container_id: str
) -> Callable[[], ContainerStatusView]:
    return lambda: svc.get_container_status(ctx=ctx, principal=principal, container_id=container_id)


@router.get("/containers/{id}/events", response_class=StreamingResponse, responses=_EVENT_RESPONSES)
async def container_events(id: str, request: Request, principal: CurrentPrincipal) -> Response:
    state = app_state(request)
    read = _reader(state.ctx, principal, id)
    first = await run_in_threadpool(read)
    return sse_response(
        status_stream(
            read,
            first,
            state.streams,
            first.id,
            heartbeat=state.settings.sse_heartbeat_seconds,
            until=principal.valid_until,
        )
    )
