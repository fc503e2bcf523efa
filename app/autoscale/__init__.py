"""The autoscaler: decides how many instances each revision runs (on the elected leader only).

Every ``tick_seconds`` it samples the requests in flight per revision: the proxy's in-flight
count per upstream address (``in_flight``, e.g. Caddy's ``/reverse_proxy/upstreams``, mapped to
revisions through their endpoints) plus the requests the activator holds for revisions at zero
(``held``). Request activity (``activity``: revisions that received requests since the last call,
when the proxy can tell; the activator's wakes; any sample with a request in flight) is written as
``revisions.last_request_at``, so the idle window of scale to zero survives a leader change and a
restart. ``app.autoscale.decide`` makes each decision; changed ones are written to
``revisions.instances_desired`` and the reconciler is woken (``ServiceContext.notify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime

from app.autoscale.decide import (
    AutoscalerOptions,
    Decision,
    RevisionLoad,
    Sample,
    decide,
    scaling_of,
)
from app.domain.models import ServingState, utcnow
from app.services import scaling as svc
from app.services.context import ServiceContext
from app.services.scaling import RevisionKey

log = logging.getLogger(__name__)

InFlight = Callable[[], Awaitable[Mapping[str, int]]]
"""Requests in flight per upstream address, from the proxy (of this replica)."""
Held = Callable[[], Mapping[RevisionKey, int]]
"""Requests the activator holds per revision."""
Activity = Callable[[], Awaitable[Iterable[RevisionKey]]]
"""Revisions that received requests since the previous call."""

ACTIVITY_WRITE_SECONDS = 1.0
"""Request activity is written at most this often per revision."""

__all__ = ["Autoscaler", "AutoscalerOptions"]


def _idle_seconds(last_request_at: datetime | None, now: datetime) -> float:
    if last_request_at is None:
        return float("inf")
    if last_request_at.tzinfo is None:  # SQLite returns naive UTC
        last_request_at = last_request_at.replace(tzinfo=now.tzinfo)
    return max((now - last_request_at).total_seconds(), 0.0)


class Autoscaler:
    def __init__(
        self,
        ctx: ServiceContext,
        *,
        is_leader: Callable[[], bool],
        in_flight: InFlight | None = None,
        held: Held | None = None,
        activity: Activity | None = None,
        options: AutoscalerOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.is_leader = is_leader
        self.in_flight = in_flight
        self.held = held
        self.activity = activity
        self.options = options or AutoscalerOptions()
        self.clock = clock
        self._samples: dict[RevisionKey, deque[Sample]] = {}
        self._panic_until: dict[RevisionKey, float] = {}
        self._activity_written: dict[RevisionKey, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.decisions: dict[RevisionKey, Decision] = {}
        """The latest decision per revision (for tests and diagnostics)."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                if self.is_leader():
                    await self.tick()
                else:
                    self._samples.clear()  # a new leader starts from the database
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("autoscaler tick failed")
            await asyncio.sleep(self.options.tick_seconds)

    async def _upstreams(self) -> Mapping[str, int]:
        if self.in_flight is None:
            return {}
        try:
            return await self.in_flight()
        except Exception as e:  # the proxy restarting: the held requests still count
            log.warning("in-flight requests unavailable: %s", e)
            return {}

    async def tick(self) -> dict[RevisionKey, Decision]:
        """Sample, decide and write the decisions that changed."""
        inputs = await asyncio.to_thread(svc.scaling_inputs, self.ctx)
        upstreams = await self._upstreams()
        held = dict(self.held()) if self.held is not None else {}
        seen = set(await self.activity()) if self.activity is not None else set()
        now = self.clock()
        wall = utcnow()
        keys = set()
        active: set[RevisionKey] = set()
        loads: dict[RevisionKey, RevisionLoad] = {}
        for revision in inputs:
            key = (revision.container_id, revision.revision)
            keys.add(key)
            flight = sum(upstreams.get(endpoint, 0) for endpoint in revision.endpoints)
            flight += held.get(key, 0)
            samples = self._samples.setdefault(key, deque())
            samples.append(Sample(now, flight))
            horizon = now - self.options.stable_window_seconds
            while samples and samples[0].at < horizon:
                samples.popleft()
            idle = _idle_seconds(revision.last_request_at, wall)
            if flight > 0 or key in seen:
                idle = 0.0
                active.add(key)
            starting = (
                max(revision.instances_desired - revision.instances_ready, 0)
                if revision.serving_state in (ServingState.STARTING, ServingState.SERVING)
                else 0
            )
            loads[key] = RevisionLoad(
                scaling=scaling_of(revision.spec),
                desired=revision.instances_desired,
                ready=revision.instances_ready,
                starting=starting,
                idle_seconds=idle,
                panic_until=self._panic_until.get(key),
            )
        changed: dict[RevisionKey, int] = {}
        for key, load in loads.items():
            decision = decide(load, self._samples[key], now=now, options=self.options)
            self.decisions[key] = decision
            if decision.panic_until is None:
                self._panic_until.pop(key, None)
            else:
                self._panic_until[key] = decision.panic_until
            if decision.desired != load.desired:
                log.info(
                    "revision %s of %s: %d -> %d instances (%s)",
                    key[1],
                    key[0],
                    load.desired,
                    decision.desired,
                    decision.reason,
                )
                changed[key] = decision.desired
        to_record = [
            key
            for key in active
            if now - self._activity_written.get(key, -1e9) >= ACTIVITY_WRITE_SECONDS
        ]
        for key in to_record:
            self._activity_written[key] = now
        if to_record:
            await asyncio.to_thread(svc.record_requests, self.ctx, to_record)
        if changed:
            await asyncio.to_thread(svc.set_instances_desired, self.ctx, changed)
        for gone in set(self._samples) - keys:
            self._samples.pop(gone, None)
            self._panic_until.pop(gone, None)
            self._activity_written.pop(gone, None)
        return {key: self.decisions[key] for key in loads}
