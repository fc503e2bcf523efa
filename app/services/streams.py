"""The seam between the transports' live views (GraphQL subscriptions, REST event streams) and
whatever produces live container data (``app.streams.LogHub``).

The runtime (logs) and the reconciler (status changes) must not import the transports, and the
transports must not import each other, so the port lives here, below both. Providers satisfy it
structurally and are handed over as ``AppState.streams``; with ``streams = None`` GraphQL still
works: ``containerStatus`` polls ``get_container`` and ``containerLogs`` reports ``UNAVAILABLE``.

Authorization is never the provider's job: callers run ``get_container`` first (the same check
as every other read), and only then open a stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

DROPPED_STREAM = "dropped"
"""The ``stream`` of a marker saying that lines were dropped because the client read too slowly."""


class LogRecord(Protocol):
    """One line of a container's output."""

    @property
    def timestamp(self) -> datetime: ...

    @property
    def line(self) -> str: ...

    @property
    def stream(self) -> str:
        """``stdout`` or ``stderr``."""
        ...

    @property
    def revision(self) -> int | None:
        """The revision whose instance wrote the line, when the runtime knows it."""
        ...


@dataclass(frozen=True)
class LogEvent:
    """One line of output with a deterministic id, or a marker of dropped lines.

    ``id`` is ``<timestamp in ns>-<k>`` where ``k`` counts the earlier lines with the same
    timestamp: every reader of the runtime's log computes the same id for the same line, so a
    client can resume after the last id it saw (``Last-Event-ID``). A marker has
    ``stream == "dropped"``, ``dropped`` > 0, ``line == "<n> lines dropped"`` and the id of the
    last line before the gap.
    """

    id: str
    timestamp: datetime
    line: str
    stream: str
    revision: int | None
    dropped: int = 0


class ContainerStreams(Protocol):
    """Live data about one container, provided by the app state (``AppState.streams``)."""

    def logs(
        self,
        container_id: str,
        *,
        tail: int | None,
        follow: bool,
        since: datetime | None = None,
        after: str | None = None,
    ) -> AsyncIterator[LogEvent]:
        """The last ``tail`` lines (all when None; only those at or after ``since``), then new
        ones while ``follow`` is true, until the container is deleted.

        ``after`` is the id of the last line a reconnecting client has: the stream resumes right
        after it (as far as the runtime still has the lines) and ``tail`` is ignored.
        """
        ...

    def status(self, container_id: str) -> AsyncIterator[object]:
        """One item per change of the container's status; the item itself is not read.

        The subscription re-reads the container through the service after each item, so a
        provider may signal spuriously or coalesce changes without harm.
        """
        ...
