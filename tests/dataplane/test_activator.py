"""The activator on its real loopback ports, forwarding to a real local HTTP server; the database
side (``wake``/``serving``) is an in-memory stand-in behind the activator's own interface. The
same activator wakes real Podman revisions in tests/e2e/test_scale_to_zero.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from app.dataplane.activator import Activator, ActivatorOptions
from app.services.scaling import RevisionServing


class Revision:
    """Where one revision stands; ``wake`` makes it ready after ``start_delay``."""

    def __init__(self, endpoint: str, *, start_delay: float = 0.1, fails: bool = False) -> None:
        self.endpoint = endpoint
        self.start_delay = start_delay
        self.fails = fails
        self.wakes: list[int] = []
        self.ready = False
        self.failed = False
        self.woken = asyncio.Event()

    async def wake(self, _container_id: str, _revision: int, instances: int) -> bool:
        self.wakes.append(instances)
        self.woken.set()
        loop = asyncio.get_running_loop()
        if self.start_delay >= 0:
            loop.call_later(self.start_delay, self._started)
        return True

    def _started(self) -> None:
        if self.fails:
            self.failed = True
        else:
            self.ready = True

    async def serving(self, _container_id: str, _revision: int) -> RevisionServing:
        if self.failed:
            return RevisionServing(
                exists=True,
                serving_state="failed",
                state_reason="CrashLoopBackOff",
                state_message="exited with code 3",
            )
        if self.ready:
            return RevisionServing(
                exists=True, serving_state="serving", endpoints=(self.endpoint,), concurrency=80
            )
        return RevisionServing(exists=True, serving_state="scaled-to-zero", concurrency=80)


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        lines = [f"{request.method} {request.path_qs}"]
        lines += [f"{name}: {value}" for name, value in sorted(request.headers.items())]
        await asyncio.sleep(0.05)
        return web.Response(
            status=201,
            text="\n".join(lines) + "\n\n" + body.decode(),
            headers={"X-Upstream": "yes"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


async def make(tmp_path: Path, revision: Revision, **options: float) -> Activator:
    options.setdefault("poll_seconds", 0.01)
    activator = Activator(
        wake=revision.wake,
        serving=revision.serving,
        options=ActivatorOptions(**options),  # type: ignore[arg-type]
    )
    await activator.start()
    return activator


async def send(
    address: str, method: str = "GET", path: str = "/", body: bytes | None = None
) -> tuple[int, str, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            f"http://{address}{path}",
            data=body,
            headers={"X-Custom": "kept", "Host": "web.example.test"},
            timeout=aiohttp.ClientTimeout(10),
        ) as response,
    ):
        return response.status, await response.text(), dict(response.headers)


async def test_holds_a_request_wakes_the_revision_and_forwards_it(
    tmp_path: Path, upstream: str
) -> None:
    revision = Revision(upstream)
    activator = await make(tmp_path, revision)
    try:
        address = activator.address("c1", 3)
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert activator.address("c1", 3) == address  # one port per revision, kept
        status, text, headers = await send(address, "POST", "/cgi?x=1", b"hello body")
        assert status == 201 and headers["X-Upstream"] == "yes"
        assert text.startswith("POST /cgi?x=1\n")
        assert "X-Custom: kept" in text and "X-Forwarded-Host: web.example.test" in text
        assert "X-Forwarded-Proto: http" in text
        assert text.endswith("\n\nhello body")
        assert revision.wakes == [1]
    finally:
        await activator.stop()


async def test_a_burst_asks_for_one_instance(tmp_path: Path, upstream: str) -> None:
    revision = Revision(upstream, start_delay=0.3)
    activator = await make(tmp_path, revision)
    try:
        address = await activator.open("c1", 1)
        answers = await asyncio.gather(*(send(address) for _ in range(50)))
        assert [a[0] for a in answers] == [201] * 50
        assert revision.wakes == [1] and activator.started_waking == 1
        assert activator.held() == {}
    finally:
        await activator.stop()


async def test_bounded_wait_and_bounded_queue_answer_503_with_retry_after(
    tmp_path: Path, upstream: str
) -> None:
    revision = Revision(upstream, start_delay=-1)  # never ready
    activator = await make(tmp_path, revision, max_wait_seconds=0.5, max_held=2)
    try:
        address = await activator.open("c1", 1)
        answers = await asyncio.gather(*(send(address) for _ in range(3)))
        statuses = sorted(a[0] for a in answers)
        assert statuses == [503, 503, 503]
        assert all(a[2]["Retry-After"] == "5" for a in answers)
        texts = sorted(a[1] for a in answers)
        assert "too many requests waiting" in texts[-1]
        assert sum("no instance ready within 0.5s" in t for t in texts) == 2
    finally:
        await activator.stop()


async def test_a_revision_failing_on_wake_answers_503_with_its_reason(
    tmp_path: Path, upstream: str
) -> None:
    revision = Revision(upstream, fails=True)
    activator = await make(tmp_path, revision)
    try:
        address = await activator.open("c1", 1)
        status, text, headers = await send(address)
        assert status == 503 and headers["Retry-After"] == "5"
        assert "CrashLoopBackOff: exited with code 3" in text
    finally:
        await activator.stop()


async def test_forwards_when_the_runtime_says_an_instance_accepts_before_the_database_does(
    tmp_path: Path, upstream: str
) -> None:
    """``instance_ready`` (the local runtime dialed the new instance's port) sends the held
    requests there at once; the database still says nothing is ready."""
    revision = Revision(upstream, start_delay=-1)  # the database never shows an endpoint
    activator = await make(tmp_path, revision, poll_seconds=30.0, max_wait_seconds=20.0)
    try:
        address = await activator.open("c1", 1)
        activator.instance_ready("c1", 1, (upstream,))  # nobody waking: ignored
        sent = asyncio.create_task(send(address))
        await asyncio.wait_for(revision.woken.wait(), 5)
        activator.instance_ready("c2", 1, (upstream,))  # another container: ignored
        await asyncio.sleep(0.05)
        assert not sent.done()
        activator.instance_ready("c1", 1, (upstream,))
        status, text, _ = await asyncio.wait_for(sent, 5)
        assert status == 201 and text.startswith("GET /\n")
        assert revision.wakes == [1]
    finally:
        await activator.stop()


async def test_a_new_burst_does_not_use_what_the_runtime_said_during_the_last_one(
    tmp_path: Path, upstream: str
) -> None:
    revision = Revision(upstream, start_delay=-1)
    activator = await make(tmp_path, revision, max_wait_seconds=0.3)
    try:
        address = await activator.open("c1", 1)
        first = asyncio.create_task(send(address))
        await asyncio.wait_for(revision.woken.wait(), 5)
        activator.instance_ready("c1", 1, (upstream,))
        assert (await first)[0] == 201
        status, text, _ = await send(address)  # a new burst: the old word is not used
        assert status == 503 and "no instance ready within 0.3s" in text
    finally:
        await activator.stop()


async def test_a_change_of_the_container_makes_its_wakers_look_again_at_once(
    tmp_path: Path, upstream: str
) -> None:
    """``changed`` (the reconciler wrote the container's rows) ends the waker's wait: with a
    poll period of 30 s, only the nudge can make this request finish quickly."""
    revision = Revision(upstream, start_delay=-1)
    activator = await make(tmp_path, revision, poll_seconds=30.0, max_wait_seconds=20.0)
    try:
        address = await activator.open("c1", 1)
        sent = asyncio.create_task(send(address))
        await asyncio.wait_for(revision.woken.wait(), 5)
        revision.ready = True
        activator.changed("c1")
        status, _, _ = await asyncio.wait_for(sent, 5)
        assert status == 201
    finally:
        await activator.stop()


async def test_an_instance_not_reachable_yet_is_tried_again_for_a_while(tmp_path: Path) -> None:
    """A dial that fails (the instance's route is not in place yet, or it just went away) is
    tried again, with the body, until the instance answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"127.0.0.1:{port}"
    revision = Revision(endpoint, start_delay=-1)
    activator = await make(tmp_path, revision)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=201, text=(await request.read()).decode())

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        address = await activator.open("c1", 1)
        sent = asyncio.create_task(send(address, "POST", "/", b"kept body"))
        await asyncio.wait_for(revision.woken.wait(), 5)
        activator.instance_ready("c1", 1, (endpoint,))  # nothing listens there yet
        await asyncio.sleep(0.2)
        assert not sent.done()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        status, text, _ = await asyncio.wait_for(sent, 5)
        assert (status, text) == (201, "kept body")
    finally:
        await activator.stop()
        await runner.cleanup()
