"""The activator: where the proxy sends requests for a revision that has no ready instance.

Every ``dockyard serve`` runs one. For each such revision it listens on a loopback TCP port of its
own (``address(container_id, revision)``, ``127.0.0.1:<port>``: the route resolver hands Caddy
addresses as SRV records, which carry a port, not a path), so the port a request arrives on says
which revision it is for. All sockets share one aiohttp ``AppRunner``
(aiohttp is already a dependency; its server streams bodies both ways, which is all we need).

A request is *held* (at most ``max_held`` per revision, at most ``max_wait_seconds``, else 503
with ``Retry-After``) while one waker per revision asks for instances through ``wake`` (a service
function writing ``revisions.instances_desired``: the leader's reconciler hears of it from any
replica through the database and the bus) and watches the revision through ``serving`` until it
has a ready endpoint. A burst asks for one instance, or for ceil(held / concurrency) when the
revision's concurrency target asks for more. The held requests are then forwarded to the ready
instances (round robin), streamed, with their headers and ``X-Forwarded-*``. A revision that
fails while waking answers 503 and the reason, which the reconciler also keeps on the revision.

Two signals shorten the wait when they are there; the database poll stays the rule (it is what
another replica's activator has): ``instance_ready`` (the runtime of this process, the leader's,
saw a new instance of the revision accept connections: the held requests go there at once,
before the reconciler writes the revision's endpoints) and ``changed`` (the reconciler of this
process wrote the container's rows: the waker reads them now rather than at its next poll).

Once the revision is ready the proxy is reprogrammed to reach its instances directly; a socket
nobody asked for since ``idle_close_seconds`` and that holds nothing is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from app.services.scaling import RevisionKey, RevisionServing

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
Wake = Callable[[str, int, int], Awaitable[object]]
"""(container_id, revision, instances) -> ask for at least that many instances."""
Serving = Callable[[str, int], Awaitable[RevisionServing]]
"""(container_id, revision) -> where the revision stands (from the database)."""


@dataclass(frozen=True)
class ActivatorOptions:
    max_held: int = 1000
    """Requests held per revision; more are answered 503 at once."""
    max_wait_seconds: float = 120.0
    """How long a request waits for an instance before a 503 (``Retry-After``)."""
    poll_seconds: float = 0.02
    """How often a waking revision is looked at."""
    retry_after_seconds: int = 5
    idle_close_seconds: float = 600.0
    upstream_timeout_seconds: float = 300.0
    reconnect_seconds: float = 2.0
    """How long a request whose instance could not be reached is tried again (with the
    revision's endpoints as the database has them by then) before a 503."""


class RevisionUnavailable(Exception):
    """The revision cannot be served now; ``reason`` says why (answered as 503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Cold:
    """One revision the activator serves."""

    sock: socket.socket | None = None
    """Bound and listening from the moment its address is handed out: connections wait in the
    backlog until the site accepts them, so the proxy never dials a missing socket."""
    site: web.SockSite | None = None
    held: int = 0
    forwarding: int = 0
    waker: asyncio.Task[tuple[str, ...]] | None = None
    last_used: float = 0.0
    concurrency: int = 80
    ready: tuple[str, ...] = ()
    """Endpoints the runtime of this process said accept connections, during this burst's wake
    (``instance_ready``): the held requests go there before the reconciler records them."""
    nudge: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when something may have changed for the revision: the waker looks again at once."""


def _dial(sock: socket.socket | None) -> str:
    assert sock is not None
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


class Activator:
    def __init__(
        self,
        *,
        wake: Wake,
        serving: Serving,
        options: ActivatorOptions | None = None,
    ) -> None:
        self.wake = wake
        self.serving = serving
        self.options = options or ActivatorOptions()
        self._cold: dict[RevisionKey, _Cold] = {}
        self._ports: dict[int, RevisionKey] = {}
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._round_robin = itertools.count()
        self._opening: dict[RevisionKey, asyncio.Task[str]] = {}
        self._bind_lock = threading.Lock()
        self.started_waking = 0
        """Wakers started since the process started (one per burst at zero)."""

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self._session = aiohttp.ClientSession(
            # The cold path only: a fresh connection per request never meets one the instance
            # closed meanwhile (busybox httpd, for one, closes after every answer).
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=5, sock_read=self.options.upstream_timeout_seconds
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def stop(self) -> None:
        for task in list(self._opening.values()):
            task.cancel()
        for cold in self._cold.values():
            if cold.waker is not None:
                cold.waker.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for cold in self._cold.values():
            if cold.sock is not None:
                cold.sock.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._cold.clear()
        self._ports.clear()

    # -- sockets --------------------------------------------------------------------------------

    def address(self, container_id: str, revision: int) -> str:
        """The proxy's dial address for the revision (``127.0.0.1:<port>``). Its socket is bound and
        listening when this returns (the routing table of every replica calls this, possibly
        from a worker thread); the site that accepts on it starts on the event loop."""
        key = (container_id, revision)
        self._bind(key)
        cold = self._cold[key]
        cold.last_used = time.monotonic()
        if cold.site is None:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
                except RuntimeError:
                    running = None
                if running is loop:
                    self._open_soon(key)
                else:
                    loop.call_soon_threadsafe(self._open_soon, key)
        return _dial(self._cold[key].sock)

    def serves(self, address: str) -> bool:
        """Whether ``address`` (``127.0.0.1:<port>``) is one of this activator's sockets: the
        HAProxy engine routes a host that only reaches the activator without a backend."""
        host, _, port = address.rpartition(":")
        return host == "127.0.0.1" and port.isdigit() and int(port) in self._ports

    def _bind(self, key: RevisionKey) -> socket.socket:
        with self._bind_lock:
            cold = self._cold.setdefault(key, _Cold())
            if cold.sock is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind(("127.0.0.1", 0))
                    sock.listen(1024)
                    sock.setblocking(False)
                except OSError:
                    sock.close()
                    raise
                cold.sock = sock
                self._ports[int(sock.getsockname()[1])] = key
            return cold.sock

    def _open_soon(self, key: RevisionKey) -> None:
        if key in self._opening or (key in self._cold and self._cold[key].site is not None):
            return
        task = asyncio.create_task(self.open(*key), name=f"activator-open-{key[0]}-r{key[1]}")
        self._opening[key] = task
        task.add_done_callback(lambda _t: self._opening.pop(key, None))

    async def open(self, container_id: str, revision: int) -> str:
        """Listen for the revision and accept on it (idempotent); returns its dial address."""
        assert self._runner is not None, "start() first"
        key = (container_id, revision)
        sock = self._bind(key)
        cold = self._cold[key]
        cold.last_used = time.monotonic()
        if cold.site is None:
            site = web.SockSite(self._runner, sock)
            cold.site = site
            await site.start()
        return _dial(self._cold[key].sock)

    async def close_idle(self) -> None:
        """Close the sockets nobody asked for lately and that hold no request."""
        now = time.monotonic()
        for key, cold in list(self._cold.items()):
            busy = cold.held or cold.forwarding
            if busy or now - cold.last_used < self.options.idle_close_seconds:
                continue
            self._ports = {port: k for port, k in self._ports.items() if k != key}
            if cold.site is not None:
                await cold.site.stop()
            if cold.sock is not None:
                cold.sock.close()
            del self._cold[key]

    def instance_ready(self, container_id: str, revision: int, endpoints: tuple[str, ...]) -> None:
        """The runtime of this process saw a new instance of the revision accept connections
        (``app.runtime.base.SignalsReady``; called on the event loop). A burst waking the
        revision forwards to it now, not once the reconciler has written it down and the
        waker's next look has read it back; requests to a revision nobody is waking ignore it."""
        cold = self._cold.get((container_id, revision))
        if cold is None or cold.waker is None or cold.waker.done() or not endpoints:
            return
        cold.ready = endpoints
        cold.nudge.set()

    def changed(self, container_id: str) -> None:
        """The container's rows may have changed (the reconciler wrote them): wakers of its
        revisions look at the database again now rather than at their next poll."""
        for (cid, _revision), cold in list(self._cold.items()):
            if cid == container_id and cold.waker is not None and not cold.waker.done():
                cold.nudge.set()

    def held(self) -> dict[RevisionKey, int]:
        """Requests the activator holds or forwards, per revision (for the autoscaler)."""
        return {
            key: cold.held + cold.forwarding
            for key, cold in list(self._cold.items())
            if cold.held or cold.forwarding
        }

    # -- requests -------------------------------------------------------------------------------

    def _unavailable(self, reason: str) -> web.Response:
        return web.Response(
            status=503,
            text=f"service unavailable: {reason}\n",
            headers={"Retry-After": str(self.options.retry_after_seconds)},
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        key = self._ports.get(int(sockname[1])) if isinstance(sockname, tuple) else None
        if key is None:
            return self._unavailable("unknown revision")
        cold = self._cold[key]
        cold.last_used = time.monotonic()
        if cold.held >= self.options.max_held:
            return self._unavailable("too many requests waiting for an instance")
        cold.held += 1
        try:
            endpoints = await asyncio.wait_for(
                asyncio.shield(self._waker(key, cold)), self.options.max_wait_seconds
            )
        except TimeoutError:
            return self._unavailable(f"no instance ready within {self.options.max_wait_seconds:g}s")
        except RevisionUnavailable as e:
            return self._unavailable(e.reason)
        finally:
            cold.held -= 1
        cold.forwarding += 1
        try:
            return await self._forward(request, key, endpoints)
        finally:
            cold.forwarding -= 1

    def _waker(self, key: RevisionKey, cold: _Cold) -> asyncio.Task[tuple[str, ...]]:
        if cold.waker is None or cold.waker.done():
            cold.ready = ()  # what a runtime said during an earlier burst says nothing now
            cold.nudge.clear()
            cold.waker = asyncio.create_task(self._wake(key, cold), name=f"activator-wake-{key}")
            self.started_waking += 1
        return cold.waker

    async def _wake(self, key: RevisionKey, cold: _Cold) -> tuple[str, ...]:
        """Ask for instances until the revision has ready endpoints; one task per burst."""
        container_id, revision = key
        asked = 0
        deadline = time.monotonic() + self.options.max_wait_seconds
        while True:
            if cold.ready:
                return cold.ready
            state = await self.serving(container_id, revision)
            if not state.exists:
                raise RevisionUnavailable("the revision no longer exists")
            if state.endpoints:
                return state.endpoints
            if state.failed:
                raise RevisionUnavailable(
                    f"revision {revision} failed: {state.state_reason}: {state.state_message}"
                )
            cold.concurrency = state.concurrency or cold.concurrency
            wanted = max(1, math.ceil(cold.held / max(cold.concurrency, 1)))
            if state.max_instances:
                wanted = min(wanted, state.max_instances)
            if wanted > asked:
                await self.wake(container_id, revision, wanted)
                asked = wanted
            if time.monotonic() > deadline:
                raise TimeoutError
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cold.nudge.wait(), self.options.poll_seconds)
            cold.nudge.clear()

    async def _forward(
        self, request: web.Request, key: RevisionKey, endpoints: tuple[str, ...]
    ) -> web.StreamResponse:
        assert self._session is not None
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_BY_HOP
        )
        headers.setdefault("X-Forwarded-Host", request.host)
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        if request.remote:
            headers.setdefault("X-Forwarded-For", request.remote)
        body = request.content if request.can_read_body else None
        if body is not None and "Content-Length" not in headers:
            headers["Transfer-Encoding"] = "chunked"
        deadline = time.monotonic() + self.options.reconnect_seconds
        for attempt in itertools.count():
            endpoint = endpoints[next(self._round_robin) % len(endpoints)]
            try:
                upstream = await self._session.request(
                    request.method,
                    f"http://{endpoint}{request.rel_url}",
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                )
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as e:
                # Not connected: nothing of the body was read, so even a request with one can
                # go again. The instance went away meanwhile, or its route is not in place yet:
                # ask where the revision stands now, and try again for a short while.
                replayable = body is None or isinstance(e, aiohttp.ClientConnectorError)
                if replayable and time.monotonic() < deadline:
                    log.info("forwarding to %s failed (%s); trying again", endpoint, e)
                    state = await self.serving(*key)
                    if not state.exists or state.failed:
                        return self._unavailable("the instance could not be reached")
                    endpoints = state.endpoints or endpoints
                    await asyncio.sleep(min(0.01 * 2**attempt, 0.2))
                    continue
                log.warning("forwarding to %s failed: %s", endpoint, e)
                return self._unavailable("the instance could not be reached")
            except aiohttp.ClientError as e:
                log.warning("forwarding to %s failed: %s", endpoint, e)
                return web.Response(status=502, text=f"bad gateway: {e}\n")
            break
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            upstream.release()
