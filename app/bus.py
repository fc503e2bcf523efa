"""The event bus between API replicas: JSON messages on named channels.

One process (``memory://``) needs nothing else; several replicas share ``redis://…`` or
``postgres://…`` so that a write on one replica reaches the elected reconciler, and log lines
pumped by the leader reach subscribers connected to any replica. Messages are JSON objects;
channels are named here so that publishers and subscribers cannot drift apart.

Why not ``broadcaster.Broadcast`` itself: its listener task dies silently when the backend's
connection is lost (Redis restarted, PostgreSQL restarted), and its subscribers then wait
forever; nothing tells them, nothing re-subscribes. So the fan-out to local subscribers lives
here, around backends that *raise* when their connection is lost (redis-py's pub/sub with its
own retries off, asyncpg's termination listener). On a loss the bus builds a fresh backend with
exponential back-off, subscribes again to every channel somebody here listens to, and then
hands ``RECONNECTED`` to each subscription: messages published while the bus was down are lost,
so a subscriber that keeps state (a status watcher) re-reads it. broadcaster's
``BroadcastBackend`` interface and ``Event`` are kept (the backends plug into it unchanged);
redis-py and asyncpg do the protocol work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from broadcaster import BroadcastBackend, Event

log = logging.getLogger(__name__)

CHANGES = "dockyard.changes"
"""``{"id", "kind": "spec"|"status"|"deleted", "origin"}``: something about a container changed."""
LOGS_DEMAND = "dockyard.logs-demand"
"""``{"id", "subscriber", "op": "join"|"heartbeat"|"leave"}``: who wants a container's logs."""

RECONNECTED: dict[str, Any] = {"bus": "reconnected"}
"""Handed to every subscription after the bus came back from a lost connection (the very same
object: test with ``is``). What was published meanwhile is lost."""

RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0


def logs_channel(container_id: str) -> str:
    """The channel carrying one container's log lines, as published by the leader's pump."""
    return f"dockyard.logs.{container_id}"


Message = dict[str, Any]


class _Backend(BroadcastBackend):
    """A backend whose ``next_published`` raises once its connection is lost (``fail``)."""

    def __init__(self) -> None:
        self._events: asyncio.Queue[Event | BaseException] = asyncio.Queue()

    def fail(self, error: BaseException) -> None:
        self._events.put_nowait(error)

    def _received(self, channel: str, message: str) -> None:
        self._events.put_nowait(Event(channel=channel, message=message))

    async def next_published(self) -> Event:
        item = await self._events.get()
        if isinstance(item, BaseException):
            self._events.put_nowait(item)  # stays failed
            raise item
        return item


class MemoryBackend(_Backend):
    """One process: publishing is receiving."""

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def subscribe(self, channel: str) -> None:
        pass

    async def unsubscribe(self, channel: str) -> None:
        pass

    async def publish(self, channel: str, message: Any) -> None:
        self._received(channel, str(message))


class RedisBackend(_Backend):
    """Redis pub/sub. redis-py's own retries are off on the subscribing connection, so a lost
    connection surfaces here (and the bus re-subscribes) instead of being half-repaired.

    ``subscribe`` returns once Redis has confirmed the subscription, not once the SUBSCRIBE is
    sent: Redis orders the commands of one connection only, so a message published on another
    connection right after a SUBSCRIBE that is still on its way (a slow link, a Redis starved
    of CPU serving the other connection first) went to nobody. The reader task, which owns the
    connection's replies, hands each confirmation to the subscribe waiting for it."""

    READ_TIMEOUT_SECONDS = 1.0
    SUBSCRIBE_TIMEOUT_SECONDS = 10.0

    def __init__(self, url: str) -> None:
        super().__init__()
        from redis import asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._publisher = redis.Redis.from_url(url)
        self._listening = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0))
        self._pubsub = self._listening.pubsub()  # confirmations too: see ``subscribe``
        self._reader: asyncio.Task[None] | None = None
        self._confirming: dict[str, list[asyncio.Future[None]]] = {}
        """Per channel, the subscribes waiting for Redis' confirmation, oldest first."""

    async def connect(self) -> None:
        await self._listening.ping()  # type: ignore[misc]  # fails now when Redis is away
        await self._pubsub.connect()  # type: ignore[no-untyped-call]
        self._reader = asyncio.create_task(self._read(), name="bus-redis-reader")

    async def _read(self) -> None:
        try:
            while True:
                message = await self._pubsub.get_message(timeout=self.READ_TIMEOUT_SECONDS)
                if message is None:
                    continue
                if message.get("type") == "message":
                    self._received(message["channel"].decode(), message["data"].decode())
                elif message.get("type") == "subscribe":
                    channel = message["channel"].decode()
                    waiting = self._confirming.get(channel)
                    if waiting:  # replies come in the order of the commands
                        confirmed = waiting.pop(0)
                        if not waiting:
                            del self._confirming[channel]
                        if not confirmed.done():  # done: its subscribe gave up waiting
                            confirmed.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.fail(e)

    def fail(self, error: BaseException) -> None:
        super().fail(error)
        self._abandon_confirmations(error)

    def _abandon_confirmations(self, error: BaseException) -> None:
        confirming, self._confirming = self._confirming, {}
        for waiting in confirming.values():
            for confirmed in waiting:
                if not confirmed.done():
                    confirmed.set_exception(error)

    async def disconnect(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._abandon_confirmations(ConnectionError("the Redis bus was disconnected"))
        for close in (self._pubsub.aclose, self._listening.aclose, self._publisher.aclose):
            with contextlib.suppress(Exception):
                await close()

    async def subscribe(self, channel: str) -> None:
        """Subscribe and wait until Redis confirms it (see the class docstring)."""
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._confirming.setdefault(channel, [])
        waiting.append(confirmed)
        try:
            await self._pubsub.subscribe(channel)
        except BaseException:
            # Not sent, or the connection is gone with it: no reply will come for it.
            waiting.remove(confirmed)
            if confirmed.done() and not confirmed.cancelled():
                confirmed.exception()  # failed meanwhile (``fail``); raised below anyway
            confirmed.cancel()
            if not waiting and self._confirming.get(channel) is waiting:
                del self._confirming[channel]
            raise
        # Sent: the reader takes ``confirmed`` off the list when the reply comes, also when this
        # wait was cancelled or timed out, so that a later subscribe waits for its own reply.
        await asyncio.wait_for(confirmed, self.SUBSCRIBE_TIMEOUT_SECONDS)

    async def unsubscribe(self, channel: str) -> None:
        await self._pubsub.unsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        await self._publisher.publish(channel, message)


class PostgresBackend(_Backend):
    """LISTEN/NOTIFY, safe for concurrent use.

    broadcaster's own postgres backend runs every command on one asyncpg connection, which
    refuses a second command while one is in flight ("another operation is in progress"): a
    publish racing a subscribe failed, and so did the subscription. Here notifications go out
    on a connection of their own, one at a time (which also keeps their order), and
    LISTEN/UNLISTEN are serialized on the listening connection. Losing either connection
    (asyncpg's termination listener) fails the backend, and the bus builds a new one.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self._listening: Any = None
        self._notifying: Any = None
        self._listen_lock = asyncio.Lock()
        self._notify_lock = asyncio.Lock()
        self._closing = False

    async def connect(self) -> None:
        import asyncpg  # the optional extra: pip install 'dockyard[postgres]'

        self._listening = await asyncpg.connect(self._url)
        self._listening.add_termination_listener(self._terminated)
        self._notifying = await asyncpg.connect(self._url)
        self._notifying.add_termination_listener(self._terminated)

    def _terminated(self, connection: Any) -> None:
        if not self._closing:
            self.fail(ConnectionError("the PostgreSQL bus connection was lost"))

    async def disconnect(self) -> None:
        self._closing = True
        for connection in (self._listening, self._notifying):
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close(timeout=5)
        self._listening = self._notifying = None

    async def subscribe(self, channel: str) -> None:
        async with self._listen_lock:
            await self._listening.add_listener(channel, self._notified)

    async def unsubscribe(self, channel: str) -> None:
        async with self._listen_lock:
            if self._listening is not None and not self._listening.is_closed():
                await self._listening.remove_listener(channel, self._notified)

    async def publish(self, channel: str, message: Any) -> None:
        async with self._notify_lock:
            await self._notifying.execute("SELECT pg_notify($1, $2)", channel, str(message))

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._received(channel, payload)


class Bus:
    """Publish and subscribe JSON objects on named channels; survives the backend restarting."""

    def __init__(
        self,
        url: str,
        *,
        retry_first_seconds: float = RETRY_FIRST_SECONDS,
        retry_max_seconds: float = RETRY_MAX_SECONDS,
    ) -> None:
        if not (_is_postgres(url) or _is_redis(url) or url.startswith("memory://")):
            raise ValueError(f"unsupported bus URL scheme: {url.split(':', 1)[0]!r}")
        self.url = url
        self.retry_first_seconds = retry_first_seconds
        self.retry_max_seconds = retry_max_seconds
        self.reconnects = 0
        """How many times the bus came back after losing its connection."""
        self._backend: _Backend = self._new_backend()
        self._queues: dict[str, set[asyncio.Queue[Message]]] = {}
        self._lock = asyncio.Lock()
        self._up = False
        self._listener: asyncio.Task[None] | None = None

    def _new_backend(self) -> _Backend:
        if _is_postgres(self.url):
            return PostgresBackend(self.url)
        if _is_redis(self.url):
            return RedisBackend(self.url)
        return MemoryBackend()

    @property
    def max_message_bytes(self) -> int | None:
        """The largest message the backend carries, when it has a limit: PostgreSQL's NOTIFY
        refuses payloads of 8000 bytes or more."""
        return 7900 if _is_postgres(self.url) else None

    @property
    def shared(self) -> bool:
        """Whether other processes can see what this one publishes."""
        return not self.url.startswith("memory://")

    @property
    def connected(self) -> bool:
        return self._up

    async def connect(self) -> None:
        await self._backend.connect()
        self._up = True
        self._listener = asyncio.create_task(self._listen(), name="bus-listener")

    async def disconnect(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
            self._up = False
            await self._backend.disconnect()

    async def publish(self, channel: str, message: Message) -> None:
        await self._backend.publish(channel, json.dumps(message, separators=(",", ":")))

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[Message]]:
        """Messages published on ``channel`` from the moment the context is entered, and
        ``RECONNECTED`` each time the bus came back from a lost connection. While the bus is
        down this still succeeds: the subscription starts when it is back."""
        queue: asyncio.Queue[Message] = asyncio.Queue()
        try:
            async with self._lock:
                first = channel not in self._queues
                self._queues.setdefault(channel, set()).add(queue)
                if first and self._up:
                    try:
                        await self._backend.subscribe(channel)
                    except Exception as e:
                        log.warning(
                            "subscribing to %s failed (%s); reconnecting the bus", channel, e
                        )
                        self._backend.fail(e)
            yield _drained(queue)
        finally:  # also when cancelled while subscribing: no queue is left behind
            queues = self._queues.get(channel, set())
            queues.discard(queue)
            if not queues and channel in self._queues:
                del self._queues[channel]
                if self._up:
                    with contextlib.suppress(Exception):
                        await self._backend.unsubscribe(channel)

    async def _listen(self) -> None:
        while True:
            try:
                event = await self._backend.next_published()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning(
                    "the bus (%s) lost its connection: %s; reconnecting", _scheme(self.url), e
                )
                await self._reconnect()
                continue
            try:
                message = json.loads(event.message)
            except (TypeError, ValueError):
                log.warning("ignoring a malformed message on %s", event.channel)
                continue
            if isinstance(message, dict):
                for queue in list(self._queues.get(event.channel, ())):
                    queue.put_nowait(message)

    async def _reconnect(self) -> None:
        self._up = False
        with contextlib.suppress(Exception):
            await self._backend.disconnect()
        delay = self.retry_first_seconds
        while True:
            backend = self._new_backend()
            try:
                await backend.connect()
                async with self._lock:
                    for channel in list(self._queues):
                        await backend.subscribe(channel)
                    self._backend = backend
                    self._up = True
                break
            except BaseException as e:
                with contextlib.suppress(Exception):
                    await backend.disconnect()  # also when cancelled (shutdown): no leak
                if not isinstance(e, Exception):
                    raise
                log.info("the bus is still unreachable (%s); next try in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)
        self.reconnects += 1
        log.warning("the bus (%s) is back; subscriptions restored", _scheme(self.url))
        for queues in list(self._queues.values()):
            for queue in list(queues):
                queue.put_nowait(RECONNECTED)


async def _drained(queue: asyncio.Queue[Message]) -> AsyncIterator[Message]:
    while True:
        yield await queue.get()


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def _scheme(url: str) -> str:
    return url.split(":", 1)[0]
