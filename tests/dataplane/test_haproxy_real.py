"""The data plane on a real HAProxy (Debian's 2.6), started by ``HAProxySupervisor``.

Upstreams are the small Python servers of ``test_caddy_real`` on 127.0.0.1 (the proxy is what is
under test): routing, 404/503, X-Forwarded-*, streaming, WebSockets, a 90/10 split over 10,000
requests, tag hosts, a host routed straight to one address (the activator's) without a backend,
route changes with a request in flight and under load (no reload, no failed request), spare
backends running out (one seamless reload), in-flight counts per upstream, HAProxy killed ->
restarted, and an HAProxy left behind by a dead supervisor adopted by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

from app.dataplane.haproxy import HAProxyOptions
from app.dataplane.haproxy_supervisor import HAProxySupervisor, cli, haproxy_binary
from app.dataplane.routes import RoutingTable
from app.dataplane.supervisor import free_port, run_dir
from tests.dataplane.test_caddy_real import route, split_counts, upstream, upstreams

__all__ = ["upstreams"]  # the fixture, shared with the Caddy tests

if haproxy_binary() is None:  # pragma: no cover - .ci/run installs it
    pytest.skip("haproxy is not installed (apt-get install haproxy)", allow_module_level=True)


def options_for(tmp_path: Path, port: int, **extra: object) -> HAProxyOptions:
    directory = run_dir(tmp_path, "haproxy")
    return HAProxyOptions(
        listen=f"127.0.0.1:{port}",
        directory=str(directory),
        domain="localhost",
        **extra,  # type: ignore[arg-type]
    )


def supervisor_for(tmp_path: Path, options: HAProxyOptions, **extra: object) -> HAProxySupervisor:
    return HAProxySupervisor(
        options=options,
        directory=run_dir(tmp_path, "haproxy"),
        check_interval=0.2,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[HAProxySupervisor]:
    supervisor = supervisor_for(tmp_path, options_for(tmp_path, free_port()))
    await supervisor.start(())
    yield supervisor
    await supervisor.stop()


def url(supervisor: HAProxySupervisor) -> str:
    return f"http://{supervisor.options.listen}"


async def test_routing_404_503_and_forwarded_headers(
    proxy: HAProxySupervisor, upstreams: dict[str, str]
) -> None:
    table: RoutingTable = (
        route("app.localhost", (upstreams["one"], 1, 1)),
        route("cold.localhost"),
    )
    assert await proxy.apply(table)
    assert not await proxy.apply(table)  # unchanged
    assert await proxy.converged()
    async with httpx.AsyncClient(base_url=url(proxy)) as client:
        ok = await client.get(
            "/x?q=1", headers={"Host": "App.localhost:8000", "X-Forwarded-For": "203.0.113.9"}
        )
        assert ok.status_code == 200
        seen = ok.json()
        assert seen["name"] == "one" and seen["path"] == "/x?q=1"
        # HAProxy sends header names in lowercase (HTTP/1 names are case-insensitive).
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        assert headers["host"] == "App.localhost:8000"
        assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
        assert headers["x-forwarded-host"] == "App.localhost:8000"
        assert headers["x-forwarded-proto"] == "http"
        posted = await client.post("/", headers={"Host": "app.localhost"}, content=b"x" * 300_000)
        assert posted.content == b"x" * 300_000

        cold = await client.get("/", headers={"Host": "cold.localhost"})
        assert cold.status_code == 503 and cold.headers["retry-after"] == "2"
        assert cold.text == "cold.localhost has no ready revision yet; retry shortly\n"
        unknown = await client.get("/", headers={"Host": "nope.localhost"})
        assert unknown.status_code == 404 and unknown.text == "no container serves this host\n"
        # Two labels under the domain is not a container host: the API (none here) answers.
        deeper = await client.get("/", headers={"Host": "a.app.localhost"})
        assert deeper.status_code == 404 and deeper.text == "not found\n"

    failed = (route("app.localhost"),)
    await proxy.apply((failed[0].__class__("app.localhost", "c1", (), failed=True),))
    async with httpx.AsyncClient(base_url=url(proxy)) as client:
        dead = await client.get("/", headers={"Host": "app.localhost"})
        assert dead.status_code == 503 and "retry-after" not in dead.headers
        assert "container failed" in dead.text


async def test_an_untrusted_peers_forwarded_headers_are_replaced(
    tmp_path: Path, upstreams: dict[str, str]
) -> None:
    options = options_for(tmp_path, free_port(), trusted_proxies=("192.0.2.0/24",))
    supervisor = supervisor_for(tmp_path, options)
    await supervisor.start((route("app.localhost", (upstreams["one"], 1, 1)),))
    try:
        async with httpx.AsyncClient(base_url=url(supervisor)) as client:
            seen = (
                await client.get(
                    "/",
                    headers={
                        "Host": "app.localhost",
                        "X-Forwarded-For": "203.0.113.9",
                        "X-Forwarded-Proto": "https",
                    },
                )
            ).json()
        assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert seen["headers"]["x-forwarded-proto"] == "http"
    finally:
        await supervisor.stop()


async def test_a_host_routed_straight_to_one_address_needs_no_backend(
    tmp_path: Path, upstreams: dict[str, str]
) -> None:
    """The activator's address (a revision at zero): ``set-dst`` to the one ``direct``
    backend, so 100k hosts at zero cost map entries, not backends."""
    activators = {upstreams["two"], upstreams["three"]}
    supervisor = supervisor_for(
        tmp_path, options_for(tmp_path, free_port()), direct=lambda a: a in activators
    )
    await supervisor.start(())
    try:
        await supervisor.apply(
            (
                route("cold.localhost", (upstreams["two"], 1, 1)),
                route("idle.localhost", (upstreams["three"], 1, 1)),
                route("warm.localhost", (upstreams["one"], 1, 1)),
            )
        )
        config = supervisor.config_file.read_text()
        async with httpx.AsyncClient(base_url=url(supervisor)) as client:
            # One keep-alive connection, alternating hosts: HAProxy's pooled connections to
            # the direct backend are told apart by destination.
            for _ in range(5):
                names = [
                    (await client.get("/", headers={"Host": f"{h}.localhost"})).json()["name"]
                    for h in ("cold", "idle", "warm")
                ]
                assert names == ["two", "three", "one"]
        assert not any(a in config for a in activators)  # never a server of any backend
        assert supervisor.reloads == 0
    finally:
        await supervisor.stop()


async def test_responses_stream_through(
    proxy: HAProxySupervisor, upstreams: dict[str, str]
) -> None:
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)),))
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


async def test_websocket_echo(proxy: HAProxySupervisor) -> None:
    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(f"echo:{message}")

    async with ws_serve(echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        await proxy.apply((route("ws.localhost", (f"127.0.0.1:{port}", 1, 1)),))
        proxy_port = int(proxy.options.listen.rsplit(":", 1)[1])
        async with ws_connect(
            f"ws://ws.localhost:{proxy_port}/chat", host="127.0.0.1", port=proxy_port
        ) as connection:
            for n in range(3):
                await connection.send(f"hello {n}")
                assert await connection.recv() == f"echo:hello {n}"


async def test_ninety_ten_split_and_tag_host(
    proxy: HAProxySupervisor, upstreams: dict[str, str]
) -> None:
    table = (
        route("next---app.localhost", (upstreams["three"], 1, 2)),
        route(
            "app.localhost",
            (upstreams["one"], 9, 1),
            (upstreams["two"], 9, 1),
            (upstreams["three"], 2, 2),
        ),
    )
    await proxy.apply(table)
    total = 10_000
    counts, tagged = await split_counts(url(proxy), total)
    assert abs((counts["one"] + counts["two"]) / total - 0.9) <= 0.02, counts
    assert abs(counts["three"] / total - 0.1) <= 0.02, counts
    assert tagged == {"three": 50}


async def test_a_route_change_keeps_in_flight_requests_and_reports_them(
    proxy: HAProxySupervisor, upstreams: dict[str, str]
) -> None:
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)),))
    async with httpx.AsyncClient(base_url=url(proxy)) as client:
        slow = [
            asyncio.create_task(client.get("/slow", headers={"Host": "app.localhost"}))
            for _ in range(2)
        ]
        await asyncio.sleep(0.5)
        assert (await proxy.upstreams()).get(upstreams["one"]) == 2
        # Move the host to another upstream while the requests are in flight.
        await proxy.apply((route("app.localhost", (upstreams["two"], 1, 1)),))
        moved = await client.get("/", headers={"Host": "app.localhost"})
        assert moved.json()["name"] == "two"
        assert (await proxy.upstreams()).get(upstreams["one"]) == 2  # draining, still counted
        for task in slow:
            finished = await task
            assert finished.status_code == 200 and finished.json()["name"] == "one"
    assert proxy.reloads == 0
    for _ in range(75):  # the retired server is deleted once drained
        if upstreams["one"] not in await proxy.upstreams():
            break
        await asyncio.sleep(0.2)
    assert upstreams["one"] not in await proxy.upstreams()


async def test_instances_added_at_run_time_keep_upstream_connections_alive(
    proxy: HAProxySupervisor, upstreams: dict[str, str]
) -> None:
    """The throughput bar needs keep-alive to upstreams: an instance given to a server slot at
    run time reuses its connections (a server made with ``add server`` would not, in 2.6)."""
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)),))
    await proxy.apply((route("app.localhost", (upstreams["two"], 1, 1)),))
    async with httpx.AsyncClient(base_url=url(proxy)) as client:
        for _ in range(50):
            response = await client.get("/", headers={"Host": "app.localhost"})
            assert response.json()["name"] == "two"
    stat = await cli(proxy.options.stats_socket, "show stat -1 4 -1")
    rows = [r for r in csv.DictReader(io.StringIO(stat.removeprefix("# "))) if r["scur"]]
    (served,) = [r for r in rows if r["pxname"].startswith("h") and r["stot"] == "50"]
    assert int(served["connect"]) <= 2 and int(served["reuse"]) >= 48, served
    assert proxy.reloads == 0


async def wait_until_serving(supervisor: HAProxySupervisor, host: str, name: str) -> None:
    deadline = time.monotonic() + 15
    async with httpx.AsyncClient(base_url=url(supervisor), timeout=2) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = await client.get("/", headers={"Host": host})
                if response.status_code == 200 and response.json()["name"] == name:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{host} did not reach {name}")


async def test_killed_haproxy_is_restarted_and_reprogrammed(
    proxy: HAProxySupervisor, upstreams: dict[str, str]
) -> None:
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)),))
    await proxy.apply((route("app.localhost", (upstreams["two"], 1, 1)),))  # at run time
    pid = proxy._pid()
    assert pid is not None
    workers = psutil.Process(pid).children()
    assert workers
    os.kill(pid, signal.SIGKILL)  # the HAProxy master this test's supervisor started
    await asyncio.sleep(0.5)
    await wait_until_serving(proxy, "app.localhost", "two")
    assert proxy.restarts == 1
    assert proxy._pid() not in (None, pid)
    # Its worker left with it: no stale HAProxy shares the port.
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert all(w.status() == psutil.STATUS_ZOMBIE for w in alive), alive


async def test_an_haproxy_left_running_is_adopted(
    tmp_path: Path, upstreams: dict[str, str]
) -> None:
    options = options_for(tmp_path, free_port())
    first = supervisor_for(tmp_path, options)
    await first.start((route("app.localhost", (upstreams["one"], 1, 1)),))
    pid = first._pid()
    assert pid is not None
    try:
        # The supervisor dies without stopping HAProxy (as with kill -9): it keeps serving.
        assert first._watch is not None
        first._watch.cancel()
        await wait_until_serving(first, "app.localhost", "one")

        second = supervisor_for(tmp_path, options)
        await second.start((route("app.localhost", (upstreams["two"], 1, 1)),))
        assert second.adopted
        assert second._pid() == pid
        assert second.reloads == 0  # its routes were read and changed at run time
        await wait_until_serving(second, "app.localhost", "two")
        await second.apply((route("app.localhost", (upstreams["three"], 1, 1)),))
        await wait_until_serving(second, "app.localhost", "three")
        await second.stop()
        assert second._pid() is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if first._process is not None:
            first._process.wait(5)


async def test_route_changes_under_load_reload_nothing_and_fail_no_request(
    proxy: HAProxySupervisor, upstreams: dict[str, str]
) -> None:
    """Hosts come and go, move between instances and splits, 100 times, while six clients (new
    and keep-alive connections) send requests: not one fails and nothing is reloaded."""
    names = ["one", "two", "three"]
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)),))
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
        name, other = names[step % 3], names[(step + 1) % 3]
        table: RoutingTable = (route("app.localhost", (upstreams[name], 1, 1)),)
        if step % 2:  # a split over two instances, and another host that comes and goes
            table = (
                route("app.localhost", (upstreams[name], 3, 1), (upstreams[other], 1, 1)),
                route(f"x{step}.localhost", (upstreams[other], 1, 1)),
            )
        await proxy.apply(table)
        await asyncio.sleep(0.03)
    stop.set()
    await asyncio.gather(*clients)
    assert errors == []
    assert sum(answered.values()) > 100 and len(answered) == 3, answered
    assert proxy.reloads == 0
    async with httpx.AsyncClient(base_url=url(proxy)) as client:
        last = await client.get("/", headers={"Host": "app.localhost"})
        assert last.json()["name"] in (names[99 % 3], names[100 % 3])


async def test_spare_backends_running_out_reload_seamlessly(
    proxy: HAProxySupervisor, upstreams: dict[str, str]
) -> None:
    """More new hosts with instances than spare backends: one reload with new spares, and a
    client opening a new connection per request meanwhile sees no error."""
    stop = asyncio.Event()
    errors: list[str] = []
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)),))

    async def client_loop() -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url(proxy), limits=limits, timeout=5) as client:
            while not stop.is_set():
                try:
                    response = await client.get("/", headers={"Host": "app.localhost"})
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}")
                except httpx.HTTPError as e:
                    errors.append(repr(e))

    clients = [asyncio.create_task(client_loop()) for _ in range(3)]
    many = tuple(route(f"h{n}.localhost", (upstreams["two"], 1, 1)) for n in range(80))
    await asyncio.sleep(0.2)
    await proxy.apply((route("app.localhost", (upstreams["one"], 1, 1)), *many))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*clients)
    assert proxy.reloads == 1
    assert errors == []
    async with httpx.AsyncClient(base_url=url(proxy)) as client:
        assert (await client.get("/", headers={"Host": "h79.localhost"})).json()["name"] == "two"


async def test_a_stopped_upstream_costs_a_retry_not_an_error(
    proxy: HAProxySupervisor, upstreams: dict[str, str]
) -> None:
    """An instance that just went away (its port refuses) while still listed: the request is
    retried on the other server."""
    with upstream("gone") as gone:
        pass  # closed: its port now refuses connections
    await proxy.apply((route("app.localhost", (gone, 1, 1), (upstreams["one"], 1, 1)),))
    async with httpx.AsyncClient(base_url=url(proxy)) as client:
        for _ in range(10):
            response = await client.get("/", headers={"Host": "app.localhost"})
            assert response.status_code == 200 and response.json()["name"] == "one"
