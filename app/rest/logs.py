"""``GET /v1/containers/{id}/logs``: a container's output as a server-sent event stream.

Authorization runs before the stream starts, so 401/403/404 are ordinary problem+json answers.
Each line is an event whose id (``<ns>-<k>``, see ``app.streams``) lets a reconnecting client
resume with ``Last-Event-ID``; ``: keep-alive`` comments keep idle streams open through proxies;
``event: dropped`` tells a slow reader how many lines it lost; ``event: end`` closes the stream
(backlog done without ``follow``, or the container was deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentPrincipal, app_state
from app.domain.errors import FieldError, ValidationFailed
from app.rest import problems
from app.services import containers as svc
from app.services.streams import LogChunk, LogEvent

router = APIRouter(prefix="/v1")
log = logging.getLogger(__name__)

MAX_TAIL = 10_000
_END = "event: end\ndata: {}\n\n"
_KEEP_ALIVE = ": keep-alive\n\n"
# Sent when the token that opened the stream expires; the stream then ends. The client
# reconnects with a fresh token and Last-Event-ID, and continues after its last line.
REAUTHENTICATE = (
    'event: reauthenticate\ndata: {"reason":"token expired: reconnect with a fresh token '
    'and Last-Event-ID"}\n\n'
)
_closing: set[asyncio.Task[None]] = set()


_SINCE_HELP = "must be RFC 3339 (2024-05-01T12:00:00Z) or whole seconds ago, e.g. 60"
_SECONDS = re.compile(r"[0-9]{1,30}")  # ASCII digits only: "²" and "٣" are no numbers here


def parse_since(value: str | None, *, now: datetime | None = None) -> datetime | None:
    """RFC 3339 (``2024-05-01T12:00:00Z``) or a whole number of seconds ago; more seconds than
    since 1970 (``since=99999999999999``) mean "from the start"."""
    if value is None or value == "":
        return None
    now = now or datetime.now(UTC)
    if _SECONDS.fullmatch(value):
        epoch = datetime.fromtimestamp(0, UTC)
        try:
            return max(epoch, now - timedelta(seconds=int(value)))
        except OverflowError:
            return epoch
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationFailed([FieldError("since", _SINCE_HELP)]) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_encode_json = json.JSONEncoder(ensure_ascii=False).encode


def _json_string(text: str) -> str:
    """JSON of ``text``, UTF-8 kept, and the two Unicode line separators escaped for clients
    that split lines on them (SSE splits on CR and LF only; JSON escapes those)."""
    encoded = _encode_json(text)
    if "\u2028" in encoded or "\u2029" in encoded:
        encoded = encoded.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return encoded


def format_event(event: LogEvent) -> str:
    """One SSE event; computed once per line and process (``LogBatch.rendered``)."""
    if event.dropped:
        return f'event: dropped\ndata: {{"dropped":{event.dropped}}}\n\n'
    revision = "null" if event.revision is None else int(event.revision)
    return (
        f"id: {event.ns}-{event.k}\ndata: "
        f'{{"timestamp":"{event.timestamp_text}","line":{_json_string(event.line)},'
        f'"stream":{_json_string(event.stream)},"revision":{revision}}}\n\n'
    )


async def _read(
    chunks: AsyncGenerator[LogChunk, None], queue: asyncio.Queue[LogChunk | None]
) -> None:
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            await queue.put(chunk)
    await queue.put(None)


async def event_stream(
    chunks: AsyncGenerator[LogChunk, None], *, heartbeat: float, until: float | None = None
) -> AsyncIterator[str]:
    """SSE text of ``chunks``, with keep-alive comments whenever nothing came for ``heartbeat``.

    The chunks are read by a task of their own: when the client goes away, the server cancels
    this generator, and the reader is cancelled in turn, closing the subscription in its own
    task (cleanup that awaits cannot run inside an already-cancelled request scope). The queue
    between them is short on purpose: lines wait in the hub's bounded subscriber queue, where a
    slow client loses the oldest ones, not here.

    At ``until`` (unix time: the token's expiry) the stream ends with ``event: reauthenticate``.
    """
    queue: asyncio.Queue[LogChunk | None] = asyncio.Queue(maxsize=2)
    reader = asyncio.create_task(_read(chunks, queue), name="sse-reader")
    _closing.add(reader)
    reader.add_done_callback(_closing.discard)
    getter: asyncio.Future[LogChunk | None] | None = None
    try:
        while True:
            wait = heartbeat
            if until is not None:
                remaining = until - time.time()
                if remaining <= 0:
                    yield REAUTHENTICATE
                    return
                wait = min(wait, remaining)
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                {getter, reader}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                if reader in done:  # it failed: it puts None when it ends normally
                    if not reader.cancelled() and reader.exception() is not None:
                        log.warning("log stream failed: %s", reader.exception())
                    yield _END
                    return
                if wait == heartbeat:
                    yield _KEEP_ALIVE
                continue
            # Send whatever else is already waiting in the same chunk: one write per burst.
            burst = [getter.result()]
            while burst[-1] is not None and not queue.empty():
                burst.append(queue.get_nowait())
            ended = burst[-1] is None
            text = "".join(chunk.text(format_event) for chunk in burst if chunk is not None)
            if ended:
                yield text + _END
                return
            yield text
    finally:
        # The client went away while we waited: both tasks would otherwise wait forever.
        if getter is not None:
            getter.cancel()
        reader.cancel()


def sse_responses(
    description: str, errors: list[tuple[int, str]]
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses of a server-sent-events route: the stream, or a problem before it."""
    problem = {"application/problem+json": {"schema": {"$ref": problems.PROBLEM_REF}}}
    return {
        200: {
            "description": description,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **{code: {"description": text, "content": problem} for code, text in errors},
    }


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    """An SSE stream as sent: no caching, and no buffering in a proxy in front."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


_LOG_RESPONSES = sse_responses(
    "Server-sent events: `id` + `data` {timestamp, line, stream, revision} per line; "
    "`event: dropped` with {dropped}; `event: end`; `: keep-alive` comments",
    [
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (422, "Invalid input; `errors` names each field"),
        (
            503,
            "This server cannot stream logs (no runtime, no shared bus), or the database "
            "cannot be reached",
        ),
    ],
)


@router.get("/containers/{id}/logs", response_class=StreamingResponse, responses=_LOG_RESPONSES)
async def container_logs(
    id: str,
    request: Request,
    principal: CurrentPrincipal,
    follow: Annotated[bool, Query(description="Keep streaming new lines")] = True,
    tail: Annotated[int, Query(ge=0, le=MAX_TAIL, description="Lines of backlog")] = 100,
    since: Annotated[
        str | None, Query(description="RFC 3339 time, or whole seconds ago (e.g. 60)")
    ] = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event")
    ] = None,
) -> Response:
    state = app_state(request)
    await run_in_threadpool(
        lambda: svc.get_container(ctx=state.ctx, principal=principal, container_id=id)
    )
    since_time = parse_since(since)
    streams = state.streams
    if streams is None:
        return problems.problem(
            503, "UNAVAILABLE", "no runtime configured: this server cannot stream logs"
        )
    chunks = streams.logs(
        id, tail=tail, follow=follow, since=since_time, after=last_event_id or None
    )
    return sse_response(
        event_stream(
            chunks,
            heartbeat=state.settings.sse_heartbeat_seconds,
            until=principal.valid_until,
        )
    )
