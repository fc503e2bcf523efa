"""Database engine, sessions and schema migrations (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session

MIGRATIONS = "app.db:migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed while one writer commits; busy_timeout makes writers queue
    # instead of failing at once when another transaction holds the write lock.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_observations(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# SQLite connections are cheap to keep but not to open (open + three PRAGMAs): the pool keeps as
# many as the worker threads that can use one at once (AnyIO's default limiter is 40), so
# concurrent requests never open (and close again) overflow connections. They open lazily.
SQLITE_POOL_SIZE = 40


class _LateReturns:
    """Closes a connection handed back after ``Engine.dispose()``.

    ``dispose()`` closes the pooled connections and starts a new pool, but a connection a worker
    thread still held (a request in flight at shutdown) is then returned into the old pool, which
    nobody closes: the driver's connection stays open until garbage collection (psycopg warns
    then, in whatever code happens to run). Each checkout notes the pool's generation; a checkin
    from an older generation closes its connection instead.
    """

    KEY = "dockyard.pool_generation"

    def __init__(self) -> None:
        self.generation = 0

    def checkout(self, _dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        record.info[self.KEY] = self.generation

    def checkin(self, dbapi: Any, record: ConnectionPoolEntry) -> None:
        if dbapi is not None and record.info.get(self.KEY, self.generation) != self.generation:
            record.invalidate()

    def disposed(self, _engine: Engine) -> None:
        self.generation += 1

    def watch(self, engine: Engine) -> Engine:
        sa.event.listen(engine, "checkout", self.checkout)
        sa.event.listen(engine, "checkin", self.checkin)
        sa.event.listen(engine, "engine_disposed", self.disposed)
        return engine


POSTGRES_POOL_SIZE = 40
"""The default of ``DOCKYARD_DATABASE_POOL_SIZE``: as many as the worker threads that can use a
connection at once (AnyIO's limiter). A connection to PostgreSQL is a server process: opening
one costs milliseconds, so a pool smaller than the concurrency would open and close the
overflow ones on every request (with 10 kept and 32 concurrent requests, 22 per round)."""


def make_engine(url: str, *, pool_size: int = POSTGRES_POOL_SIZE, durable: bool = True) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys. ``pool_size``:
    the PostgreSQL connections kept (opened lazily; a few more may be opened for a burst).
    ``durable=False`` (SQLite only, see ``observations_engine``): commits do not wait for fsync."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=SQLITE_POOL_SIZE,
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        if not durable:
            sa.event.listen(engine, "connect", _sqlite_observations)
        return _LateReturns().watch(engine)
    engine = sa.create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=10)
    return _LateReturns().watch(engine)


def observations_engine(url: str, engine: Engine) -> Engine:
    """The engine the reconciler reads and writes with: on SQLite one whose commits do not
    wait for the disk (``synchronous=NORMAL``), else ``engine`` itself.

    What the reconciler writes is what it observed of the runtime (states, endpoints, phases,
    statuses) and the purge of rows already marked deleted: a restart observes the runtime
    again and writes it again, so a commit lost to a power cut (never to a crash of the process:
    in WAL mode such a commit is in the log, and the next fsync of anyone's commit, the API's
    included, covers it; the database never corrupts) costs nothing that cannot be rebuilt.
    Each of those fsyncs took ~5 ms here, several per deploy, on the path between the POST and
    ``deployed``. What users ask for (the API's writes) stays durable on commit."""
    if not url.startswith("sqlite"):
        return engine
    return make_engine(url, durable=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed when the block succeeds, rolled back when it raises."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def installation_id(engine: Engine) -> str:
    """This installation's id: created once, then shared by every replica of the database."""
    from sqlmodel import col, select

    from app.domain.models import Installation

    with session_scope(engine) as session:
        row = session.exec(select(Installation)).first()
        if row is not None:
            return row.id
        session.add(Installation(id=secrets.token_hex(8)))
    with session_scope(engine) as session:  # a concurrent first start may have won; take theirs
        first = session.exec(
            select(Installation).order_by(col(Installation.date_created), col(Installation.id))
        ).first()
        assert first is not None
        return first.id
