"""Benchmark the index pipeline: feed -> import jobs -> package/version/artifact rows.

A fake npm registry (in a child process, so its CPU is not ours) serves a replicate feed of
``--packages`` changes whose packuments carry ``--versions`` versions each, every request
delayed by ``--latency`` seconds. Forage watches the feed to its head, then a worker imports
every package. ``--ecosystem NAME`` measures another registered ecosystem instead, through its
own fake (``publish_release`` of versions ``1.<i>.0``, in the ecosystem's version spelling)
and a bootstrap of its feed from ``origin``. Prints JSON: versions recorded per second (watch
+ import, wall clock), the count recorded, the CPU seconds this process spent on it (all
threads; the registry's CPU is not counted) with versions per CPU second, and peak RSS of
this process, for each database URL given. On a shared machine the wall-clock rate follows
the load; versions per CPU second much less so, which makes it the figure to compare between runs.
``--base-artifacts N`` first builds ``bench_build.py``'s index of N artifacts in each database
(a PostgreSQL one must then be empty), so that indexing is measured into a big index.

    python scripts/bench_index.py                                  # SQLite in a temp dir
    python scripts/bench_index.py --database-url postgresql+psycopg://user@127.0.0.1:5432/db
    python scripts/bench_index.py --base-artifacts 10000000      # into a 10M-artifact index

A PostgreSQL database must be at the code's revision first (``forage db upgrade``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import multiprocessing
import resource
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_build import build  # noqa: E402
from forage.config import load_config  # noqa: E402
from forage.db.engine import make_sessionmaker, open_database  # noqa: E402
from forage.db.models import Version  # noqa: E402
from forage.index.bootstrap import start as start_bootstrap  # noqa: E402
from forage.index.ingest import IMPORT, create_cursor, import_job, watch_feed  # noqa: E402
from forage.jobs.queue import RetryPolicy  # noqa: E402
from forage.jobs.worker import Worker, job_context  # noqa: E402
from indexers import ECOSYSTEMS  # noqa: E402
from indexers.npm.fake import UPSTREAM, FakeNpmRegistry  # noqa: E402


def packument(name: str, versions: int) -> dict[str, Any]:
    """A full packument shaped like the registry's, with ``versions`` versions."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    docs: dict[str, Any] = {}
    times: dict[str, str] = {"created": start.isoformat(), "modified": start.isoformat()}
    for i in range(versions):
        version = f"1.{i}.0"
        seed = f"{name}@{version}".encode()
        docs[version] = {
            "name": name,
            "version": version,
            "license": "MIT",
            "dist": {
                "integrity": "sha512-" + base64.b64encode(hashlib.sha512(seed).digest()).decode(),
                "shasum": hashlib.sha1(seed).hexdigest(),  # noqa: S324 - npm's legacy digest
                "tarball": f"{UPSTREAM}/{name}/-/{name}-{version}.tgz",
            },
        }
        times[version] = (start + timedelta(days=i)).isoformat()
    return {
        "_id": name,
        "_rev": "1-" + hashlib.md5(name.encode()).hexdigest(),  # noqa: S324 - CouchDB rev
        "name": name,
        "dist-tags": {"latest": f"1.{versions - 1}.0"},
        "versions": docs,
        "time": times,
    }


def bench_version(ecosystem: str, i: int) -> str:
    """The i-th version, spelled like the ecosystem's sample versions (Go's ``v`` prefix)."""
    prefix = "v" if ECOSYSTEMS[ecosystem].fake().SAMPLE_VERSIONS[0].startswith("v") else ""
    return f"{prefix}1.{i}.0"


def build_app(ecosystem: str, packages: int, versions: int) -> web.Application:
    """The registry's app holding every benchmark package (npm's built packuments directly)."""
    if ecosystem == "npm":
        registry = FakeNpmRegistry()
        for i in range(packages):
            name = f"bench-pkg-{i}"
            doc = packument(name, versions)
            registry.docs[name] = doc
            registry.feed_entry(name, rev=doc["_rev"])
        return registry.make_app()
    fake = ECOSYSTEMS[ecosystem].fake()
    if hasattr(fake, "batch"):
        fake.batch = 1000  # feeds of numbered chunks: a realistic number of publications each
    base = fake.NAME_EXAMPLES[0][1]
    for i in range(packages):
        for v in range(versions):
            fake.publish_release(f"{base}-{i}", bench_version(ecosystem, v))
    return fake.make_app()


def serve_registry(
    ecosystem: str, port: int, packages: int, versions: int, latency: float, ready: Any
) -> None:
    """Child process: build the registry, add latency, serve until killed."""
    app = build_app(ecosystem, packages, versions)

    @web.middleware
    async def delay(request: web.Request, handler: Any) -> web.StreamResponse:
        await asyncio.sleep(latency)
        return await handler(request)

    app.middlewares.insert(0, delay)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run(
    ecosystem: str,
    url: str,
    database_url: str,
    *,
    concurrency: int,
    data_dir: Path,
    base_versions: int = 0,
) -> dict[str, Any]:
    config_file = data_dir / "forage.toml"
    endpoints = ECOSYSTEMS[ecosystem].fake().config_endpoints(url)
    table = "".join(f'{key} = "{value}"\n' for key, value in endpoints.items())
    config_file.write_text(
        f'[data]\ndir = "{data_dir}"\n[database]\nurl = "{database_url}"\n'
        f"[registries.{ecosystem}]\n{table}"
        f"allow_http = true\nmax_connections = {concurrency}\n"
    )
    config = load_config(config_file, environ={})
    engine = open_database(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            # Start the feed at its beginning rather than its head, so it replays everything.
            start = time.perf_counter()
            cpu_start = time.process_time()
            if ecosystem == "npm":
                await ctx.transaction(create_cursor, "npm", {"seq": 0})
            else:
                await start_bootstrap(ctx, ecosystem, "origin")
            watch = await watch_feed(ctx, ecosystem)
            watched = time.perf_counter()
            worker = Worker(
                ctx,
                {IMPORT: import_job},
                concurrency=concurrency,
                policy=RetryPolicy(max_attempts=3, backoff_base=0.1, backoff_cap=1),
                poll_interval=0.05,
            )
            stats = await worker.run(mode="drain")
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            with ctx.sessionmaker() as session:
                recorded = session.execute(sa.select(sa.func.count()).select_from(Version))
                versions = int(recorded.scalar_one()) - base_versions
    finally:
        engine.dispose()
    return {
        "ecosystem": ecosystem,
        "database": database_url.split(":", 1)[0],
        "changes": watch.changes,
        "imports_done": stats.done,
        "imports_dead": stats.dead,
        "versions_recorded": versions,
        "watch_seconds": round(watched - start, 2),
        "total_seconds": round(elapsed, 2),
        "versions_per_second": round(versions / elapsed, 1),
        "cpu_seconds": round(cpu, 2),
        "versions_per_cpu_second": round(versions / cpu, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ecosystem", default="npm", choices=sorted(ECOSYSTEMS))
    parser.add_argument("--packages", type=int, default=20_000)
    parser.add_argument("--versions", type=int, default=5, help="versions per package")
    parser.add_argument("--latency", type=float, default=0.020, help="seconds per request")
    parser.add_argument("--concurrency", type=int, default=64, help="imports at once")
    parser.add_argument(
        "--database-url", action="append", help="SQLAlchemy URL (repeatable; default SQLite)"
    )
    parser.add_argument(
        "--base-artifacts", type=int, default=0, help="build an index of N artifacts first"
    )
    args = parser.parse_args()
    port = free_port()
    ready = multiprocessing.Event()
    child = multiprocessing.Process(
        target=serve_registry,
        args=(args.ecosystem, port, args.packages, args.versions, args.latency, ready),
        daemon=True,
    )
    child.start()
    ready.wait(600)
    time.sleep(0.5)
    results = []
    try:
        for database_url in args.database_url or [None]:
            with tempfile.TemporaryDirectory(prefix="forage-bench-") as tmp:
                url = database_url or f"sqlite:///{tmp}/forage.db"
                base: dict[str, Any] = {}
                if args.base_artifacts:
                    index, seconds = build(url, args.base_artifacts)
                    base = {"versions": index.versions, "build_seconds": round(seconds, 1)}
                result = asyncio.run(
                    run(
                        args.ecosystem,
                        f"http://127.0.0.1:{port}",
                        url,
                        concurrency=args.concurrency,
                        data_dir=Path(tmp),
                        base_versions=base.get("versions", 0),
                    )
                )
                results.append({**result, "base_index": base} if base else result)
    finally:
        child.terminate()
        child.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "benchmark": "index",
                "packages": args.packages,
                "versions_per_package": args.versions,
                "latency_ms": args.latency * 1000,
                "concurrency": args.concurrency,
                "base_artifacts": args.base_artifacts,
                "results": results,
                "peak_rss_mib": round(peak, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
