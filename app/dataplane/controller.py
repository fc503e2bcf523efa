"""Keeps this replica's data plane fed with the routing table derived from the database.

Every API replica runs one: the table is rebuilt from the ``containers`` and ``revisions`` rows
(the leader's reconciler writes each revision's ready endpoints there) whenever a change is
announced (local service changes, the reconciler's status changes, the bus) and, as a safety net,
every ``resync_interval`` seconds. Identical tables write nothing; a new one is a new file for
the route resolver, never a Caddy reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.dataplane.routes import (
    ActivatorAddress,
    RoutedContainer,
    RoutedRevision,
    RoutingTable,
    build_routing_table,
)
from app.dataplane.supervisor import CaddySupervisor
from app.domain.models import Container, ContainerStatus, Revision
from app.domain.traffic import traffic_of

log = logging.getLogger(__name__)


def routed_containers(engine: Engine) -> list[RoutedContainer]:
    """Every live container with the ready endpoints of its revisions."""
    with Session(engine) as session:
        containers = session.execute(
            sa.select(
                col(Container.id),
                col(Container.slug),
                col(Container.ready_revision),
                col(Container.traffic),
                col(Container.status),
            ).where(col(Container.deleted_at).is_(None))
        ).all()
        ready = session.exec(
            select(
                Revision.container_id,
                Revision.revision_number,
                Revision.instances_ready,
                Revision.endpoints,
            ).where(col(Revision.instances_ready) > 0)
        ).all()
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
        supervisor: CaddySupervisor,
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

    def table(self) -> RoutingTable:
        return build_routing_table(
            routed_containers(self.engine), domain=self.domain, activator=self.activator
        )

    def changed(self, *_why: object) -> None:
        """Something routing-related may have changed; safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._changed.set()
        else:
            loop.call_soon_threadsafe(self._changed.set)

    async def status_changed(self, container_id: str, kind: str) -> None:
        """The reconciler's ``on_status`` hook."""
        self.changed(container_id, kind)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.supervisor.start(await asyncio.to_thread(self.table))
        self._task = asyncio.create_task(self._sync_loop(), name="dataplane-sync")

    async def sync(self) -> bool:
        """Rebuild the table and hand it to the resolver; True when it changed."""
        return await self.supervisor.apply(await asyncio.to_thread(self.table))

    async def publish(self, *_why: object) -> None:
        """Hand the current table to the resolver now and wait (up to ``publish_wait`` seconds)
        until it serves it: the reconciler awaits this before a status that moves traffic, so
        a host nobody asked for yet is routed by the time it says ``deployed`` (one Caddy
        already holds for up to its ``refresh``)."""
        try:
            await self.sync()
            await self.supervisor.served(within=self.publish_wait)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("could not publish routes: %s", e)
            self.changed()

    async def _sync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.resync_interval)
            self._changed.clear()
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("could not program the data plane: %s", e)

    async def upstreams(self) -> dict[str, int]:
        """In-flight requests per upstream address, as Caddy counts them."""
        return await self.supervisor.admin.upstreams()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.supervisor.stop()
