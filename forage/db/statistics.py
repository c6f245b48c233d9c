"""Planner statistics kept fresh: ``PRAGMA optimize`` on SQLite, ``ANALYZE`` on PostgreSQL.

Why: the planners choose between probing an index and scanning a table from statistics
taken at one moment, and nothing refreshes them by itself on SQLite. The lookup of stored
answers probes ``version_answers.purl`` once per key (:mod:`forage.lookup.answers`); an
``ANALYZE`` taken while most answers have no purl yet (a fresh or bulk-loaded index, before
rendering) counts those NULLs as one value repeated, so ``sqlite_stat1`` says every probe
matches most of the table and SQLite scans it instead: 1,000 keys took 1.7 s instead of
18 ms on the benchmark's index. :func:`refresh`:

- on SQLite (https://www.sqlite.org/pragma.html#pragma_optimize), with ``PRAGMA
  analysis_limit`` so that each index costs a bounded read: ``ANALYZE`` of :data:`TABLES`
  (``PRAGMA optimize`` alone re-analyzes a table only when its row count changed many times
  over, and rendering fills purls without adding rows), then ``PRAGMA optimize`` for every
  other table; a purl index row that NULLs distorted (more than :data:`PURL_ROWS` rows per
  value) is deleted, so SQLite falls back to its default (a selective index, which purls
  are); and a no-op schema change, so other connections (pooled ones, other processes)
  reload the statistics instead of keeping the old ones until they reconnect;
- on PostgreSQL, ``ANALYZE`` of :data:`TABLES` (its statistics count NULLs apart, and
  autovacuum may be slow to notice a bulk load).

It runs as the scheduler's ``optimize`` task (``schedule.optimize``), as ``forage db
optimize``, after a bulk render of answers (``forage db render-answers``, a ``render_answers``
run that stored at least :data:`BULK` answers) and in ``scripts/bench_lookup.py`` after its
bulk load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from forage.config import Config

#: The scheduler task's name (interval key ``schedule.optimize``).
OPTIMIZE = "optimize"
#: Tables whose distribution changes without their row count changing much: answers gain
#: purls and bodies, versions and files are removed, archives and pins change state. (Pins
#: without statistics made SQLite plan the pin check's due pins as a scan of every archive.)
TABLES: tuple[str, ...] = ("version_answers", "versions", "artifacts", "archives", "pins")
#: Rows of each index SQLite's ``ANALYZE`` reads (``PRAGMA analysis_limit``; SQLite's docs
#: suggest 100 to 1000): enough for the averages the planner uses, bounded on any index.
ANALYSIS_LIMIT = 1000
#: The index stored answers are read by, and the most rows per purl honest statistics show
#: (an answer plus tombstones left by renames).
PURL_INDEX = "ix_version_answers_purl"
PURL_ROWS = 4
#: Answers a render stores from which the statistics are refreshed after it (one lookup
#: chunk: :data:`forage.lookup.answers.CHUNK`).
BULK = 1000
#: The view created and dropped so that other SQLite connections reload the statistics (a
#: schema change is what makes them re-read ``sqlite_stat1``).
_RELOAD_VIEW = "forage_statistics_reload"


@dataclass(frozen=True, slots=True)
class Refreshed:
    """What :func:`refresh` did: the tables analyzed and the statistics rows it dropped."""

    dialect: str
    tables: tuple[str, ...]
    dropped: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """For log lines and the task's result."""
        return {"analyzed": len(self.tables), "dropped": ",".join(self.dropped) or "none"}


def refresh(connection: sa.Connection) -> Refreshed:
    """Bring the planner's statistics up to date in ``connection``'s transaction (a write
    transaction on SQLite; the caller commits)."""
    if connection.dialect.name == "sqlite":
        return _refresh_sqlite(connection)
    connection.exec_driver_sql(f"ANALYZE {', '.join(TABLES)}")
    return Refreshed(connection.dialect.name, TABLES)


def _refresh_sqlite(connection: sa.Connection) -> Refreshed:
    connection.exec_driver_sql(f"PRAGMA analysis_limit = {ANALYSIS_LIMIT}")
    for table in TABLES:
        connection.exec_driver_sql(f'ANALYZE "{table}"')
    # 0x10002: analyze any table that needs it, not only those this connection queried.
    connection.exec_driver_sql("PRAGMA optimize(0x10002)").all()
    dropped = drop_distorted(connection)
    connection.exec_driver_sql(f'CREATE VIEW "{_RELOAD_VIEW}" AS SELECT 1')
    connection.exec_driver_sql(f'DROP VIEW "{_RELOAD_VIEW}"')
    return Refreshed("sqlite", TABLES, dropped)


def drop_distorted(connection: sa.Connection) -> tuple[str, ...]:
    """Delete the purl index's ``sqlite_stat1`` row when it says a probe matches more than
    :data:`PURL_ROWS` rows (NULL purls counted as one value), and reload this connection's
    statistics; returns the indexes whose rows were deleted."""
    stat = connection.execute(
        sa.text("SELECT stat FROM sqlite_stat1 WHERE idx = :idx"), {"idx": PURL_INDEX}
    ).scalar_one_or_none()
    if stat is None or _rows_per_value(stat) <= PURL_ROWS:
        return ()
    connection.execute(sa.text("DELETE FROM sqlite_stat1 WHERE idx = :idx"), {"idx": PURL_INDEX})
    connection.exec_driver_sql("ANALYZE sqlite_schema")
    return (PURL_INDEX,)


def _rows_per_value(stat: str) -> int:
    """The average rows per value of an index's first column, from its ``sqlite_stat1``
    ``stat`` ("rows per-column-averages... [options]"); 0 when absent."""
    fields = stat.split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0


def refresh_session(session: Session) -> Refreshed:
    """:func:`refresh` on ``session``'s connection (in its transaction)."""
    return refresh(session.connection())


def optimize_task(session: Session, config: Config) -> Mapping[str, Any]:
    """The scheduler's ``optimize`` task: refresh the statistics (bounded work: sampled
    ``ANALYZE`` of a few tables) in the task's transaction."""
    return refresh_session(session).summary()
