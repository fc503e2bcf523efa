"""The level-triggered reconciler: moves the runtime toward the desired state in the database.

It never blocks API requests: services only call ``request(container_id)``, which queues work
on the reconciler's own event loop. Each pass reads the container and its revisions, observes the
runtime, and then:

- keeps every revision the container's traffic routes to (``routable_revisions``), plus the newest
  one (while it starts, or at zero when traffic is pinned elsewhere); the others are retired once
  they have been out of the traffic for the drain period;
- runs each kept revision from its own stored spec with the instance count decided for it
  (``revisions.instances_desired``: 1 for a new revision, then the autoscaler's or the
  activator's wish). When instances are removed, the data plane is told first (the surplus
  endpoints leave ``revisions.endpoints``) and the instances go after the drain period;
- writes per revision what the runtime reported (``instances_ready``, ``endpoints``,
  ``serving_state``, ``state_reason/message``) and notifies, so every replica reprograms its
  proxy. A revision at 0 instances is ``scaled-to-zero``, a healthy state; the reason of a failure
  is kept when a revision scales to zero (knative/serving#14157 loses it);
- derives the container's status and writes it only when it changed (and only if the spec did not
  move meanwhile).

Startup and a periodic resync cover everything, including runtime objects whose record is gone
(orphans) and deletions that a crash interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult, Engine
from sqlmodel import Session, col, delete, select

from app.domain import phases
from app.domain.gpus import GpuCatalog
from app.domain.logtime import to_ns
from app.domain.models import Container, Revision, ServingState
from app.domain.quantity import parse_quantity
from app.domain.spec import ContainerSpec, ProbeSpec
from app.domain.status import (
    ObservedStatus,
    RevisionObservation,
    apply_observed_status,
    derive_status,
)
from app.domain.traffic import resolve_traffic, routable_revisions, traffic_of
from app.domain.views import as_utc
from app.reconcile.leader import Elector
from app.runtime.base import (
    GpuSelector,
    Phase,
    Probe,
    Probes,
    ReportsUrls,
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

DeployListener = Callable[[str, list[phases.PhaseEntry]], None]
"""Called with the runtime's name and a revision's timeline when it first serves or fails."""
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


@dataclass
class ReconcilerStats:
    """Counters an operator reads in the metrics (``app.observability``)."""

    passes: int = 0
    errors: int = 0
    last_resync: float | None = None
    """``time.monotonic()`` of the last full resync, None before the first."""


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
        probes=workload_probes(spec),
        # Desired, not resolved: ``latest`` stays latest, for runtimes that route by themselves.
        traffic=tuple(
            TrafficTarget(
                percent=entry.percent, revision=entry.revision, latest=entry.latest, tag=entry.tag
            )
            for entry in traffic_of(container.traffic)
        ),
    )


def workload_probes(spec: ContainerSpec) -> Probes:
    """The runtime's view of the spec's probes: ports resolved to the container's port."""
    if spec.probes is None:
        return Probes()

    def probe(given: ProbeSpec | None) -> Probe | None:
        if given is None:
            return None
        kind, action = next(
            (name, value)
            for name, value in (
                ("httpGet", given.http_get),
                ("tcpSocket", given.tcp_socket),
                ("exec", given.exec_),
            )
            if value is not None
        )
        return Probe(
            action=kind,
            port=int(action.get("port") or spec.port),
            path=str(action.get("path") or "/"),
            command=tuple(action.get("command") or ()),
            initial_delay_seconds=given.initial_delay_seconds,
            period_seconds=given.period_seconds,
            timeout_seconds=given.timeout_seconds,
            success_threshold=given.success_threshold,
            failure_threshold=given.failure_threshold,
        )

    return Probes(
        startup=probe(spec.probes.startup),
        readiness=probe(spec.probes.readiness),
        liveness=probe(spec.probes.liveness),
        startup_budget_seconds=spec.probes.startup_budget_seconds,
    )


def revision_workload_spec(
    container: Container, revision: Revision, catalog: GpuCatalog
) -> WorkloadSpec:
    """What the runtime needs to run one (possibly older) revision: its own stored spec."""
    view = container.model_copy(
        update={"spec": revision.spec, "generation": revision.revision_number}
    )
    return workload_spec(view, catalog)


def _observations(states: list[RevisionState]) -> list[RevisionObservation]:
    return [
        RevisionObservation(state.revision, state.phase.value, state.reason, state.message)
        for state in states
    ]


@dataclass(frozen=True)
class RevisionRecord:
    """What the reconciler writes on one ``revisions`` row."""

    instances_ready: int
    endpoints: tuple[str, ...]
    serving_state: str
    state_reason: str
    state_message: str
    phases: tuple[tuple[str, int, str], ...] = ()
    """The deploy timeline as stored (``app.domain.phases``): (phase, at ns, reason)."""


def _phase_tuples(stored: list[dict[str, Any]] | None) -> tuple[tuple[str, int, str], ...]:
    return tuple(
        (str(p["phase"]), int(p["at"]), str(p.get("reason", "")))
        for p in stored or ()
        if isinstance(p, dict) and "phase" in p and "at" in p
    )


def revision_phases(
    row: Revision, state: RevisionState | None, *, now_ns: int, serving: bool
) -> tuple[tuple[str, int, str], ...]:
    """The revision's timeline with what this pass saw (pure): the runtime's moments, ready when
    first seen ready, serving when traffic first reached it, failed with the phase it failed in."""
    moments = dict(state.moments) if state is not None else {}
    failed_reason = None
    if state is not None and state.phase is Phase.READY:
        moments.setdefault(phases.READY, now_ns)
        if serving:
            moments[phases.SERVING] = now_ns
    elif state is not None and state.phase is Phase.FAILED:
        # What this pass saw counts too: a container that crashed before the first look
        # failed after it started, not while accepted.
        seen = [*row.phases, *({"phase": name, "at": at} for name, at in moments.items())]
        reached = phases.last_phase(seen) or phases.ACCEPTED
        failed_reason = f"{reached}: {state.reason}"
    updated = phases.record(row.phases, moments, failed_reason=failed_reason)
    return _phase_tuples(updated if updated is not None else row.phases)


PROBE_OUTAGES = ("LivenessProbeFailed", "ReadinessProbeFailed")
"""Reasons of a pending revision that was ready before (``app.runtime.probing``)."""


def revision_record(
    row: Revision,
    state: RevisionState | None,
    *,
    kept: bool,
    shrink_to: int | None = None,
    now_ns: int = 0,
    serving: bool = False,
) -> RevisionRecord:
    """The row's new observed values (pure). ``shrink_to``: instances are about to be removed;
    only the first ``shrink_to`` endpoints stay in the data plane meanwhile. ``serving``: the
    traffic routes to this revision now."""
    timeline = revision_phases(row, state, now_ns=now_ns or time.time_ns(), serving=serving)
    record = _revision_record(row, state, kept=kept, shrink_to=shrink_to)
    return dataclasses.replace(record, phases=timeline)


def _revision_record(
    row: Revision, state: RevisionState | None, *, kept: bool, shrink_to: int | None
) -> RevisionRecord:
    reason, message = row.state_reason, row.state_message
    if state is None:
        if not kept:
            serving = ServingState.RETIRED
        elif row.instances_desired <= 0:
            serving = ServingState.SCALED_TO_ZERO
        else:
            serving = ServingState.STARTING
        return RevisionRecord(0, (), serving, reason, message)
    endpoints = state.endpoints or ((state.endpoint,) if state.endpoint else ())
    if state.phase is Phase.READY:
        if shrink_to is None:
            # a runtime without local endpoints (Kubernetes) still has one instance ready
            ready = max(state.instances_ready, len(endpoints), 1)
            return RevisionRecord(ready, endpoints, ServingState.SERVING, "", "")
        endpoints = endpoints[: max(shrink_to, 0)]
        serving = ServingState.SERVING if endpoints else ServingState.SCALED_TO_ZERO
        return RevisionRecord(len(endpoints), endpoints, serving, "", "")
    if state.phase is Phase.FAILED:
        return RevisionRecord(0, (), ServingState.FAILED, state.reason, state.message)
    if state.reason in PROBE_OUTAGES:
        # a probe took it out of traffic (restarting for liveness, or no longer ready): say so
        return RevisionRecord(0, (), ServingState.STARTING, state.reason, state.message)
    # starting: a failure's reason stays until the revision is ready again
    return RevisionRecord(0, (), ServingState.STARTING, reason, message)


def at_zero(row: Revision) -> bool:
    """Whether a revision without instances in the runtime waits at zero for a request (it may
    have failed before), rather than being new or retired."""
    return row.instances_desired <= 0 and row.serving_state not in ("", ServingState.RETIRED)


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
        on_deploy_finished: DeployListener | None = None,
    ) -> None:
        self.engine = engine
        self.runtime = runtime
        self.catalog = catalog
        self.options = options or ReconcilerOptions()
        self.on_status = on_status
        self.elector = elector
        self.on_deploy_finished = on_deploy_finished
        self._leading = elector is None
        self._elected = asyncio.Event()
        if self._leading:
            self._elected.set()
        self.on_endpoints: Callable[[str], Awaitable[None]] | None = None
        """Awaited with the container id after the ready endpoints of its revisions or its
        status changed, before anyone is told of the change (this replica's data plane
        publishes the new routes meanwhile, so "deployed" is not said before they are
        served)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._drain_since: dict[str, float] = {}
        self._applied_traffic: dict[str, str] = {}
        self._shrink_since: dict[tuple[str, int], float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._failures: dict[str, int] = {}
        self._pending_polls: dict[str, int] = {}
        self.stats = ReconcilerStats()

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
    def queue_depth(self) -> int:
        """Containers waiting for a pass now (queued or on a timer)."""
        return len(self._queued) + len(self._timers)

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
                self.stats.passes += 1
                self._failures.pop(container_id, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.errors += 1
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
        self.stats.last_resync = time.monotonic()
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
            # The runtime is observed while the database is read: neither needs the other, and
            # both are round trips (a pass on a new revision starts with them).
            observing = asyncio.create_task(self.runtime.observe(container_id))
            try:
                container, rows = await asyncio.to_thread(self._load, container_id)
            except BaseException:
                await _discard(observing)
                raise
            if container is None or container.deleted_at is not None:
                await _discard(observing)
                await self._remove(container_id, purge=container is not None)
                return
            await self._converge(container, rows, observing)

    def _load(self, container_id: str) -> tuple[Container | None, dict[int, Revision]]:
        """The container and its revisions, in one trip to a worker thread (a pass starts
        with both; every hop costs on a busy machine)."""
        with Session(self.engine, expire_on_commit=False) as session:
            container = session.get(Container, container_id)
            if container is None or container.deleted_at is not None:
                return container, {}
            rows = session.exec(
                select(Revision).where(col(Revision.container_id) == container_id)
            ).all()
            return container, {row.revision_number: row for row in rows}

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
        self._drain_since.pop(container_id, None)
        self._applied_traffic.pop(container_id, None)
        for key in [key for key in self._shrink_since if key[0] == container_id]:
            del self._shrink_since[key]

    def _purge(self, container_id: str) -> None:
        with Session(self.engine) as session:
            session.exec(delete(Revision).where(col(Revision.container_id) == container_id))
            session.exec(
                delete(Container).where(
                    col(Container.id) == container_id, col(Container.deleted_at).is_not(None)
                )
            )
            session.commit()

    async def _converge(
        self,
        container: Container,
        rows: dict[int, Revision],
        observing: asyncio.Task[list[RevisionState]],
    ) -> None:
        generation = container.generation
        kept = {generation}
        shrinking: dict[int, int] = {}
        try:
            states = {s.revision: s for s in await observing}
            kept = self._kept(container, rows, states)
            if self.scales_instances:
                asked = await self._scale(container, rows, states, kept, shrinking)
            else:
                asked = await self._apply_newest(container, states)
            if asked:
                states = {s.revision: s for s in await self.runtime.observe(container.id)}
            observed = self._status(container, rows, states)
            urls = await self._observed_urls(container)
        except RuntimeRejected as e:
            urls = None
            states = {}
            observed = ObservedStatus(
                "failed", "RuntimeRejected", f"revision {generation}: {e}", container.ready_revision
            )
        except RuntimeAdapterError as e:
            # Unavailable or conflicting for now: say so, keep serving the revision that was
            # ready (its route stays), and look again soon.
            log.warning("runtime error for %s: %s", container.id, e)
            unknown = derive_status(generation=generation, observations=[], runtime_reason=str(e))
            observed = ObservedStatus(
                unknown.status,
                getattr(e, "reason", unknown.reason),  # e.g. NoRuntime: no engine at all
                unknown.message,
                container.ready_revision,
            )
            if await asyncio.to_thread(self._write_status, container.id, generation, observed):
                await self._notify(container.id)
            self._requeue_after(container.id, 5.0 if isinstance(e, RuntimeUnavailable) else 2.0)
            return
        routed = routable_revisions(
            resolve_traffic(traffic_of(container.traffic), latest_ready=observed.ready_revision)
        )
        now_ns = time.time_ns()
        records = {
            number: revision_record(
                row,
                states.get(number),
                kept=number in kept,
                shrink_to=shrinking.get(number),
                now_ns=now_ns,
                serving=number in routed,
            )
            for number, row in rows.items()
        }
        # The endpoints before the status: a routing table read in between never sends traffic
        # to a revision whose endpoints it does not have. Then the routes are published (and
        # served) before anyone hears the status: the status's ``ready_revision`` is what
        # ``latest`` traffic follows, so a table published before it was written kept a new
        # container's host without a backend (503) for a moment after it said ``deployed``.
        rows_changed = await asyncio.to_thread(self._write_revisions, container.id, rows, records)
        changed = await asyncio.to_thread(self._write_status, container.id, generation, observed)
        if (rows_changed or changed) and self.on_endpoints is not None:
            await self.on_endpoints(container.id)
        if urls is not None:
            changed = await asyncio.to_thread(self._write_urls, container.id, urls) or changed
        if changed or rows_changed:
            await self._notify(container.id)
        await self._retire_or_wait(container.id, observed, states, kept, rows, shrinking)

    @property
    def scales_instances(self) -> bool:
        """Whether Dockyard runs each revision's instances itself (the local runtime), rather
        than handing the newest revision to a runtime that scales and rolls out by itself
        (Deployments, Knative)."""
        capabilities = self.runtime.capabilities
        return capabilities.scale_to_zero and not capabilities.autoscales

    async def _apply_newest(self, container: Container, states: dict[int, RevisionState]) -> bool:
        """Runtimes that roll out by themselves get the newest revision, again whenever the
        traffic changed (Knative routes by itself); True when applied."""
        traffic = json.dumps(container.traffic, sort_keys=True)
        if (
            container.observed_generation >= container.generation
            and container.generation in states
            and self._applied_traffic.get(container.id) == traffic
        ):
            return False
        await self.runtime.apply(workload_spec(container, self.catalog))
        self._applied_traffic[container.id] = traffic
        return True

    async def _notify(self, container_id: str) -> None:
        if self.on_status is not None:
            await self.on_status(container_id, "status")

    def _kept(
        self, container: Container, rows: dict[int, Revision], states: dict[int, RevisionState]
    ) -> set[int]:
        """The revisions that must stay: those the traffic routes to, and the newest."""
        latest = self._latest_ready(container, rows, states)
        resolved = resolve_traffic(traffic_of(container.traffic), latest_ready=latest)
        return routable_revisions(resolved) | {container.generation}

    @staticmethod
    def _serves(
        container: Container, number: int, rows: dict[int, Revision], state: RevisionState | None
    ) -> bool:
        """Whether the revision serves: ready, waiting at zero (a request wakes it) or waking
        (starting again after it was ready: it stays the one requests go to)."""
        if state is None:
            return at_zero(rows[number])
        if state.phase is Phase.READY:
            return True
        return state.phase is Phase.PENDING and (
            number == container.ready_revision
            or rows[number].serving_state in (ServingState.SERVING, ServingState.SCALED_TO_ZERO)
        )

    def _latest_ready(
        self, container: Container, rows: dict[int, Revision], states: dict[int, RevisionState]
    ) -> int | None:
        """The newest revision that serves (what ``latest`` traffic means)."""
        candidates = [
            number
            for number in rows
            if number <= container.generation
            and self._serves(container, number, rows, states.get(number))
        ]
        return max(candidates) if candidates else None

    async def _scale(
        self,
        container: Container,
        rows: dict[int, Revision],
        states: dict[int, RevisionState],
        kept: set[int],
        shrinking: dict[int, int],
    ) -> bool:
        """Ask the runtime for each kept revision's instance count; True when it was asked.
        Removing serving instances waits for the drain period (``shrinking`` says to how many)."""
        loop = asyncio.get_running_loop()
        asked = False
        for number in sorted(kept):
            row = rows.get(number)
            if row is None:
                continue
            desired = max(row.instances_desired, 0)
            state = states.get(number)
            present = state.instances_desired if state is not None else 0
            # Never-started instances (their creator, e.g. a killed leader, died before starting
            # them): scaling, even to the same count, starts them or removes the surplus.
            unstarted = state.instances_unstarted if state is not None else 0
            key = (container.id, number)
            if present == desired and not unstarted:
                self._shrink_since.pop(key, None)
                continue
            if present < desired:
                self._shrink_since.pop(key, None)
                if state is not None and state.phase is Phase.FAILED and not unstarted:
                    continue  # not retried until it scales to zero (or a new revision)
            elif state is not None and state.phase is Phase.READY and state.instances_ready:
                since = self._shrink_since.setdefault(key, loop.time())
                if loop.time() - since < self.options.drain_seconds:
                    shrinking[number] = desired
                    continue
                self._shrink_since.pop(key, None)
            await self.runtime.scale(revision_workload_spec(container, row, self.catalog), desired)
            asked = True
        return asked

    def _status(
        self, container: Container, rows: dict[int, Revision], states: dict[int, RevisionState]
    ) -> ObservedStatus:
        generation = container.generation
        observations = [
            RevisionObservation(number, Phase.READY.value)
            if number in rows and self._serves(container, number, rows, state)
            else RevisionObservation(number, state.phase.value, state.reason, state.message)
            for number, state in states.items()
        ]
        for number, row in rows.items():
            if number in states or not at_zero(row):
                continue
            if row.state_reason:  # failed, then scaled to zero: still says why
                observations.append(
                    RevisionObservation(
                        number, Phase.FAILED.value, row.state_reason, row.state_message
                    )
                )
            else:
                observations.append(RevisionObservation(number, Phase.READY.value))
        observed = derive_status(generation=generation, observations=observations)
        latest = self._latest_ready(container, rows, states)
        if latest is not None and (observed.ready_revision or 0) < latest:
            observed = ObservedStatus(observed.status, observed.reason, observed.message, latest)
        return observed

    async def _retire_or_wait(
        self,
        container_id: str,
        observed: ObservedStatus,
        states: dict[int, RevisionState],
        kept: set[int],
        rows: dict[int, Revision],
        shrinking: dict[int, int],
    ) -> None:
        loop = asyncio.get_running_loop()
        # A revision that only waits for its drain period to shrink is not starting: the timer
        # below brings it back then (looking every 20 ms meanwhile cost ~150 passes a drain).
        waking = any(
            (state.phase is Phase.PENDING or state.instances_desired != rows[n].instances_desired)
            and state.phase is not Phase.FAILED
            for n, state in states.items()
            if n in kept and n in rows and n not in shrinking
        ) or any(rows[n].instances_desired > 0 and n not in states for n in kept if n in rows)
        starting = observed.status == "deploying" or (self.scales_instances and waking)
        if starting:
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
        else:
            self._pending_polls.pop(container_id, None)
        if shrinking:
            self._requeue_after(container_id, self.options.drain_seconds)
        if observed.status == "failed" and not any(
            s.phase is Phase.READY for n, s in states.items() if n in kept
        ):
            return
        others = [n for n in states if n not in kept]
        if not others:
            self._drain_since.pop(container_id, None)
            return
        since = self._drain_since.setdefault(container_id, loop.time())
        remaining = self.options.drain_seconds - (loop.time() - since)
        if remaining > 0:
            self._requeue_after(container_id, remaining)
            return
        await self.runtime.retire(container_id, keep=kept)
        self._drain_since.pop(container_id, None)
        self._requeue_after(container_id, 0.0)  # write the retired revisions' rows

    def _write_revisions(
        self,
        container_id: str,
        rows: dict[int, Revision],
        records: dict[int, RevisionRecord],
    ) -> bool:
        """Store each revision's observed values that changed (``write_revision_records``);
        first tell the deploy metrics of revisions that now serve or failed for the first time."""
        if self.on_deploy_finished is not None:
            for number, record in records.items():
                row = rows[number]
                self._report_finished(row, _phase_tuples(row.phases), record.phases)
        return write_revision_records(self.engine, container_id, rows, records)

    def _report_finished(
        self,
        row: Revision,
        before: tuple[tuple[str, int, str], ...],
        after: tuple[tuple[str, int, str], ...],
    ) -> None:
        """Tell the deploy metrics once, when a revision first serves or first fails."""
        assert self.on_deploy_finished is not None
        seen = {phase for phase, _, _ in before}
        ends = {phase for phase, _, _ in after} & {phases.SERVING, phases.FAILED}
        if not ends - seen:
            return
        stored = [{"phase": phase, "at": at, "reason": why} for phase, at, why in after]
        timeline = phases.timeline(stored, accepted_ns=to_ns(as_utc(row.date_created)))
        self.on_deploy_finished(self.runtime.name, timeline)

    async def _observed_urls(self, container: Container) -> dict[str, Any] | None:
        """The URLs to store for the container when the runtime reports its own (Knative) and
        they differ from the stored ones; None leaves the stored ones as they are (a runtime
        without URLs, or one that has none to report yet)."""
        if not isinstance(self.runtime, ReportsUrls):
            return None
        reported = await self.runtime.observed_urls(container.id)
        stored = reported.to_json() if reported is not None else None
        if stored is None or stored == container.observed_urls:
            return None
        return stored

    def _write_urls(self, container_id: str, urls: dict[str, Any]) -> bool:
        """Store the URLs the runtime reported; True when a live container's changed."""
        with Session(self.engine) as session:
            result = session.execute(
                sa.update(Container)
                .where(col(Container.id) == container_id, col(Container.deleted_at).is_(None))
                .values(observed_urls=urls)
            )
            session.commit()
            return cast("CursorResult[Any]", result).rowcount == 1

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


async def _discard(task: asyncio.Task[Any]) -> None:
    """Stop waiting for a task whose result is not needed (its error neither)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def write_revision_records(
    engine: Engine,
    container_id: str,
    rows: dict[int, Revision],
    records: dict[int, RevisionRecord],
) -> bool:
    """Store each revision's observed values that changed; True when any did. Only the
    observed columns are written: ``instances_desired`` and ``last_request_at`` belong to the
    autoscaler and the activator."""
    changed = False
    with Session(engine) as session:
        for number, record in records.items():
            row = rows[number]
            current = RevisionRecord(
                row.instances_ready,
                tuple(row.endpoints or ()),
                row.serving_state,
                row.state_reason,
                row.state_message,
                _phase_tuples(row.phases),
            )
            if current == record:
                continue
            session.execute(
                sa.update(Revision)
                .where(
                    col(Revision.container_id) == container_id,
                    col(Revision.revision_number) == number,
                )
                .values(
                    instances_ready=record.instances_ready,
                    endpoints=list(record.endpoints),
                    serving_state=record.serving_state,
                    state_reason=record.state_reason[:128],
                    state_message=record.state_message,
                    phases=[
                        {"phase": phase, "at": at, **({"reason": why} if why else {})}
                        for phase, at, why in record.phases
                    ],
                )
            )
            changed = True
        session.commit()
    return changed


def write_endpoints(engine: Engine, container_id: str, states: list[RevisionState]) -> bool:
    """Store what one observation says of each revision (ready instances, endpoints, serving
    state) as the reconciler does, every observed revision being kept; True when anything
    changed. For callers that have runtime states in hand (tests of the data plane)."""
    by_revision = {state.revision: state for state in states}
    with Session(engine, expire_on_commit=False) as session:
        rows = {
            row.revision_number: row
            for row in session.exec(
                select(Revision).where(col(Revision.container_id) == container_id)
            ).all()
        }
    records = {
        number: revision_record(row, by_revision.get(number), kept=number in by_revision)
        for number, row in rows.items()
    }
    return write_revision_records(engine, container_id, rows, records)
