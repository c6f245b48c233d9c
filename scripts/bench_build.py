"""The benchmark index: ``--artifacts`` files of npm, PyPI and Go packages, built fast.

Packages of npm (one file per version), PyPI (an sdist and two wheels) and Go (one zip), five
versions each, every file with a sha256 digest, 95% archived with a CID, half of those pinned,
half in pieces held by two active deals; every version with its lookup answer's tombstone
(``version_answers``: body NULL, as the triggers leave a fresh version). ``bench_lookup.py``,
``bench_memory.py``, ``bench_index.py --base-artifacts`` and ``bench_tasks.py`` build on it.

Why the build is shaped so: row by row through the ORM or triggers, ten million artifacts
take hours. Here rows are generated as tuples (in a child process, while the chunk before
is loaded) and loaded the way each store loads fastest,
with the secondary indexes and the answer triggers set aside during the load and restored
after it (indexes built once, sorted; tombstones written in one statement):

- PostgreSQL: ``COPY ... FROM STDIN`` (psycopg's ``cursor.copy``), in a session with
  ``session_replication_role = replica`` (no foreign-key or answer triggers: the rows are
  consistent by construction), then ``VACUUM ANALYZE`` (what autovacuum would do after a bulk
  insert, done now so that figures do not depend on when it runs);
- SQLite: ``executemany`` of large chunks in one transaction on a connection with
  ``synchronous = OFF``, ``journal_mode = OFF`` and ``foreign_keys = OFF`` for the build only
  (WAL restored after it), then :func:`forage.db.statistics.refresh`.

    python scripts/bench_build.py --artifacts 1000000 --sqlite-path /tmp/forage-1m/forage.db
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forage.db.engine import make_engine, upgrade  # noqa: E402
from forage.db.models import Artifact, Package, Version, VersionAnswer  # noqa: E402
from forage.db.statistics import refresh  # noqa: E402
from forage.lookup.keys import Key  # noqa: E402

VERSIONS = 5
#: Ecosystem of package i by i % 10, and its files per version.
LAYOUT = ["npm"] * 5 + ["pypi"] * 3 + ["golang"] * 2
FILES = {"npm": 1, "pypi": 3, "golang": 1}
PIECE_MEMBERS = 1000
#: Packages generated and loaded at a time (about 16,000 artifacts).
CHUNK = 10_000
WHEN = datetime(2024, 1, 1, tzinfo=UTC)

#: The loaded tables, parents before children, and the columns generated for each.
COLUMNS: dict[str, tuple[str, ...]] = {
    "packages": (
        "id",
        "ecosystem",
        "name",
        "display_name",
        "extra",
        "deleted",
        "created_at",
        "updated_at",
    ),
    "versions": (
        "id",
        "package_id",
        "number",
        "published_at",
        "yanked",
        "deleted",
        "created_at",
        "updated_at",
    ),
    "artifacts": (
        "id",
        "version_id",
        "filename",
        "url",
        "size",
        "kind",
        "yanked",
        "created_at",
        "updated_at",
    ),
    "artifact_digests": ("artifact_id", "algorithm", "value"),
    "archives": (
        "id",
        "artifact_id",
        "status",
        "cid",
        "size",
        "archived_at",
        "created_at",
        "updated_at",
    ),
    "pins": (
        "archive_id",
        "backend",
        "status",
        "request_id",
        "pinned_at",
        "created_at",
        "updated_at",
    ),
    "pieces": ("id", "piece_cid", "padded_size", "car_root", "car_size", "created_at"),
    "piece_members": ("piece_id", "archive_id", "offset", "length"),
    "deals": (
        "deal_id",
        "source",
        "piece_id",
        "provider",
        "state",
        "start_epoch",
        "end_epoch",
        "last_seen",
        "created_at",
        "updated_at",
    ),
}
#: Tables given an answer tombstone per row after the load (what the triggers would leave).
ANSWERS = "version_answers"


def package_name(ecosystem: str, i: int) -> str:
    return f"example.com/bench/m{i}" if ecosystem == "golang" else f"bench-{ecosystem}-{i}"


def version_of(ecosystem: str, v: int) -> str:
    return f"v1.0.{v}" if ecosystem == "golang" else f"1.0.{v}"


def key_of(i: int, v: int) -> Key:
    """The key of version ``v`` of package ``i`` (its purl is what clients send)."""
    ecosystem = LAYOUT[i % 10]
    return Key(ecosystem, package_name(ecosystem, i), version_of(ecosystem, v))


#: Base32 (RFC 4648, lower case) of every 10-bit value: two characters each.
_PAIRS = [
    a + b for a in "abcdefghijklmnopqrstuvwxyz234567" for b in "abcdefghijklmnopqrstuvwxyz234567"
]
_SHIFTS = range(310, -1, -10)


def _cid(digest: bytes) -> str:
    """A CIDv1 (raw, sha2-256, base32) of a sha256 ``digest``: ``base64.b32encode`` is pure
    Python before 3.12, and was the build's largest cost; 36 bytes padded to 40 make 32
    ten-bit pairs, of which the 58 characters unpadded base32 keeps."""
    n = int.from_bytes(b"\x01\x55\x12\x20" + digest + b"\0\0\0\0", "big")
    return "b" + "".join([_PAIRS[(n >> shift) & 1023] for shift in _SHIFTS])[:58]


def cid_of(n: int) -> str:
    """The CID of artifact ``n``'s stand-in bytes."""
    return _cid(hashlib.sha256(b"artifact %d" % n).digest())


@dataclass
class Index:
    packages: int
    versions: int
    artifacts: int


def packages_for(artifacts: int) -> int:
    per_ten = sum(FILES[LAYOUT[i]] for i in range(10)) * VERSIONS
    return max(10, artifacts * 10 // per_ten)


@dataclass(frozen=True, slots=True)
class Spelling:
    """The constant values as the store keeps them (what SQLAlchemy's types would write)."""

    when: Any
    false: Any
    extra: Any


#: SQLite: SQLAlchemy's DateTime text, booleans as integers, JSON as text.
SQLITE = Spelling("2024-01-01 00:00:00.000000", 0, "{}")
#: PostgreSQL (COPY's text format): the time as text, so psycopg need not format it per row.
POSTGRESQL = Spelling(WHEN.isoformat(" "), False, "{}")


class Rows:
    """Generates the index's rows, ``CHUNK`` packages at a time, as tuples in :data:`COLUMNS`
    order; ids are assigned here, so the load needs no round trip."""

    def __init__(self, spelling: Spelling) -> None:
        self.s = spelling
        self.versions = 0
        self.artifacts = 0
        self.pieces = 0
        self.members: list[tuple[int, int]] = []

    def chunks(self, packages: int) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
        for start in range(0, packages, CHUNK):
            rows: dict[str, list[tuple[Any, ...]]] = {name: [] for name in COLUMNS}
            for i in range(start, min(packages, start + CHUNK)):
                self._package(rows, i)
            if start + CHUNK >= packages:
                self._close_piece(rows)
            yield rows

    def _package(self, rows: dict[str, list[tuple[Any, ...]]], i: int) -> None:
        s = self.s
        ecosystem = LAYOUT[i % 10]
        name = package_name(ecosystem, i)
        rows["packages"].append((i + 1, ecosystem, name, name, s.extra, s.false, s.when, s.when))
        short = name.rsplit("/", 1)[-1]
        for v in range(VERSIONS):
            self.versions += 1
            version = version_of(ecosystem, v)
            rows["versions"].append(
                (self.versions, i + 1, version, s.when, s.false, s.false, s.when, s.when)
            )
            for f in range(FILES[ecosystem]):
                self.artifacts += 1
                if ecosystem != "pypi":
                    filename, kind = f"{short}-{version}.tgz", "tarball"
                elif f == 0:
                    filename, kind = f"{name}-{version}.tar.gz", "sdist"
                else:
                    filename, kind = f"{name}-{version}-py3-none-any-{f}.whl", "bdist_wheel"
                self._artifact(rows, self.artifacts, name, filename, kind)

    def _artifact(
        self, rows: dict[str, list[tuple[Any, ...]]], n: int, name: str, filename: str, kind: str
    ) -> None:
        s = self.s
        size = 1000 + n % 5000
        url = f"https://registry.invalid/{name}/{filename}"
        rows["artifacts"].append(
            (n, self.versions, filename, url, size, kind, s.false, s.when, s.when)
        )
        digest = hashlib.sha256(b"artifact %d" % n)
        rows["artifact_digests"].append((n, "sha256", digest.hexdigest()))
        if n % 20 == 0:
            rows["archives"].append((n, n, "pending", None, None, None, s.when, s.when))
            return
        rows["archives"].append(
            (n, n, "archived", _cid(digest.digest()), size, s.when, s.when, s.when)
        )
        if n % 2 == 0:
            rows["pins"].append((n, "kubo", "pinned", str(n), s.when, s.when, s.when))
        if n % 4 < 2:
            self.members.append((n, size))
            if len(self.members) >= PIECE_MEMBERS:
                self._close_piece(rows)

    def _close_piece(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        if not self.members:
            return
        s = self.s
        self.pieces += 1
        piece = self.pieces
        offset = 59
        for archive, length in self.members:
            rows["piece_members"].append((piece, archive, offset, length))
            offset += length
        self.members = []
        padded = 128
        while padded // 128 * 127 < offset:
            padded *= 2
        root = hashlib.sha256(b"piece %d" % piece).digest()
        piece_cid = base64.b32encode(b"\x01\x81\xe2\x03\x92\x20\x20" + root).decode()
        rows["pieces"].append(
            (piece, "b" + piece_cid.lower().rstrip("="), padded, cid_of(-piece), offset, s.when)
        )
        for d in range(2):
            rows["deals"].append(
                (
                    str(piece * 10 + d),
                    "lotus",
                    piece,
                    f"f0{1000 + d}",
                    "active",
                    4_000_000,
                    9_000_000,
                    s.when,
                    s.when,
                    s.when,
                )
            )


def build(url: str, artifacts: int) -> tuple[Index, float]:
    """Create the schema and load the index; return its size and build seconds."""
    engine = make_engine(url)
    started = time.perf_counter()
    upgrade(engine)
    count = packages_for(artifacts)
    load = _load_postgresql if engine.dialect.name == "postgresql" else _load_sqlite
    spelling = POSTGRESQL if engine.dialect.name == "postgresql" else SQLITE
    try:
        load(engine, _generated(spelling, count))
    finally:
        engine.dispose()
    files = sum(FILES[LAYOUT[i % 10]] for i in range(count)) * VERSIONS
    return Index(count, count * VERSIONS, files), time.perf_counter() - started


def _generated(spelling: Spelling, packages: int) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    """:meth:`Rows.chunks`, generated in a child process while this one loads the chunk
    before (rows are a quarter of the build's CPU; a machine has two cores at least)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue(maxsize=2)
    child = context.Process(target=_generate, args=(spelling, packages, queue), daemon=True)
    child.start()
    try:
        while True:
            try:
                chunk = queue.get(timeout=5)
            except Empty:
                if not child.is_alive():
                    raise RuntimeError(f"the row generator exited ({child.exitcode})") from None
                continue
            if chunk is None:
                return
            yield chunk
    finally:
        child.kill()
        child.join()


def _generate(spelling: Spelling, packages: int, queue: Any) -> None:
    for chunk in Rows(spelling).chunks(packages):
        queue.put(chunk)
    queue.put(None)


def _names(table: str) -> str:
    """The generated columns of ``table``, quoted (``offset`` is a keyword)."""
    return ", ".join(f'"{column}"' for column in COLUMNS[table])


def _tombstones() -> str:
    return f"INSERT INTO {ANSWERS} (version_id, stamp) SELECT id, 1 FROM versions"  # noqa: S608


def _load_sqlite(engine: sa.Engine, chunks: Iterator[dict[str, list[tuple[Any, ...]]]]) -> None:
    """One transaction, no journal, no fsync; triggers and secondary indexes dropped for the
    load and created again (from their own SQL) after it."""
    raw = engine.raw_connection()
    try:
        con = raw.driver_connection
        assert con is not None
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "foreign_keys = OFF"):
            con.execute(f"PRAGMA {pragma}")
        con.execute("PRAGMA cache_size = -1000000")  # 1 GB: sorts for CREATE INDEX in memory
        tables = (*COLUMNS, ANSWERS)
        marks = ", ".join("?" * len(tables))
        saved = con.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger')"  # noqa: S608
            f" AND sql IS NOT NULL AND tbl_name IN ({marks}) ORDER BY type",
            tables,
        ).fetchall()
        con.execute("BEGIN")
        for kind, name, _sql in saved:
            con.execute(f'DROP {kind.upper()} "{name}"')
        inserts = {
            table: f"INSERT INTO {table} ({_names(table)})"  # noqa: S608
            f" VALUES ({', '.join('?' * len(columns))})"
            for table, columns in COLUMNS.items()
        }
        for rows in chunks:
            for table, batch in rows.items():
                if batch:
                    con.executemany(inserts[table], batch)
        con.execute(_tombstones())
        for _kind, _name, sql in saved:  # indexes, then triggers
            con.execute(sql)
        con.execute("COMMIT")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        con.execute("PRAGMA foreign_keys = ON")
    finally:
        raw.close()
    with engine.begin() as connection:
        refresh(connection)


def _load_postgresql(engine: sa.Engine, chunks: Iterator[dict[str, list[tuple[Any, ...]]]]) -> None:
    """COPY into the tables with triggers off; indexes that back no constraint dropped for
    the load and created again after it; sequences moved past the ids; VACUUM ANALYZE."""
    tables = [*COLUMNS, ANSWERS]
    with engine.connect() as connection:
        con = connection.connection.driver_connection
        assert con is not None
        with con.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")
            cursor.execute("SET maintenance_work_mem = '512MB'")
            saved = cursor.execute(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname ="
                " current_schema() AND i.tablename = ANY(%s) AND NOT EXISTS (SELECT 1 FROM"
                " pg_constraint c WHERE c.conname = i.indexname)",
                (tables,),
            ).fetchall()
            for name, _sql in saved:
                cursor.execute(f'DROP INDEX "{name}"')
            for rows in chunks:
                for table, batch in rows.items():
                    if not batch:
                        continue
                    with cursor.copy(f"COPY {table} ({_names(table)}) FROM STDIN") as copy:
                        for row in batch:
                            copy.write_row(row)
            cursor.execute(_tombstones())
            for _name, sql in saved:
                cursor.execute(sql)
            for table in (table for table, columns in COLUMNS.items() if columns[0] == "id"):
                cursor.execute(
                    "SELECT setval(seq, (SELECT coalesce(max(id), 1) FROM "  # noqa: S608
                    f"{table})) FROM pg_get_serial_sequence(%s, 'id') AS seq"
                    " WHERE seq IS NOT NULL",
                    (table,),
                )
        con.commit()
        con.autocommit = True
        con.execute("VACUUM ANALYZE")  # every table: what refresh() analyzes, and more
        con.autocommit = False


def existing(url: str, artifacts: int) -> Index:
    """The size of an index built earlier for ``artifacts`` files (refused if it differs),
    migrated to the current schema, its stored answers retired as a change would retire them
    (so first sights are)."""
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.update(VersionAnswer).values(body=None, stamp=VersionAnswer.stamp + 1)
        )
        count = connection.execute(sa.select(sa.func.max(Package.id))).scalar_one()
        versions = connection.execute(sa.select(sa.func.max(Version.id))).scalar_one()
        files = connection.execute(sa.select(sa.func.max(Artifact.id))).scalar_one()
    engine.dispose()
    if count != packages_for(artifacts):
        raise SystemExit(f"{url} holds {count} packages, not an index of {artifacts} artifacts")
    return Index(count, versions, files)


def database_bytes(url: str) -> int:
    """The database's size on disk (SQLite: the file; PostgreSQL: ``pg_database_size``)."""
    engine = make_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            return Path(engine.url.database or "").stat().st_size
        with engine.connect() as connection:
            size = sa.select(sa.func.pg_database_size(sa.func.current_database()))
            return int(connection.execute(size).scalar_one())
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=int, default=1_000_000)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--sqlite-path", help="a new SQLite file to build")
    target.add_argument("--postgres-url", help="an empty PostgreSQL database to build in")
    args = parser.parse_args()
    if args.sqlite_path:
        path = Path(args.sqlite_path).resolve()
        if path.exists():
            raise SystemExit(f"{path} exists: give a new file")
        url = f"sqlite:///{path}"
    else:
        url = args.postgres_url
    cpu = time.process_time()
    index, seconds = build(url, args.artifacts)
    report = {
        "packages": index.packages,
        "versions": index.versions,
        "artifacts": index.artifacts,
        "build_seconds": round(seconds, 1),
        # This process's share (generating rows; SQLite's inserts too, PostgreSQL's are the
        # server's): on a machine shared with other work, the figure that compares across runs.
        "build_cpu_seconds": round(time.process_time() - cpu, 1),
        "database_bytes": database_bytes(url),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
