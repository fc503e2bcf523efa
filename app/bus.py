"""The event bus between API replicas: a thin JSON layer over ``broadcaster``.

One process (``memory://``) needs nothing else; several replicas share ``redis://…`` or
``postgres://…`` so that a write on one replica reaches the elected reconciler, and log lines
pumped by the leader reach subscribers connected to any replica. Messages are JSON objects;
channels are named here so that publishers and subscribers cannot drift apart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from broadcaster import Broadcast

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
        self._broadcast = Broadcast(url)
        self._connected = False

    @property
    def max_message_bytes(self) -> int | None:
        """The largest message the backend carries, when it has a limit: PostgreSQL's NOTIFY
        refuses payloads of 8000 bytes or more."""
        return 7900 if self.url.startswith(("postgres://", "postgresql://")) else None

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


async def _decoded(subscriber: Any) -> AsyncIterator[Message]:
    async for event in subscriber:
        try:
            message = json.loads(event.message)
        except (TypeError, ValueError):
            log.warning("ignoring a malformed message on %s", event.channel)
            continue
        if isinstance(message, dict):
            yield message
