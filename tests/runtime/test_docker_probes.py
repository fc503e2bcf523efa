"""Dockyard's own prober on a real Podman engine: readiness (HTTP, exec), the start-up budget
and liveness restarts, against busybox images whose health changes over time."""

from __future__ import annotations

import asyncio
import time

import docker
import httpx
import pytest

from app.runtime.base import Phase, Probe, Probes, RevisionState
from app.runtime.docker import DockerRuntime
from tests.runtime.test_docker_runtime import make_spec
from tests.support.podman import PAGE_LATE, PAGE_V1, READY_AFTER_SECONDS, READY_LATE, SICKLY

pytestmark = pytest.mark.podman

READY = Probe(action="httpGet", port=8080, path="/ready", period_seconds=1)


async def fetch(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(url)


async def observe_one(runtime: DockerRuntime, container_id: str) -> RevisionState | None:
    states = await runtime.observe(container_id)
    return states[0] if states else None


async def test_http_readiness_holds_the_instance_back_until_it_passes(
    runtime: DockerRuntime, container_id: str
) -> None:
    spec = make_spec(container_id, image=READY_LATE, probes=Probes(readiness=READY))
    await runtime.apply(spec)
    applied = time.monotonic()
    seen: list[RevisionState] = []
    deadline = applied + 30
    state = None
    while time.monotonic() < deadline:
        state = await observe_one(runtime, container_id)
        if state is not None:
            seen.append(state)
            if state.phase is not Phase.PENDING:
                break
        await asyncio.sleep(0.2)
    ready_after = time.monotonic() - applied
    assert state is not None and state.phase is Phase.READY, seen[-3:]
    assert ready_after >= READY_AFTER_SECONDS - 0.1
    # While it was starting the port already answered: only the probe held it back.
    pending = [s for s in seen if s.phase is Phase.PENDING]
    assert pending and all(not s.endpoints for s in pending)
    assert any("GET :8080/ready: answered 404" in s.message for s in pending), pending[-1]
    assert state.endpoint is not None
    page = await fetch(f"http://{state.endpoint}/")
    assert page.text == PAGE_LATE
    ready = await fetch(f"http://{state.endpoint}/ready")
    assert ready.status_code == 200


async def test_exec_readiness_runs_in_the_container(
    runtime: DockerRuntime, container_id: str
) -> None:
    probe = Probe(action="exec", command=("cat", "/www/ready"), period_seconds=1)
    await runtime.apply(make_spec(container_id, image=READY_LATE, probes=Probes(readiness=probe)))
    applied = time.monotonic()
    messages = []
    state = None
    while time.monotonic() < applied + 30:
        state = await observe_one(runtime, container_id)
        if state is not None and state.phase is not Phase.PENDING:
            break
        if state is not None:
            messages.append(state.message)
        await asyncio.sleep(0.2)
    assert state is not None and state.phase is Phase.READY, messages[-3:]
    assert time.monotonic() - applied >= READY_AFTER_SECONDS - 0.1
    assert any("exec cat /www/ready: exited 1" in m for m in messages), messages[-3:]


async def test_a_readiness_probe_that_never_passes_fails_within_the_budget(
    runtime: DockerRuntime, container_id: str
) -> None:
    never = Probe(action="httpGet", port=8080, path="/never", period_seconds=1)
    spec = make_spec(
        container_id, image=READY_LATE, probes=Probes(readiness=never, startup_budget_seconds=3)
    )
    await runtime.apply(spec)
    state = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = await observe_one(runtime, container_id)
        if state is not None and state.phase is Phase.FAILED:
            break
        await asyncio.sleep(0.3)
    assert state is not None and state.phase is Phase.FAILED, state
    assert state.reason == "ReadinessProbeFailed"
    assert state.message.startswith("GET :8080/never answered 404"), state.message
    assert "start-up budget of 3s" in state.message


async def test_failing_liveness_restarts_the_instance_and_says_so(
    runtime: DockerRuntime, container_id: str, podman_url: str
) -> None:
    healthz = Probe(
        action="httpGet", port=8080, path="/healthz", period_seconds=1, failure_threshold=2
    )
    await runtime.apply(make_spec(container_id, image=SICKLY, probes=Probes(liveness=healthz)))
    client = docker.DockerClient(base_url=podman_url, version="1.41")
    try:
        seen: list[RevisionState] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = await observe_one(runtime, container_id)
            if state is not None:
                seen.append(state)
                restarted = any(s.reason == "LivenessProbeFailed" for s in seen)
                if restarted and state.phase is Phase.READY:
                    break
            await asyncio.sleep(0.2)
        reasons = [s.reason for s in seen]
        assert seen[-1].phase is Phase.READY, reasons
        first_ready = reasons.index("")
        assert "LivenessProbeFailed" in reasons[first_ready:], reasons
        failed = next(s for s in seen if s.reason == "LivenessProbeFailed")
        assert "GET :8080/healthz answered 404 2 time(s) in a row" in failed.message
        assert "restart" in failed.message and "the instance" in failed.message
        (engine,) = client.containers.list(
            all=True, filters={"label": f"dockyard.dev/container-id={container_id}"}
        )
        assert engine.status == "running"
        assert engine.attrs["State"]["StartedAt"] > engine.attrs["Created"]
        endpoint = seen[-1].endpoint
        assert (await fetch(f"http://{endpoint}/healthz")).status_code == 200
        assert (await fetch(f"http://{endpoint}/")).text == PAGE_V1
    finally:
        client.close()
