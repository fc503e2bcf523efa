"""Use cases on containers and their revisions: the only functions the transports call.

Each function authorizes after loading the object, validates through the domain, owns its
transaction and tells the reconciler about the change once it is committed.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, func, select

from app.db import session_scope
from app.domain.errors import (
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    ValidationFailed,
    clip,
)
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
    ContainerStatusView,
    ContainerView,
    CursorPage,
    GpuModelView,
    Page,
    RevisionView,
    as_utc,
    container_status_view,
    container_view,
    revision_view,
    traffic_shares,
)
from app.services.context import ServiceContext

DEFAULT_ROWS_PER_PAGE = 10
MAX_ROWS_PER_PAGE = 100
# Numbers from clients are bounded to what every database column and GraphQL's Int hold
# (beyond 64 bits SQLite raised OverflowError: a 500).
MAX_PAGE = 2**31 - 1
MAX_REVISION_NUMBER = 2**31 - 1
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
        raise NotFound(f"container {clip(str(container_id), 80)!r} not found") from None


def _check_paging(page: int, rows_per_page: int) -> None:
    errors = []
    if not 1 <= page <= MAX_PAGE:
        errors.append(FieldError("page", f"must be from 1 to {MAX_PAGE}"))
    if not 1 <= rows_per_page <= MAX_ROWS_PER_PAGE:
        errors.append(FieldError("rowsPerPage", f"must be from 1 to {MAX_ROWS_PER_PAGE}"))
    if errors:
        raise ValidationFailed(errors)


STATUSES = (ContainerStatus.DEPLOYING, ContainerStatus.DEPLOYED, ContainerStatus.FAILED)
MAX_SEARCH_LENGTH = 63


def _check_filters(search: str | None, status: str | None) -> None:
    errors = []
    if search is not None and len(search) > MAX_SEARCH_LENGTH:
        errors.append(FieldError("search", f"must be at most {MAX_SEARCH_LENGTH} characters"))
    if status is not None and status not in STATUSES:
        errors.append(FieldError("status", f"must be one of {', '.join(STATUSES)}"))
    if errors:
        raise ValidationFailed(errors)


def _encode_cursor(date_created: datetime, container_id: str, page: int) -> str:
    """An opaque keyset position: the (date_created, id) of the last item of a page, and the
    number of the page that follows it."""
    raw = json.dumps([as_utc(date_created).isoformat(), container_id, page], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        moment_text, container_id, page = json.loads(
            base64.urlsafe_b64decode(padded.encode("ascii"))
        )
        moment = datetime.fromisoformat(moment_text)
        if moment.tzinfo is None or type(page) is not int or not 2 <= page < 2**31:
            raise ValueError("not a cursor")
        return as_utc(moment), str(uuid.UUID(container_id)), page
    except (ValueError, TypeError, AttributeError, UnicodeError, binascii.Error):
        raise ValidationFailed(
            [FieldError("after", "is not a cursor this API returned (take nextCursor of a page)")]
        ) from None


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


def _lost_a_race(error: OperationalError) -> bool:
    """A lock or serialization conflict (SQLite busy/locked, PostgreSQL SQLSTATE class 40:
    deadlock, serialization failure), as opposed to a database that cannot be reached."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith("40") or sqlstate == "55P03"  # lock_not_available
    text = str(error.orig).lower()
    return "locked" in text or "busy" in text


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
            if isinstance(e, OperationalError) and not _lost_a_race(e):
                raise  # the database is unreachable, not busy: the transport answers 503
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


def get_container_status(
    *, ctx: ServiceContext, principal: Principal, container_id: str
) -> ContainerStatusView:
    """One container (as ``get_container``) with its newest revision's deploy phases so far:
    what the live status streams send after each change."""
    with session_scope(ctx.engine) as session:
        container = _load(session, container_id, principal)
        newest = session.exec(
            select(Revision).where(
                Revision.container_id == container.id,
                Revision.revision_number == container.generation,
            )
        ).first()
    return container_status_view(container, newest, ingress_domain=ctx.ingress_domain)


def list_containers(
    *,
    ctx: ServiceContext,
    principal: Principal,
    page: int = 1,
    rows_per_page: int = DEFAULT_ROWS_PER_PAGE,
    all_users: bool = False,
    after: str | None = None,
    search: str | None = None,
    status: str | None = None,
) -> CursorPage[ContainerView]:
    """The caller's containers (everyone's with ``all_users``, ADMIN only), newest first; only
    those whose name contains ``search`` and whose status is ``status``, when given.

    Pages by number (``page``) or from a keyset position (``after``, the ``nextCursor`` of the
    previous page), which costs the same however deep the list is walked. A cursor page's
    ``page`` is its number along the walk (the cursor carries it): rows created or deleted
    meanwhile do not renumber it. Reads through Core, not the ORM, from the indexes of migration
    0004: the count and the page's ids come from an index alone, and only the rows of the page
    are read from the table.
    """
    _check_paging(page, rows_per_page)
    _check_filters(search, status)
    cursor = _decode_cursor(after) if after is not None else None
    if cursor is not None and page != 1:
        raise ValidationFailed([FieldError("page", "must be left out when after is given")])
    if all_users and not principal.is_admin:
        raise Forbidden("all: listing every user's containers needs the ADMIN role")
    table = cast(sa.Table, Container.__table__)  # type: ignore[attr-defined]
    live: Any = table.c.deleted_at.is_(None)
    walk = live
    if ctx.engine.dialect.name == "sqlite":
        # SQLite plans without statistics (nobody runs ANALYZE on an embedded database) and
        # takes ``deleted_at IS NULL`` for a rare value: it would look the live rows up in the
        # deleted_at index and sort them all. Saying they are the common case makes it walk the
        # list index (0004) in order instead; PostgreSQL's planner has statistics. The count
        # needs no order and is cheaper without the per-row function.
        walk = sa.func.likelihood(live, sa.literal_column("0.9"))
    if not all_users:
        owner = table.c.created_by == principal.subject
        live, walk = sa.and_(live, owner), sa.and_(walk, owner)
    if search:
        # names are lower-case DNS labels; autoescape keeps % and _ literal
        match = table.c.name.contains(search.strip().lower(), autoescape=True)
        live, walk = sa.and_(live, match), sa.and_(walk, match)
    if status:
        live, walk = (
            sa.and_(live, table.c.status == status),
            sa.and_(walk, table.c.status == status),
        )
    key = sa.tuple_(table.c.date_created, table.c.id)
    order = (table.c.date_created.desc(), table.c.id.desc())
    ids = sa.select(table.c.id).where(walk).order_by(*order).limit(rows_per_page + 1)
    if cursor is None:
        ids = ids.offset((page - 1) * rows_per_page)
    else:
        moment, last_id, page = cursor
        ids = ids.where(key < (moment, last_id))
    count = sa.select(sa.func.count()).where(live)
    with ctx.engine.connect() as connection:
        total = connection.execute(count.select_from(table)).scalar_one()
        rows = connection.execute(
            sa.select(table).where(table.c.id.in_(ids.scalar_subquery())).order_by(*order)
        ).all()
    next_cursor = None
    if len(rows) > rows_per_page:
        rows = rows[:rows_per_page]
        next_cursor = _encode_cursor(rows[-1].date_created, rows[-1].id, page + 1)
    items = [
        container_view(cast(Container, row), ingress_domain=ctx.ingress_domain) for row in rows
    ]
    return CursorPage[ContainerView](
        items=items, total=total, page=page, rowsPerPage=rows_per_page, nextCursor=next_cursor
    )


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
    if isinstance(revision_number, float) and revision_number.is_integer():
        revision_number = int(revision_number)  # JSON 3.0 is the integer 3 (JSON Schema agrees)
    if (
        isinstance(revision_number, bool)
        or not isinstance(revision_number, int)
        or not 1 <= revision_number <= MAX_REVISION_NUMBER
    ):
        raise ValidationFailed(
            [
                FieldError(
                    "revisionNumber", f"must be a whole number from 1 to {MAX_REVISION_NUMBER}"
                )
            ]
        )

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


def redeploy_container(
    *, ctx: ServiceContext, principal: Principal, container_id: str
) -> ContainerView:
    """Run the current spec again as a new revision: a fresh engine container (and a fresh image
    pull), e.g. after the image was pushed or the registry came back. Nothing retries a failed
    pull by itself; this is the explicit way."""
    return _change_spec(
        ctx=ctx,
        principal=principal,
        container_id=container_id,
        new_spec=lambda _session, current: current,
    )


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
