"""Live logs and status changes of containers, shared by every subscriber of every replica.

Why a hub: an engine log stream per HTTP client would cost one engine connection and one reader
thread per client and would multiply with the number of replicas. Instead the replica whose
reconciler leads (and has a runtime) opens exactly one upstream ``runtime.logs(follow=True)`` per
container that somebody watches, and republishes its lines on the bus
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
line's timestamp and how many earlier lines share it (see ``numbered``).

Status: writes (services) and observations (reconciler) are published on ``dockyard.changes``;
each process relays them to its status subscribers and ends the log streams of deleted
containers. Without a leader, subscribers still get their backlog and status changes, and live
lines resume as soon as a replica is elected (it learns the demand from the next heartbeats).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from app.bus import CHANGES, LOGS_DEMAND, Bus, Message, logs_channel
from app.runtime.base import LogLine, Runtime, RuntimeAdapterError
from app.services.streams import DROPPED_STREAM, LogEvent

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_RESUME_LINES = 10_000
"""At most this many lines are replayed to a client resuming with ``Last-Event-ID``."""
MISSED_HEARTBEATS = 3
"""A subscriber silent for this many heartbeat intervals is forgotten (its replica died)."""
PUMP_LOOKBACK = timedelta(seconds=2)
"""A new pump starts this far back, so lines written while subscribers read their backlog are
never missed (they deduplicate by id)."""

BACKLOG_EXTRA_LINES = 200
"""A tail read asks this many lines more than wanted (see ``LogHub._last_lines``)."""
MAX_BACKLOG_READ = 200_000
PUMP_TAIL_LINES = 2000
"""A new pump reads at most this many lines back (then drops those older than its look-back)."""
PUBLISH_BATCH_LINES = 1000
"""At most this many lines travel in one bus message."""
PENDING_LINES_LIMIT = 20_000
"""A pump stops reading while this many lines wait for the bus (backpressure, bounded memory)."""

Key = tuple[int, int]
T = TypeVar("T")


@contextlib.asynccontextmanager
async def _closing(iterator: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an async generator when done with it (releases engine streams at once)."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def timestamp_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, exactly (no float rounding)."""
    delta = moment.astimezone(UTC) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def event_key(event_id: str) -> Key | None:
    """``(ns, k)`` of an event id, or None when it is not one of ours."""
    ns, sep, k = event_id.partition("-")
    if not sep or not ns.isdigit() or not k.isdigit():
        return None
    return int(ns), int(k)


def parse_event_time(key: Key) -> datetime:
    return EPOCH + timedelta(microseconds=key[0] // 1_000)


async def numbered(lines: AsyncIterator[LogLine]) -> AsyncIterator[LogEvent]:
    """Give each line its id ``<ns>-<k>``: k counts the earlier lines with the same timestamp.

    The ids match those of any other reader as long as the read starts at (or before) the first
    line of a timestamp; callers start at a whole second for that reason (engines with
    one-second precision, such as Podman, stamp many lines alike).
    """
    previous = -1
    k = 0
    async with _closing(lines):
        async for line in lines:
            ns = timestamp_ns(line.timestamp)
            k = k + 1 if ns == previous else 0
            previous = ns
            yield LogEvent(
                id=f"{ns}-{k}",
                timestamp=line.timestamp,
                line=line.line,
                stream=line.stream,
                revision=line.revision,
            )


def _after_first_timestamp(events: list[LogEvent]) -> list[LogEvent]:
    """The events after those sharing the first one's timestamp (whose ids may be off)."""
    if not events:
        return events
    first = events[0].timestamp
    for index, event in enumerate(events):
        if event.timestamp != first:
            return events[index:]
    return []


def _whole_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def _encode(event: LogEvent) -> Message:
    return {
        "id": event.id,
        "timestamp": event.timestamp.isoformat(),
        "line": event.line,
        "stream": event.stream,
        "revision": event.revision,
    }


def _decode(message: Message) -> LogEvent | None:
    try:
        return LogEvent(
            id=str(message["id"]),
            timestamp=datetime.fromisoformat(message["timestamp"]),
            line=str(message["line"]),
            stream=str(message["stream"]),
            revision=message.get("revision"),
        )
    except (KeyError, TypeError, ValueError):
        return None


class _Subscriber:
    """One follower's bounded queue: on overflow the oldest lines go and are counted."""

    def __init__(self, key: str, limit: int) -> None:
        self.key = key
        self._limit = limit
        self._lines: deque[LogEvent] = deque()
        self._dropped = 0
        self._ended = False
        self._wakeup = asyncio.Event()

    def put(self, event: LogEvent) -> None:
        if len(self._lines) >= self._limit:
            self._lines.popleft()
            self._dropped += 1
        self._lines.append(event)
        self._wakeup.set()

    def end(self) -> None:
        self._ended = True
        self._wakeup.set()

    async def get(self) -> LogEvent | None:
        """The next line, a marker of dropped lines, or None once the stream ended."""
        while True:
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                first = self._lines[0]
                return LogEvent(
                    id="",
                    timestamp=first.timestamp,
                    line=f"{dropped} lines dropped",
                    stream=DROPPED_STREAM,
                    revision=first.revision,
                    dropped=dropped,
                )
            if self._lines:
                return self._lines.popleft()
            if self._ended:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()


class _Outbox:
    """Lines a pump read and its publisher has not sent yet; bounded (the pump waits)."""

    def __init__(self) -> None:
        self._lines: list[Message] = []
        self._waiting = asyncio.Event()
        self._room = asyncio.Event()

    async def put(self, line: Message) -> None:
        while len(self._lines) >= PENDING_LINES_LIMIT:  # the bus lags behind the engine
            self._room.clear()
            await self._room.wait()
        self._lines.append(line)
        self._waiting.set()

    async def take(self, most: int) -> list[Message]:
        while not self._lines:
            self._waiting.clear()
            await self._waiting.wait()
        batch = self._lines[:most]
        del self._lines[:most]
        self._room.set()
        return batch


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


class LogHub:
    """Implements ``ContainerStreams`` for the transports; one per process."""

    def __init__(
        self,
        bus: Bus,
        runtime: Runtime | None,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        on_remote_change: Callable[[str], None] | None = None,
        queue_lines: int = 1000,
        demand_heartbeat_seconds: float = 5.0,
        reopen_delay_seconds: float = 0.5,
    ) -> None:
        self.bus = bus
        self.runtime = runtime
        self.is_leader = is_leader
        self.on_remote_change = on_remote_change
        self.queue_lines = queue_lines
        self.demand_heartbeat_seconds = demand_heartbeat_seconds
        self.reopen_delay_seconds = reopen_delay_seconds
        self.origin = uuid.uuid4().hex
        self.upstream = UpstreamCounters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serial = itertools.count(1)
        self._channels: dict[str, _Channel] = {}
        self._status_waiters: dict[str, set[asyncio.Queue[str]]] = {}
        self._demand: dict[str, dict[str, float]] = {}
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
        """The reconciler's ``on_status``: publish an observed status change or a purge."""
        await self.bus.publish(CHANGES, {"id": container_id, "kind": kind, "origin": self.origin})

    def _publish_change(self, container_id: str, kind: str) -> None:
        self._spawn(
            self.bus.publish(CHANGES, {"id": container_id, "kind": kind, "origin": self.origin})
        )

    async def _changes_loop(self, ready: asyncio.Event) -> None:
        async with self.bus.subscribe(CHANGES) as messages:
            ready.set()
            async for message in messages:
                container_id, kind = str(message.get("id")), message.get("kind")
                for waiter in self._status_waiters.get(container_id, ()):
                    waiter.put_nowait(str(kind))
                if kind == "deleted":
                    channel = self._channels.get(container_id)
                    for subscriber in channel.subscribers.values() if channel else ():
                        subscriber.end()
                remote = message.get("origin") != self.origin
                if kind in ("spec", "deleted") and remote and self.on_remote_change is not None:
                    self.on_remote_change(container_id)

    async def status(self, container_id: str) -> AsyncIterator[object]:
        """One item per change event of the container (spec, status, deletion)."""
        waiter: asyncio.Queue[str] = asyncio.Queue()
        self._status_waiters.setdefault(container_id, set()).add(waiter)
        try:
            while True:
                yield await waiter.get()
        finally:
            waiters = self._status_waiters.get(container_id, set())
            waiters.discard(waiter)
            if not waiters:
                self._status_waiters.pop(container_id, None)

    # -- subscribers ----------------------------------------------------------------------------

    async def logs(
        self,
        container_id: str,
        *,
        tail: int | None,
        follow: bool,
        since: datetime | None = None,
        after: str | None = None,
    ) -> AsyncIterator[LogEvent]:
        """Backlog from the runtime, then (``follow``) live lines from the bus, deduplicated."""
        subscriber = await self._attach(container_id) if follow else None
        try:
            last = event_key(after) if after else None
            async for event in self._backlog(container_id, tail=tail, since=since, after=last):
                key = event_key(event.id)
                if last is not None and key is not None and key <= last:
                    continue
                last = key
                yield event
            if subscriber is None:
                return
            while (live := await subscriber.get()) is not None:
                if live.dropped:
                    yield live
                    continue
                key = event_key(live.id)
                if last is not None and key is not None and key <= last:
                    continue
                last = key
                yield live
        finally:
            if subscriber is not None:
                self._detach(container_id, subscriber)

    async def _backlog(
        self, container_id: str, *, tail: int | None, since: datetime | None, after: Key | None
    ) -> AsyncIterator[LogEvent]:
        runtime = self.runtime
        if runtime is None:
            return
        limit = tail
        if after is not None:
            start: datetime | None = parse_event_time(after)
            limit = MAX_RESUME_LINES
        elif tail == 0:
            return
        elif since is not None:
            start = since
        elif tail is None:
            start = None
        else:
            async for event in self._last_lines(container_id, tail):
                yield event
            return
        if start is not None:
            start = _whole_second(start)
        kept: deque[LogEvent] = deque(maxlen=limit)
        # Lines written after this request began are live lines, not backlog; without this
        # bound the read of a chatty container's log would never reach an end.
        read_until = datetime.now(UTC) + timedelta(seconds=1)
        try:
            async with _closing(
                numbered(runtime.logs(container_id, follow=False, tail=None, since=start))
            ) as read:
                async for event in read:
                    if event.timestamp > read_until:
                        break
                    if since is not None and after is None and event.timestamp < since:
                        continue
                    kept.append(event)
        except RuntimeAdapterError as e:
            log.warning("reading the logs of %s failed: %s", container_id, e)
        for event in kept:
            yield event

    async def _last_lines(self, container_id: str, tail: int) -> AsyncIterator[LogEvent]:
        """The last ``tail`` lines with reliable ids, read with the engine's cheap ``tail``.

        Engines answer ``tail`` from the end of the log at once, while ``since`` makes some
        (Podman) scan the whole log first. A tail read may start in the middle of a timestamp,
        where the ids' counters would be off, so it reads some more lines than asked and drops
        those sharing the first line's timestamp (unless the read reached the log's start).
        """
        assert self.runtime is not None
        want = tail + max(tail, BACKLOG_EXTRA_LINES)
        while True:
            events: list[LogEvent] = []
            try:
                async with _closing(
                    numbered(self.runtime.logs(container_id, follow=False, tail=want))
                ) as read:
                    async for event in read:
                        events.append(event)
                        if len(events) >= want:  # a chatty log would never reach its end
                            break
            except RuntimeAdapterError as e:
                log.warning("reading the logs of %s failed: %s", container_id, e)
                return
            whole_log = len(events) < want
            reliable = events if whole_log else _after_first_timestamp(events)
            if len(reliable) >= tail or whole_log or want >= MAX_BACKLOG_READ:
                for event in reliable[-tail:]:
                    yield event
                return
            want = min(want * 4, MAX_BACKLOG_READ)

    async def _attach(self, container_id: str) -> _Subscriber:
        subscriber = _Subscriber(f"{self.origin}/{next(self._serial)}", self.queue_lines)
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
        """Copy the container's lines from the bus into each local subscriber's queue."""
        async with self.bus.subscribe(logs_channel(container_id)) as messages:
            channel.ready.set()
            async for message in messages:
                lines = message.get("lines")
                for encoded in lines if isinstance(lines, list) else ():
                    event = _decode(encoded) if isinstance(encoded, dict) else None
                    if event is None:
                        continue
                    for subscriber in list(channel.subscribers.values()):
                        subscriber.put(event)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.demand_heartbeat_seconds)
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
                container_id = str(message.get("id"))
                subscriber = str(message.get("subscriber"))
                subscribers = self._demand.setdefault(container_id, {})
                if message.get("op") == "leave":
                    subscribers.pop(subscriber, None)
                else:
                    subscribers[subscriber] = time.monotonic()
                self._update_pump(container_id)

    def _expire_demand(self) -> None:
        horizon = time.monotonic() - MISSED_HEARTBEATS * self.demand_heartbeat_seconds
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
        """Keep one upstream stream open and republish it; reopen where it stopped if it ends.

        Lines go out in batches: a publisher task takes whatever accumulated while this loop
        read a burst from the runtime, so a chatty container costs one bus message per burst.
        """
        assert self.runtime is not None
        since: datetime | None = None
        cutoff = datetime.now(UTC) - PUMP_LOOKBACK
        last: Key | None = None
        outbox = _Outbox()
        publisher = asyncio.create_task(
            self._publish_lines(container_id, outbox), name=f"hub-publish-{container_id}"
        )
        try:
            while True:
                delivering = False
                try:
                    # Reopen (revision replaced, restart): from where the last stream ended.
                    # First open: the whole log when it is short; else a cheap tail read whose
                    # lines sharing the first timestamp are skipped (their ids could be off).
                    skip_first = since is None and await self._log_is_long(container_id)
                    lines = (
                        self.runtime.logs(container_id, follow=True, tail=None, since=since)
                        if not skip_first
                        else self.runtime.logs(container_id, follow=True, tail=PUMP_TAIL_LINES)
                    )
                    first_timestamp: datetime | None = None
                    async for event in numbered(lines):
                        if not delivering:
                            delivering = True
                            self.upstream.opened += 1
                            self.upstream.open += 1
                        if first_timestamp is None:
                            first_timestamp = event.timestamp
                        if since is None and (
                            (skip_first and event.timestamp == first_timestamp)
                            or event.timestamp < cutoff
                        ):
                            continue
                        key = event_key(event.id)
                        if last is not None and key is not None and key <= last:
                            continue
                        last, since = key, _whole_second(event.timestamp)
                        await outbox.put(_encode(event))
                except RuntimeAdapterError as e:
                    log.warning("the log stream of %s failed: %s", container_id, e)
                except Exception:
                    log.exception("the log pump of %s failed; reopening", container_id)
                finally:
                    if delivering:
                        self.upstream.open -= 1
                # The stream ended (revision replaced, container restarted or not started yet).
                await asyncio.sleep(self.reopen_delay_seconds)
        finally:
            publisher.cancel()

    async def _log_is_long(self, container_id: str) -> bool:
        """Whether the log has more lines than a pump reads back (engines scan long logs for
        ``since``, so a pump then starts from a tail read instead)."""
        assert self.runtime is not None
        count = 0
        async with _closing(
            self.runtime.logs(container_id, follow=False, tail=PUMP_TAIL_LINES)
        ) as lines:
            async for _ in lines:
                count += 1
                if count >= PUMP_TAIL_LINES:
                    # A chatty container's log has no end to read to: enough is enough.
                    break
        return count >= PUMP_TAIL_LINES

    async def _publish_lines(self, container_id: str, outbox: _Outbox) -> None:
        channel = logs_channel(container_id)
        while True:
            batch = await outbox.take(PUBLISH_BATCH_LINES)
            await self.bus.publish(channel, {"lines": batch})
