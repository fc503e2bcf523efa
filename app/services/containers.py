"""Use cases on containers and their revisions: the only functions the transports call.

Each function authorizes after loading the object, validates through the domain, owns its
transaction and tells the reconciler about the change once it is committed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from pydantic import TypeAdapter
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
    listed = _list_page(ctx, principal, page, rows_per_page, all_users, after, search, status)
    return CursorPage[ContainerView].model_construct(
        items=[item.view for item in listed.items],
        total=listed.total,
        page=listed.page,
        rowsPerPage=rows_per_page,
        nextCursor=listed.next_cursor,
    )


def list_containers_json(
    *,
    ctx: ServiceContext,
    principal: Principal,
    page: int = 1,
    rows_per_page: int = DEFAULT_ROWS_PER_PAGE,
    all_users: bool = False,
    after: str | None = None,
    search: str | None = None,
    status: str | None = None,
) -> bytes:
    """``list_containers`` as the JSON text of the ``CursorPage`` (what REST answers): the same
    bytes pydantic writes for the model, each item's taken from the view cache."""
    listed = _list_page(ctx, principal, page, rows_per_page, all_users, after, search, status)
    cursor = "null" if listed.next_cursor is None else json.dumps(listed.next_cursor)
    return b"".join(
        (
            b'{"items":[',
            b",".join([item.json for item in listed.items]),
            f'],"total":{listed.total},"page":{listed.page},"rowsPerPage":{rows_per_page},'
            f'"nextCursor":{cursor}}}'.encode(),
        )
    )


def list_runs_inline(ctx: ServiceContext) -> bool:
    """Whether a transport may call the list functions on its event loop rather than in a
    worker thread: on SQLite (in-process, an indexed page is tens of microseconds of work, less
    than the thread hop and the GIL contention of a worker per request); not on PostgreSQL,
    where a query waits for the network."""
    return ctx.engine.dialect.name == "sqlite"


@dataclass(frozen=True)
class _Item:
    view: ContainerView
    json: bytes


@dataclass(frozen=True)
class _Listed:
    items: list[_Item]
    total: int
    page: int
    next_cursor: str | None


def _table() -> sa.Table:
    return cast(sa.Table, Container.__table__)  # type: ignore[attr-defined]


_JSON_COLUMNS = frozenset(column.name for column in _table().c if isinstance(column.type, sa.JSON))
"""Container columns of a JSON type (``spec``, ``traffic``, ``observed_urls``, and any added
later): read as their JSON text, so a row is hashable (the view cache's key), and decoded only
when the view is built."""


def _row_columns() -> list[Any]:
    table = _table()
    return [
        sa.cast(column, sa.Text).label(column.name) if column.name in _JSON_COLUMNS else column
        for column in table.c
    ]


@dataclass(frozen=True, eq=False)
class _Prepared:
    """A statement compiled once for a dialect and run on the DBAPI cursor: SQLAlchemy still
    writes the SQL and converts the values both ways (its bind and result processors), but a
    request no longer pays its per-execution machinery (cache key, execution context, result
    object) for a query it runs thousands of times a second."""

    sql: str
    positions: tuple[str, ...] | None
    """Parameter names in order for positional paramstyles (SQLite's ``?``), else None."""
    defaults: dict[str, Any]
    bind: Mapping[str, Callable[[Any], Any]]
    names: tuple[str, ...]
    """The result's column names."""
    results: tuple[Callable[[Any], Any] | None, ...]

    @classmethod
    def compile(cls, statement: sa.Select[Any], dialect: sa.Dialect) -> _Prepared:
        compiled = statement.compile(dialect=dialect)
        bind: dict[str, Callable[[Any], Any]] = {}
        defaults: dict[str, Any] = {}
        for name, param in compiled.binds.items():
            processor = param.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                bind[name] = processor
            if not param.required:
                defaults[name] = param.effective_value
        columns = list(statement.selected_columns)
        return cls(
            sql=compiled.string,
            positions=tuple(compiled.positiontup or ()) if dialect.positional else None,
            defaults=defaults,
            bind=bind,
            names=tuple(column.name for column in columns),
            results=tuple(
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in columns
            ),
        )

    def parameters(self, values: dict[str, Any]) -> Any:
        merged = {**self.defaults, **values}
        for name, processor in self.bind.items():
            merged[name] = processor(merged[name])
        if self.positions is None:
            return merged
        return tuple(merged[name] for name in self.positions)

    def convert(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """A raw row as SQLAlchemy would have handed it back, by column name."""
        return {
            name: value if process is None or value is None else process(value)
            for name, process, value in zip(self.names, self.results, row, strict=True)
        }


@functools.lru_cache(maxsize=128)
def _list_statements(
    dialect: sa.Dialect,
    all_users: bool,
    by_status: bool,
    by_search: bool,
    by_cursor: bool,
    from_the_end: bool = False,
) -> tuple[_Prepared, _Prepared]:
    """The count and the page statement of one shape of list request, compiled once: the
    values (owner, status, search pattern, position, limit, offset) are bound parameters."""
    count, rows = _build_list_statements(
        dialect.name,
        all_users,
        by_status=by_status,
        by_search=by_search,
        cursor=by_cursor,
        from_the_end=from_the_end,
    )
    return _Prepared.compile(count, dialect), _Prepared.compile(rows, dialect)


def _like_pattern(search: str) -> str:
    """``search`` as a LIKE pattern matching names that contain it, with ``/`` escaping ``%``,
    ``_`` and itself (what SQLAlchemy's ``contains(autoescape=True)`` does, as a value)."""
    text = search.strip().lower()
    for special in ("/", "%", "_"):
        text = text.replace(special, "/" + special)
    return f"%{text}%"


def _build_list_statements(
    dialect: str,
    all_users: bool,
    *,
    by_status: bool,
    by_search: bool,
    cursor: bool,
    from_the_end: bool = False,
) -> tuple[sa.Select[Any], sa.Select[Any]]:
    table = _table()
    live: Any = table.c.deleted_at.is_(None)
    walk = live
    if dialect == "sqlite":
        # SQLite plans without statistics (nobody runs ANALYZE on an embedded database) and
        # takes ``deleted_at IS NULL`` for a rare value: it would look the live rows up in the
        # deleted_at index and sort them all. Saying they are the common case makes it walk the
        # list index (0004) in order instead; PostgreSQL's planner has statistics. The count
        # needs no order and is cheaper without the per-row function.
        walk = sa.func.likelihood(live, sa.literal_column("0.9"))
    if not all_users:
        owner = table.c.created_by == sa.bindparam("owner", type_=sa.String)
        live, walk = sa.and_(live, owner), sa.and_(walk, owner)
    if by_search:
        # names are lower-case DNS labels; the pattern escapes % and _ (``_like_pattern``)
        match = table.c.name.like(sa.bindparam("search", type_=sa.String), escape="/")
        live, walk = sa.and_(live, match), sa.and_(walk, match)
    if by_status:
        status = table.c.status == sa.bindparam("status", type_=sa.String)
        live, walk = sa.and_(live, status), sa.and_(walk, status)
    order = (table.c.date_created.desc(), table.c.id.desc())
    # A page past the middle is found from the other end of the index (the offset counted
    # from the oldest row); the page itself is still ordered newest first below.
    walk_order = (table.c.date_created, table.c.id) if from_the_end else order
    ids = (
        sa.select(table.c.id)
        .where(walk)
        .order_by(*walk_order)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
    if cursor:
        key = sa.tuple_(table.c.date_created, table.c.id)
        position = sa.tuple_(
            sa.bindparam("moment", type_=table.c.date_created.type),
            sa.bindparam("last_id", type_=sa.String),
        )
        ids = ids.where(key < position)
    else:
        ids = ids.offset(sa.bindparam("offset", type_=sa.Integer))
    count = sa.select(sa.func.count()).where(live).select_from(table)
    rows = sa.select(*_row_columns()).where(table.c.id.in_(ids.scalar_subquery())).order_by(*order)
    return count, rows


def _list_page(
    ctx: ServiceContext,
    principal: Principal,
    page: int,
    rows_per_page: int,
    all_users: bool,
    after: str | None,
    search: str | None,
    status: str | None,
) -> _Listed:
    _check_paging(page, rows_per_page)
    _check_filters(search, status)
    cursor = _decode_cursor(after) if after is not None else None
    if cursor is not None and page != 1:
        raise ValidationFailed([FieldError("page", "must be left out when after is given")])
    if all_users and not principal.is_admin:
        raise Forbidden("all: listing every user's containers needs the ADMIN role")
    shape = (ctx.engine.dialect, all_users, bool(status), bool(search), cursor is not None)
    count, select_rows = _list_statements(*shape)
    params: dict[str, Any] = {"limit": rows_per_page + 1}
    if not all_users:
        params["owner"] = principal.subject
    if status:
        params["status"] = status
    if search:
        params["search"] = _like_pattern(search)
    if cursor is None:
        params["offset"] = (page - 1) * rows_per_page
    else:
        params["moment"], params["last_id"], page = cursor
    count_params = {
        name: value for name, value in params.items() if name in ("owner", "status", "search")
    }
    with ctx.engine.connect() as connection:
        if ctx.engine.dialect.name != "sqlite":
            # Two reads and nothing to commit: without a transaction (autocommit) PostgreSQL is
            # spared the BEGIN and the ROLLBACK around them, two of the page's five round trips.
            # (SQLite's driver begins no transaction for reads; the setting would cost a PRAGMA.)
            connection.execution_options(isolation_level="AUTOCOMMIT")
        dbapi_cursor = connection.connection.cursor()
        try:
            dbapi_cursor.execute(count.sql, count.parameters(count_params))
            (total,) = dbapi_cursor.fetchone() or (0,)
            offset = params.get("offset")
            if offset is not None and offset >= total:
                rows = []  # past the end: an OFFSET would walk every row to say so
            else:
                if offset is not None and offset > total // 2:
                    # A deep page by number: an OFFSET walks (and skips) every row before it,
                    # so past the middle the walk starts from the oldest row instead.
                    select_rows = _list_statements(*shape, from_the_end=True)[1]
                    params["limit"] = min(params["limit"], total - offset)
                    params["offset"] = total - offset - params["limit"]
                dbapi_cursor.execute(select_rows.sql, select_rows.parameters(params))
                rows = [tuple(row) for row in dbapi_cursor.fetchall()]
        finally:
            dbapi_cursor.close()
    next_cursor = None
    if len(rows) > rows_per_page:
        rows = rows[:rows_per_page]
        last = select_rows.convert(rows[-1])
        next_cursor = _encode_cursor(last["date_created"], last["id"], page + 1)
    domain = ctx.ingress_domain
    return _Listed(
        items=[_item(select_rows, row, domain) for row in rows],
        total=total,
        page=page,
        next_cursor=next_cursor,
    )


VIEW_CACHE_SIZE = 2048
"""Container views kept, keyed by the whole row as read (every column as the database driver
returns it, JSON as its text; and the statement that read it) and the ingress domain: a view is
a function of exactly these, so a changed row is a new key and an entry can never be stale.
Bounded; least recently used dropped."""


@functools.lru_cache(maxsize=VIEW_CACHE_SIZE)
def _item(statement: _Prepared, row: tuple[Any, ...], ingress_domain: str) -> _Item:
    columns = statement.convert(row)
    for name in _JSON_COLUMNS:
        if name in columns and columns[name] is not None:
            columns[name] = json.loads(columns[name])
    view = container_view(
        cast(Container, SimpleNamespace(**columns)), ingress_domain=ingress_domain
    )
    return _Item(view=view, json=_CONTAINER_VIEW_JSON.dump_json(view, by_alias=True))


_CONTAINER_VIEW_JSON = TypeAdapter(ContainerView)


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
