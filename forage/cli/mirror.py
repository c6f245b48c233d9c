"""``forage prime``, ``forage export`` and ``forage import-car``: the mirror offline.

``prime --lockfile FILE`` imports every package a lockfile or SBOM names (npm
``package-lock.json``, pinned ``requirements.txt``, ``go.sum``, CycloneDX JSON) and archives
the named releases now. ``export --lockfile FILE -o deps.car`` writes their archives and the
index rows the mirror needs as one CAR; ``import-car deps.car`` loads it into another Forage
with no network, whose mirror then serves those releases. See :mod:`forage.mirror.offline`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from forage.cli import EXIT_FAILURE, load_cli_config
from forage.cli.progress import (
    add_progress_option,
    bar,
    counting_reader,
    counting_writer,
    human_size,
)


def register(subparsers: Any) -> None:
    """Add ``prime``, ``export`` and ``import-car``."""
    prime = subparsers.add_parser(
        "prime",
        help="archive every release a lockfile names",
        description="Import the packages a lockfile or SBOM names and archive those releases "
        "now, so the mirror can serve them when their registry is down.",
    )
    prime.add_argument("--lockfile", required=True, type=Path, metavar="FILE")
    prime.add_argument("--concurrency", type=int, default=4, metavar="N")
    prime.set_defaults(handler=run_prime)

    export = subparsers.add_parser(
        "export",
        help="write a lockfile's archived releases as one CAR",
        description="Write the archives of the releases a lockfile names, with the index rows "
        "the mirror needs, as one CAR for 'forage import-car' on another Forage.",
    )
    export.add_argument("--lockfile", required=True, type=Path, metavar="FILE")
    export.add_argument("-o", "--output", required=True, type=Path, metavar="CAR")
    add_progress_option(export)
    export.set_defaults(handler=run_export)

    load = subparsers.add_parser(
        "import-car",
        help="load a CAR written by 'forage export'",
        description="Load a bundle CAR: blocks checked against their CIDs, archives re-verified "
        "against their upstream digests, rows recorded. Needs no network.",
    )
    load.add_argument("car", type=Path, metavar="CAR")
    add_progress_option(load)
    load.set_defaults(handler=run_import_car)


def _keys(path: Path) -> Any:
    from forage.mirror.offline import lockfile_keys
    from indexers import LockfileError, read_lockfile

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LockfileError(f"cannot read {path}: {exc.strerror}") from exc
    found = lockfile_keys(read_lockfile(data, filename=path.name))
    for source, problem in found.problems:
        print(f"forage: skipping {source}: {problem}", file=sys.stderr)
    return found.keys


def run_prime(args: argparse.Namespace) -> int:
    import asyncio

    config = load_cli_config(args)
    keys = _keys(args.lockfile)
    return asyncio.run(_prime(config, keys, args.concurrency))


async def _prime(config: Any, keys: Any, concurrency: int) -> int:
    import asyncio

    from forage.db.engine import make_sessionmaker, open_database
    from forage.jobs.worker import job_context
    from forage.mirror.offline import prime

    engine = await asyncio.to_thread(open_database, config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            report = await prime(ctx, keys, concurrency=concurrency)
    finally:
        engine.dispose()
    for purl, reason in report.failed:
        print(f"forage: {purl}: {reason}", file=sys.stderr)
    print(
        f"primed {len(keys)} releases: {report.archived} archived, {report.already} already "
        f"archived, {len(report.failed)} failed"
    )
    return EXIT_FAILURE if report.failed else 0


def run_export(args: argparse.Namespace) -> int:
    from forage.archive.blocks import open_blockstore
    from forage.db.engine import make_sessionmaker, open_database
    from forage.mirror.offline import bundle_manifest, export_bundle

    config = load_cli_config(args)
    keys = _keys(args.lockfile)
    engine = open_database(config.database, must_exist=True)
    try:
        with make_sessionmaker(engine)() as session:
            manifest, missing = bundle_manifest(session, keys)
    finally:
        engine.dispose()
    for purl in missing:
        print(f"forage: {purl}: not archived; run 'forage prime' first", file=sys.stderr)
    partial = args.output.with_name(args.output.name + ".partial")
    total = sum(
        artifact["archive"]["size"] or 0
        for package in manifest["packages"]
        for version in package["versions"]
        for artifact in version["artifacts"]
    )
    with (
        partial.open("wb") as out,
        bar(args, total=total or None, desc="exporting", unit="B", in_bytes=True) as progress,
    ):
        report = export_bundle(manifest, open_blockstore(config), counting_writer(out, progress))
    partial.replace(args.output)
    print(
        f"wrote {args.output}: {report.archives} archives, {human_size(report.size)}, "
        f"root {report.root}"
    )
    return EXIT_FAILURE if missing else 0


def run_import_car(args: argparse.Namespace) -> int:
    from forage.archive.blocks import open_blockstore
    from forage.db.engine import make_sessionmaker, open_database
    from forage.mirror.offline import import_bundle

    config = load_cli_config(args)
    engine = open_database(config.database)
    try:
        with (
            args.car.open("rb") as stream,
            bar(
                args, total=args.car.stat().st_size, desc="importing", unit="B", in_bytes=True
            ) as progress,
        ):
            report = import_bundle(
                counting_reader(stream, progress),
                blockstore=open_blockstore(config),
                sessions=make_sessionmaker(engine),
            )
    except OSError as exc:
        print(f"forage: cannot read {args.car}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        engine.dispose()
    print(
        f"imported {args.car}: {report.packages} packages, {report.archives} archives "
        f"({report.already} already held), {report.blocks} blocks"
    )
    return 0
