"""Benchmark the mirror with its upstream down: archived tarballs, huge packuments, big pages.

Builds a throwaway Forage (SQLite, filesystem blockstore) holding:

- ``--tarballs`` npm packages of one ``--tarball-size`` tarball each;
- one npm package with ``--versions`` archived versions (real npm tarballs, so the fallback
  packument reads each version's ``package.json`` from the archive);
- one PyPI project with ``--files`` archived files;

points the npm and PyPI registries at a closed port (connection refused: the upstream is
down), serves only the mirror routes, and drives it from a separate process with
``--clients`` concurrent connections. Every served file is re-verified against its upstream
digests, as in production. Prints JSON: requests/s and MB/s for tarballs, p50/p99 latency of
the packument and the simple page (JSON form, as pip asks) after one cold request each, and
the server's peak RSS.

Run: ``python3 scripts/bench_mirror.py`` (about a minute on 2 cores), or smaller with
``--versions 1000 --files 200 --tarballs 50`` while developing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import resource
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(root: Path) -> Path:
    down = f"http://127.0.0.1:{closed_port()}"
    path = root / "forage.toml"
    path.write_text(
        f'[data]\ndir = "{root / "data"}"\n'
        "[mirror]\ndown_seconds = 600\n"
        f'[registries.npm]\nregistry_url = "{down}/npm"\nreplicate_url = "{down}/replicate"\n'
        "allow_http = true\n"
        f'[registries.pypi]\nindex_url = "{down}/simple"\njson_url = "{down}/pypi"\n'
        f'xmlrpc_url = "{down}/pypi"\nallow_http = true\n'
    )
    return path


def populate(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Write the index rows and archive the bytes; return what the load generator asks for."""
    from forage.archive.blocks import blockstore_path
    from forage.db.engine import make_sessionmaker, open_database
    from forage.db.models import Archive, ArchiveStatus, Artifact, Package, Version
    from forage.index.ingest import record_package
    from indexers import Artifact as ArtifactInfo
    from indexers import PackageInfo, Release, parse_sri
    from indexers.npm.fake import make_tarball, sri_sha512
    from storage import FilesystemBlockstore, import_file

    # Setup only: no fsync per block (the server reads the store as production does).
    store = FilesystemBlockstore(blockstore_path(config), durable=False)
    engine = open_database(config.database)
    sessions = make_sessionmaker(engine)
    archives: dict[tuple[str, str, str], tuple[str, int]] = {}
    epoch = datetime(2024, 1, 1, tzinfo=UTC)
    rng = random.Random(7)

    def stored(data: bytes) -> tuple[str, int]:
        with store.batch() as batch:
            result = import_file(data, sink=batch)
        return str(result.cid), result.size

    def npm_info(name: str, releases: list[tuple[str, bytes]]) -> PackageInfo:
        out = []
        for index, (version, data) in enumerate(releases):
            digests = parse_sri(sri_sha512(data))
            digests["sha1"] = hashlib.sha1(data).hexdigest()  # noqa: S324 - npm's shasum
            filename = f"{name}-{version}.tgz"
            archives[("npm", name, filename)] = stored(data)
            out.append(
                Release(
                    version=version,
                    artifacts=(
                        ArtifactInfo(
                            filename, f"https://npm.invalid/{name}/-/{filename}", None, digests
                        ),
                    ),
                    published_at=epoch + timedelta(minutes=index),
                )
            )
        return PackageInfo(
            "npm", name, name, tuple(out), extra={"dist_tags": {"latest": releases[-1][0]}}
        )

    infos = []
    blobs = []
    for index in range(args.tarballs):
        name = f"blob-{index}"
        data = rng.randbytes(args.tarball_size)
        infos.append(npm_info(name, [("1.0.0", data)]))
        blobs.append(f"/npm/{name}/-/{name}-1.0.0.tgz")
    big = [
        (f"1.{i // 1000}.{i % 1000}", make_tarball("big", f"1.{i // 1000}.{i % 1000}"))
        for i in range(args.versions)
    ]
    infos.append(npm_info("big", big))
    files = []
    for index in range(args.files):
        version = f"{index // 4}.0"
        filename = f"sample_project-{version}-py3-none-any-{index % 4}.whl"
        data = f"wheel {index}\n".encode() * 64
        archives[("pypi", "sample-project", filename)] = stored(data)
        files.append(
            Release(
                version=version,
                artifacts=(
                    ArtifactInfo(
                        filename,
                        f"https://files.invalid/{filename}",
                        len(data),
                        {"sha256": hashlib.sha256(data).hexdigest()},
                        requires_python=">=3.8",
                        uploaded_at=epoch,
                    ),
                ),
            )
        )
    merged: dict[str, list[ArtifactInfo]] = {}
    for release in files:
        merged.setdefault(release.version, []).extend(release.artifacts)
    infos.append(
        PackageInfo(
            "pypi",
            "sample-project",
            "sample-project",
            tuple(Release(version=v, artifacts=tuple(a)) for v, a in merged.items()),
        )
    )
    with sessions.begin() as session:
        for info in infos:
            record_package(session, info, archive=False)
        rows = session.execute(
            sa.select(Artifact.id, Package.ecosystem, Package.name, Artifact.filename)
            .join(Version, Artifact.version_id == Version.id)
            .join(Package, Version.package_id == Package.id)
        ).all()
        now = datetime.now(UTC)
        session.execute(
            sa.insert(Archive),
            [
                {
                    "artifact_id": row.id,
                    "cid": archives[(row.ecosystem, row.name, row.filename)][0],
                    "size": archives[(row.ecosystem, row.name, row.filename)][1],
                    "status": ArchiveStatus.ARCHIVED,
                    "archived_at": now,
                }
                for row in rows
            ],
        )
    engine.dispose()
    return {"blobs": blobs}


async def load(
    base: str, paths: list[str], *, clients: int, total: int, headers: dict[str, str]
) -> dict[str, Any]:
    """Fetch ``total`` requests over ``paths`` with ``clients`` concurrent connections."""
    import httpx

    latencies: list[float] = []
    received = 0
    queue = [paths[i % len(paths)] for i in range(total)]
    random.Random(1).shuffle(queue)

    async with httpx.AsyncClient(
        base_url=base, timeout=120, limits=httpx.Limits(max_connections=clients)
    ) as client:

        async def worker() -> None:
            nonlocal received
            while queue:
                path = queue.pop()
                started = time.perf_counter()
                response = await client.get(path, headers=headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200 or "archive" not in response.headers.get(
                    "Forage-Source", ""
                ):
                    raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
                received += len(response.content)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": total,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(total / elapsed, 1),
        "mb_per_second": round(received / elapsed / 1e6, 2),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "bytes_per_response": received // total,
    }


def client_process(base: str, plan: dict[str, Any], args: argparse.Namespace, out: Any) -> None:
    async def run() -> dict[str, Any]:
        import httpx

        results: dict[str, Any] = {}
        results["tarballs"] = await load(
            base, plan["blobs"], clients=args.clients, total=args.tarball_requests, headers={}
        )
        async with httpx.AsyncClient(base_url=base, timeout=300) as client:
            started = time.perf_counter()
            await client.get("/npm/big", headers={"accept": "application/json"})
            results["packument_cold_ms"] = round((time.perf_counter() - started) * 1000, 1)
            started = time.perf_counter()
            await client.get("/pypi/simple/sample-project/", headers={"accept": PIP_ACCEPT})
            results["simple_page_cold_ms"] = round((time.perf_counter() - started) * 1000, 1)
        results["packument"] = await load(
            base,
            ["/npm/big"],
            clients=args.clients,
            total=args.page_requests,
            headers={"accept": "application/json"},
        )
        results["simple_page"] = await load(
            base,
            ["/pypi/simple/sample-project/"],
            clients=args.clients,
            total=args.page_requests,
            headers={"accept": PIP_ACCEPT},
        )
        return results

    out.put(asyncio.run(run()))


async def serve_and_measure(
    config: Any, plan: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    from aiohttp import web

    import forage.mirror
    from forage.archive.blocks import open_blockstore
    from forage.db.engine import make_engine, make_sessionmaker
    from forage.server.app import error_middleware
    from forage.server.state import BLOCKSTORE, CONFIG, SESSIONMAKER
    from indexers.fakeserver import start_fake

    engine = make_engine(config.database)
    app = web.Application(middlewares=[error_middleware])
    app[CONFIG] = config
    app[SESSIONMAKER] = make_sessionmaker(engine)
    app[BLOCKSTORE] = open_blockstore(config)
    forage.mirror.setup(app)
    running = await start_fake(app)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue: Any = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(
        target=client_process, args=(running.url, plan, args, queue)
    )
    process.start()
    try:
        results = await asyncio.to_thread(queue.get, True, 3600)
    finally:
        await asyncio.to_thread(process.join, 60)
        await running.close()
        engine.dispose()
    results["server_peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    results["server_rss_before_load_mb"] = round(rss_before / 1024, 1)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarballs", type=int, default=200)
    parser.add_argument("--tarball-size", type=int, default=512 * 1024)
    parser.add_argument("--tarball-requests", type=int, default=2000)
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=2_000)
    parser.add_argument("--page-requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()

    from forage.config import load_config

    with tempfile.TemporaryDirectory(prefix="forage-bench-mirror-") as tmp:
        root = Path(tmp)
        config = load_config(write_config(root), environ={})
        started = time.perf_counter()
        plan = populate(config, args)
        setup_seconds = round(time.perf_counter() - started, 1)
        results = asyncio.run(serve_and_measure(config, plan, args))
    report = {
        "benchmark": "mirror, upstream down (connection refused)",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "setup_seconds": setup_seconds,
        "parameters": vars(args),
        **results,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
