"""The Docker Engine API's long-lived streams (logs, events), read asynchronously with aiohttp.

Why not the ``docker`` SDK here: its streams are blocking reads through ``http.client``, which
decodes the chunked transfer encoding in Python, one call per chunk. Podman sends one chunk per
log line, so a chatty container cost about 20 µs per line in the SDK's read path alone, slower
than the container printed. aiohttp parses HTTP in C, hands over everything that arrived in one
block, needs no thread per stream, and closing the response releases the connection at once.

:class:`LogParser` turns those blocks into :class:`LogLine` batches: it splits the multiplexed
frames (8-byte header: stream id, length), keeps partial lines per stream across frames, and
parses each line's timestamp through ``app.domain.logtime`` (a cached dictionary lookup, and
none at all for the many lines that repeat the previous stamp).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from app.domain.logtime import parse_ns
from app.runtime.base import LogLine, RuntimeRejected, RuntimeUnavailable

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">BxxxL")
_STREAM_NAMES = {0: "stdout", 1: "stdout", 2: "stderr"}
DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def connector_for(base_url: str | None) -> tuple[str, str | None]:
    """``(http origin, unix socket path or None)`` of a Docker host URL.

    Accepts ``unix:///path``, ``http+unix://`` (the SDK's spelling), ``tcp://host:port``,
    ``http://`` and ``https://``. Anything else (``ssh://``, ``npipe://``) raises ``ValueError``
    naming the setting.
    """
    url = base_url or DEFAULT_SOCKET
    for prefix in ("unix://", "http+unix://"):
        if url.startswith(prefix):
            return "http://localhost", "/" + url[len(prefix) :].lstrip("/")
    parts = urlsplit(url)
    if parts.scheme in ("tcp", "http", "https") and parts.hostname:
        scheme = "https" if parts.scheme == "https" else "http"
        return f"{scheme}://{parts.netloc}", None
    raise ValueError(
        f"DOCKYARD_DOCKER_HOST={url!r}: use unix:///path/to/docker.sock or tcp://host:port "
        "(for a remote engine over SSH, forward its socket with `ssh -L` and use the local path)"
    )


class EngineStreams:
    """One aiohttp session per event loop for an engine's streaming endpoints."""

    def __init__(self, base_url: str | None, *, api_version: str, connect_timeout: float) -> None:
        self.origin, self.socket_path = connector_for(base_url)
        self.api_version = api_version
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.open_streams = 0
        """Responses being read right now (each holds one engine connection)."""

    def _session_for_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=self.socket_path, limit=0)
                if self.socket_path is not None
                else aiohttp.TCPConnector(limit=0)
            )
            # No read timeout: a quiet container or a calm engine is not an error.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
            self._loop = loop
        return self._session

    @contextlib.asynccontextmanager
    async def open(
        self, action: str, path: str, params: Mapping[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streaming GET; engine errors become the runtime's errors, naming ``action``."""
        url = f"{self.origin}/v{self.api_version}{path}"
        try:
            response = await self._session_for_loop().get(url, params=dict(params))
        except (aiohttp.ClientError, OSError) as e:
            raise RuntimeUnavailable(f"{action}: container engine unreachable: {e}") from e
        self.open_streams += 1
        try:
            if response.status >= 400:
                text = (await response.text()).strip()
                with contextlib.suppress(ValueError):
                    text = str(json.loads(text).get("message") or text)
                if 400 <= response.status < 500:
                    raise RuntimeRejected(f"{action}: {text}")
                raise RuntimeUnavailable(f"{action}: {text}")
            yield response
        except (aiohttp.ClientError, OSError) as e:
            raise RuntimeUnavailable(f"{action}: stream failed: {e}") from e
        finally:
            response.close()  # drops the connection: a half-read stream must not be reused
            self.open_streams -= 1

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            with contextlib.suppress(RuntimeError):  # its loop is gone: nothing left to close
                await self._session.close()
        self._session = None


class LogParser:
    """Multiplexed log stream bytes (with ``timestamps=1``) to :class:`LogLine` batches."""

    def __init__(self, revision: int, *, since_ns: int | None = None) -> None:
        self.revision = revision
        self.since_ns = since_ns
        self._buffer = b""
        self._partial: dict[int, bytes] = {}
        self._last_stamp = b""
        self._last_ns = 0

    def feed(self, data: bytes) -> list[LogLine]:
        """The complete lines in ``data`` (and what earlier calls left over)."""
        buffer = self._buffer + data if self._buffer else data
        lines: list[LogLine] = []
        offset, size = 0, len(buffer)
        while size - offset >= 8:
            stream_id, length = _HEADER.unpack_from(buffer, offset)
            end = offset + 8 + length
            if end > size:
                break
            payload = buffer[offset + 8 : end]
            offset = end
            partial = self._partial.pop(stream_id, b"")
            if partial:
                payload = partial + payload
            pieces = payload.split(b"\n")
            rest = pieces.pop()
            if rest:
                self._partial[stream_id] = rest
            stream = _STREAM_NAMES.get(stream_id, "stdout")
            for piece in pieces:
                self._line(piece, stream, lines)
        self._buffer = buffer[offset:]
        return lines

    def finish(self) -> list[LogLine]:
        """Lines the stream ended without a newline."""
        lines: list[LogLine] = []
        for stream_id, rest in sorted(self._partial.items()):
            self._line(rest, _STREAM_NAMES.get(stream_id, "stdout"), lines)
        self._partial.clear()
        return lines

    def _line(self, raw: bytes, stream: str, into: list[LogLine]) -> None:
        stamp, sep, text = raw.partition(b" ")
        if stamp == self._last_stamp:
            ns = self._last_ns
        else:
            parsed = parse_ns(stamp.decode("ascii", "replace")) if sep else None
            if parsed is None:  # not stamped after all: keep the whole line, stamp it on arrival
                ns, text = time.time_ns(), raw
            else:
                ns = self._last_ns = parsed
                self._last_stamp = stamp
        if self.since_ns is not None and ns < self.since_ns:
            return
        line = text.decode("utf-8", "replace")
        if line.endswith("\r"):
            line = line[:-1]
        into.append(LogLine(ns, line, stream, self.revision))


async def read_log_batches(
    response: aiohttp.ClientResponse, parser: LogParser
) -> AsyncIterator[list[LogLine]]:
    """Batches of lines as they arrive; each read takes everything buffered (up to a block)."""
    content = response.content
    while True:
        # A stream that never runs dry never suspends in readany: yield to the loop once per
        # batch so that it cannot starve every other task of the process.
        await asyncio.sleep(0)
        data = await content.readany()
        if not data:
            break
        lines = parser.feed(data)
        if lines:
            yield lines
    rest = parser.finish()
    if rest:
        yield rest


async def read_json_lines(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Newline-separated JSON objects (the events endpoint); malformed lines are skipped."""
    async for raw in response.content:
        if not raw.strip():
            continue
        try:
            decoded = json.loads(raw)
        except ValueError:
            log.warning("ignoring a malformed engine event: %r", raw[:200])
            continue
        if isinstance(decoded, dict):
            yield decoded
