"""Benchmark batch lookups: an index of ``--artifacts`` files, queried through the HTTP server.

For each store (SQLite in a temp dir; PostgreSQL from ``--postgres-url`` or a throwaway
cluster started from the installed server binaries), the script builds an index with bulk
Core inserts: packages of npm (one file per version), PyPI (an sdist and two wheels) and Go
(one zip), five versions each, every file with a sha256 digest, 95% archived with a CID,
half of those pinned, half in pieces held by two active deals. It then starts ``forage``'s
HTTP server in a child process (so its CPU is not the client's) and, per batch size, times
``POST /api/v1/lookup`` with fresh random purls each round, and the same keys as one bare
SQL query in this process (``forage.lookup.query.full_query``: what the lookup reads, files,
digests, archives, pins, pieces and deals, as one statement of joins, rows fetched). Prints JSON:
p50/p99 milliseconds and keys per second for both, and their ratio.

    python scripts/bench_lookup.py                              # 1,000,000 artifacts, both stores
    python scripts/bench_lookup.py --artifacts 20000 --rounds 10 --stores sqlite   # a quick look
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import hashlib
import json
import multiprocessing
import os
import pwd
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forage.db.engine import make_engine, make_sessionmaker, upgrade  # noqa: E402
from forage.db.models import (  # noqa: E402
    Archive,
    Artifact,
    ArtifactDigest,
    Deal,
    Package,
    Piece,
    PieceMember,
    Pin,
    Version,
    VersionAnswer,
)
from forage.db.statistics import refresh  # noqa: E402
from forage.lookup.keys import Key  # noqa: E402
from forage.lookup.query import full_query, keys_table  # noqa: E402
from forage.lookup.sessions import read_only_sessionmaker  # noqa: E402

VERSIONS = 5
#: Ecosystem of package i by i % 10, and its files per version.
LAYOUT = ["npm"] * 5 + ["pypi"] * 3 + ["golang"] * 2
FILES = {"npm": 1, "pypi": 3, "golang": 1}
PIECE_MEMBERS = 1000
CHUNK = 20_000
WHEN = datetime(2024, 1, 1, tzinfo=UTC)


def package_name(ecosystem: str, i: int) -> str:
    return f"example.com/bench/m{i}" if ecosystem == "golang" else f"bench-{ecosystem}-{i}"


def version_of(ecosystem: str, v: int) -> str:
    return f"v1.0.{v}" if ecosystem == "golang" else f"1.0.{v}"


def key_of(i: int, v: int) -> Key:
    """The key of version ``v`` of package ``i`` (its purl is what clients send)."""
    ecosystem = LAYOUT[i % 10]
    return Key(ecosystem, package_name(ecosystem, i), version_of(ecosystem, v))


def cid_of(n: int) -> str:
    """A CIDv1 (raw, sha2-256, base32) of artifact ``n``'s stand-in bytes."""
    digest = hashlib.sha256(b"artifact %d" % n).digest()
    return "b" + base64.b32encode(b"\x01\x55\x12\x20" + digest).decode().lower().rstrip("=")


@dataclass
class Index:
    packages: int
    versions: int
    artifacts: int


def packages_for(artifacts: int) -> int:
    per_ten = sum(FILES[LAYOUT[i]] for i in range(10)) * VERSIONS
    return max(10, artifacts * 10 // per_ten)


def build(url: str, artifacts: int) -> tuple[Index, float]:
    """Create the schema and insert the index in chunks; return its size and build seconds."""
    engine = make_engine(url)
    started = time.perf_counter()
    upgrade(engine)
    count = packages_for(artifacts)
    # A fresh index has no stored answers to retire: PostgreSQL's bulk load skips the
    # triggers (the throwaway cluster's user is a superuser); SQLite's cannot.
    replica = engine.dialect.name == "postgresql"
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in _TABLES}
    ids = {"version": 0, "artifact": 0, "archived": 0, "piece": 0}

    def flush(connection: sa.Connection) -> None:
        """Insert what is pending, parents before children (``_TABLES`` order)."""
        for name, table in _TABLES.items():
            if rows[name]:
                connection.execute(sa.insert(table), rows[name])
                rows[name].clear()

    with engine.begin() as connection:
        if replica:
            connection.execute(sa.text("SET session_replication_role = replica"))
        for i in range(count):
            ecosystem = LAYOUT[i % 10]
            name = package_name(ecosystem, i)
            rows["packages"].append(
                {
                    "id": i + 1,
                    "ecosystem": ecosystem,
                    "name": name,
                    "display_name": name,
                    "extra": {},
                    "deleted": False,
                    "created_at": WHEN,
                    "updated_at": WHEN,
                }
            )
            for v in range(VERSIONS):
                ids["version"] += 1
                version = version_of(ecosystem, v)
                rows["versions"].append(
                    {
                        "id": ids["version"],
                        "package_id": i + 1,
                        "number": version,
                        "published_at": WHEN,
                        "yanked": False,
                        "deleted": False,
                        "created_at": WHEN,
                        "updated_at": WHEN,
                    }
                )
                for f in range(FILES[ecosystem]):
                    ids["artifact"] += 1
                    n = ids["artifact"]
                    _artifact_rows(rows, n, ids, ecosystem, name, version, f)
            if len(rows["artifacts"]) >= CHUNK:
                flush(connection)
        _close_piece(rows, ids)
        flush(connection)
        if connection.dialect.name == "postgresql":
            for table in _TABLES.values():
                if "id" in table.c:
                    highest = sa.select(sa.func.coalesce(sa.func.max(table.c.id), 1))
                    sequence = sa.func.pg_get_serial_sequence(table.name, "id")
                    connection.execute(
                        sa.select(sa.func.setval(sequence, highest.scalar_subquery()))
                    )
    # Statistics as Forage keeps them (forage.db.statistics): a plain ANALYZE now, while no
    # answer has a purl, would make every lookup of stored answers scan.
    with engine.begin() as connection:
        refresh(connection)
    engine.dispose()
    return Index(count, ids["version"], ids["artifact"]), time.perf_counter() - started


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


def _artifact_rows(
    rows: dict[str, list[dict[str, Any]]],
    n: int,
    ids: dict[str, int],
    ecosystem: str,
    name: str,
    version: str,
    f: int,
) -> None:
    if ecosystem != "pypi":
        filename, kind = f"{name.rsplit('/', 1)[-1]}-{version}.tgz", "tarball"
    elif f == 0:
        filename, kind = f"{name}-{version}.tar.gz", "sdist"
    else:
        filename, kind = f"{name}-{version}-py3-none-any-{f}.whl", "bdist_wheel"
    rows["artifacts"].append(
        {
            "id": n,
            "version_id": ids["version"],
            "filename": filename,
            "url": f"https://registry.invalid/{name}/{filename}",
            "size": 1000 + n % 5000,
            "kind": kind,
            "yanked": False,
            "created_at": WHEN,
            "updated_at": WHEN,
        }
    )
    rows["artifact_digests"].append(
        {
            "artifact_id": n,
            "algorithm": "sha256",
            "value": hashlib.sha256(b"artifact %d" % n).hexdigest(),
        }
    )
    archived = n % 20 != 0
    rows["archives"].append(
        {
            "id": n,
            "artifact_id": n,
            "status": "archived" if archived else "pending",
            "cid": cid_of(n) if archived else None,
            "size": 1000 + n % 5000 if archived else None,
            "archived_at": WHEN if archived else None,
            "created_at": WHEN,
            "updated_at": WHEN,
        }
    )
    if not archived:
        return
    ids["archived"] += 1
    if n % 2 == 0:
        rows["pins"].append(
            {
                "archive_id": n,
                "backend": "kubo",
                "status": "pinned",
                "request_id": str(n),
                "pinned_at": WHEN,
                "created_at": WHEN,
                "updated_at": WHEN,
            }
        )
    if n % 4 < 2:
        _piece_member(rows, n, ids)


def _piece_member(rows: dict[str, list[dict[str, Any]]], n: int, ids: dict[str, int]) -> None:
    members = rows.setdefault("_members", [])
    members.append({"archive_id": n, "length": 1000 + n % 5000})
    if len(members) >= PIECE_MEMBERS:
        _close_piece(rows, ids)


def _close_piece(rows: dict[str, list[dict[str, Any]]], ids: dict[str, int]) -> None:
    members = rows.pop("_members", [])
    if not members:
        return
    ids["piece"] += 1
    piece = ids["piece"]
    offset = 59
    for member in members:
        rows["piece_members"].append(
            {
                "piece_id": piece,
                "archive_id": member["archive_id"],
                "offset": offset,
                "length": member["length"],
            }
        )
        offset += member["length"]
    padded = 128
    while padded // 128 * 127 < offset:
        padded *= 2
    root = hashlib.sha256(b"piece %d" % piece).digest()
    rows["pieces"].append(
        {
            "id": piece,
            "piece_cid": "b"
            + base64.b32encode(b"\x01\x81\xe2\x03\x92\x20\x20" + root).decode().lower().rstrip("="),
            "padded_size": padded,
            "car_root": cid_of(-piece),
            "car_size": offset,
            "created_at": WHEN,
        }
    )
    for d in range(2):
        rows["deals"].append(
            {
                "deal_id": str(piece * 10 + d),
                "source": "lotus",
                "piece_id": piece,
                "provider": f"f0{1000 + d}",
                "state": "active",
                "start_epoch": 4_000_000,
                "end_epoch": 9_000_000,
                "last_seen": WHEN,
                "created_at": WHEN,
                "updated_at": WHEN,
            }
        )


_TABLES: dict[str, Any] = {
    "packages": Package.__table__,
    "versions": Version.__table__,
    "artifacts": Artifact.__table__,
    "artifact_digests": ArtifactDigest.__table__,
    "archives": Archive.__table__,
    "pins": Pin.__table__,
    "pieces": Piece.__table__,
    "piece_members": PieceMember.__table__,
    "deals": Deal.__table__,
}


def serve(url: str, data_dir: str, port: int, ready: Any) -> None:
    """Child process: Forage's HTTP server on ``port`` until terminated."""
    import asyncio

    os.environ.update(FORAGE_DATABASE_URL=url, FORAGE_DATA_DIR=data_dir)
    from forage.cli.serve import serve as run
    from forage.config import load_config

    config = load_config(environ=dict(os.environ))
    ready.set()
    asyncio.run(run(config, host="127.0.0.1", port=port))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(times: list[float], batch: int) -> dict[str, float]:
    p50 = statistics.median(times)
    return {
        "p50_ms": round(p50 * 1000, 2),
        "p99_ms": round(percentile(times, 0.99) * 1000, 2),
        "keys_per_s": round(batch / p50),
    }


def measure(
    url: str, index: Index, *, batches: list[int], rounds: int, seed: int
) -> dict[str, Any]:
    """Time HTTP lookups and the bare query for each batch size."""
    rng = random.Random(seed)
    data_dir = tempfile.mkdtemp(prefix="forage-bench-data-")
    port = free_port()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=serve, args=(url, data_dir, port, ready), daemon=True)
    child.start()
    writer = make_engine(url)
    # The same read-only sessions as the server's (on SQLite: plain BEGIN, file mapped).
    reader, engine = read_only_sessionmaker(make_sessionmaker(writer))
    results: dict[str, Any] = {}
    try:
        ready.wait(60)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=120) as client:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/api/v1/stats").status_code == 200:
                        break
                time.sleep(0.1)
            for batch in batches:
                rounds_keys = []
                for _ in range(rounds + 2):  # two warm-up rounds
                    picks = [rng.randrange(index.packages) for _ in range(batch)]
                    versions = [rng.randrange(VERSIONS) for _ in range(batch)]
                    rounds_keys.append([key_of(i, v) for i, v in zip(picks, versions, strict=True)])
                # First sight of each key: computed, rendered, and stored off the request path.
                cold_times, cold_bodies = [], []
                for round_, parsed in enumerate(rounds_keys):
                    elapsed, body = _post(client, parsed)
                    cold_bodies.append(body)
                    if round_ == 0:
                        answer = json.loads(body)
                        assert answer["summary"]["found"] == batch, answer["summary"]
                    if round_ >= 2:
                        cold_times.append(elapsed)
                _prime(client, reader, rounds_keys)
                http_times: list[float] = []
                sql_times: list[float] = []
                for round_, parsed in enumerate(rounds_keys):
                    elapsed, body = _post(client, parsed)
                    # Stored answers spliced in: the very bytes computed on first sight.
                    assert body == cold_bodies[round_], "a stored answer differs"
                    with reader() as session:
                        statement = full_query(session, parsed)
                        connection = session.connection()
                        started_sql = time.perf_counter()
                        found = connection.execute(statement).all()
                        sql_elapsed = time.perf_counter() - started_sql
                    assert found, "the bare query found nothing"
                    if round_ >= 2:
                        http_times.append(elapsed)
                        sql_times.append(sql_elapsed)
                http = summary(http_times, batch)
                sql = summary(sql_times, batch)
                results[str(batch)] = {
                    "http": http,
                    "http_first_sight": summary(cold_times, batch),
                    "sql": sql,
                    "http_over_sql_p50": round(http["p50_ms"] / max(sql["p50_ms"], 0.001), 2),
                }
                print(f"  {batch} keys: {json.dumps(results[str(batch)])}", file=sys.stderr)
    finally:
        if engine is not None:
            engine.dispose()
        writer.dispose()
        child.terminate()
        child.join(30)
        shutil.rmtree(data_dir, ignore_errors=True)
    return results


def _post(client: httpx.Client, keys: list[Key]) -> tuple[float, bytes]:
    """One timed ``POST /api/v1/lookup``: seconds and the body."""
    payload = {"keys": [key.purl() for key in keys]}
    started = time.perf_counter()
    response = client.post("/api/v1/lookup", json=payload)
    body = response.content
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, body[:300]
    return elapsed, body


def _stored(reader: Any, keys: list[Key]) -> int:
    """How many of ``keys``' versions have a stored answer."""
    with reader() as session:
        k = keys_table(session, keys)
        return int(
            session.execute(
                sa.select(sa.func.count(sa.distinct(VersionAnswer.version_id)))
                .select_from(k)
                .join(
                    Package, sa.and_(Package.ecosystem == k.c.ecosystem, Package.name == k.c.name)
                )
                .join(
                    Version, sa.and_(Version.package_id == Package.id, Version.number == k.c.number)
                )
                .join(VersionAnswer, VersionAnswer.version_id == Version.id)
                .where(VersionAnswer.body.is_not(None))
            ).scalar_one()
        )


def _prime(client: httpx.Client, reader: Any, rounds: list[list[Key]], *, tries: int = 20) -> None:
    """Until every version of ``rounds`` has a stored answer: the server's answer writer
    drops batches when it falls behind (they are computed again when asked), so ask again."""
    keys = [key for keys in rounds for key in keys]
    wanted = len(set(keys))
    for _ in range(tries):
        stored = 0
        for _ in range(10):
            time.sleep(0.5)
            before, stored = stored, _stored(reader, keys)
            if stored >= wanted or stored == before:
                break
        if stored >= wanted:
            break
        for parsed in rounds:
            _post(client, parsed)
    print(f"  answers stored: {stored} of {wanted}", file=sys.stderr)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL cluster from the installed binaries (run as ``postgres`` when root)."""
    found = (
        shutil.which("initdb")
        or (sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [None])[-1]
    )
    if found is None:
        raise SystemExit("PostgreSQL binaries (initdb, pg_ctl) not found; pass --postgres-url")
    bindir = Path(found).resolve().parent
    root = Path(tempfile.mkdtemp(prefix="forage-bench-pg-"))
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    port = free_port()
    data = root / "data"
    subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "forage",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        cwd=root,
        **run_as,
    )
    options = (
        f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off"
        " -c full_page_writes=off -c shared_buffers=256MB"
    )
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*pg_ctl, "-l", str(root / "log"), "-w", "-o", options, "start"],
        check=True,
        capture_output=True,
        cwd=root,
        **run_as,
    )
    try:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=port, user="forage", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE bench")
        yield f"postgresql+psycopg://forage@127.0.0.1:{port}/bench"
    finally:
        subprocess.run(
            [*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True, cwd=root, **run_as
        )
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=int, default=1_000_000)
    parser.add_argument(
        "--batches", default="1,100,1000,10000", help="batch sizes, comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per batch size")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database to use")
    parser.add_argument(
        "--sqlite-path", help="keep the SQLite index here, and reuse it if it already exists"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    report: dict[str, Any] = {
        "artifacts": args.artifacts,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "stores": {},
    }
    for store in args.stores.split(","):
        with contextlib.ExitStack() as stack:
            reuse = False
            if store == "sqlite":
                if args.sqlite_path:
                    path = Path(args.sqlite_path).resolve()
                    reuse = path.exists()
                else:
                    temporary = tempfile.TemporaryDirectory(prefix="forage-bench-")
                    path = Path(stack.enter_context(temporary)) / "forage.db"
                url = f"sqlite:///{path}"
            elif store == "postgresql":
                url = args.postgres_url or stack.enter_context(throwaway_postgres())
            else:
                raise SystemExit(f"unknown store {store!r}: sqlite or postgresql")
            if reuse:
                index, seconds = existing(url, args.artifacts), 0.0
                print(f"{store}: reusing {index} from {path}", file=sys.stderr)
            else:
                index, seconds = build(url, args.artifacts)
                print(f"{store}: built {index} in {seconds:.1f}s", file=sys.stderr)
            report["stores"][store] = {
                "index": {
                    "packages": index.packages,
                    "versions": index.versions,
                    "artifacts": index.artifacts,
                    "build_seconds": round(seconds, 1),
                },
                "batches": measure(url, index, batches=batches, rounds=args.rounds, seed=args.seed),
            }
    sqlite = report["stores"].get("sqlite", {}).get("batches", {}).get("1000")
    if sqlite:
        report["goals"] = {
            "sqlite_p50_1000_keys_ms": sqlite["http"]["p50_ms"],
            "sqlite_p50_at_most_30ms": sqlite["http"]["p50_ms"] <= 30,
            "http_at_most_2x_bare_query": {
                store: body["batches"]["1000"]["http_over_sql_p50"] <= 2
                for store, body in report["stores"].items()
                if "1000" in body["batches"]
            },
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
