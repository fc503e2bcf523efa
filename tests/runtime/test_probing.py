"""The prober against a real HTTP server on 127.0.0.1: thresholds, the budget, liveness restarts
and the events that tell the reconciler. (The engine side is covered on Podman in
``test_docker_probes.py``; here ``exec`` and ``restart`` are recorded by the test.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from app.runtime.base import Phase, Probe, Probes, RuntimeEvent
from app.runtime.probing import Prober, Target, probes_from_label, probes_to_label


@dataclass
class App:
    """A tiny HTTP server whose answers the test sets."""

    status: dict[str, int] = field(default_factory=lambda: {"/ready": 503, "/healthz": 200})
    port: int = 0


@pytest.fixture
async def app() -> AsyncIterator[App]:
    state = App()

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=state.status.get(request.path, 404))

    server = web.Application()
    server.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


class Engine:
    def __init__(self) -> None:
        self.restarts: list[str] = []
        self.exec_code = 1

    async def exec(self, engine_id: str, command: tuple[str, ...], limit: float) -> tuple[int, str]:
        return self.exec_code, "not yet\n"

    async def restart(self, engine_id: str) -> None:
        self.restarts.append(engine_id)


def target(app: App, probes: Probes, started: str = "t0") -> Target:
    return Target(
        engine_id="e1",
        container_id="c1",
        started=started,
        probes=probes,
        port=8080,
        addresses={8080: f"127.0.0.1:{app.port}"},
    )


async def wait_until(check: object, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_readiness_needs_success_threshold_passes_and_tells_the_reconciler(
    app: App,
) -> None:
    engine = Engine()
    prober = Prober(engine.exec, engine.restart)
    events: asyncio.Queue[RuntimeEvent] = asyncio.Queue()
    prober.subscribe(events)
    probe = Probe(action="httpGet", port=8080, path="/ready", period_seconds=1, success_threshold=2)
    probes = Probes(readiness=probe)
    try:
        prober.ensure_running()
        verdict = prober.verdict(target(app, probes), since_start=0, budget=60)
        assert verdict.phase is Phase.PENDING
        await wait_until(
            lambda: (
                "answered 503"
                in prober.verdict(target(app, probes), since_start=1, budget=60).message
            )
        )
        assert events.empty()
        app.status["/ready"] = 200
        passed_from = time.monotonic()
        event = await asyncio.wait_for(events.get(), 10)
        assert event == RuntimeEvent(container_id="c1")
        assert time.monotonic() - passed_from >= 0.9  # two passes, a period apart
        assert prober.verdict(target(app, probes), since_start=3, budget=60).phase is Phase.READY
        # failureThreshold (3) failures in a row take it out of traffic, and say so
        app.status["/ready"] = 500
        await asyncio.wait_for(events.get(), 10)
        verdict = prober.verdict(target(app, probes), since_start=9, budget=60)
        assert verdict.phase is Phase.PENDING and verdict.reason == "ReadinessProbeFailed"
        assert "GET :8080/ready answered 500 3 time(s) in a row" in verdict.message
    finally:
        await prober.close()


async def test_spent_budget_fails_naming_the_probe(app: App) -> None:
    engine = Engine()
    prober = Prober(engine.exec, engine.restart)
    startup = Probe(action="exec", command=("cat", "/tmp/up"), period_seconds=1)
    probes = Probes(startup=startup)
    try:
        prober.ensure_running()
        prober.verdict(target(app, probes), since_start=0, budget=5)
        await wait_until(
            lambda: (
                "exited 1" in prober.verdict(target(app, probes), since_start=1, budget=5).message
            )
        )
        verdict = prober.verdict(target(app, probes), since_start=6, budget=5)
        assert verdict.phase is Phase.FAILED and verdict.reason == "StartupProbeFailed"
        assert verdict.message.startswith("exec cat /tmp/up exited 1: not yet")
        engine.exec_code = 0
        await wait_until(
            lambda: (
                prober.verdict(target(app, probes), since_start=2, budget=5).phase is Phase.READY
            )
        )
    finally:
        await prober.close()


async def test_liveness_failures_restart_the_instance(app: App) -> None:
    engine = Engine()
    prober = Prober(engine.exec, engine.restart)
    events: asyncio.Queue[RuntimeEvent] = asyncio.Queue()
    prober.subscribe(events)
    live = Probe(
        action="httpGet", port=8080, path="/healthz", period_seconds=1, failure_threshold=2
    )
    probes = Probes(liveness=live)
    try:
        prober.ensure_running()
        prober.verdict(target(app, probes), since_start=0, budget=60)
        await wait_until(
            lambda: (
                prober.verdict(target(app, probes), since_start=1, budget=60).phase is Phase.READY
            )
        )
        app.status["/healthz"] = 500
        await wait_until(lambda: engine.restarts == ["e1"])
        assert engine.restarts == ["e1"]  # once: the prober waits for the restarted instance
        # The restarted instance (a new StartedAt) is checked afresh and says why it restarted.
        app.status["/healthz"] = 200
        verdict = prober.verdict(target(app, probes, started="t1"), since_start=0, budget=60)
        assert verdict.reason == "LivenessProbeFailed"
        assert "GET :8080/healthz answered 500 2 time(s) in a row" in verdict.message
        await wait_until(
            lambda: (
                prober.verdict(target(app, probes, "t1"), since_start=1, budget=60).phase
                is Phase.READY
            )
        )
        assert not events.empty()
        prober.forget_missing("c1", set())
        assert prober.verdict(target(app, probes, "t1"), since_start=0, budget=60).reason == (
            "ContainerStarting"
        )
    finally:
        await prober.close()


def test_probes_label_round_trip() -> None:
    probes = Probes(
        startup=Probe(action="exec", command=("a", "b")),
        readiness=Probe(action="httpGet", port=9, path="/r", success_threshold=2),
        startup_budget_seconds=30,
    )
    assert probes_from_label(probes_to_label(probes)) == probes
    assert probes_from_label("") is None
    assert probes_from_label("{not json") is None
