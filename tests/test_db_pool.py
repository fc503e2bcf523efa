"""The engine keeps its connections under concurrency: a second burst of concurrent requests
opens none (on SQLite each open also re-ran the PRAGMAs)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from app.db import make_engine, migrate

BURST = 8  # more than SQLAlchemy's default pool of 5, within PostgreSQL's pool of 10


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
