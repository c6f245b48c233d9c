"""``forage watch``, ``reconcile``, ``import`` and ``status``: follow registries' feeds.

``watch ECOSYSTEM`` follows a feed and queues an import job per changed package (``forage
worker`` runs them); ``--once`` stops when caught up, otherwise it polls every
``registries.<name>.interval`` seconds (default: the registry's own); ``--from POSITION``
first moves the watcher to that point of the registry's history (a bootstrap,
:mod:`forage.index.bootstrap`). ``reconcile ECOSYSTEM [--dry-run]`` sweeps the registry's
listing for what the feed missed (:mod:`forage.index.reconcile`). ``import ECOSYSTEM
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
    """Add ``watch``, ``reconcile``, ``import`` and ``status``."""
    watch = subparsers.add_parser(
        "watch",
        help="follow a registry's change feed",
        description="Follow a registry's change feed, queueing an import job per changed "
        "package; run 'forage worker' to import them.",
    )
    watch.add_argument("ecosystem", help="npm, pypi or golang")
    watch.add_argument("--once", action="store_true", help="stop once caught up with the feed")
    watch.add_argument(
        "--from",
        dest="position",
        metavar="POSITION",
        help="bootstrap: walk the feed from 'origin' (its beginning), a serial or an RFC 3339 "
        "time; asking again for the same position resumes the walk",
    )
    watch.set_defaults(handler=run_watch)

    sweep = subparsers.add_parser(
        "reconcile",
        help="find what a registry's feed missed",
        description="Compare the registry's own listing of what it holds with the index and "
        "queue an import for every package missing or changed; resumes an interrupted sweep.",
    )
    sweep.add_argument("ecosystem", help="npm, pypi or golang")
    sweep.add_argument(
        "--dry-run", action="store_true", help="count from the start; queue and record nothing"
    )
    sweep.set_defaults(handler=run_reconcile)

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

    status = subparsers.add_parser("status", help="feeds, lag and counts per registry")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=run_status)


def run_watch(args: argparse.Namespace) -> int:
    from forage.index.registries import check_ecosystem
    from indexers import ECOSYSTEMS

    config = load_cli_config(args)
    ecosystem = check_ecosystem(args.ecosystem)
    registry = config.registry(ecosystem)
    interval = registry.interval or ECOSYSTEMS[ecosystem].default_interval.total_seconds()
    watch = _watch(config, ecosystem, once=args.once, interval=interval, position=args.position)
    return asyncio.run(watch)


async def _watch(
    config: Any, ecosystem: str, *, once: bool, interval: float, position: str | None
) -> int:
    from forage.db.engine import make_sessionmaker, open_database
    from forage.index import bootstrap
    from forage.index.ingest import watch_feed
    from forage.jobs.worker import job_context
    from indexers import InvalidPosition

    def progress(stats: Any) -> None:
        print(
            f"forage: {ecosystem}: page {stats.pages}, {stats.changes} changes queued, "
            f"cursor {json.dumps(stats.cursor)}",
            file=sys.stderr,
        )

    engine = open_database(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            if position is not None:
                try:
                    walk = await bootstrap.start(ctx, ecosystem, position)
                except InvalidPosition as exc:
                    print(f"forage: --from: {exc}", file=sys.stderr)
                    return EXIT_USAGE
                verb = "resuming" if walk.resumed else "starting"
                print(
                    f"forage: {ecosystem}: {verb} a bootstrap from {walk.position}; "
                    f"cursor {json.dumps(walk.cursor)}",
                    file=sys.stderr,
                )
            while True:
                stats = await watch_feed(ctx, ecosystem, on_page=progress)
                if await ctx.transaction(bootstrap.finish, ecosystem):
                    print(f"forage: {ecosystem}: bootstrap complete", file=sys.stderr)
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


def run_reconcile(args: argparse.Namespace) -> int:
    from forage.index.registries import check_ecosystem

    config = load_cli_config(args)
    return asyncio.run(_reconcile(config, check_ecosystem(args.ecosystem), dry_run=args.dry_run))


async def _reconcile(config: Any, ecosystem: str, *, dry_run: bool) -> int:
    from forage.db.engine import make_sessionmaker, open_database
    from forage.index.reconcile import reconcile
    from forage.jobs.worker import job_context

    def counts(stats: Any) -> str:
        return f"{stats.checked} checked, {stats.missing} missing, {stats.changed} changed"

    def progress(stats: Any) -> None:
        print(f"forage: {ecosystem}: page {stats.pages}: {counts(stats)}", file=sys.stderr)

    engine = open_database(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            stats = await reconcile(ctx, ecosystem, dry_run=dry_run, on_page=progress)
    finally:
        engine.dispose()
    queued = "dry run: nothing queued" if dry_run else f"{stats.queued} imports queued"
    print(f"forage: {ecosystem}: reconciled: {counts(stats)}; {queued}", file=sys.stderr)
    print(json.dumps({"ecosystem": ecosystem, "dry_run": dry_run, **stats.as_dict()}))
    return 0


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
            status = registry_status(session)
    finally:
        engine.dispose()
    configured = config.configured_registries()
    report = {
        name: {"configured": name in configured, **row.to_dict()} for name, row in status.items()
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for name, row in report.items():
        print("\n".join(_status_lines(name, row)))
    return 0


def _status_lines(name: str, row: dict[str, Any]) -> list[str]:
    """One registry's block of ``forage status``: the feed, then one line per count."""

    def figures(counts: dict[str, int]) -> str:
        return ", ".join(f"{n} {state}" for state, n in counts.items())

    if row["cursor"] is None:
        feed = "not watched yet"
    else:
        lag = "unknown" if row["lag_seconds"] is None else f"{row['lag_seconds']:.0f} s"
        where = "at head" if row["at_head"] else f"last at head: {row['caught_up_at'] or 'never'}"
        head = "unknown" if row["head"] is None else row["head"]
        feed = f"head {head}, cursor {row['position']}, lag {lag} ({where})"
    return [
        f"{name}{'' if row['configured'] else ' (not configured)'}",
        f"  feed      {feed}",
        f"  packages  {figures(row['packages'])}",
        f"  versions  {figures(row['versions'])}",
        f"  files     {figures(row['files'])}",
        f"  imports   {figures(row['imports'])}",
    ]
