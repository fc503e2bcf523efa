"""The level-triggered reconciler: moves the runtime toward the desired state in the database.

It never blocks API requests: services only call ``request(container_id)``, which queues work
on the reconciler's own event loop. Each pass reads the container, observes the runtime, applies
the newest revision if the runtime lacks it, derives the status from what the runtime reported and
writes it only when it changed (and only if the spec did not move meanwhile). Startup and a
periodic resync cover everything, including runtime objects whose record is gone (orphans) and
deletions that a crash interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult, Engine
from sqlmodel import Session, col, delete, select

from app.domain.gpus import GpuCatalog
from app.domain.models import Container, Revision, ServingState
from app.domain.quantity import parse_quantity
from app.domain.spec import ContainerSpec
from app.domain.status import (
    ObservedStatus,
    RevisionObservation,
    apply_observed_status,
    derive_status,
)
from app.domain.traffic import traffic_of
from app.reconcile.leader import Elector
from app.runtime.base import (
    GpuSelector,
    Phase,
    RevisionState,
    Runtime,
    RuntimeAdapterError,
    RuntimeRejected,
    RuntimeUnavailable,
    Scaling,
    TrafficTarget,
    WorkloadSpec,
)

log = logging.getLogger(__name__)

StatusListener = Callable[[str, Literal["status", "deleted"]], Awaitable[None]]
"""Called with the container id after its observed status changed, or after it was purged."""


@dataclass(frozen=True)
class ReconcilerOptions:
    resync_interval: float = 30.0
    """Seconds between full resyncs of every container."""
    pending_poll: float = 1.0
    """Longest wait before a container whose newest revision is still starting is looked at
    again; in its first seconds it looks every 20, then 50 ms, as most revisions start quickly."""
    drain_seconds: float = 3.0
    """How long an old revision keeps running after traffic moved to the new one."""
    workers: int = 4
    election_interval: float = 5.0
    """Seconds between leader-election rounds (acquire or renew)."""


def workload_spec(container: Container, catalog: GpuCatalog) -> WorkloadSpec:
    """What the runtime needs to run the container's newest revision."""
    spec = ContainerSpec.model_validate(container.spec)
    selectors = []
    for name in spec.desired_gpus:
        model = catalog.resolve(name)
        if model is not None:
            selectors.append(GpuSelector(model.code, model.name, model.label_values))
    return WorkloadSpec(
        container_id=container.id,
        revision=container.generation,
        name=spec.name,
        owner=container.created_by,
        slug=container.slug,
        image=spec.image,
        cpu=spec.cpu,
        ram=spec.ram,
        ram_bytes=parse_quantity(spec.ram),
        gpu=spec.gpu,
        ephemeral_storage=spec.ephemeral_storage,
        ephemeral_storage_bytes=parse_quantity(spec.ephemeral_storage),
        port=spec.port,
        command=tuple(spec.command) if spec.command is not None else None,
        arguments=tuple(spec.arguments) if spec.arguments is not None else None,
        env=dict(spec.env),
        desired_gpus=tuple(selectors),
        scaling=Scaling(
            min_instances=spec.scaling.min_instances,
            max_instances=spec.scaling.max_instances,
            concurrency=spec.scaling.concurrency,
            scale_to_zero_after_seconds=spec.scaling.scale_to_zero_after_seconds,
        ),
        # Desired, not resolved: ``latest`` stays latest, for runtimes that route by themselves.
        traffic=tuple(
            TrafficTarget(
                percent=entry.percent, revision=entry.revision, latest=entry.latest, tag=entry.tag
            )
            for entry in traffic_of(container.traffic)
        ),
    )


def _observations(states: list[RevisionState]) -> list[RevisionObservation]:
    return [
        RevisionObservation(state.revision, state.phase.value, state.reason, state.message)
        for state in states
    ]


class Reconciler:
    """Runs on the server's event loop; one per process (or per elected leader)."""

    def __init__(
        self,
        *,
        engine: Engine,
        runtime: Runtime,
        catalog: GpuCatalog,
        options: ReconcilerOptions | None = None,
        on_status: StatusListener | None = None,
        elector: Elector | None = None,
    ) -> None:
        self.engine = engine
        self.runtime = runtime
        self.catalog = catalog
        self.options = options or ReconcilerOptions()
        self.on_status = on_status
        self.elector = elector
        self._leading = elector is None
        self._elected = asyncio.Event()
        if self._leading:
            self._elected.set()
        self.on_endpoints: Callable[[str], None] | None = None
        """Called with the container id after the ready endpoints of its revisions changed."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._ready_since: dict[tuple[str, int], float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._failures: dict[str, int] = {}
        self._pending_polls: dict[str, int] = {}

    # -- scheduling -------------------------------------------------------------------------

    def request(self, container_id: str) -> None:
        """Queue a container for reconciliation; safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._enqueue(container_id)
        else:
            loop.call_soon_threadsafe(self._enqueue, container_id)

    def _enqueue(self, container_id: str) -> None:
        timer = self._timers.pop(container_id, None)
        if timer is not None:
            timer.cancel()
        if container_id not in self._queued:
            self._queued.add(container_id)
            self._queue.put_nowait(container_id)

    def _requeue_after(self, container_id: str, delay: float) -> None:
        if self._loop is None or container_id in self._timers or container_id in self._queued:
            return
        self._timers[container_id] = self._loop.call_later(delay, self._fire, container_id)

    def _fire(self, container_id: str) -> None:
        self._timers.pop(container_id, None)
        self._enqueue(container_id)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"reconcile-worker-{n}")
            for n in range(self.options.workers)
        ]
        self._tasks.append(asyncio.create_task(self._resync_loop(), name="reconcile-resync"))
        self._tasks.append(asyncio.create_task(self._watch_loop(), name="reconcile-watch"))
        if self.elector is not None:
            self._tasks.append(asyncio.create_task(self._elect_loop(), name="reconcile-elect"))

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.elector is not None:
            await self.elector.release()
            self._leading = False
            self._elected.clear()

    @property
    def leading(self) -> bool:
        """Whether this process's reconciler acts (always, without an elector)."""
        return self._leading

    async def _elect_loop(self) -> None:
        assert self.elector is not None
        while True:
            try:
                leading = await self.elector.try_acquire()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("leader election failed: %s", e)
                leading = False
            if leading and not self._leading:
                log.info("this replica now leads reconciliation")
                self._leading = True
                self._elected.set()
                await self.resync()
            elif not leading and self._leading:
                log.warning("this replica lost the leadership; reconciliation pauses")
                self._leading = False
                self._elected.clear()
            await asyncio.sleep(self.options.election_interval)

    async def _worker(self) -> None:
        while True:
            container_id = await self._queue.get()
            self._queued.discard(container_id)
            if not self._leading:
                continue  # the leader reconciles; it resyncs everything when it takes over
            try:
                await self.reconcile(container_id)
                self._failures.pop(container_id, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(container_id, 0) + 1
                self._failures[container_id] = failures
                delay = min(60.0, 0.5 * 2**failures) * random.uniform(0.8, 1.2)
                log.exception("reconciling %s failed; retrying in %.1fs", container_id, delay)
                self._requeue_after(container_id, delay)

    async def _resync_loop(self) -> None:
        while True:
            try:
                if self._leading:
                    await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("resync failed")
            await asyncio.sleep(self.options.resync_interval)

    async def _watch_loop(self) -> None:
        delay = 1.0
        while True:
            if not self._leading:
                await self._elected.wait()  # watch from the moment this replica is elected
                continue
            try:
                async for event in self.runtime.watch():
                    delay = 1.0
                    self.request(event.container_id)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("runtime event stream ended (%s); reconnecting in %.0fs", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def resync(self) -> None:
        """Queue every container the database or the runtime knows of."""
        known = await asyncio.to_thread(self._all_container_ids)
        try:
            present = set(await self.runtime.list_managed())
        except RuntimeUnavailable as e:
            log.warning("runtime unavailable during resync: %s", e)
            present = set()
        for container_id in sorted(known | present):
            self.request(container_id)

    def _all_container_ids(self) -> set[str]:
        with Session(self.engine) as session:
            return set(session.exec(select(Container.id)).all())

    # -- one pass ---------------------------------------------------------------------------

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    async def reconcile(self, container_id: str) -> None:
        """Bring one container's runtime objects and status in line with its record."""
        async with self._lock(container_id):
            container = await asyncio.to_thread(self._load, container_id)
            if container is None or container.deleted_at is not None:
                await self._remove(container_id, purge=container is not None)
                return
            await self._converge(container)

    def _load(self, container_id: str) -> Container | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(Container, container_id)

    async def _remove(self, container_id: str, *, purge: bool) -> None:
        await self.runtime.remove(container_id)
        if purge:
            await asyncio.to_thread(self._purge, container_id)
            log.info("container %s removed from the runtime and purged", container_id)
            if self.on_status is not None:
                await self.on_status(container_id, "deleted")
        self._locks.pop(container_id, None)
        self._pending_polls.pop(container_id, None)
        self._failures.pop(container_id, None)
        for key in [key for key in self._ready_since if key[0] == container_id]:
            del self._ready_since[key]

    def _purge(self, container_id: str) -> None:
        with Session(self.engine) as session:
            session.exec(delete(Revision).where(col(Revision.container_id) == container_id))
            session.exec(
                delete(Container).where(
                    col(Container.id) == container_id, col(Container.deleted_at).is_not(None)
                )
            )
            session.commit()

    async def _converge(self, container: Container) -> None:
        generation = container.generation
        try:
            # A spec the runtime has not seen yet is applied (idempotent) without looking first.
            if container.observed_generation < generation:
                await self.runtime.apply(workload_spec(container, self.catalog))
            states = await self.runtime.observe(container.id)
            if not any(state.revision == generation for state in states):
                await self.runtime.apply(workload_spec(container, self.catalog))
                states = await self.runtime.observe(container.id)
            observed = derive_status(generation=generation, observations=_observations(states))
            observed_runtime = True
        except RuntimeRejected as e:
            states = []
            observed_runtime = False
            observed = ObservedStatus(
                "failed", "RuntimeRejected", f"revision {generation}: {e}", container.ready_revision
            )
        except RuntimeAdapterError as e:
            # Unavailable or conflicting for now: say so, keep serving the revision that was
            # ready (its route stays), and look again soon.
            log.warning("runtime error for %s: %s", container.id, e)
            states = []
            observed_runtime = False
            unknown = derive_status(generation=generation, observations=[], runtime_reason=str(e))
            observed = ObservedStatus(
                unknown.status, unknown.reason, unknown.message, container.ready_revision
            )
            self._requeue_after(container.id, 5.0 if isinstance(e, RuntimeUnavailable) else 2.0)
        if observed_runtime:
            # Before the status: the data plane must know the endpoints of a newly ready revision
            # by the time traffic moves to it. Without an observation, routes stay as they were.
            moved = await asyncio.to_thread(write_endpoints, self.engine, container.id, states)
            if moved and self.on_endpoints is not None:
                self.on_endpoints(container.id)
        changed = await asyncio.to_thread(self._write_status, container.id, generation, observed)
        if changed and self.on_status is not None:
            await self.on_status(container.id, "status")
        await self._retire_or_wait(container.id, generation, observed, states)

    async def _retire_or_wait(
        self,
        container_id: str,
        generation: int,
        observed: ObservedStatus,
        states: list[RevisionState],
    ) -> None:
        loop = asyncio.get_running_loop()
        if observed.status == "deploying":
            polls = self._pending_polls.get(container_id, 0)
            self._pending_polls[container_id] = polls + 1
            # Most revisions start within a few seconds: look often at first, then back off.
            delay = (
                0.02
                if polls < 25
                else 0.05
                if polls < 55
                else min(self.options.pending_poll, 0.05 * 2 ** (polls - 55))
            )
            self._requeue_after(container_id, delay)
            return
        self._pending_polls.pop(container_id, None)
        if observed.status == "deployed":
            others = [s.revision for s in states if s.revision != generation]
            if not others:
                return
            since = self._ready_since.setdefault((container_id, generation), loop.time())
            remaining = self.options.drain_seconds - (loop.time() - since)
            if remaining > 0:
                self._requeue_after(container_id, remaining)
                return
            await self.runtime.retire(container_id, keep_revision=generation)
            self._ready_since.pop((container_id, generation), None)

    def _write_status(self, container_id: str, generation: int, observed: ObservedStatus) -> bool:
        """Store the status if it changed and the spec did not move on meanwhile."""
        with Session(self.engine) as session:
            container = session.exec(
                select(Container).where(
                    Container.id == container_id,
                    Container.generation == generation,
                    col(Container.deleted_at).is_(None),
                )
            ).first()
            if container is None:
                return False
            session.expunge(container)
            changed = apply_observed_status(container, observed)
            if not changed and container.observed_generation == generation:
                return False
            # Guarded on the generation: a PUT that landed since we observed wins.
            result = session.execute(
                sa.update(Container)
                .where(col(Container.id) == container_id, col(Container.generation) == generation)
                .values(
                    status=container.status,
                    status_reason=container.status_reason,
                    status_message=container.status_message,
                    ready_revision=container.ready_revision,
                    observed_generation=generation,
                )
            )
            session.commit()
            return changed and cast("CursorResult[Any]", result).rowcount == 1


def _serving(state: RevisionState | None) -> tuple[int, list[str], str]:
    """(instances_ready, endpoints, serving_state) of one revision as the runtime reported it."""
    if state is None:
        return 0, [], ServingState.RETIRED
    if state.phase is Phase.READY:
        endpoints = list(state.endpoints or ((state.endpoint,) if state.endpoint else ()))
        return max(state.instances_ready, len(endpoints)), endpoints, ServingState.SERVING
    if state.phase is Phase.FAILED:
        return 0, [], ServingState.FAILED
    return 0, [], ServingState.STARTING


def write_endpoints(engine: Engine, container_id: str, states: list[RevisionState]) -> bool:
    """Store each revision's ready instances and endpoints for the data plane of every replica;
    True when something changed. (Kept apart for the autoscaler, which will own these rows.)"""
    by_revision = {state.revision: state for state in states}
    changed = False
    with Session(engine) as session:
        revisions = session.exec(
            select(Revision).where(Revision.container_id == container_id)
        ).all()
        for revision in revisions:
            ready, endpoints, serving = _serving(by_revision.get(revision.revision_number))
            if revision.revision_number not in by_revision and not (
                revision.instances_ready or revision.endpoints
            ):
                continue  # never ran here, or already retired: leave its state alone
            if (revision.instances_ready, revision.endpoints, revision.serving_state) == (
                ready,
                endpoints,
                serving,
            ):
                continue
            revision.instances_ready = ready
            revision.endpoints = endpoints
            revision.serving_state = serving
            session.add(revision)
            changed = True
        if changed:
            session.commit()
    return changed
