"""Where each block of a packed blockstore is: the ``BlockLocator`` protocol and its SQLite
implementation.

A locator maps a block's multihash to ``(pack, offset, length)``. It holds nothing a pack does
not also say (packs are self-describing, see ``storage.packformat``) except two things:
deletions (a deleted block is marked, its bytes stay in the pack until a compaction, left for
later, rewrites it) and the packs a writer is about to move into place. That second part is
how a crash between a pack's rename and its entries being recorded loses nothing: a writer
first notes the pack as *expected* (durably), renames it, then records its entries, which
clears the note; whoever opens the store next records every expected pack that is in place
(``PackedBlockstore`` does it on open). The alternative, scanning every pack on open, costs
a read per pack: too much at tens of millions.

``SQLiteLocator`` is the default: one SQLite database in WAL mode beside the packs, safe for
several processes on one host (and one connection per thread). A multi-host deployment needs
a locator every host reaches (a PostgreSQL one fits the same protocol).

Spec: https://www.sqlite.org/wal.html, https://www.sqlite.org/pragma.html#pragma_synchronous
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from storage.errors import BlockstoreError, BlockstoreFull
from storage.packformat import IndexEntry

__all__ = [
    "BlockLocation",
    "BlockLocator",
    "SQLiteLocator",
]

#: How many multihashes ``multihashes`` reads per query (keeps read transactions short).
_PAGE = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY,
    name BLOB NOT NULL UNIQUE,
    recorded INTEGER NOT NULL DEFAULT 0,
    noted REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    multihash BLOB PRIMARY KEY,
    pack_id INTEGER NOT NULL REFERENCES packs (id),
    start INTEGER NOT NULL,
    length INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS packs_pending ON packs (recorded) WHERE recorded = 0;
"""


@dataclass(frozen=True, slots=True)
class BlockLocation:
    """Where a block's bytes are: ``length`` bytes at ``offset`` in the pack named ``pack``."""

    pack: str
    offset: int
    length: int


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on an autocommit connection (``executemany`` would otherwise
    commit, and sync, once per row)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@runtime_checkable
class BlockLocator(Protocol):
    """The index from multihash to pack position that a ``PackedBlockstore`` keeps.

    - ``find`` answers only for recorded, undeleted blocks;
    - ``record`` is idempotent: a block already located stays where it is, unless it was
      deleted (then it moves to the new pack); it also clears the pack's expected note;
    - ``expect`` must be durable when it returns, or at the latest once the store's data sync
      before the renames returns (it is what recovery reads after a crash);
    - failures of the medium raise ``BlockstoreError`` (``BlockstoreFull`` when out of space).
    """

    def find(self, multihash: bytes) -> BlockLocation | None:
        """Where the block is, or ``None`` if it is not stored (or was deleted)."""

    def record(self, pack: str, entries: Sequence[IndexEntry]) -> None:
        """Make the blocks of ``pack`` findable."""

    def forget(self, multihashes: Iterable[bytes]) -> None:
        """Mark blocks deleted (their bytes stay in their packs until a compaction)."""

    def expect(self, packs: Sequence[str]) -> None:
        """Note, durably, that ``packs`` are about to be moved into place."""

    def expected(self) -> list[tuple[str, float]]:
        """Packs noted by ``expect`` and not recorded yet, with when they were noted."""

    def abandon(self, pack: str) -> None:
        """Drop the note of an expected pack that never arrived."""

    def recorded(self, pack: str) -> bool:
        """Whether ``pack``'s entries are recorded."""

    def multihashes(self) -> Iterator[bytes]:
        """Every stored, undeleted block's multihash, once each."""

    def close(self) -> None:
        """Release connections."""


def _translate(exc: sqlite3.Error, what: str) -> BlockstoreError:
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
        return BlockstoreFull(f"{what}: {exc}")
    return BlockstoreError(f"{what}: {exc}")


class SQLiteLocator:
    """A ``BlockLocator`` in one SQLite file (WAL mode), shared by threads and processes.

    ``durable=False`` turns syncing off (tests, throwaway stores); otherwise ``expect``
    commits with ``synchronous=FULL`` and everything else with ``NORMAL`` (a lost ``record``
    is redone from the expected note on the next open). ``sync_expect=False`` leaves the
    ``expect`` commit to a ``syncfs(2)`` the caller makes before relying on it (a packed
    store whose locator is on its own filesystem: one sync less per commit). ``busy_timeout``
    is how long a writer waits for another process's write lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        sync_expect: bool = True,
        busy_timeout: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self._durable = durable
        self._sync_expect = durable and sync_expect
        self._timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        conn = self._conn()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise _translate(exc, f"opening block locator {self.path}") from exc

    def __repr__(self) -> str:
        return f"SQLiteLocator({str(self.path)!r})"

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork: SQLite's are not fork-safe)."""
        held: tuple[int, sqlite3.Connection] | None = getattr(self._local, "conn", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA synchronous={'NORMAL' if self._durable else 'OFF'}")
        except sqlite3.Error as exc:
            raise _translate(exc, f"opening block locator {self.path}") from exc
        self._local.conn = (os.getpid(), conn)
        with self._lock:
            self._connections.append(conn)
        return conn

    def find(self, multihash: bytes) -> BlockLocation | None:
        """Where the block is, or ``None``."""
        try:
            row = (
                self._conn()
                .execute(
                    "SELECT packs.name, start, length FROM blocks JOIN packs"
                    " ON packs.id = blocks.pack_id WHERE multihash = ? AND deleted = 0",
                    (multihash,),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise _translate(exc, "finding a block") from exc
        return None if row is None else BlockLocation(row[0].hex(), row[1], row[2])

    def record(self, pack: str, entries: Sequence[IndexEntry]) -> None:
        """Make the blocks of ``pack`` findable, in one transaction."""
        try:
            with _transaction(self._conn()) as conn:
                (pack_id,) = conn.execute(
                    "INSERT INTO packs (name, recorded, noted) VALUES (?, 1, ?)"
                    " ON CONFLICT (name) DO UPDATE SET recorded = 1 RETURNING id",
                    (bytes.fromhex(pack), time.time()),
                ).fetchone()
                conn.executemany(
                    "INSERT INTO blocks (multihash, pack_id, start, length) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (multihash) DO UPDATE SET pack_id = excluded.pack_id,"
                    " start = excluded.start, length = excluded.length, deleted = 0"
                    " WHERE blocks.deleted = 1",
                    ((e.multihash, pack_id, e.offset, e.length) for e in entries),
                )
        except sqlite3.Error as exc:
            raise _translate(exc, f"recording pack {pack}") from exc

    def forget(self, multihashes: Iterable[bytes]) -> None:
        """Mark blocks deleted."""
        try:
            with _transaction(self._conn()) as conn:  # one commit, not one per block
                conn.executemany(
                    "UPDATE blocks SET deleted = 1 WHERE multihash = ?", ((m,) for m in multihashes)
                )
        except sqlite3.Error as exc:
            raise _translate(exc, "deleting blocks") from exc

    def expect(self, packs: Sequence[str]) -> None:
        """Note ``packs`` as about to arrive, synced to disk before returning."""
        conn = self._conn()
        try:
            if self._sync_expect:
                conn.execute("PRAGMA synchronous=FULL")
            try:
                with _transaction(conn):  # one synced commit for the group, not one per pack
                    conn.executemany(
                        "INSERT INTO packs (name, noted) VALUES (?, ?)"
                        " ON CONFLICT (name) DO NOTHING",
                        ((bytes.fromhex(pack), time.time()) for pack in packs),
                    )
            finally:
                if self._sync_expect:
                    conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise _translate(exc, "noting packs") from exc

    def expected(self) -> list[tuple[str, float]]:
        """Packs noted and not recorded, with when they were noted."""
        try:
            rows = self._conn().execute("SELECT name, noted FROM packs WHERE recorded = 0")
            return [(name.hex(), noted) for name, noted in rows]
        except sqlite3.Error as exc:
            raise _translate(exc, "listing expected packs") from exc

    def abandon(self, pack: str) -> None:
        """Drop an expected pack's note (never a recorded pack's)."""
        try:
            self._conn().execute(
                "DELETE FROM packs WHERE name = ? AND recorded = 0", (bytes.fromhex(pack),)
            )
        except sqlite3.Error as exc:
            raise _translate(exc, f"abandoning pack {pack}") from exc

    def recorded(self, pack: str) -> bool:
        """Whether ``pack``'s entries are recorded."""
        try:
            row = (
                self._conn()
                .execute("SELECT recorded FROM packs WHERE name = ?", (bytes.fromhex(pack),))
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise _translate(exc, f"looking up pack {pack}") from exc
        return bool(row and row[0])

    def multihashes(self) -> Iterator[bytes]:
        """Every undeleted block's multihash, in pages of short queries."""
        after = b""
        while True:
            try:
                rows = (
                    self._conn()
                    .execute(
                        "SELECT multihash FROM blocks WHERE multihash > ? AND deleted = 0"
                        " ORDER BY multihash LIMIT ?",
                        (after, _PAGE),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise _translate(exc, "listing blocks") from exc
            for (multihash,) in rows:
                yield multihash
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    def close(self) -> None:
        """Close every connection this locator opened."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()
