"""Live logs and status changes of containers, shared by every subscriber of every replica.

Why a hub: an engine log stream per HTTP client would cost one engine connection and one reader
thread per client and would multiply with the number of replicas. Instead the replica whose
reconciler leads (and has a runtime) opens exactly one upstream ``runtime.logs(follow=True)`` per
revision present of each container that somebody watches (one, except during an update's drain,
when the old and the new revision both print: a new revision is read from its first line), and
republishes their lines on the bus
(``dockyard.logs.<id>``). Every replica subscribes to that channel once per watched container and
copies each line into bounded per-subscriber queues, so a slow client loses its own oldest lines
(and is told how many) but never stalls the others.

Who watches what is itself told on the bus (``dockyard.logs-demand``): each follower announces
``join``, a ``heartbeat`` every few seconds and ``leave``; the pump manager forgets subscribers
that missed three heartbeats (a crashed replica) and closes a container's upstream when the last
one is gone. Every process tracks demand, so a replica that becomes leader starts pumping at once.

A subscriber subscribes to the log channel *before* reading its backlog straight from the
runtime (when its process has one), then drops the live lines it already got from the backlog.
Both sides agree on which lines are the same because ids are deterministic: ``<ns>-<k>``, the
line's timestamp and how many earlier lines share it (see ``Numberer``).

Exact ids: an id is exact when its reader saw the first line of its timestamp. Tail reads (a
backlog, a pump starting on a long log) may begin inside a timestamp; the backlog drops those
lines when it read enough others, a pump keeps them. So when one timestamp holds more lines
than a tail read covers, the ids of that timestamp's lines can differ between readers:
resuming or deduplicating inside that timestamp may repeat or skip some of its lines. Engines
stamp with nanoseconds (Docker) or seconds (Podman 4's API): only a container printing more
than a few hundred lines within one timestamp is concerned, and only at the timestamp a stream
started in.
A pump used to skip such lines instead, which held a new subscriber of a chatty container on
Podman for up to a second and lost that second's lines for everybody.

Throughput: lines travel in batches from end to end. The runtime hands over what one read of
its stream returned, the pump publishes one bus message per batch, each process decodes a
message once into a ``LogBatch`` shared by all its subscribers, and a transport renders a batch
once for all of them (``LogBatch.rendered``). A subscriber's queue holds references to shared
batches, so its cost is per batch, not per line.

Status: writes (services) and observations (reconciler) are published on ``dockyard.changes``;
each process relays them to its status subscribers and ends the log streams of deleted
containers. Without a leader, subscribers still get their backlog and status changes, and live
lines resume as soon as a replica is elected (it learns the demand from the next heartbeats).

Bus outages: the bus re-subscribes by itself once its backend is back (``app.bus``) and then
hands every subscription ``RECONNECTED``: status watchers re-read their container once (changes
published meanwhile are lost, the current state is not), each replica re-announces its log
subscribers so the leader's pumps resume, and lines published meanwhile are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from app.bus import CHANGES, LOGS_DEMAND, RECONNECTED, Bus, logs_channel
from app.domain.logtime import NS, to_datetime, to_ns
from app.runtime.base import LogLine, Runtime, RuntimeAdapterError
from app.services.streams import Key, LogBatch, LogChunk, LogEvent

log = logging.getLogger(__name__)

MAX_RESUME_LINES = 10_000
"""At most this many lines are replayed to a client resuming with ``Last-Event-ID``."""
MISSED_HEARTBEATS = 3
"""A subscriber silent for this many heartbeat rounds of this process is forgotten (its replica
died). Rounds, not seconds: after this process's event loop stalled (CPU starvation, a long
synchronous step) the round that ends the stall comes before the heartbeats that arrived
meanwhile are read, so a stall of any length counts as one round, never as a silent replica."""
PUMP_LOOKBACK_NS = 2 * NS
"""A new pump starts this far back, so lines written while subscribers read their backlog are
never missed (they deduplicate by id)."""

READ_ATTEMPTS = 2
READ_RETRY_SECONDS = 0.1
BACKLOG_EXTRA_LINES = 200
"""A tail read asks this many lines more than wanted (see ``LogHub._last_lines``)."""
PUMP_TAIL_LINES = 2000
"""A new pump reads at most this many lines back (then drops those older than its look-back).
Never the whole log: engines scan it for ``since``, and a chatty container's log is huge."""
REVISION_POLL_SECONDS = 0.5
"""How often a pump looks for revisions that appeared or went (an update, a retirement)."""
PUBLISH_BATCH_LINES = 2000
"""At most this many lines travel in one bus message."""
PENDING_LINES_LIMIT = 50_000
"""A pump stops reading while this many lines wait for the bus (backpressure, bounded memory)."""
ROW_OVERHEAD_BYTES = 48
"""Bytes a line costs in a bus message besides its text (``[ns,k,"…","stdout",12],``)."""

T = TypeVar("T")
Row = list[Any]
"""A line on the bus: ``[ns, k, line, stream, revision]``."""


@contextlib.asynccontextmanager
async def _closing(iterator: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an async generator when done with it (releases engine streams at once)."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def event_key(event_id: str) -> Key | None:
    """``(ns, k)`` of an event id, or None when it is not one of ours."""
    ns, sep, k = event_id.partition("-")
    if not sep or not ns.isdigit() or not k.isdigit():
        return None
    return int(ns), int(k)


class Numberer:
    """Gives each line its id ``<ns>-<k>``: k counts the earlier lines with the same timestamp.

    The ids match those of any other reader as long as the read starts at (or before) the first
    line of a timestamp; readers that may start in the middle of one drop its lines
    (``_after_first_timestamp``).
    """

    def __init__(self) -> None:
        self._previous = -1
        self._k = 0

    def number(self, lines: list[LogLine]) -> list[LogEvent]:
        events = []
        previous, k = self._previous, self._k
        for ns, text, stream, revision in lines:
            if ns == previous:
                k += 1
            else:
                previous, k = ns, 0
            events.append(LogEvent(ns, k, text, stream, revision))
        self._previous, self._k = previous, k
        return events


async def numbered(batches: AsyncIterator[list[LogLine]]) -> AsyncIterator[list[LogEvent]]:
    """``Numberer`` over a runtime's batches (closing them when done)."""
    numberer = Numberer()
    async with _closing(batches):
        async for batch in batches:
            yield numberer.number(batch)


def _after_first_timestamp(events: list[LogEvent]) -> list[LogEvent]:
    """The events after those sharing the first one's timestamp (whose ids may be off)."""
    if not events:
        return events
    first = events[0].ns
    for index, event in enumerate(events):
        if event.ns != first:
            return events[index:]
    return []


def _whole_second(ns: int) -> int:
    return ns - ns % NS


def _row(event: LogEvent) -> Row:
    return [event.ns, event.k, event.line, event.stream, event.revision]


def _event(row: Any) -> LogEvent | None:
    try:
        ns, k, line, stream, revision = row
        if not isinstance(ns, int) or not isinstance(k, int):
            return None
        return LogEvent(ns, k, str(line), str(stream), revision)
    except (TypeError, ValueError):
        return None


def _messages(rows: list[Row], max_bytes: int | None) -> list[list[Row]]:
    """Split ``rows`` into bus messages of at most ``PUBLISH_BATCH_LINES`` lines and, when the
    bus limits message sizes (PostgreSQL's NOTIFY: 8000 bytes), about ``max_bytes`` each; a
    line too long for one message on its own is cut to fit, and says so."""
    if max_bytes is None:
        return [rows[i : i + PUBLISH_BATCH_LINES] for i in range(0, len(rows), PUBLISH_BATCH_LINES)]
    messages: list[list[Row]] = []
    current: list[Row] = []
    size = 0
    budget = max_bytes - 64
    for row in rows:
        # JSON escapes can grow a character to 6 bytes (\u0000); UTF-8 to 4: be pessimistic.
        cost = ROW_OVERHEAD_BYTES + len(row[2]) * (6 if not row[2].isascii() else 2)
        if cost > budget:
            keep = max((budget - ROW_OVERHEAD_BYTES) // 6 - 16, 0)
            row = [*row[:2], row[2][:keep] + " [line cut]", *row[3:]]
            cost = budget
        if current and (size + cost > budget or len(current) >= PUBLISH_BATCH_LINES):
            messages.append(current)
            current, size = [], 0
        current.append(row)
        size += cost
    if current:
        messages.append(current)
    return messages


def _runs_by_revision(events: list[LogEvent]) -> list[list[LogEvent]]:
    """Consecutive events of one revision each (a chunk holds one revision's lines, in order)."""
    runs: list[list[LogEvent]] = []
    for event in events:
        if runs and runs[-1][-1].revision == event.revision:
            runs[-1].append(event)
        else:
            runs.append([event])
    return runs


class _Subscriber:
    """One follower's bounded queue of shared chunks: on overflow the oldest lines go (counted).

    The queue holds views on batches that every subscriber of the process shares, so its memory
    is a few references per batch whatever the lines weigh.
    """

    def __init__(self, key: str, limit: int, counters: UpstreamCounters) -> None:
        self.key = key
        self._limit = limit
        self._counters = counters
        self._chunks: deque[LogChunk] = deque()
        self._lines = 0
        self._dropped = 0
        self._ended = False
        self._wakeup = asyncio.Event()

    def put(self, chunk: LogChunk) -> None:
        self._chunks.append(chunk)
        self._lines += len(chunk)
        while self._lines > self._limit:
            oldest = self._chunks[0]
            excess = self._lines - self._limit
            if len(oldest) <= excess:
                self._chunks.popleft()
                lost = len(oldest)
            else:
                self._chunks[0] = LogChunk(oldest.batch, oldest.start + excess, oldest.stop)
                lost = excess
            self._lines -= lost
            self._dropped += lost
            self._counters.dropped += lost
        self._wakeup.set()

    def end(self) -> None:
        self._ended = True
        self._wakeup.set()

    async def get(self) -> LogChunk | None:
        """The next chunk, a marker of dropped lines, or None once the stream ended."""
        while True:
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                return LogChunk.of([LogEvent.marker(dropped, self._chunks[0].first)])
            if self._chunks:
                chunk = self._chunks.popleft()
                self._lines -= len(chunk)
                return chunk
            if self._ended:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()


class _Outbox:
    """Lines a pump read and its publisher has not sent yet; bounded (the pump waits)."""

    def __init__(self) -> None:
        self._rows: list[Row] = []
        self._waiting = asyncio.Event()
        self._room = asyncio.Event()

    async def put(self, rows: list[Row]) -> None:
        while len(self._rows) >= PENDING_LINES_LIMIT:  # the bus lags behind the engine
            self._room.clear()
            await self._room.wait()
        self._rows.extend(rows)
        self._waiting.set()

    async def take(self) -> list[Row]:
        """Everything waiting (at least one line)."""
        while not self._rows:
            self._waiting.clear()
            await self._waiting.wait()
        rows, self._rows = self._rows, []
        self._room.set()
        return rows


@dataclass
class _Channel:
    """This process's single subscription to one container's log channel."""

    subscribers: dict[str, _Subscriber] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass
class UpstreamCounters:
    opened: int = 0
    """Upstream engine log streams that delivered lines, since the process started."""
    open: int = 0
    """Upstream engine log streams delivering right now."""
    lines: int = 0
    """Lines the pumps published, since the process started."""
    delivered: int = 0
    """Lines handed to local subscribers' queues (one per subscriber), since the start."""
    dropped: int = 0
    """Lines dropped from slow local subscribers' queues, since the start."""


class StatusWatch:
    """Change signals of one container, registered when created (``LogHub.status``): a change
    between creating the watch and a first read of the container is not lost (a watch that
    registered on its first iteration would miss it). ``aclose`` unregisters it."""

    def __init__(self, waiters: dict[str, set[asyncio.Queue[str]]], container_id: str) -> None:
        self._waiters, self._container_id = waiters, container_id
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._closed = False
        waiters.setdefault(container_id, set()).add(self._queue)

    def __aiter__(self) -> StatusWatch:
        return self

    async def __anext__(self) -> object:
        if self._closed:
            raise StopAsyncIteration
        return await self._queue.get()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        waiters = self._waiters.get(self._container_id, set())
        waiters.discard(self._queue)
        if not waiters:
            self._waiters.pop(self._container_id, None)


class LogHub:
    """Implements ``ContainerStreams`` for the transports; one per process."""

    def __init__(
        self,
        bus: Bus,
        runtime: Runtime | None,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        on_remote_change: Callable[[str], None] | None = None,
        on_change: Callable[[str], None] | None = None,
        on_reconnect: Callable[[], None] | None = None,
        queue_lines: int = 1000,
        demand_heartbeat_seconds: float = 5.0,
        reopen_delay_seconds: float = 0.5,
    ) -> None:
        self.bus = bus
        self.runtime = runtime
        self.is_leader = is_leader
        self.on_remote_change = on_remote_change
        self.on_change = on_change
        """Called with the container id of every change event (any replica, any kind)."""
        self.on_reconnect = on_reconnect
        """Called when the bus came back from an outage: the changes published meanwhile are
        lost, so whoever caches state derived from them (the data plane's routes) re-reads it."""
        self.queue_lines = queue_lines
        self.demand_heartbeat_seconds = demand_heartbeat_seconds
        self.reopen_delay_seconds = reopen_delay_seconds
        self.origin = uuid.uuid4().hex
        self.upstream = UpstreamCounters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serial = itertools.count(1)
        self._channels: dict[str, _Channel] = {}
        self._status_waiters: dict[str, set[asyncio.Queue[str]]] = {}
        self._demand: dict[str, dict[str, int]] = {}
        """Per container, its subscribers and the heartbeat round they were last heard in."""
        self._round = 0
        """Heartbeat rounds this process has lived through (``_heartbeat_loop``)."""
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.bus.connect()
        changes_ready, demand_ready = asyncio.Event(), asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._changes_loop(changes_ready), name="hub-changes"),
            asyncio.create_task(self._demand_loop(demand_ready), name="hub-demand"),
            asyncio.create_task(self._heartbeat_loop(), name="hub-heartbeat"),
        ]
        await asyncio.wait_for(asyncio.gather(changes_ready.wait(), demand_ready.wait()), 30)

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._pumps.values(), *self._background]
        tasks += [c.task for c in self._channels.values() if c.task is not None]
        for channel in self._channels.values():
            for subscriber in channel.subscribers.values():
                subscriber.end()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks, self._pumps, self._channels = [], {}, {}
        await self.bus.disconnect()
        self._loop = None

    @property
    def local_subscribers(self) -> int:
        return sum(len(c.subscribers) for c in self._channels.values())

    @property
    def pumps(self) -> int:
        return len(self._pumps)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("publishing on the bus failed: %s", task.exception())

    # -- changes --------------------------------------------------------------------------------

    def service_changed(self, container_id: str, kind: str) -> None:
        """A ``ServiceContext`` listener: publish a write; called from worker threads."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._publish_change, container_id, kind)

    async def status_changed(self, container_id: str, kind: str) -> None:
        """The reconciler's ``on_status``: publish an observed status change or a purge.

        A bus that is down loses the message (subscribers re-read state when it is back) but
        must not fail the reconciliation that observed it."""
        message = {"id": container_id, "kind": kind, "origin": self.origin}
        try:
            await self.bus.publish(CHANGES, message)
        except Exception as e:
            log.warning("publishing the %s change of %s failed: %s", kind, container_id, e)

    def _publish_change(self, container_id: str, kind: str) -> None:
        self._spawn(
            self.bus.publish(CHANGES, {"id": container_id, "kind": kind, "origin": self.origin})
        )

    async def _changes_loop(self, ready: asyncio.Event) -> None:
        async with self.bus.subscribe(CHANGES) as messages:
            ready.set()
            async for message in messages:
                if message is RECONNECTED:
                    # Changes published while the bus was down are lost: every status watcher
                    # re-reads its container once, so it converges.
                    for waiters in list(self._status_waiters.values()):
                        for waiter in waiters:
                            waiter.put_nowait("reconnected")
                    if self.on_reconnect is not None:
                        self.on_reconnect()
                    continue
                container_id, kind = str(message.get("id")), message.get("kind")
                for waiter in self._status_waiters.get(container_id, ()):
                    waiter.put_nowait(str(kind))
                if kind == "deleted":
                    channel = self._channels.get(container_id)
                    for subscriber in channel.subscribers.values() if channel else ():
                        subscriber.end()
                if self.on_change is not None:
                    self.on_change(container_id)
                remote = message.get("origin") != self.origin
                desired = kind in ("spec", "traffic", "deleted")
                if desired and remote and self.on_remote_change is not None:
                    self.on_remote_change(container_id)

    def status(self, container_id: str) -> StatusWatch:
        """One item per change event of the container (spec, status, deletion), from now on:
        the watch is registered by this call, before its first iteration."""
        return StatusWatch(self._status_waiters, container_id)

    # -- subscribers ----------------------------------------------------------------------------

    async def logs(
        self,
        container_id: str,
        *,
        tail: int | None,
        follow: bool,
        since: datetime | None = None,
        after: str | None = None,
    ) -> AsyncGenerator[LogChunk, None]:
        """Backlog from the runtime, then (``follow``) live lines from the bus, deduplicated."""
        subscriber = await self._attach(container_id) if follow else None
        try:
            resume = event_key(after) if after else None
            backlog = await self._backlog(container_id, tail=tail, since=since, after=resume)
            if resume is not None:
                backlog = [event for event in backlog if event.key > resume]
            # The last line delivered, per revision: during a switch the lines of two revisions
            # arrive interleaved, each revision's in order, their timestamps overlapping.
            # A resuming client has everything up to its id, whatever the revision.
            last: dict[int | None, Key] = {None: resume} if resume is not None else {}
            for event in backlog:
                last[event.revision] = event.key
            if backlog:
                yield LogChunk.of(backlog)
            if subscriber is None:
                return
            while (chunk := await subscriber.get()) is not None:
                if chunk.first.dropped:
                    yield chunk
                    continue
                revision = chunk.first.revision
                seen = last.get(revision, last.get(None))
                fresh = chunk.after(seen) if seen is not None else chunk
                if fresh is None:
                    continue
                last[revision] = fresh.last.key
                yield fresh
        finally:
            if subscriber is not None:
                self._detach(container_id, subscriber)

    async def _backlog(
        self, container_id: str, *, tail: int | None, since: datetime | None, after: Key | None
    ) -> list[LogEvent]:
        runtime = self.runtime
        if runtime is None:
            return []
        limit = tail
        start: int | None = None
        if after is not None:
            start, limit = after[0], MAX_RESUME_LINES
        elif tail == 0:
            return []
        elif since is not None:
            start = to_ns(since)
        elif tail is not None:
            return await self._last_lines(container_id, tail)
        # Lines written after this request began are live lines, not backlog; without this
        # bound the read of a chatty container's log would never reach an end.
        read_until = time.time_ns() + NS
        # Read from the whole second: the ids' counters need the first line of a timestamp.
        begin = to_datetime(_whole_second(start)) if start is not None else None
        # A client resuming may have left during an update: it gets what every revision present
        # printed since its last line, merged in time order (one revision's, when the runtime
        # cannot list them).
        revisions: list[int | None] = [None]
        if after is not None and hasattr(runtime, "list_managed"):
            present = await self._present_revisions(container_id)
            if present:
                revisions = list(sorted(present))
        merged: list[LogEvent] = []
        for revision in revisions:
            kept: deque[LogEvent] = deque(maxlen=limit)
            try:
                batches = runtime.log_batches(
                    container_id, revision=revision, follow=False, tail=None, since=begin
                )
                async with _closing(numbered(batches)) as read:
                    async for events in read:
                        if start is not None and after is None:
                            events = [event for event in events if event.ns >= start]
                        kept.extend(events)
                        if events and events[-1].ns > read_until:
                            break
            except RuntimeAdapterError as e:
                log.warning("reading the logs of %s failed: %s", container_id, e)
            merged.extend(event for event in kept if event.ns <= read_until)
        if len(revisions) > 1:
            merged.sort(key=lambda event: event.ns)  # stable: each revision's order is kept
            if limit is not None:
                merged = merged[-limit:]
        return merged

    async def _last_lines(self, container_id: str, tail: int) -> list[LogEvent]:
        """The last ``tail`` lines, read with the engine's cheap ``tail``.

        Engines answer ``tail`` from the end of the log at once, while ``since`` makes some
        (Podman) scan the whole log first. A tail read may start in the middle of a timestamp,
        where the ids' counters would be off, so it reads some more lines than asked and drops
        those sharing the first line's timestamp when enough lines remain (see
        "Exact ids" in the module docstring for when they do not).
        """
        want = tail + max(tail, BACKLOG_EXTRA_LINES)
        events = await self._read_lines(container_id, want)
        if events is None:
            return []
        if len(events) == want:  # the read did not reach the start of the log
            reliable = _after_first_timestamp(events)
            if len(reliable) >= tail:
                events = reliable
        return events[-tail:]

    async def _read_lines(self, container_id: str, tail: int) -> list[LogEvent] | None:
        """The last ``tail`` lines (fewer when the log is shorter); None when the read failed.

        A failed read is tried once more: Podman 4 fails a read that meets a line conmon is
        still writing ("... is not a valid container log line"), which a chatty container
        makes likely.
        """
        assert self.runtime is not None
        for attempt in range(READ_ATTEMPTS):
            events: list[LogEvent] = []
            try:
                batches = self.runtime.log_batches(container_id, follow=False, tail=tail)
                async with _closing(numbered(batches)) as read:
                    async for batch in read:
                        events.extend(batch)
                        if len(events) >= tail:  # a chatty log would never reach its end
                            break
                return events[:tail]
            except RuntimeAdapterError as e:
                log.warning("reading the logs of %s failed: %s", container_id, e)
                if attempt + 1 < READ_ATTEMPTS:
                    await asyncio.sleep(READ_RETRY_SECONDS)
        return None

    async def _attach(self, container_id: str) -> _Subscriber:
        subscriber = _Subscriber(
            f"{self.origin}/{next(self._serial)}", self.queue_lines, self.upstream
        )
        channel = self._channels.get(container_id)
        if channel is None:
            channel = self._channels[container_id] = _Channel()
            channel.task = asyncio.create_task(
                self._relay(container_id, channel), name=f"hub-relay-{container_id}"
            )
        channel.subscribers[subscriber.key] = subscriber
        await channel.ready.wait()
        self._announce(container_id, subscriber.key, "join")
        return subscriber

    def _detach(self, container_id: str, subscriber: _Subscriber) -> None:
        """Synchronous on purpose: it runs in ``finally`` blocks of cancelled requests."""
        channel = self._channels.get(container_id)
        if channel is not None:
            channel.subscribers.pop(subscriber.key, None)
            if not channel.subscribers:
                del self._channels[container_id]
                if channel.task is not None:
                    channel.task.cancel()
        self._announce(container_id, subscriber.key, "leave")

    def _announce(self, container_id: str, subscriber: str, op: str) -> None:
        if self._loop is None:
            return
        message = {"id": container_id, "subscriber": subscriber, "op": op}
        self._spawn(self.bus.publish(LOGS_DEMAND, message))

    async def _relay(self, container_id: str, channel: _Channel) -> None:
        """Copy the container's lines from the bus into each local subscriber's queue: one
        decoded batch per message, shared by all of them."""
        async with self.bus.subscribe(logs_channel(container_id)) as messages:
            channel.ready.set()
            async for message in messages:
                if message is RECONNECTED:
                    continue  # lines published meanwhile are lost; the pump's go on arriving
                rows = message.get("lines")
                events = [
                    event
                    for event in map(_event, rows if isinstance(rows, list) else ())
                    if event is not None
                ]
                subscribers = list(channel.subscribers.values())
                self.upstream.delivered += len(events) * len(subscribers)
                for run in _runs_by_revision(events):
                    batch = LogBatch(run)
                    for subscriber in subscribers:
                        subscriber.put(LogChunk(batch))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.demand_heartbeat_seconds)
            self._round += 1
            for container_id, channel in list(self._channels.items()):
                for key in list(channel.subscribers):
                    self._announce(container_id, key, "heartbeat")
            self._expire_demand()

    # -- pumps (leader only) --------------------------------------------------------------------

    def _may_pump(self) -> bool:
        return self.runtime is not None and self.is_leader()

    async def _demand_loop(self, ready: asyncio.Event) -> None:
        async with self.bus.subscribe(LOGS_DEMAND) as messages:
            ready.set()
            async for message in messages:
                if message is RECONNECTED:
                    # Joins published meanwhile are lost: tell the leader now who is here.
                    for container_id, channel in list(self._channels.items()):
                        for key in list(channel.subscribers):
                            self._announce(container_id, key, "heartbeat")
                    continue
                container_id = str(message.get("id"))
                subscriber = str(message.get("subscriber"))
                subscribers = self._demand.setdefault(container_id, {})
                if message.get("op") == "leave":
                    subscribers.pop(subscriber, None)
                else:
                    subscribers[subscriber] = self._round
                self._update_pump(container_id)

    def _expire_demand(self) -> None:
        horizon = self._round - MISSED_HEARTBEATS
        for subscribers in list(self._demand.values()):
            for key, seen in list(subscribers.items()):
                if seen < horizon:
                    del subscribers[key]
        for container_id in set(self._demand) | set(self._pumps):
            self._update_pump(container_id)

    def _update_pump(self, container_id: str) -> None:
        wanted = bool(self._demand.get(container_id)) and self._may_pump()
        if not self._demand.get(container_id):
            self._demand.pop(container_id, None)
        pump = self._pumps.get(container_id)
        if wanted and pump is None:
            self._pumps[container_id] = asyncio.create_task(
                self._pump(container_id), name=f"hub-pump-{container_id}"
            )
        elif not wanted and pump is not None:
            del self._pumps[container_id]
            pump.cancel()

    async def _pump(self, container_id: str) -> None:
        """Keep one upstream stream open per revision present in the runtime, and republish
        their lines; a revision that appears later (an update, a rollback) is read from its
        first line, so a follower open across a switch sees every line of both revisions,
        interleaved during the drain. A revision's stream ends when the runtime no longer has it.

        Lines go out in batches: a publisher task takes whatever accumulated while the readers
        read from the runtime, so a chatty container costs one bus message per burst.
        """
        assert self.runtime is not None
        cutoff = time.time_ns() - PUMP_LOOKBACK_NS
        outbox = _Outbox()
        publisher = asyncio.create_task(
            self._publish_lines(container_id, outbox), name=f"hub-publish-{container_id}"
        )
        readers: dict[int, asyncio.Task[None]] = {}
        first = True
        try:
            if not hasattr(self.runtime, "list_managed"):
                # A runtime that cannot list revisions: follow the newest one, as it says.
                await self._pump_revision(container_id, None, outbox, cutoff)
                return
            while True:
                present = await self._present_revisions(container_id)
                if present is not None:
                    for revision in sorted(present):
                        if revision not in readers:
                            # Present when the pump started: from the look-back; newer: whole.
                            start = cutoff if first else None
                            readers[revision] = asyncio.create_task(
                                self._pump_revision(container_id, revision, outbox, start),
                                name=f"hub-pump-{container_id}-r{revision}",
                            )
                    for gone in [r for r in readers if r not in present]:
                        readers.pop(gone).cancel()  # retired: its stream is over
                    first = False
                await asyncio.sleep(REVISION_POLL_SECONDS)
        finally:
            for reader in readers.values():
                reader.cancel()
            publisher.cancel()

    async def _present_revisions(self, container_id: str) -> set[int] | None:
        """The revisions the runtime runs for the container; None when it cannot tell."""
        assert self.runtime is not None
        try:
            managed = await self.runtime.list_managed()
        except RuntimeAdapterError as e:
            log.warning("listing the revisions of %s failed: %s", container_id, e)
            return None
        return set(managed.get(container_id, set()))

    async def _pump_revision(
        self, container_id: str, revision: int | None, outbox: _Outbox, cutoff: int | None
    ) -> None:
        """Follow one revision's log (the newest revision's when None); reopen where it stopped
        when the stream ends (restart, not started yet). ``cutoff``: start with a tail read and
        drop lines older than it; None: read the revision's log from its first line."""
        assert self.runtime is not None
        since: int | None = None
        last: Key | None = None
        while True:
            delivering = False
            try:
                # Reopen: from where the last stream ended. First open: a cheap tail read (see
                # "Exact ids" in the module docstring), or all of a revision that just appeared.
                start: dict[str, Any]
                if since is not None:
                    start = {"tail": None, "since": to_datetime(since)}
                elif cutoff is not None:
                    start = {"tail": PUMP_TAIL_LINES}
                else:
                    start = {"tail": None}
                batches = self.runtime.log_batches(
                    container_id, revision=revision, follow=True, **start
                )
                async with _closing(numbered(batches)) as read:
                    async for events in read:
                        if not delivering:
                            delivering = True
                            self.upstream.opened += 1
                            self.upstream.open += 1
                        if since is None and cutoff is not None and events[0].ns < cutoff:
                            events = [event for event in events if event.ns >= cutoff]
                        if last is not None and events and events[0].key <= last:
                            events = [event for event in events if event.key > last]
                        if not events:
                            continue
                        last = events[-1].key
                        since = _whole_second(last[0])
                        self.upstream.lines += len(events)
                        await outbox.put([_row(event) for event in events])
            except RuntimeAdapterError as e:
                log.warning("the log stream of %s failed: %s", container_id, e)
            except Exception:
                log.exception("the log pump of %s failed; reopening", container_id)
            finally:
                if delivering:
                    self.upstream.open -= 1
            # The stream ended (revision replaced, container restarted or not started yet).
            await asyncio.sleep(self.reopen_delay_seconds)

    async def _publish_lines(self, container_id: str, outbox: _Outbox) -> None:
        channel = logs_channel(container_id)
        while True:
            rows = await outbox.take()
            for message in _messages(rows, self.bus.max_message_bytes):
                await self.bus.publish(channel, {"lines": message})
