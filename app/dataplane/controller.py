"""Keeps this replica's data plane fed with the routing table derived from the database.

Every API replica runs one: the table comes from the ``containers`` and ``revisions`` rows (the
leader's reconciler writes each revision's ready endpoints there). A change announced for a
container (local service changes, the reconciler's status changes, the bus) re-reads that
container's rows only and rebuilds its hosts; everything is read again when a change names no
container, when many are pending at once, and, as a safety net for a change nobody announced,
every ``resync_interval`` seconds (at least ten times as long as reading everything took).
With 100k containers, reading them all takes seconds of Python holding the GIL; re-reading one
takes a millisecond. Identical tables write nothing; a new one is a new file for the route
resolver, never a Caddy reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import operator
import time
from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.dataplane.engine import ProxySupervisor
from app.dataplane.routes import (
    ActivatorAddress,
    HostRoute,
    RoutedContainer,
    RoutedRevision,
    RoutingTable,
    build_routing_table,
)
from app.domain.models import Container, ContainerStatus, Revision
from app.domain.traffic import traffic_of

log = logging.getLogger(__name__)


FULL_READ_ABOVE = 256
"""More containers pending than this: read them all (one query instead of many ``IN`` lists)."""


def routed_containers(engine: Engine, ids: Collection[str] | None = None) -> list[RoutedContainer]:
    """Every live container (or those of ``ids``) with the ready endpoints of its revisions."""
    live = sa.select(
        col(Container.id),
        col(Container.slug),
        col(Container.ready_revision),
        col(Container.traffic),
        col(Container.status),
    ).where(col(Container.deleted_at).is_(None))
    serving = select(
        Revision.container_id,
        Revision.revision_number,
        Revision.instances_ready,
        Revision.endpoints,
    ).where(col(Revision.instances_ready) > 0)
    if ids is not None:
        live = live.where(col(Container.id).in_(list(ids)))
        serving = serving.where(col(Revision.container_id).in_(list(ids)))
    with Session(engine) as session:
        containers = session.execute(live).all()
        ready = session.exec(serving).all()
    revisions: dict[str, list[RoutedRevision]] = {}
    for container_id, number, instances_ready, endpoints in ready:
        revisions.setdefault(container_id, []).append(
            RoutedRevision(number, instances_ready, tuple(endpoints or ()))
        )
    return [
        RoutedContainer(
            id=container_id,
            slug=slug,
            ready_revision=ready_revision,
            revisions=tuple(revisions.get(container_id, ())),
            traffic=tuple(traffic_of(list(traffic) if traffic is not None else None)),
            failed=status == ContainerStatus.FAILED,
        )
        for container_id, slug, ready_revision, traffic, status in containers
    ]


class DataPlane:
    """Rebuilds and programs the routing table on changes and periodically."""

    def __init__(
        self,
        *,
        engine: Engine,
        supervisor: ProxySupervisor,
        domain: str,
        activator: ActivatorAddress | None = None,
        resync_interval: float = 2.0,
        publish_wait: float = 1.0,
    ) -> None:
        self.engine = engine
        self.supervisor = supervisor
        self.domain = domain
        self.activator = activator
        self.resync_interval = resync_interval
        self.publish_wait = publish_wait
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._hosts: dict[str, tuple[HostRoute, ...]] | None = None
        """Each live container's routes, as last read; None: nothing read yet."""
        self._pending: set[str] = set()
        self._everything = False
        self._lock = asyncio.Lock()

    def _refresh(self, ids: set[str] | None) -> RoutingTable:
        """Re-read the containers of ``ids`` (all of them when None) and return the table.
        Runs in a worker thread, one at a time (``_lock``)."""
        hosts = self._hosts
        if hosts is None or ids is None or len(ids) > FULL_READ_ABOVE:
            hosts = {}
            for container in routed_containers(self.engine):
                hosts[container.id] = self._routes_of(container)
        else:
            found = {c.id: c for c in routed_containers(self.engine, ids)} if ids else {}
            for container_id in ids:
                if container_id in found:
                    hosts[container_id] = self._routes_of(found[container_id])
                else:
                    hosts.pop(container_id, None)  # deleted (or never existed)
        self._hosts = hosts
        return tuple(
            sorted(itertools.chain.from_iterable(hosts.values()), key=operator.attrgetter("host"))
        )

    def _routes_of(self, container: RoutedContainer) -> tuple[HostRoute, ...]:
        return build_routing_table([container], domain=self.domain, activator=self.activator)

    def changed(self, container_id: object = None, *_why: object) -> None:
        """Something routing-related changed, for the container ``container_id`` (a string) or
        for any (anything else); safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        which = container_id if isinstance(container_id, str) else None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._mark(which)
        else:
            loop.call_soon_threadsafe(self._mark, which)

    def _mark(self, container_id: str | None) -> None:
        if container_id is None:
            self._everything = True
        else:
            self._pending.add(container_id)
        self._changed.set()

    async def status_changed(self, container_id: str, kind: str) -> None:
        """The reconciler's ``on_status`` hook."""
        self.changed(container_id, kind)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with self._lock:
            table = await asyncio.to_thread(self._refresh, None)
        await self.supervisor.start(table)
        self._task = asyncio.create_task(self._sync_loop(), name="dataplane-sync")

    async def sync(self, ids: Collection[str] | None = None) -> bool:
        """Re-read the containers of ``ids`` (everything when None), rebuild the table and hand
        it to the resolver; True when it changed."""
        async with self._lock:
            table = await asyncio.to_thread(self._refresh, None if ids is None else set(ids))
            return await self.supervisor.apply(table)

    async def publish(self, container_id: str | None = None, *_why: object) -> None:
        """Hand the current table to the resolver now and wait (up to ``publish_wait`` seconds)
        until it serves it: the reconciler awaits this before a status that moves traffic, so
        a host nobody asked for yet is routed by the time it says ``deployed`` (one Caddy
        already holds for up to its ``refresh``)."""
        try:
            await self.sync(None if container_id is None else [container_id])
            await self.supervisor.served(within=self.publish_wait)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("could not publish routes: %s", e)
            self.changed()

    async def _sync_loop(self) -> None:
        period = self.resync_interval
        last_full = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait(), max(0.0, last_full + period - time.monotonic())
                )
            self._changed.clear()
            everything = self._everything or time.monotonic() - last_full >= period
            pending, self._pending, self._everything = self._pending, set(), False
            started = time.monotonic()
            try:
                await self.sync(None if everything else pending)
                if everything:
                    # Reading everything with many containers (100k rows take seconds) waits
                    # at least ten times as long as it took before the next one, so the
                    # safety net never costs more than a tenth of a core.
                    last_full = time.monotonic()
                    period = max(self.resync_interval, 10 * (last_full - started))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("could not program the data plane: %s", e)
                self._everything = True
                await asyncio.sleep(min(1.0, self.resync_interval))

    async def upstreams(self) -> dict[str, int]:
        """In-flight requests per upstream address, as the proxy counts them."""
        return await self.supervisor.upstreams()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.supervisor.stop()
