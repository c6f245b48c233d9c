"""``forage watch``, ``forage import`` and ``forage status``: follow registries' feeds.

``watch ECOSYSTEM`` follows a feed and queues an import job per changed package (``forage
worker`` runs them); ``--once`` stops when caught up, otherwise it polls every
``registries.<name>.interval`` seconds (default: the registry's own). ``import ECOSYSTEM
NAME`` records one package now (a backfill); ``status`` shows each registry's cursor, lag,
what is known and what waits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from forage.cli import EXIT_FAILURE, EXIT_USAGE, load_cli_config


def register(subparsers: Any) -> None:
    """Add ``watch``, ``import`` and ``status``."""
    watch = subparsers.add_parser(
        "watch",
        help="follow a registry's change feed",
        description="Follow a registry's change feed, queueing an import job per changed "
        "package; run 'forage worker' to import them.",
    )
    watch.add_argument("ecosystem", help="npm, pypi or golang")
    watch.add_argument("--once", action="store_true", help="stop once caught up with the feed")
    watch.set_defaults(handler=run_watch)

    backfill = subparsers.add_parser(
        "import",
        help="import one package now",
        description="Fetch one package from its registry and record every version and file.",
    )
    backfill.add_argument("ecosystem", help="npm, pypi or golang")
    backfill.add_argument("name", help="package name or Go module path")
    backfill.add_argument(
        "--versions", type=int, metavar="N", help="only the N most recently published versions"
    )
    backfill.add_argument(
        "--no-archive", action="store_true", help="record rows but queue no archive jobs"
    )
    backfill.set_defaults(handler=run_import)

    status = subparsers.add_parser("status", help="feeds, lag and queues per registry")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=run_status)


def run_watch(args: argparse.Namespace) -> int:
    from forage.index.registries import check_ecosystem
    from indexers import ECOSYSTEMS

    config = load_cli_config(args)
    ecosystem = check_ecosystem(args.ecosystem)
    registry = config.registry(ecosystem)
    interval = registry.interval or ECOSYSTEMS[ecosystem].default_interval.total_seconds()
    return asyncio.run(_watch(config, ecosystem, once=args.once, interval=interval))


async def _watch(config: Any, ecosystem: str, *, once: bool, interval: float) -> int:
    from forage.db.engine import make_sessionmaker, open_database
    from forage.index.ingest import watch_feed
    from forage.jobs.worker import job_context

    def progress(stats: Any) -> None:
        print(
            f"forage: {ecosystem}: page {stats.pages}, {stats.changes} changes queued, "
            f"cursor {json.dumps(stats.cursor)}",
            file=sys.stderr,
        )

    engine = open_database(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            while True:
                stats = await watch_feed(ctx, ecosystem, on_page=progress)
                print(
                    f"forage: {ecosystem}: caught up; {stats.changes} changes queued "
                    f"({stats.rescanned} re-scanned)",
                    file=sys.stderr,
                )
                if once:
                    return 0
                await asyncio.sleep(interval)
    finally:
        engine.dispose()


def run_import(args: argparse.Namespace) -> int:
    from forage.index.registries import check_ecosystem

    if args.versions is not None and args.versions < 1:
        print("forage: --versions must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    config = load_cli_config(args)
    return asyncio.run(_import(config, check_ecosystem(args.ecosystem), args))


async def _import(config: Any, ecosystem: str, args: argparse.Namespace) -> int:
    from forage.db.engine import make_sessionmaker, open_database
    from forage.index.ingest import import_package
    from forage.jobs.worker import job_context

    engine = open_database(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            stats = await import_package(
                ctx, ecosystem, args.name, newest=args.versions, archive=not args.no_archive
            )
    finally:
        engine.dispose()
    if stats is None:
        print(f"forage: {ecosystem}/{args.name} does not exist upstream", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"forage: {ecosystem}/{args.name}: {stats.new_versions} new versions, "
        f"{stats.new_artifacts} new artifacts, {stats.updated_versions} updated",
        file=sys.stderr,
    )
    return 0


def run_status(args: argparse.Namespace) -> int:
    from forage.db.engine import make_sessionmaker, open_database
    from forage.index.status import registry_status

    config = load_cli_config(args)
    engine = open_database(config.database)
    try:
        with make_sessionmaker(engine)() as session:
            report = registry_status(session, config)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    header = ("registry", "cursor", "lag", "packages", "versions", "pending", "dead")
    table = [header] + [
        (
            name,
            json.dumps(row["cursor"]) if row["cursor"] is not None else "-",
            "-" if row["lag"] is None else f"{row['lag']:.0f}",
            str(row["packages"]),
            str(row["versions"]),
            str(row["imports_pending"]),
            str(row["imports_dead"]),
        )
        for name, row in report.items()
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    return 0
