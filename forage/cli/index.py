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
    import asyncio

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
    import asyncio

    from forage.db.engine import make_sessionmaker, open_database
    from forage.index import bootstrap
    from forage.index.ingest import watch_feed
    from forage.jobs.worker import job_context
    from indexers import ECOSYSTEMS, InvalidPosition

    def where(cursor: Any) -> str:
        position = ECOSYSTEMS[ecosystem].indexer.cursor_position(cursor)
        return describe_position(ecosystem, position)

    def progress(stats: Any) -> None:
        print(
            f"forage: {ecosystem}: page {stats.pages}, {stats.changes} changes queued, "
            f"cursor at {where(stats.cursor)}",
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
                    f"cursor at {where(walk.cursor)}",
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
    import asyncio

    from forage.index.registries import check_ecosystem

    config = load_cli_config(args)
    return asyncio.run(_reconcile(config, check_ecosystem(args.ecosystem), dry_run=args.dry_run))


async def _reconcile(config: Any, ecosystem: str, *, dry_run: bool) -> int:
    import json

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
    import asyncio

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
    import json

    from forage.db.engine import make_sessionmaker, open_database
    from forage.index.status import registry_status

    config = load_cli_config(args)
    engine = open_database(config.database, must_exist=True)
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
    if all(row["cursor"] is None and not row["packages"].get("known") for row in report.values()):
        print(
            "forage: the index is empty; configure a registry ([registries.NAME] in "
            "forage.toml), then 'forage watch NAME' follows its feed and 'forage import NAME "
            "PACKAGE' records one package",
            file=sys.stderr,
        )
    return 0


def _moment(text: str) -> str:
    """An ISO 8601 time as ``2026-01-02 03:04:05 UTC``; anything else as it is."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def describe_position(ecosystem: str, value: Any) -> str:
    """A feed position in words: a time, or the registry's counter by its name (``seq 42``,
    ``serial 1234``), never the stored JSON."""
    import dataclasses

    from indexers import ECOSYSTEMS

    if value is None:
        return "unknown"
    if isinstance(value, str):
        return _moment(value)
    registered = ECOSYSTEMS.get(ecosystem)
    if registered is None or not isinstance(value, int):
        return str(value)
    label = dataclasses.fields(registered.indexer.cursor_type)[0].name
    return f"{label} {value}"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``: the two largest units."""
    whole = int(seconds)
    units = (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1))
    parts: list[str] = []
    for name, size in units:
        if whole >= size or (name == "s" and not parts):
            parts.append(f"{whole // size} {name}")
            whole %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def _status_lines(name: str, row: dict[str, Any]) -> list[str]:
    """One registry's block of ``forage status``: the feed, then one line per count."""

    def figures(counts: dict[str, int]) -> str:
        return ", ".join(f"{n} {state}" for state, n in counts.items())

    if row["cursor"] is None:
        feed = "not watched yet: 'forage watch " + name + "' follows it"
    else:
        lag = "unknown" if row["lag_seconds"] is None else duration(row["lag_seconds"])
        caught_up = _moment(row["caught_up_at"]) if row["caught_up_at"] else "never"
        where = "at head" if row["at_head"] else f"last at head: {caught_up}"
        head = describe_position(name, row["head"])
        cursor = describe_position(name, row["position"])
        feed = f"cursor at {cursor}, head {head}, lag {lag} ({where})"
    return [
        f"{name}{'' if row['configured'] else ' (not configured)'}",
        f"  feed      {feed}",
        f"  packages  {figures(row['packages'])}",
        f"  versions  {figures(row['versions'])}",
        f"  files     {figures(row['files'])}",
        f"  imports   {figures(row['imports'])}",
    ]
