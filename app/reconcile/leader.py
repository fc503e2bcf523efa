"""Leader election, so exactly one reconciler acts when several API replicas run.

On Kubernetes the runtime's Lease elector is used. Otherwise the database decides: a PostgreSQL
session advisory lock held on a dedicated connection, or, for SQLite (one machine by
construction), an exclusive ``flock`` on a file in the data directory. Losing the connection or
the process releases the lock, so a standby takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x646F636B79617264 & 0x7FFFFFFFFFFFFFFF  # "dockyard"


class Elector(Protocol):
    async def is_leader(self) -> bool: ...

    async def try_acquire(self) -> bool: ...

    async def release(self) -> None: ...


class FileLockElector:
    """Leader is whoever holds an exclusive flock on ``path`` (processes of one machine)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def is_leader(self) -> bool:
        return self._fd is not None

    async def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class PostgresAdvisoryElector:
    """Leader is whoever holds a session advisory lock on a dedicated connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Any = None

    async def is_leader(self) -> bool:
        if self._connection is None:
            return False
        try:
            await asyncio.to_thread(self._ping)
        except sa.exc.SQLAlchemyError:
            await self.release()
            return False
        return True

    def _ping(self) -> None:
        self._connection.execute(sa.text("SELECT 1"))

    def _acquire(self) -> bool:
        connection = self.engine.connect()
        try:
            held = connection.execute(
                sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            ).scalar()
            connection.commit()
        except BaseException:
            connection.close()
            raise
        if held:
            self._connection = connection
            return True
        connection.close()
        return False

    async def try_acquire(self) -> bool:
        if self._connection is not None:
            return await self.is_leader()
        try:
            return await asyncio.to_thread(self._acquire)
        except sa.exc.SQLAlchemyError as e:
            log.warning("leader election: the database refused (%s)", e)
            return False

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                await asyncio.to_thread(connection.close)


def database_elector(engine: Engine, data_dir: Path) -> Elector:
    if engine.dialect.name == "postgresql":
        return PostgresAdvisoryElector(engine)
    return FileLockElector(data_dir / "reconciler.lock")
