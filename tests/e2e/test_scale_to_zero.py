"""Scale to zero and wake on a request, on real Podman: the app's own reconciler, autoscaler and
activator (in process, short windows), busybox httpd revisions, requests over the activator's
real loopback port."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI

from app.deps import AppState
from app.domain.models import Revision, ServingState
from app.domain.principal import Principal
from app.reconcile import ReconcilerOptions
from app.runtime.docker import DockerRuntime
from app.server import create_app
from app.services import containers as svc
from app.settings import Settings
from tests.support.podman import CRASH, HTTPD_V1, PAGE_V1, RUN_LABELS
from tests.support.rows import stored_revision
from tests.support.serving import engine_instances

pytestmark = pytest.mark.podman
ALICE = Principal("alice")


@pytest.fixture
async def dockyard(
    tmp_path: Path, database_url: str, podman_url: str
) -> AsyncIterator[tuple[FastAPI, AppState]]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        runtime="none",
        autoscale_tick_seconds=0.2,
        autoscale_stable_window_seconds=2,
        autoscale_panic_window_seconds=1,
        activator_max_wait_seconds=30,
    )
    # An installation of its own: the reconciler's resync collects the managed engine containers
    # its database does not know as orphans, and Podman's storage is shared by every service on
    # the machine (other tests' and benches' Dockyards would lose theirs every resync).
    runtime = DockerRuntime(
        podman_url,
        readiness_timeout=20,
        crashloop_restarts=1,
        stop_timeout=1,
        labels=RUN_LABELS,
        instance=f"test-{uuid.uuid4().hex[:12]}",
    )
    app = create_app(
        settings,
        runtime=runtime,
        reconciler_options=ReconcilerOptions(drain_seconds=0.3, resync_interval=5),
    )
    state: AppState = app.state.dockyard
    async with app.router.lifespan_context(app):
        yield app, state
    state.ctx.engine.dispose()


def create(state: AppState, image: str = HTTPD_V1, **scaling: int) -> str:
    body = {
        "name": f"web{time.monotonic_ns() % 10**9}",
        "image": image,
        "port": 8080,
        "cpu": 0.25,
        "ram": "64Mi",
        "scaling": {"scaleToZeroAfterSeconds": 2, **scaling},
    }
    return svc.create_container(ctx=state.ctx, principal=ALICE, data=body).id


def revision_row(state: AppState, container_id: str, number: int = 1) -> Revision:
    return stored_revision(state.ctx.engine, container_id, number)


async def until(check: Callable[[], Any], *, within: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


async def get(address: str, path: str = "/") -> tuple[int, str, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://{address}{path}",
            headers={"Host": "web.localhost"},
            timeout=aiohttp.ClientTimeout(60),
        ) as r,
    ):
        return r.status, await r.text(), dict(r.headers)


async def test_idle_revision_scales_to_zero_then_a_request_wakes_it(
    dockyard: tuple[FastAPI, AppState], podman_url: str
) -> None:
    _, state = dockyard
    assert state.activator is not None
    cid = create(state)
    await until(
        lambda: revision_row(state, cid).serving_state == ServingState.SERVING, what="serving"
    )
    assert len(engine_instances(podman_url, cid)) == 1
    # no request for scaleToZeroAfterSeconds (2 s): zero instances, still healthy
    row = await until(
        lambda: (r := revision_row(state, cid)).serving_state == ServingState.SCALED_TO_ZERO and r,
        what="scaled to zero",
    )
    assert (row.instances_desired, row.instances_ready, row.endpoints) == (0, 0, [])
    await until(lambda: engine_instances(podman_url, cid) == [], what="engine empty")
    view = svc.get_container(ctx=state.ctx, principal=ALICE, container_id=cid)
    assert view.status == "deployed" and view.readyRevision == 1

    address = await state.activator.open(cid, 1)
    started = time.monotonic()
    status, text, _ = await get(address)
    assert (status, text) == (200, PAGE_V1), text
    assert time.monotonic() - started < 20
    assert len(engine_instances(podman_url, cid)) == 1
    assert revision_row(state, cid).last_request_at is not None

    # and again: idle, zero; then a burst of 50 at zero starts one instance, nothing fails
    await until(lambda: engine_instances(podman_url, cid) == [], what="zero again")
    wakes = state.activator.started_waking
    results = await asyncio.gather(*(get(address) for _ in range(50)))
    assert [r[0] for r in results] == [200] * 50
    assert {r[1] for r in results} == {PAGE_V1}
    assert state.activator.started_waking == wakes + 1
    assert len(engine_instances(podman_url, cid)) == 1
    assert revision_row(state, cid).instances_desired == 1


async def test_a_revision_that_fails_on_wake_answers_503_and_keeps_its_reason(
    dockyard: tuple[FastAPI, AppState], podman_url: str
) -> None:
    _, state = dockyard
    assert state.activator is not None
    cid = create(state, image=CRASH)
    row = await until(
        lambda: (r := revision_row(state, cid)).serving_state == ServingState.FAILED and r,
        what="failed",
    )
    reason = row.state_reason
    assert reason in ("CrashLoopBackOff", "Exited")
    # idle: scaled to zero; the reason stays on the revision and in the container's status
    row = await until(
        lambda: (r := revision_row(state, cid)).serving_state == ServingState.SCALED_TO_ZERO and r,
        what="scaled to zero",
    )
    assert row.state_reason == reason and "exited with code 3" in row.state_message
    await until(lambda: engine_instances(podman_url, cid) == [], what="engine empty")
    view = svc.get_container(ctx=state.ctx, principal=ALICE, container_id=cid)
    assert view.status == "failed" and reason in (view.statusReason or "")

    address = await state.activator.open(cid, 1)
    status, text, headers = await get(address)
    assert status == 503 and headers.get("Retry-After") == "5"
    assert "exited with code 3" in text
    assert revision_row(state, cid).state_reason in ("CrashLoopBackOff", "Exited")
