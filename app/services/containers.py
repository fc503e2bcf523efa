"""Use cases on containers and their revisions: the only functions the transports call.

Each function authorizes after loading the object, validates through the domain, owns its
transaction and tells the reconciler about the change once it is committed.
"""

from __future__ import annotations

import base64
import logging
import random
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, func, select

from app.db import session_scope
from app.domain.errors import Conflict, FieldError, Forbidden, NotFound, ValidationFailed
from app.domain.models import Container, ContainerStatus, Revision, utcnow
from app.domain.principal import Principal
from app.domain.spec import (
    KNATIVE_REQUIRED,
    ContainerSpec,
    fit_to_runtime,
    spec_for_create,
    spec_for_update,
)
from app.domain.status import mark_spec_changed
from app.domain.traffic import TrafficEntry, parse_traffic, traffic_json
from app.domain.views import (
    ContainerView,
    GpuModelView,
    Page,
    RevisionView,
    container_view,
    revision_view,
    traffic_shares,
)
from app.services.context import ServiceContext

DEFAULT_ROWS_PER_PAGE = 10
MAX_ROWS_PER_PAGE = 100
MAX_WRITE_ATTEMPTS = 60
SLUG_LENGTH = 26

log = logging.getLogger(__name__)
T = TypeVar("T")


def _new_slug() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode().lower().rstrip("=")


def _parse_id(container_id: str) -> str:
    try:
        return str(uuid.UUID(container_id))
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"container {container_id!r} not found") from None


def _check_paging(page: int, rows_per_page: int) -> None:
    errors = []
    if page < 1:
        errors.append(FieldError("page", "must be 1 or more"))
    if not 1 <= rows_per_page <= MAX_ROWS_PER_PAGE:
        errors.append(FieldError("rowsPerPage", f"must be from 1 to {MAX_ROWS_PER_PAGE}"))
    if errors:
        raise ValidationFailed(errors)


def _load(
    session: Session, container_id: str, principal: Principal, *, lock: bool = False
) -> Container:
    query = select(Container).where(
        Container.id == _parse_id(container_id), col(Container.deleted_at).is_(None)
    )
    if lock:
        query = query.with_for_update()
    container = session.exec(query).first()
    if container is None:
        raise NotFound(f"container {container_id!r} not found")
    if not principal.may_manage(container.created_by):
        raise Forbidden(f"container {container_id!r} belongs to another user; ADMIN role required")
    return container


def _name_taken(session: Session, *, owner: str, name: str, except_id: str | None = None) -> bool:
    query = select(Container.id).where(
        Container.created_by == owner, Container.name == name, col(Container.deleted_at).is_(None)
    )
    if except_id is not None:
        query = query.where(Container.id != except_id)
    return session.exec(query).first() is not None


def _name_conflict(name: str) -> Conflict:
    return Conflict(f"name: a container named {name!r} already exists; choose another name")


def _retrying(write: Callable[[], T]) -> T:
    """Run a write transaction again when a concurrent writer won the race.

    The unique (container, revision number) constraint is the guard: two writers that computed
    the same next revision number cannot both commit, so the loser re-reads and tries again.
    On PostgreSQL the row lock makes this rare; on SQLite it is how concurrent PUTs serialise.
    """
    for attempt in range(MAX_WRITE_ATTEMPTS):
        try:
            return write()
        except (IntegrityError, OperationalError) as e:
            if attempt == MAX_WRITE_ATTEMPTS - 1:
                raise Conflict("the container changed concurrently too often; retry") from e
            log.debug("write raced with another (%s), retrying", type(e).__name__)
            time.sleep(random.uniform(0.001, 0.005) * (attempt + 1))
    raise AssertionError("unreachable")


def _write_revision(
    session: Session, container: Container, spec: ContainerSpec, *, by: str
) -> None:
    session.add(
        Revision(
            container_id=container.id,
            revision_number=container.generation,
            image=spec.image,
            spec=spec.to_json(),
            created_by=by,
            date_created=container.date_updated,
        )
    )


def create_container(*, ctx: ServiceContext, principal: Principal, data: object) -> ContainerView:
    """Validate a spec, store the container with revision 1 and start deploying it."""
    spec = spec_for_create(
        data,
        limits=ctx.limits,
        catalog=ctx.catalog,
        scale_to_zero=ctx.capabilities.scale_to_zero,
    )

    def write() -> Container:
        with session_scope(ctx.engine) as session:
            if _name_taken(session, owner=principal.subject, name=spec.name):
                raise _name_conflict(spec.name)
            now = utcnow()
            container = Container(
                name=spec.name,
                created_by=principal.subject,
                slug=_new_slug(),
                spec=spec.to_json(),
                status=ContainerStatus.DEPLOYING,
                status_reason="Deploying",
                status_message="revision 1: waiting for the runtime",
                generation=1,
                date_created=now,
                date_updated=now,
            )
            session.add(container)
            session.flush()
            _write_revision(session, container, spec, by=principal.subject)
            return container

    container = _retrying(write)
    ctx.notify(container.id)
    return container_view(container, ingress_domain=ctx.ingress_domain)


def get_container(*, ctx: ServiceContext, principal: Principal, container_id: str) -> ContainerView:
    """One container the caller owns (or any, for ADMIN)."""
    with session_scope(ctx.engine) as session:
        container = _load(session, container_id, principal)
    return container_view(container, ingress_domain=ctx.ingress_domain)


def list_containers(
    *,
    ctx: ServiceContext,
    principal: Principal,
    page: int = 1,
    rows_per_page: int = DEFAULT_ROWS_PER_PAGE,
    all_users: bool = False,
) -> Page[ContainerView]:
    """The caller's containers (everyone's with ``all_users``, ADMIN only), newest first."""
    _check_paging(page, rows_per_page)
    if all_users and not principal.is_admin:
        raise Forbidden("all: listing every user's containers needs the ADMIN role")
    condition: Any = col(Container.deleted_at).is_(None)
    if not all_users:
        condition = sa.and_(condition, col(Container.created_by) == principal.subject)
    with session_scope(ctx.engine) as session:
        total = session.exec(select(func.count()).select_from(Container).where(condition)).one()
        rows = session.exec(
            select(Container)
            .where(condition)
            .order_by(col(Container.date_created).desc(), col(Container.id).desc())
            .offset((page - 1) * rows_per_page)
            .limit(rows_per_page)
        ).all()
    items = [container_view(row, ingress_domain=ctx.ingress_domain) for row in rows]
    return Page[ContainerView](items=items, total=total, page=page, rowsPerPage=rows_per_page)


def _change_spec(
    *,
    ctx: ServiceContext,
    principal: Principal,
    container_id: str,
    new_spec: Callable[[Session, ContainerSpec], ContainerSpec],
) -> ContainerView:
    def write() -> Container:
        with session_scope(ctx.engine) as session:
            container = _load(session, container_id, principal, lock=True)
            spec = new_spec(session, ContainerSpec.model_validate(container.spec))
            if spec.name != container.name and _name_taken(
                session, owner=container.created_by, name=spec.name, except_id=container.id
            ):
                raise _name_conflict(spec.name)
            container.spec = spec.to_json()
            container.name = spec.name
            mark_spec_changed(container)
            session.add(container)
            _write_revision(session, container, spec, by=principal.subject)
            return container

    container = _retrying(write)
    ctx.notify(container.id)
    return container_view(container, ingress_domain=ctx.ingress_domain)


def update_container(
    *, ctx: ServiceContext, principal: Principal, container_id: str, data: object
) -> ContainerView:
    """Apply a partial spec change as a new revision and deploy it."""
    return _change_spec(
        ctx=ctx,
        principal=principal,
        container_id=container_id,
        new_spec=lambda _session, current: spec_for_update(
            current,
            data,
            limits=ctx.limits,
            catalog=ctx.catalog,
            scale_to_zero=ctx.capabilities.scale_to_zero,
        ),
    )


def rollback_container(
    *, ctx: ServiceContext, principal: Principal, container_id: str, revision_number: object
) -> ContainerView:
    """Write a new revision that copies the spec of an earlier one, and deploy it."""
    if isinstance(revision_number, bool) or not isinstance(revision_number, int):
        raise ValidationFailed([FieldError("revisionNumber", "must be a whole number, e.g. 1")])

    def old_spec(session: Session, _current: ContainerSpec) -> ContainerSpec:
        revision = session.exec(
            select(Revision).where(
                Revision.container_id == _parse_id(container_id),
                Revision.revision_number == revision_number,
            )
        ).first()
        if revision is None:
            raise ValidationFailed(
                [FieldError("revisionNumber", f"revision {revision_number} does not exist")]
            )
        old = ContainerSpec.model_validate(revision.spec)
        return fit_to_runtime(old, scale_to_zero=ctx.capabilities.scale_to_zero)

    return _change_spec(ctx=ctx, principal=principal, container_id=container_id, new_spec=old_spec)


def _check_traffic_capability(entries: list[TrafficEntry], *, traffic_split: bool) -> None:
    """Without Knative only ``[{latest: true, percent: 100}]`` can be honoured: a Deployment
    runs the newest revision only, so a pinned revision would be silently ignored."""
    if traffic_split:
        return
    errors: list[FieldError] = []
    for index, entry in enumerate(entries):
        if entry.revision is not None:
            errors.append(
                FieldError(
                    f"traffic[{index}].revision",
                    f"pinning a revision is not available: {KNATIVE_REQUIRED}; "
                    "use latest: true, or roll back to that revision",
                )
            )
        if entry.tag is not None:
            errors.append(
                FieldError(f"traffic[{index}].tag", f"tags are not available: {KNATIVE_REQUIRED}")
            )
    if len(entries) > 1:
        errors.insert(
            0,
            FieldError(
                "traffic",
                f"only one target with 100 % is possible, a split is not: {KNATIVE_REQUIRED}",
            ),
        )
    if errors:
        raise ValidationFailed(errors)


def set_traffic(
    *, ctx: ServiceContext, principal: Principal, container_id: str, data: object
) -> ContainerView:
    """Replace the container's traffic targets; makes no new revision."""

    def write() -> Container:
        with session_scope(ctx.engine) as session:
            container = _load(session, container_id, principal, lock=True)
            numbers = session.exec(
                select(Revision.revision_number).where(Revision.container_id == container.id)
            ).all()
            entries = parse_traffic(data, revisions=set(numbers), slug=container.slug)
            _check_traffic_capability(entries, traffic_split=ctx.capabilities.traffic_split)
            container.traffic = traffic_json(entries)
            container.date_updated = utcnow()
            session.add(container)
            return container

    container = _retrying(write)
    ctx.notify(container.id, "traffic")
    return container_view(container, ingress_domain=ctx.ingress_domain)


def delete_container(*, ctx: ServiceContext, principal: Principal, container_id: str) -> None:
    """Tombstone the container at once; the reconciler removes its runtime objects."""
    with session_scope(ctx.engine) as session:
        container = _load(session, container_id, principal, lock=True)
        container.deleted_at = utcnow()
        session.add(container)
    ctx.notify(container.id, "deleted")


def list_revisions(
    *,
    ctx: ServiceContext,
    principal: Principal,
    container_id: str,
    page: int = 1,
    rows_per_page: int = DEFAULT_ROWS_PER_PAGE,
) -> Page[RevisionView]:
    """A container's revisions, newest first."""
    _check_paging(page, rows_per_page)
    with session_scope(ctx.engine) as session:
        container = _load(session, container_id, principal)
        condition = Revision.container_id == container.id
        total = session.exec(select(func.count()).select_from(Revision).where(condition)).one()
        rows = session.exec(
            select(Revision)
            .where(condition)
            .order_by(col(Revision.revision_number).desc())
            .offset((page - 1) * rows_per_page)
            .limit(rows_per_page)
        ).all()
    shares = traffic_shares(container)
    items = [revision_view(row, traffic_percent=shares.get(row.revision_number, 0)) for row in rows]
    return Page[RevisionView](items=items, total=total, page=page, rowsPerPage=rows_per_page)


def revisions_of(
    *, ctx: ServiceContext, principal: Principal, container_ids: list[str]
) -> dict[str, list[RevisionView]]:
    """Revisions (newest first) of several containers in one query, for batched loaders."""
    with session_scope(ctx.engine) as session:
        containers = session.exec(
            select(Container).where(col(Container.id).in_(container_ids))
        ).all()
        allowed = [c.id for c in containers if principal.may_manage(c.created_by)]
        shares = {c.id: traffic_shares(c) for c in containers}
        rows = session.exec(
            select(Revision)
            .where(col(Revision.container_id).in_(allowed))
            .order_by(col(Revision.revision_number).desc())
        ).all()
    grouped: dict[str, list[RevisionView]] = {cid: [] for cid in container_ids}
    for row in rows:
        share = shares[row.container_id].get(row.revision_number, 0)
        grouped[row.container_id].append(revision_view(row, traffic_percent=share))
    return grouped


def list_gpu_models(*, ctx: ServiceContext) -> Page[GpuModelView]:
    """Every GPU model of the catalog."""
    items = [GpuModelView(code=model.code, name=model.name) for model in ctx.catalog.models]
    return Page[GpuModelView](items=items, total=len(items), page=1, rowsPerPage=100)
