"""The engine keeps its connections under concurrency: a second burst of concurrent requests
opens none (on SQLite each open also re-ran the PRAGMAs; on PostgreSQL each is a new server
process: with 10 kept, 32 concurrent requests opened and closed 22 every round)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from app.db import make_engine, migrate
from app.deps import AppState
from app.runtime.docker import DockerRuntime
from app.server import create_app
from app.settings import Settings

BURST = 32  # the concurrency the API bench loads a list with; within the default pool of 40


def test_concurrent_bursts_reuse_pooled_connections(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    opened: list[int] = []
    lock = threading.Lock()

    def on_connect(_dbapi: object, _record: object) -> None:
        with lock:
            opened.append(1)

    sa.event.listen(engine, "connect", on_connect)
    barrier = threading.Barrier(BURST)

    def read(_: int) -> int:
        with engine.connect() as connection:
            barrier.wait(timeout=30)  # all BURST hold a connection at the same time
            return int(connection.execute(sa.text("SELECT count(*) FROM containers")).scalar_one())

    try:
        with ThreadPoolExecutor(BURST) as pool:
            assert list(pool.map(read, range(BURST))) == [0] * BURST
            first = len(opened)
            barrier.reset()
            assert list(pool.map(read, range(BURST))) == [0] * BURST
        assert first <= BURST
        assert len(opened) == first, "the second burst opened new connections"
    finally:
        engine.dispose()


def test_a_connection_returned_after_dispose_is_closed(database_url: str) -> None:
    # A request still in flight when the app shuts down returns its connection after dispose():
    # it must be closed then, not left open in the discarded pool (psycopg warns when it is
    # collected, in whatever test runs at that moment).
    engine = make_engine(database_url)
    held = engine.connect()
    held.execute(sa.text("SELECT 1"))
    driver = held.connection.dbapi_connection
    engine.dispose()
    held.close()
    try:
        assert driver is not None
        with pytest.raises(Exception, match=r"(?i)closed"):
            driver.cursor().execute("SELECT 1")
        with engine.connect() as fresh:  # the new pool still works
            assert fresh.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_only_the_reconcilers_observations_skip_the_fsync(settings: Settings) -> None:
    # The API's commits wait for the disk (FULL); the reconciler's, which a restart observes and
    # writes again, do not on SQLite (NORMAL in WAL mode: never corrupt, durable across a crash
    # of the process). PostgreSQL: one engine for both.
    # Not started: a runtime whose constructor does no I/O is enough to build the reconciler.
    app = create_app(settings, runtime=DockerRuntime("unix:///nonexistent.sock"))
    state: AppState = app.state.dockyard
    reconciler = state.reconciler
    assert reconciler is not None
    try:
        if state.ctx.engine.dialect.name != "sqlite":
            assert reconciler.engine is state.ctx.engine
            return
        assert reconciler.engine is not state.ctx.engine
        with state.ctx.engine.connect() as api, reconciler.engine.connect() as observed:
            assert api.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
            assert observed.exec_driver_sql("PRAGMA synchronous").scalar_one() == 1  # NORMAL
            assert observed.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    finally:
        reconciler.engine.dispose()
        state.ctx.engine.dispose()
