"""The reconcile loop against an in-memory runtime behind the Runtime protocol.

These pin down the loop's decisions (apply, status, retire, delete, orphans) quickly; the same
scenarios run against real Podman containers in tests/e2e.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from sqlmodel import Session, select

from app.dataplane.controller import routed_containers
from app.dataplane.routes import build_routing_table
from app.domain.models import Container, Revision
from app.domain.principal import Principal
from app.reconcile import Reconciler, ReconcilerOptions
from app.runtime.base import (
    LATEST_ONLY,
    Capabilities,
    LogLine,
    Phase,
    RevisionState,
    RuntimeConflict,
    RuntimeEvent,
    RuntimeUnavailable,
    Scaling,
    TrafficTarget,
    WorkloadSpec,
)
from app.services import containers as svc
from app.services.context import ServiceContext
from app.settings import Settings
from tests.support.rows import stored_revision

ALICE = Principal("alice")


def routed(ctx: ServiceContext, container_id: str) -> list[str]:
    """Where the data plane of any replica sends the container's host, read from the database."""
    table = build_routing_table(
        routed_containers(ctx.engine), domain=ctx.ingress_domain, activator=None
    )
    return [b.address for r in table if r.container_id == container_id for b in r.backends]


class MemoryRuntime:
    """Revisions live in a dict; tests decide their phase."""

    name = "memory"
    capabilities = Capabilities(scale_to_zero=True, traffic_split=True)

    def __init__(self) -> None:
        self.revisions: dict[str, dict[int, RevisionState]] = {}
        self.applied: list[WorkloadSpec] = []
        self.scaled: list[tuple[int, int]] = []
        self.available = True
        self.failure: Exception | None = None
        self.events: asyncio.Queue[RuntimeEvent] = asyncio.Queue()

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure
        if not self.available:
            raise RuntimeUnavailable("engine socket refused the connection")

    def set_phase(
        self, container_id: str, revision: int, phase: Phase, reason: str = "", message: str = ""
    ) -> None:
        endpoint = f"127.0.0.1:{40000 + revision}" if phase is Phase.READY else None
        self.revisions[container_id][revision] = RevisionState(
            container_id,
            revision,
            phase,
            reason,
            message,
            endpoint,
            endpoints=(endpoint,) if endpoint else (),
            instances_ready=1 if endpoint else 0,
            instances_desired=1,
        )

    async def apply(self, spec: WorkloadSpec) -> None:
        self._check()
        self.applied.append(spec)
        self.revisions.setdefault(spec.container_id, {}).setdefault(
            spec.revision, RevisionState(spec.container_id, spec.revision, Phase.PENDING)
        )

    async def scale(self, spec: WorkloadSpec, instances: int, *, urgent: bool = False) -> None:
        self._check()
        self.applied.append(spec)
        self.scaled.append((spec.revision, instances))
        revisions = self.revisions.setdefault(spec.container_id, {})
        if instances == 0:
            revisions.pop(spec.revision, None)
        elif spec.revision not in revisions:
            revisions[spec.revision] = RevisionState(
                spec.container_id, spec.revision, Phase.PENDING, instances_desired=instances
            )
        else:
            revisions[spec.revision] = dataclasses.replace(
                revisions[spec.revision], instances_desired=instances
            )

    async def retire(self, container_id: str, *, keep: set[int]) -> None:
        self._check()
        revisions = self.revisions.get(container_id, {})
        for revision in [r for r in revisions if r not in keep]:
            del revisions[revision]

    async def remove(self, container_id: str) -> None:
        self._check()
        self.revisions.pop(container_id, None)

    async def observe(self, container_id: str) -> list[RevisionState]:
        self._check()
        return list(self.revisions.get(container_id, {}).values())

    async def list_managed(self) -> dict[str, set[int]]:
        self._check()
        return {cid: set(revs) for cid, revs in self.revisions.items() if revs}

    async def watch(self) -> AsyncIterator[RuntimeEvent]:
        while True:
            yield await self.events.get()

    async def log_batches(
        self,
        container_id: str,
        *,
        revision: int | None = None,
        follow: bool = True,
        tail: int | None = 100,
        since: datetime | None = None,
    ) -> AsyncIterator[list[LogLine]]:
        if False:  # pragma: no cover - no logs in memory
            yield

    async def close(self) -> None:
        pass


@pytest.fixture
def runtime() -> MemoryRuntime:
    return MemoryRuntime()


def create(ctx: ServiceContext, **spec: Any) -> str:
    body = {"name": "web", "image": "localhost/web:v1", "port": 8080, **spec}
    return svc.create_container(ctx=ctx, principal=ALICE, data=body).id


async def deployed(ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler) -> str:
    """A new container whose revision 1 was applied, became ready and was reconciled again."""
    container_id = create(ctx)
    await reconciler.reconcile(container_id)
    runtime.set_phase(container_id, 1, Phase.READY)
    await reconciler.reconcile(container_id)
    return container_id


def status(ctx: ServiceContext, container_id: str) -> tuple[str, str | None, int | None]:
    view = svc.get_container(ctx=ctx, principal=ALICE, container_id=container_id)
    return view.status, view.statusReason, view.readyRevision


async def test_create_applies_revision_and_reports_runtime_phases(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    container_id = create(ctx, env={"A": "1"}, command=["/bin/web"], gpu=1, desiredGPUs=["t4"])
    await reconciler.reconcile(container_id)
    (spec,) = runtime.applied
    assert (spec.revision, spec.image, spec.port, spec.env) == (
        1,
        "localhost/web:v1",
        8080,
        {"A": "1"},
    )
    assert spec.command == ("/bin/web",) and spec.ram_bytes == 512 * 2**20
    assert spec.desired_gpus[0].label_values == ("Tesla-T4",)
    assert status(ctx, container_id)[0] == "deploying"

    runtime.set_phase(container_id, 1, Phase.READY)
    await reconciler.reconcile(container_id)
    assert status(ctx, container_id) == ("deployed", None, 1)
    assert routed(ctx, container_id) == ["127.0.0.1:40001"]
    await reconciler.reconcile(container_id)
    assert len(runtime.applied) == 1  # idempotent: nothing applied twice


async def test_update_switches_when_ready_and_retires_the_old_revision(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    container_id = await deployed(ctx, runtime, reconciler)
    svc.update_container(
        ctx=ctx, principal=ALICE, container_id=container_id, data={"image": "localhost/web:v2"}
    )
    await reconciler.reconcile(container_id)
    assert set(runtime.revisions[container_id]) == {1, 2}
    assert routed(ctx, container_id) == ["127.0.0.1:40001"]  # old one serves meanwhile
    state, reason, ready = status(ctx, container_id)
    assert state == "deploying" and ready == 1 and "revision 1 keeps serving" in (reason or "")

    runtime.set_phase(container_id, 2, Phase.READY)
    await reconciler.reconcile(container_id)
    assert status(ctx, container_id) == ("deployed", None, 2)
    assert routed(ctx, container_id) == ["127.0.0.1:40002"]
    assert set(runtime.revisions[container_id]) == {2}


async def test_failed_revision_keeps_the_old_one_serving(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    container_id = await deployed(ctx, runtime, reconciler)
    svc.update_container(
        ctx=ctx, principal=ALICE, container_id=container_id, data={"image": "localhost/missing:v9"}
    )
    await reconciler.reconcile(container_id)
    runtime.set_phase(
        container_id, 2, Phase.FAILED, "ImageNotFound", "image localhost/missing:v9 not found"
    )
    await reconciler.reconcile(container_id)
    state, reason, ready = status(ctx, container_id)
    assert state == "failed" and ready == 1
    assert reason == (
        "ImageNotFound: revision 2: image localhost/missing:v9 not found; revision 1 keeps serving"
    )
    assert routed(ctx, container_id) == ["127.0.0.1:40001"]
    assert set(runtime.revisions[container_id]) == {1, 2}


async def test_delete_removes_runtime_objects_then_purges(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    container_id = create(ctx)
    await reconciler.reconcile(container_id)
    svc.delete_container(ctx=ctx, principal=ALICE, container_id=container_id)
    runtime.available = False
    with pytest.raises(RuntimeUnavailable):
        await reconciler.reconcile(container_id)
    with Session(ctx.engine) as session:  # the tombstone survives until removal succeeds
        assert session.get(Container, container_id) is not None
    runtime.available = True
    await reconciler.reconcile(container_id)
    assert container_id not in runtime.revisions
    with Session(ctx.engine) as session:
        assert session.get(Container, container_id) is None
        assert (
            session.exec(select(Revision).where(Revision.container_id == container_id)).all() == []
        )


async def test_unavailable_runtime_is_a_status_reason_not_an_error(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    container_id = create(ctx)
    runtime.available = False
    await reconciler.start()
    try:
        await reconciler.reconcile(container_id)
    finally:
        await reconciler.stop()
    state, reason, _ = status(ctx, container_id)
    assert state == "deploying"
    assert reason is not None and reason.startswith("RuntimeUnavailable")
    assert "engine socket refused" in reason


async def test_resync_collects_orphans_and_converges_everything(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    live = create(ctx)
    runtime.revisions["00000000-0000-0000-0000-00000000dead"] = {
        1: RevisionState("00000000-0000-0000-0000-00000000dead", 1, Phase.READY)
    }
    await reconciler.start()
    try:
        for _ in range(100):
            if (
                "00000000-0000-0000-0000-00000000dead" not in runtime.revisions
                and live in runtime.revisions
            ):
                break
            await asyncio.sleep(0.02)
    finally:
        await reconciler.stop()
    assert "00000000-0000-0000-0000-00000000dead" not in runtime.revisions
    assert set(runtime.revisions[live]) == {1}


async def test_writes_wake_the_reconciler(settings: Settings, runtime: MemoryRuntime) -> None:
    from app.server import create_app

    app = create_app(settings, runtime=runtime)
    state = app.state.dockyard
    async with app.router.lifespan_context(app):
        container_id = await asyncio.to_thread(create, state.ctx)
        for _ in range(100):
            if container_id in runtime.revisions:
                break
            await asyncio.sleep(0.02)
        assert container_id in runtime.revisions
        runtime.set_phase(container_id, 1, Phase.READY)
        await runtime.events.put(RuntimeEvent(container_id))
        for _ in range(100):
            if status(state.ctx, container_id)[0] == "deployed":
                break
            await asyncio.sleep(0.02)
        assert status(state.ctx, container_id)[0] == "deployed"


async def test_status_of_an_outdated_generation_is_not_written(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    container_id = create(ctx)
    await reconciler.reconcile(container_id)
    runtime.set_phase(container_id, 1, Phase.READY)
    svc.update_container(ctx=ctx, principal=ALICE, container_id=container_id, data={"cpu": 2})
    from app.domain.status import RevisionObservation, derive_status

    observed = derive_status(generation=1, observations=[RevisionObservation(1, "ready")])
    assert not await asyncio.to_thread(reconciler._write_status, container_id, 1, observed)
    assert status(ctx, container_id)[0] == "deploying"


async def test_a_runtime_error_keeps_the_ready_revision_serving(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    container_id = await deployed(ctx, runtime, reconciler)
    runtime.failure = RuntimeConflict("the object changed underneath")
    await reconciler.reconcile(container_id)
    state, reason, ready = status(ctx, container_id)
    assert state == "deploying" and ready == 1
    assert reason is not None and "changed underneath" in reason
    assert routed(ctx, container_id) == ["127.0.0.1:40001"]  # traffic is not cut
    runtime.failure = None
    await reconciler.reconcile(container_id)
    assert status(ctx, container_id) == ("deployed", None, 1)


def set_desired(ctx: ServiceContext, container_id: str, revision: int, desired: int) -> None:
    from app.services.scaling import set_instances_desired

    set_instances_desired(ctx, {(container_id, revision): desired})


def revision_of(ctx: ServiceContext, container_id: str, number: int) -> Revision:
    return stored_revision(ctx.engine, container_id, number)


async def test_scaled_to_zero_is_healthy_and_the_revision_stays_routable(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    container_id = await deployed(ctx, runtime, reconciler)
    row = revision_of(ctx, container_id, 1)
    assert (row.serving_state, row.instances_ready, row.endpoints) == (
        "serving",
        1,
        ["127.0.0.1:40001"],
    )
    set_desired(ctx, container_id, 1, 0)
    await reconciler.reconcile(container_id)  # drain 0 s: removed at once
    assert (runtime.scaled[-1] == (1, 0) and container_id not in runtime.revisions) or (
        runtime.revisions[container_id] == {}
    )
    await reconciler.reconcile(container_id)
    row = revision_of(ctx, container_id, 1)
    assert (row.serving_state, row.instances_ready, row.endpoints) == ("scaled-to-zero", 0, [])
    assert status(ctx, container_id) == ("deployed", None, 1)
    # a wake: one instance again
    set_desired(ctx, container_id, 1, 1)
    await reconciler.reconcile(container_id)
    assert runtime.scaled[-1] == (1, 1)
    assert revision_of(ctx, container_id, 1).serving_state == "starting"
    assert status(ctx, container_id) == ("deployed", None, 1)


def draining_reconciler(ctx: ServiceContext, runtime: MemoryRuntime) -> Reconciler:
    """A reconciler that keeps a scaled-in instance for a 30 s drain."""
    return Reconciler(
        engine=ctx.engine,
        runtime=runtime,
        catalog=ctx.catalog,
        options=ReconcilerOptions(drain_seconds=30.0),
    )


async def test_removing_instances_first_takes_them_out_of_the_data_plane(
    ctx: ServiceContext, runtime: MemoryRuntime
) -> None:
    reconciler = draining_reconciler(ctx, runtime)
    container_id = await deployed(ctx, runtime, reconciler)
    set_desired(ctx, container_id, 1, 0)
    await reconciler.reconcile(container_id)
    row = revision_of(ctx, container_id, 1)
    assert (row.endpoints, row.serving_state) == ([], "scaled-to-zero")
    assert container_id in runtime.revisions and 1 in runtime.revisions[container_id]
    assert runtime.scaled == [(1, 1)]  # the instance stays for the drain period
    # a request in the meantime: the instance serves again, nothing was removed
    set_desired(ctx, container_id, 1, 1)
    await reconciler.reconcile(container_id)
    assert revision_of(ctx, container_id, 1).endpoints == ["127.0.0.1:40001"]
    assert runtime.scaled == [(1, 1)]


async def test_a_revision_waiting_for_its_drain_is_looked_at_after_it_not_every_20_ms(
    ctx: ServiceContext, runtime: MemoryRuntime
) -> None:
    reconciler = draining_reconciler(ctx, runtime)
    container_id = await deployed(ctx, runtime, reconciler)
    loop = asyncio.get_running_loop()
    reconciler._loop = loop  # timers are set as on a started reconciler (no workers run)
    try:
        set_desired(ctx, container_id, 1, 0)
        await reconciler.reconcile(container_id)
        assert revision_of(ctx, container_id, 1).serving_state == "scaled-to-zero"
        timer = reconciler._timers[container_id]
        assert timer.when() - loop.time() > 20  # the drain timer, not a 20 ms look
    finally:
        for handle in reconciler._timers.values():
            handle.cancel()


async def test_a_failure_reason_survives_scale_to_zero(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    container_id = create(ctx)
    await reconciler.reconcile(container_id)
    runtime.set_phase(container_id, 1, Phase.FAILED, "CrashLoopBackOff", "exited with code 3")
    await reconciler.reconcile(container_id)
    assert revision_of(ctx, container_id, 1).serving_state == "failed"
    set_desired(ctx, container_id, 1, 0)
    await reconciler.reconcile(container_id)
    await reconciler.reconcile(container_id)
    row = revision_of(ctx, container_id, 1)
    assert (row.serving_state, row.state_reason, row.state_message) == (
        "scaled-to-zero",
        "CrashLoopBackOff",
        "exited with code 3",
    )
    state, reason, ready = status(ctx, container_id)
    assert state == "failed" and "exited with code 3" in (reason or "")
    assert ready == 1  # still routable: the next request tries again


async def test_traffic_keeps_a_pinned_revision_and_retires_the_others(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    container_id = await deployed(ctx, runtime, reconciler)
    for image in ("localhost/web:v2", "localhost/web:v3"):
        svc.update_container(
            ctx=ctx, principal=ALICE, container_id=container_id, data={"image": image}
        )
        await reconciler.reconcile(container_id)
    runtime.set_phase(container_id, 2, Phase.READY)
    svc.set_traffic(
        ctx=ctx,
        principal=ALICE,
        container_id=container_id,
        data=[{"revision": 1, "percent": 90}, {"revision": 2, "percent": 10, "tag": "canary"}],
    )
    await reconciler.reconcile(container_id)
    assert set(runtime.revisions[container_id]) == {1, 2, 3}  # 3 is the newest: it starts
    runtime.set_phase(container_id, 3, Phase.READY)
    await reconciler.reconcile(container_id)
    assert set(runtime.revisions[container_id]) == {1, 2, 3}
    svc.set_traffic(
        ctx=ctx,
        principal=ALICE,
        container_id=container_id,
        data=[{"latest": True, "percent": 100}],
    )
    await reconciler.reconcile(container_id)
    await reconciler.reconcile(container_id)
    assert set(runtime.revisions[container_id]) == {3}
    assert [revision_of(ctx, container_id, n).serving_state for n in (1, 2, 3)] == [
        "retired",
        "retired",
        "serving",
    ]


async def test_applied_spec_carries_scaling_and_the_desired_traffic(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    container_id = create(ctx, scaling={"minInstances": 1, "concurrency": 10})
    await reconciler.reconcile(container_id)
    (first,) = runtime.applied
    assert first.scaling == Scaling(
        min_instances=1, max_instances=100, concurrency=10, scale_to_zero_after_seconds=900
    )
    assert first.traffic == LATEST_ONLY
    svc.update_container(ctx=ctx, principal=ALICE, container_id=container_id, data={"env": {}})
    svc.set_traffic(
        ctx=ctx,
        principal=ALICE,
        container_id=container_id,
        data=[{"revision": 1, "percent": 90}, {"latest": True, "percent": 10, "tag": "canary"}],
    )
    await reconciler.reconcile(container_id)
    second = runtime.applied[-1]
    assert second.revision == 2
    assert second.traffic == (
        TrafficTarget(percent=90, revision=1),
        TrafficTarget(percent=10, latest=True, tag="canary"),
    )


async def test_a_runtime_that_rolls_out_by_itself_gets_only_the_newest_revision(
    ctx: ServiceContext, runtime: MemoryRuntime
) -> None:
    runtime.capabilities = Capabilities()  # plain Deployments: no scale to zero, no split
    reconciler = Reconciler(
        engine=ctx.engine,
        runtime=runtime,
        catalog=ctx.catalog,
        options=ReconcilerOptions(drain_seconds=0.0),
    )
    container_id = await deployed(ctx, runtime, reconciler)
    svc.update_container(
        ctx=ctx, principal=ALICE, container_id=container_id, data={"image": "localhost/web:v2"}
    )
    await reconciler.reconcile(container_id)
    await reconciler.reconcile(container_id)
    # revision 1 keeps serving meanwhile, but is never applied again (that would roll back)
    assert [spec.revision for spec in runtime.applied] == [1, 2]
    assert runtime.scaled == []
    assert status(ctx, container_id)[2] == 1
    runtime.set_phase(container_id, 2, Phase.READY)
    await reconciler.reconcile(container_id)
    assert status(ctx, container_id) == ("deployed", None, 2)
    assert revision_of(ctx, container_id, 2).serving_state == "serving"
    assert [spec.revision for spec in runtime.applied] == [1, 2]


async def test_routes_are_published_with_the_status_before_anyone_hears_it(
    ctx: ServiceContext, runtime: MemoryRuntime, reconciler: Reconciler
) -> None:
    # The data plane publishes what the database says when on_endpoints is awaited; a first
    # revision's host is routed only once ready_revision (written with the status) is there,
    # so the publish must come after the status write and before the status is announced.
    published: list[list[str]] = []
    announced: list[list[str]] = []

    async def publish(container_id: str) -> None:
        published.append(routed(ctx, container_id))

    async def announce(container_id: str, _kind: str) -> None:
        announced.append(published[-1] if published else [])

    reconciler.on_endpoints = publish
    reconciler.on_status = announce
    container_id = create(ctx)
    await reconciler.reconcile(container_id)
    runtime.set_phase(container_id, 1, Phase.READY)
    await reconciler.reconcile(container_id)
    assert status(ctx, container_id)[0] == "deployed"
    assert published[-1] == ["127.0.0.1:40001"]
    assert announced[-1] == ["127.0.0.1:40001"]  # the routes were out before the status
