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

import bisect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from typing import Protocol

from app.domain.logtime import format_ns, to_datetime

DROPPED_STREAM = "dropped"
"""The ``stream`` of a marker saying that lines were dropped because the client read too slowly."""

Key = tuple[int, int]


class LogEvent:
    """One line of output with a deterministic id, or a marker of dropped lines.

    ``id`` is ``<ns>-<k>``: the line's timestamp in nanoseconds and ``k``, how many earlier lines
    share that timestamp. Every reader of the runtime's log computes the same id for the same
    line, so a client can resume after the last id it saw (``Last-Event-ID``). A marker has
    ``stream == "dropped"``, ``dropped`` > 0, ``line == "<n> lines dropped"`` and an empty id.
    A plain class with slots: a chatty container makes tens of thousands a second.
    """

    __slots__ = ("dropped", "k", "line", "ns", "revision", "stream")

    def __init__(
        self, ns: int, k: int, line: str, stream: str, revision: int | None, dropped: int = 0
    ) -> None:
        self.ns = ns
        self.k = k
        self.line = line
        self.stream = stream
        self.revision = revision
        self.dropped = dropped

    @classmethod
    def marker(cls, dropped: int, before: LogEvent) -> LogEvent:
        return cls(
            before.ns, 0, f"{dropped} lines dropped", DROPPED_STREAM, before.revision, dropped
        )

    @property
    def id(self) -> str:
        return "" if self.dropped else f"{self.ns}-{self.k}"

    @property
    def key(self) -> Key:
        return self.ns, self.k

    @property
    def timestamp(self) -> datetime:
        return to_datetime(self.ns)

    @property
    def timestamp_text(self) -> str:
        """RFC 3339 UTC with nanoseconds, e.g. ``2026-11-27T11:26:42.352486655Z``."""
        return format_ns(self.ns)

    def __repr__(self) -> str:
        return f"LogEvent({self.id or 'dropped'}, {self.stream}, {self.line!r})"


Render = Callable[[LogEvent], str]


class LogBatch:
    """Consecutive events that travelled together; one object shared by every subscriber of a
    process, so a transport renders each line once per process instead of once per client."""

    __slots__ = ("_joined", "_rendered", "events")

    def __init__(self, events: list[LogEvent]) -> None:
        self.events = events
        self._rendered: tuple[Render, list[str]] | None = None
        self._joined: tuple[Render, str] | None = None

    def rendered(self, render: Render) -> list[str]:
        """``render`` of each event, computed once (for the last ``render`` asked for)."""
        cached = self._rendered
        if cached is None or cached[0] is not render:
            cached = self._rendered = (render, [render(event) for event in self.events])
        return cached[1]

    def joined(self, render: Render) -> str:
        cached = self._joined
        if cached is None or cached[0] is not render:
            cached = self._joined = (render, "".join(self.rendered(render)))
        return cached[1]


class LogChunk:
    """What a subscriber receives: a run of consecutive events, a view on a shared batch."""

    __slots__ = ("batch", "start", "stop")

    def __init__(self, batch: LogBatch, start: int = 0, stop: int | None = None) -> None:
        self.batch = batch
        self.start = start
        self.stop = len(batch.events) if stop is None else stop

    @classmethod
    def of(cls, events: list[LogEvent]) -> LogChunk:
        return cls(LogBatch(events))

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[LogEvent]:
        events = self.batch.events
        return iter(events if self._whole else events[self.start : self.stop])

    @property
    def _whole(self) -> bool:
        return self.start == 0 and self.stop == len(self.batch.events)

    @property
    def first(self) -> LogEvent:
        return self.batch.events[self.start]

    @property
    def last(self) -> LogEvent:
        return self.batch.events[self.stop - 1]

    def after(self, key: Key) -> LogChunk | None:
        """The part of this chunk after ``key`` (events are in key order), or None."""
        if self.first.dropped:  # a marker always goes through
            return self
        if self.last.key <= key:
            return None
        if self.first.key > key:
            return self
        keys = [event.key for event in self.batch.events[self.start : self.stop]]
        return LogChunk(self.batch, self.start + bisect.bisect_right(keys, key), self.stop)

    def text(self, render: Render) -> str:
        """The rendered events, joined; shared with every subscriber that got the whole batch."""
        if self._whole:
            return self.batch.joined(render)
        return "".join(self.batch.rendered(render)[self.start : self.stop])


class StatusChanges(Protocol):
    """What ``ContainerStreams.status`` returns: change signals, closed by ``aclose``."""

    def __aiter__(self) -> AsyncIterator[object]: ...

    def __anext__(self) -> Awaitable[object]: ...

    def aclose(self) -> Awaitable[None]: ...


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
    ) -> AsyncGenerator[LogChunk, None]:
        """The last ``tail`` lines (all when None; only those at or after ``since``), then new
        ones while ``follow`` is true, until the container is deleted; in chunks of consecutive
        lines as they arrived (a marker of dropped lines is a chunk of its own).

        ``after`` is the id of the last line a reconnecting client has: the stream resumes right
        after it (as far as the runtime still has the lines) and ``tail`` is ignored.
        """
        ...

    def status(self, container_id: str) -> StatusChanges:
        """One item per change of the container's status; the item itself is not read.

        The subscription re-reads the container through the service after each item, so a
        provider may signal spuriously or coalesce changes without harm. A provider should
        register the watch when called, not at the first iteration: a subscription creates it
        before it reads the container for the first time, so that no change in between is lost.
        """
        ...
