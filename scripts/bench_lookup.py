"""Benchmark batch lookups: an index of ``--artifacts`` files, queried through the HTTP server.

For each store (SQLite in a temp dir; PostgreSQL from ``--postgres-url`` or a throwaway
cluster started from the installed server binaries), the script builds an index with
``bench_build.py`` (packages of npm, PyPI and Go, five versions each, every file with a
sha256 digest, 95% archived with a CID, half of those pinned, half in pieces held by two
active deals; loaded with COPY or large executemany chunks). It then starts ``forage``'s
HTTP server in a child process (so its CPU is not the client's) and, per batch size, times
``POST /api/v1/lookup`` with fresh random purls each round, and the same keys as one bare
SQL query in this process (``forage.lookup.query.full_query``: what the lookup reads, files,
digests, archives, pins, pieces and deals, as one statement of joins, rows fetched). Prints JSON:
p50/p99 milliseconds and keys per second for both, and their ratio. Then, per store, lookups per
second of ``--batch-keys`` keys under ``--clients`` concurrent clients for each count of
``--processes`` (``forage serve --processes N`` run as a command: :mod:`lookup_load`).

    python scripts/bench_lookup.py                              # 1,000,000 artifacts, both stores
    python scripts/bench_lookup.py --artifacts 20000 --rounds 10 --stores sqlite   # a quick look
    python scripts/bench_lookup.py --artifacts 100000 --stores sqlite --processes 1,2 --clients 8
"""

from __future__ import annotations

import argparse
import contextlib
import glob
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
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_build import VERSIONS, Index, build, existing, key_of  # noqa: E402
from forage.db.engine import make_engine, make_sessionmaker  # noqa: E402
from forage.db.models import Package, Version, VersionAnswer  # noqa: E402
from forage.db.statistics import refresh  # noqa: E402
from forage.lookup.keys import Key  # noqa: E402
from forage.lookup.query import full_query, keys_table  # noqa: E402
from forage.lookup.sessions import read_only_sessionmaker  # noqa: E402
from lookup_load import throughput  # noqa: E402

#: Distinct batches the throughput clients draw from (their answers stored beforehand).
POOL = 16


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


def load(url: str, index: Index, args: argparse.Namespace) -> dict[str, Any]:
    """Lookups per second for each ``--processes`` count under ``--clients`` clients."""
    rng = random.Random(args.seed + 1)
    size = args.batch_keys
    pool = [
        [key_of(rng.randrange(index.packages), rng.randrange(VERSIONS)) for _ in range(size)]
        for _ in range(POOL)
    ]
    bodies = [json.dumps({"keys": [key.purl() for key in keys]}).encode() for keys in pool]
    writer = make_engine(url)
    reader, engine = read_only_sessionmaker(make_sessionmaker(writer))

    def prime(base: str) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            _prime(client, reader, pool)
        # As the scheduler's optimize task would after answers were stored in bulk.
        with writer.begin() as connection:
            refresh(connection)

    try:
        per_count = throughput(
            url,
            bodies,
            keys=size,
            processes=[int(n) for n in args.processes.split(",")],
            clients=args.clients,
            seconds=args.seconds,
            seed=args.seed,
            prime=prime,
        )
    finally:
        if engine is not None:
            engine.dispose()
        writer.dispose()
    rates = [result["lookups_per_s"] for result in per_count.values()]
    return {
        "batch_keys": size,
        "clients": args.clients,
        "processes": per_count,
        "last_over_first": round(rates[-1] / rates[0], 2),
    }


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
    parser.add_argument(
        "--processes",
        default="1,2",
        help="server process counts to measure throughput with, comma-separated ('' for none)",
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent throughput clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput window")
    parser.add_argument("--batch-keys", type=int, default=1000, help="keys per throughput lookup")
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
            if args.processes:
                report["stores"][store]["throughput"] = load(url, index, args)
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
