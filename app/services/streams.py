"""The seam between the transports' live views (GraphQL subscriptions, later REST event
streams) and whatever produces live container data.

The runtime (logs) and the reconciler (status changes) must not import the transports, and the
transports must not import each other, so the port lives here, below both. Providers satisfy it
structurally and are handed over as ``AppState.streams``; with ``streams = None`` GraphQL still
works: ``containerStatus`` polls ``get_container`` and ``containerLogs`` reports ``UNAVAILABLE``.

Authorization is never the provider's job: callers run ``get_container`` first (the same check
as every other read), and only then open a stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Protocol


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


class ContainerStreams(Protocol):
    """Live data about one container, provided by the app state (``AppState.streams``)."""

    def logs(
        self, container_id: str, *, tail: int | None, follow: bool
    ) -> AsyncIterator[LogRecord]:
        """The last ``tail`` lines (all when None), then new ones while ``follow`` is true."""
        ...

    def status(self, container_id: str) -> AsyncIterator[object]:
        """One item per change of the container's status; the item itself is not read.

        The subscription re-reads the container through the service after each item, so a
        provider may signal spuriously or coalesce changes without harm.
        """
        ...
