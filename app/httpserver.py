"""uvicorn's HTTP protocols with a deadline on request headers.

uvicorn times out idle keep-alive connections, but not a connection whose request headers never
finish: a client sending one header byte now and then (or nothing after connecting) holds a
socket and its buffers for ever, and a thousand of them exhaust the server (issue 16). uvicorn
accepts a protocol class as ``http=``; these subclasses add one timer per connection: a
connection that has not completed the headers of a new request within ``header_timeout``
seconds, while no request of it is being served, is closed. A request being answered (an SSE
stream, an upload) is never cut by it, and a connection upgraded to a WebSocket leaves it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # the C parser of uvicorn[standard]; h11 is the fallback, as in uvicorn itself
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class _HeaderDeadline:
    """Mixin for uvicorn's protocols (which keep the current request in ``self.cycle``)."""

    header_timeout: float = 10.0
    cycle: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._deadline_cycle: object = self.cycle
        self._deadline = self.loop.call_later(self.header_timeout, self._check_headers)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _check_headers(self) -> None:
        current: object = self.transport.get_protocol()
        if self.transport.is_closing() or current is not self:
            return  # closed, or handed over to a WebSocket protocol
        cycle = self.cycle
        waiting = cycle is None or cycle.response_complete
        if waiting and cycle is self._deadline_cycle:
            # No request started (or finished being answered) for a whole period while the
            # client could have sent one: its headers are overdue.
            self.transport.close()
            return
        self._deadline_cycle = cycle
        self._deadline = self.loop.call_later(self.header_timeout, self._check_headers)


def http_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.run(http=…)``: httptools when installed, else h11."""
    base: type[Any] = HttpToolsProtocol if HttpToolsProtocol is not None else H11Protocol
    return type(
        f"HeaderDeadline{base.__name__}",
        (_HeaderDeadline, base),
        {"header_timeout": header_timeout},
    )


def h11_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """The same on the pure-Python h11 parser."""
    return type(
        "HeaderDeadlineH11Protocol",
        (_HeaderDeadline, H11Protocol),
        {"header_timeout": header_timeout},
    )
