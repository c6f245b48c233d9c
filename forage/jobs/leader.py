"""Scheduler leadership: a lock only one scheduler holds at a time.

On PostgreSQL a scheduler leads while it holds a session-level advisory lock
(``pg_try_advisory_lock(LEADER_LOCK_KEY)``) on a dedicated connection named
``forage-scheduler <owner>``: when that process dies, PostgreSQL ends its session and frees
the lock; a waiting scheduler retries every ``schedule.leader_poll`` seconds and takes over
(https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS). TCP
keepalives on that connection bound how long a vanished host keeps the lock. The leader
checks its connection at the same period and stops scheduling at once when it is gone. On
SQLite (one machine) the lock is an ``flock`` on ``<database>.scheduler.lock``. Were two
schedulers ever to overlap, every task's enqueue is deduplicated, so nothing runs twice.

:class:`forage.jobs.scheduler.Scheduler` takes the lock of :func:`leadership_for`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from forage.errors import ConfigError

log = logging.getLogger(__name__)

#: The PostgreSQL advisory lock the leader holds: a fixed 64-bit key derived from a name.
#: The name is the scheduler's historical module name, kept on purpose: a new key would let
#: schedulers of two releases lead at once during a rolling upgrade.
LEADER_LOCK_KEY = int.from_bytes(hashlib.sha256(b"forage.scheduler").digest()[:8], signed=True)
#: How long a vanished leader host may keep the lock: keepalive idle + interval * count.
_KEEPALIVES = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}


class Leadership(Protocol):
    """A lock only one scheduler holds at a time (all methods block; call them in a thread)."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this scheduler now leads."""

    def check(self) -> bool:
        """Whether the lock is still held (False once the connection behind it is gone)."""

    def release(self) -> None:
        """Give the lock up (safe when not held)."""


class AdvisoryLock:
    """Leadership as a PostgreSQL session-level advisory lock on a dedicated connection.

    The connection bypasses the pool (closing it really ends the session, so the lock can
    never linger in a pooled connection) and names its owner in ``application_name``.
    """

    def __init__(self, engine: Engine, *, owner: str, key: int = LEADER_LOCK_KEY) -> None:
        options = " ".join(f"-c {name}={value}" for name, value in _KEEPALIVES.items())
        self._engine = sa.create_engine(
            engine.url,
            poolclass=NullPool,
            connect_args={
                "application_name": f"forage-scheduler {owner}"[:63],
                "options": f"-c timezone=UTC {options}",
            },
        )
        self.key = key
        self._connection: Connection | None = None

    def try_acquire(self) -> bool:
        if self._connection is None:
            self._connection = self._engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            )
        try:
            got = self._connection.execute(
                sa.select(sa.func.pg_try_advisory_lock(self.key))
            ).scalar_one()
        except SQLAlchemyError:
            self._drop()
            raise
        return bool(got)

    def check(self) -> bool:
        if self._connection is None:
            return False
        try:
            self._connection.execute(sa.select(1))
        except SQLAlchemyError as exc:
            log.warning("scheduler lock connection failed: %s", exc)
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.execute(sa.select(sa.func.pg_advisory_unlock(self.key)))
        except SQLAlchemyError:
            log.debug("could not unlock the scheduler lock; closing its session", exc_info=True)
        self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except SQLAlchemyError:
                log.debug("closing the scheduler lock connection failed", exc_info=True)
            self._connection = None

    def close(self) -> None:
        self.release()
        self._engine.dispose()


class FileLock:
    """Leadership as an ``flock`` on a file beside the SQLite database (one machine)."""

    def __init__(self, path: Path, *, owner: str) -> None:
        self.path = path
        self.owner = owner
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, self.owner.encode(), 0)
        except OSError:
            # A full disk: give the lock straight back rather than lead unnamed.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        self._fd = fd
        return True

    def check(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                log.debug("could not clear the scheduler lock file", exc_info=True)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def close(self) -> None:
        self.release()


def _lock_file(engine: Engine) -> Path:
    database = engine.url.database
    if not database:
        raise ConfigError("database.url", "the scheduler needs a SQLite database file")
    return Path(database).with_name(Path(database).name + ".scheduler.lock")


def leadership_for(engine: Engine, *, owner: str) -> AdvisoryLock | FileLock:
    """The leader lock for this database: advisory lock on PostgreSQL, file lock on SQLite."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine, owner=owner)
    return FileLock(_lock_file(engine), owner=owner)


def current_leader(engine: Engine) -> str | None:
    """The owner name of the scheduler that leads now, if any (for status and tests)."""
    if engine.dialect.name == "postgresql":
        key = LEADER_LOCK_KEY & 0xFFFFFFFFFFFFFFFF
        with engine.connect() as connection:
            name = connection.execute(
                sa.text(
                    "SELECT a.application_name FROM pg_locks l"
                    " JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                    " AND l.database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                    " AND l.classid::bigint = :high AND l.objid::bigint = :low"
                ),
                {"high": key >> 32, "low": key & 0xFFFFFFFF},
            ).scalar_one_or_none()
        return name.removeprefix("forage-scheduler ") if name else None
    path = _lock_file(engine)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return path.read_text(encoding="utf-8") or "(unknown)"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
