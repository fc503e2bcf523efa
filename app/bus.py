"""The event bus between API replicas: a thin JSON layer over ``broadcaster``.

One process (``memory://``) needs nothing else; several replicas share ``redis://…`` or
``postgres://…`` so that a write on one replica reaches the elected reconciler, and log lines
pumped by the leader reach subscribers connected to any replica. Messages are JSON objects;
channels are named here so that publishers and subscribers cannot drift apart.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from broadcaster import Broadcast, BroadcastBackend, Event

log = logging.getLogger(__name__)

CHANGES = "dockyard.changes"
"""``{"id", "kind": "spec"|"status"|"deleted", "origin"}``: something about a container changed."""
LOGS_DEMAND = "dockyard.logs-demand"
"""``{"id", "subscriber", "op": "join"|"heartbeat"|"leave"}``: who wants a container's logs."""


def logs_channel(container_id: str) -> str:
    """The channel carrying one container's log lines, as published by the leader's pump."""
    return f"dockyard.logs.{container_id}"


Message = dict[str, Any]


class Bus:
    """Publish and subscribe JSON objects on named channels."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._broadcast = (
            Broadcast(backend=PostgresBackend(url)) if _is_postgres(url) else Broadcast(url)
        )
        self._connected = False

    @property
    def max_message_bytes(self) -> int | None:
        """The largest message the backend carries, when it has a limit: PostgreSQL's NOTIFY
        refuses payloads of 8000 bytes or more."""
        return 7900 if _is_postgres(self.url) else None

    @property
    def shared(self) -> bool:
        """Whether other processes can see what this one publishes."""
        return not self.url.startswith("memory://")

    async def connect(self) -> None:
        await self._broadcast.connect()
        self._connected = True

    async def disconnect(self) -> None:
        if self._connected:
            self._connected = False
            await self._broadcast.disconnect()

    async def publish(self, channel: str, message: Message) -> None:
        await self._broadcast.publish(channel, json.dumps(message, separators=(",", ":")))

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[Message]]:
        """Messages published on ``channel`` from the moment the context is entered."""
        async with self._broadcast.subscribe(channel) as subscriber:
            yield _decoded(subscriber)


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


class PostgresBackend(BroadcastBackend):
    """LISTEN/NOTIFY for broadcaster, safe for concurrent use.

    broadcaster's own postgres backend runs every command on one asyncpg connection, which
    refuses a second command while one is in flight ("another operation is in progress"): a
    publish racing a subscribe failed, and so did the subscription. Here notifications go out
    on a connection of their own, one at a time (which also keeps their order), and
    LISTEN/UNLISTEN are serialized on the listening connection.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._listening: Any = None
        self._notifying: Any = None
        self._listen_lock = asyncio.Lock()
        self._notify_lock = asyncio.Lock()
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    async def connect(self) -> None:
        import asyncpg  # the optional extra: pip install 'dockyard[postgres]'

        self._listening = await asyncpg.connect(self._url)
        self._notifying = await asyncpg.connect(self._url)

    async def disconnect(self) -> None:
        for connection in (self._listening, self._notifying):
            if connection is not None:
                await connection.close()
        self._listening = self._notifying = None

    async def subscribe(self, channel: str) -> None:
        async with self._listen_lock:
            await self._listening.add_listener(channel, self._received)

    async def unsubscribe(self, channel: str) -> None:
        async with self._listen_lock:
            if self._listening is not None and not self._listening.is_closed():
                await self._listening.remove_listener(channel, self._received)

    async def publish(self, channel: str, message: Any) -> None:
        async with self._notify_lock:
            await self._notifying.execute("SELECT pg_notify($1, $2)", channel, str(message))

    def _received(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._events.put_nowait(Event(channel=channel, message=payload))

    async def next_published(self) -> Event:
        return await self._events.get()


async def _decoded(subscriber: Any) -> AsyncIterator[Message]:
    async for event in subscriber:
        try:
            message = json.loads(event.message)
        except (TypeError, ValueError):
            log.warning("ignoring a malformed message on %s", event.channel)
            continue
        if isinstance(message, dict):
            yield message
