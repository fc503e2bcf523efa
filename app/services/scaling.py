"""Scale decisions and wishes, written to the database so that they reach the elected reconciler
from any replica (through ``ServiceContext.notify`` and the bus) and survive a leader change or a
restart.

- The activator (in every replica) asks for an instance of a revision at zero: ``wake_revision``.
- The autoscaler (leader only) writes its decisions: ``set_instances_desired``, and the request
  activity it saw: ``record_requests``.
- Both read what they need of a revision with ``revision_serving`` / ``scaling_inputs``.

Only ``instances_desired`` and ``last_request_at`` are written here; the reconciler owns the
observed columns (instances ready, endpoints, serving state and its reason).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlmodel import Session, col, select

from app.autoscale.decide import scaling_of
from app.domain.models import Container, Revision, ServingState, utcnow
from app.services.context import ServiceContext

RevisionKey = tuple[str, int]
"""(container id, revision number)"""


@dataclass(frozen=True)
class RevisionServing:
    """Where a revision stands for the data plane right now."""

    exists: bool
    serving_state: str = ""
    endpoints: tuple[str, ...] = ()
    instances_desired: int = 0
    state_reason: str = ""
    state_message: str = ""
    concurrency: int = 0
    """The revision's target of in-flight requests per instance."""
    max_instances: int = 0

    @property
    def failed(self) -> bool:
        return self.serving_state == ServingState.FAILED


@dataclass(frozen=True)
class ScalingInput:
    """One revision as the autoscaler sees it."""

    container_id: str
    revision: int
    spec: dict[str, Any]
    instances_desired: int
    instances_ready: int
    endpoints: tuple[str, ...]
    serving_state: str
    last_request_at: datetime | None
    """The last request on record, or when the revision was made (its idle window starts
    then)."""


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive UTC back."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _live_revision(container_id: str, revision: int) -> Any:
    return (
        select(Revision)
        .join(Container, col(Container.id) == col(Revision.container_id))
        .where(
            col(Revision.container_id) == container_id,
            col(Revision.revision_number) == revision,
            col(Container.deleted_at).is_(None),
        )
    )


def wake_revision(
    ctx: ServiceContext, container_id: str, revision: int, *, instances: int = 1
) -> bool:
    """A request arrived for the revision: ask for at least ``instances`` instances (never fewer
    than it has) and note the request. True when the wish raised the instance count."""
    key = (
        col(Revision.container_id) == container_id,
        col(Revision.revision_number) == revision,
    )
    with Session(ctx.engine) as session:
        if session.exec(_live_revision(container_id, revision)).first() is None:
            return False
        session.execute(sa.update(Revision).where(*key).values(last_request_at=utcnow()))
        raised = session.execute(
            sa.update(Revision)
            .where(*key, col(Revision.instances_desired) < instances)
            .values(instances_desired=instances)
        )
        session.commit()
    if cast("CursorResult[Any]", raised).rowcount > 0:
        ctx.notify(container_id)
        return True
    return False


def revision_serving(ctx: ServiceContext, container_id: str, revision: int) -> RevisionServing:
    with Session(ctx.engine) as session:
        row = session.exec(_live_revision(container_id, revision)).first()
        if row is None:
            return RevisionServing(exists=False)
        scaling = scaling_of(row.spec)
        return RevisionServing(
            exists=True,
            serving_state=row.serving_state,
            endpoints=tuple(row.endpoints or ()),
            instances_desired=row.instances_desired,
            state_reason=row.state_reason,
            state_message=row.state_message,
            concurrency=scaling.concurrency,
            max_instances=scaling.max_instances,
        )


def scaling_inputs(ctx: ServiceContext) -> list[ScalingInput]:
    """Every revision that runs or may be woken: not retired, of a live container."""
    with Session(ctx.engine) as session:
        rows = session.exec(
            select(Revision)
            .join(Container, col(Container.id) == col(Revision.container_id))
            .where(
                col(Container.deleted_at).is_(None),
                col(Revision.serving_state).not_in(["", ServingState.RETIRED]),
            )
        ).all()
        return [
            ScalingInput(
                container_id=row.container_id,
                revision=row.revision_number,
                spec=dict(row.spec),
                instances_desired=row.instances_desired,
                instances_ready=row.instances_ready,
                endpoints=tuple(row.endpoints or ()),
                serving_state=row.serving_state,
                last_request_at=max(
                    (_aware(t) for t in (row.last_request_at, row.date_created) if t is not None),
                ),
            )
            for row in rows
        ]


def set_instances_desired(ctx: ServiceContext, decisions: Mapping[RevisionKey, int]) -> None:
    """Store the autoscaler's decisions and wake the reconciler for each container."""
    if not decisions:
        return
    with Session(ctx.engine) as session:
        for (container_id, revision), desired in decisions.items():
            session.execute(
                sa.update(Revision)
                .where(
                    col(Revision.container_id) == container_id,
                    col(Revision.revision_number) == revision,
                )
                .values(instances_desired=max(desired, 0))
            )
        session.commit()
    for container_id in sorted({key[0] for key in decisions}):
        ctx.notify(container_id)


def record_requests(ctx: ServiceContext, revisions: Iterable[RevisionKey]) -> None:
    """Requests were seen for these revisions just now (``last_request_at``)."""
    keys = sorted(set(revisions))
    if not keys:
        return
    now = utcnow()
    with Session(ctx.engine) as session:
        for container_id, revision in keys:
            session.execute(
                sa.update(Revision)
                .where(
                    col(Revision.container_id) == container_id,
                    col(Revision.revision_number) == revision,
                )
                .values(last_request_at=now)
            )
        session.commit()
