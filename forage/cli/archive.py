"""``forage archive``: archive artifacts now, in this process, with a progress bar.

``forage archive KEY...`` archives the artifacts each key names (a purl such as
``pkg:npm/lodash@4.17.21`` or a Forage key such as ``npm:lodash:4.17.21``; a key without a
version means every version); ``--pending`` archives every artifact that has no ``archived``
row yet (never tried, or failed before). It runs the same verified pass as the worker's
``archive`` jobs (:mod:`forage.archive.job`), ``--concurrency`` artifacts at a time (default
``worker.concurrency``). Artifacts already archived are skipped. Progress (artifacts and
bytes) goes to stderr when it is a terminal, or always with ``--progress``; a summary
follows, and the exit status is 1 when any artifact failed.

``forage archive --failed [--limit N] [--json]`` lists the failed archives instead, newest
first, with their reasons (bytes that failed verification marked ``BAD BYTES``) and what
happens next: the time of the job's next try, or ``dead`` (:mod:`forage.archive.failures`).

``forage archive --repair KEY|CID...`` checks the archived copies the keys (or archive CIDs)
name, block by block, as the scheduled re-verification does (:mod:`forage.jobs.reverify`):
missing or damaged blocks are fetched from the pinning backends and ``[repair] gateways``
(:mod:`forage.archive.repair`), each verified against its CID, and the archive verified
again; one that cannot be repaired so is marked failed and queued for download from its
registry. One line per archive on stdout (intact, repaired and from where, or queued); the
exit status is 1 when any archive could not be repaired from the network.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from forage.cli import EXIT_FAILURE, EXIT_USAGE, load_cli_config

#: Artifact ids read per query with ``--pending``.
PAGE = 500


def register(subparsers: Any) -> None:
    """Add the ``archive`` subcommand."""
    parser = subparsers.add_parser(
        "archive",
        help="download, verify and store artifacts now",
        description="Download artifacts, verify them against their registry's digests, "
        "compute their CIDs and store their blocks, now and in this process.",
    )
    parser.add_argument(
        "keys",
        nargs="*",
        metavar="KEY",
        help="pkg:TYPE/NAME@VERSION or PLATFORM:NAME:VERSION (with --repair, also a CID)",
    )
    parser.add_argument(
        "--pending", action="store_true", help="every artifact without an archived copy"
    )
    parser.add_argument("--concurrency", type=int, metavar="N", help="artifacts at once")
    parser.add_argument(
        "--failed", action="store_true", help="list failed archives with their reasons instead"
    )
    parser.add_argument(
        "--limit", type=int, default=50, metavar="N", help="failures listed at most (default 50)"
    )
    parser.add_argument("--json", action="store_true", help="with --failed: print JSON")
    parser.add_argument(
        "--repair",
        action="store_true",
        help="check the archives named instead, fetching missing or damaged blocks from the "
        "pinning backends and [repair] gateways",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    if args.repair:
        return _repair(args)
    if args.failed:
        return _list_failed(args)
    if not args.keys and not args.pending:
        print("forage: name artifacts to archive (KEY...) or pass --pending", file=sys.stderr)
        return EXIT_USAGE
    if args.concurrency is not None and args.concurrency < 1:
        print("forage: --concurrency must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    config = load_cli_config(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    return asyncio.run(_archive(config, args, progress=progress))


def _list_failed(args: argparse.Namespace) -> int:
    """``--failed``: the newest ``--limit`` failed archives, their reasons and next tries."""
    import json

    from forage.archive.failures import MAX_PER_PAGE, failed_archives
    from forage.db.engine import make_sessionmaker, open_database

    if args.keys or args.pending:
        print("forage: --failed lists failures; it takes no KEY or --pending", file=sys.stderr)
        return EXIT_USAGE
    if not 1 <= args.limit <= MAX_PER_PAGE:
        print(f"forage: --limit must be from 1 to {MAX_PER_PAGE}", file=sys.stderr)
        return EXIT_USAGE
    config = load_cli_config(args)
    engine = open_database(config.database, must_exist=True)
    try:
        with make_sessionmaker(engine)() as session:
            listing = failed_archives(session, per_page=args.limit)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(listing.to_json(), indent=2))
        return 0
    for failure in listing.archives:
        if failure.job_state == "queued" and failure.next_attempt_at is not None:
            then = f"next try {failure.next_attempt_at:%Y-%m-%d %H:%M UTC}"
        else:
            then = failure.job_state or "no job"
        tries = f"{failure.mismatches}/{config.jobs.mismatch_attempts}"
        mark = f"BAD BYTES (verification failed {tries}) " if failure.bad_bytes else ""
        print(f"{failure.purl} {failure.filename}: {mark}{failure.error} [{then}]")
    shown = len(listing.archives)
    print(f"forage: {listing.total} failed archive(s), {shown} shown", file=sys.stderr)
    return 0


def _repair(args: argparse.Namespace) -> int:
    """``--repair``: check the archives named, repairing them from the network."""
    import asyncio

    from forage.archive.sources import source_labels

    if args.pending or args.failed or not args.keys:
        print("forage: --repair takes KEY or CID arguments, and no --pending or --failed",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    config = load_cli_config(args)
    labels = source_labels(config)
    if not labels:
        print(
            "forage: nowhere to repair from: set [repair] gateways, configure a kubo pinning "
            "backend, or give a pinning backend a gateway",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(f"forage: repairing from {', '.join(labels)}", file=sys.stderr)
    return asyncio.run(_run_repair(config, args.keys))


async def _run_repair(config: Any, names: list[str]) -> int:
    import asyncio

    from forage.archive.sources import open_repair_sources
    from forage.db.engine import make_sessionmaker, open_database
    from forage.jobs.reverify import Outcome, archives_named, check_archive
    from forage.jobs.worker import job_context

    engine = await asyncio.to_thread(open_database, config.database)
    outcomes: list[Outcome] = []
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            named = {}
            for name in names:
                for archive in await ctx.transaction(archives_named, name):
                    named.setdefault(archive.id, (name, archive))
            assert ctx.blockstore is not None
            async with open_repair_sources(config) as sources:
                for name, archive in named.values():
                    outcome = await check_archive(ctx, ctx.blockstore, archive, sources)
                    outcomes.append(outcome)
                    print(f"{name} archive {archive.id} {archive.cid}: {_verdict(outcome)}")
    finally:
        engine.dispose()
    damaged = [o for o in outcomes if o.damage is not None]
    repaired = sum(o.repaired for o in damaged)
    print(
        f"forage: checked {len(outcomes)}, intact {len(outcomes) - len(damaged)}, "
        f"repaired {repaired}, queued for download {len(damaged) - repaired}",
        file=sys.stderr,
    )
    return EXIT_FAILURE if repaired < len(damaged) else 0


def _verdict(outcome: Any) -> str:
    """One archive's outcome in words."""
    report = outcome.repair
    if outcome.damage is None:
        return "intact"
    if outcome.repaired:
        return f"repaired {report.fetched} of {report.damaged} blocks: {report.describe()}"
    why = outcome.damage.problem
    if report is not None:
        why += f"; {report.shortfall()}"
    return f"NOT repaired ({why}); download queued as job {outcome.requeued}"


async def _archive(config: Any, args: argparse.Namespace, *, progress: bool) -> int:
    import asyncio

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from forage.archive.records import artifact_ids_for_key, count_unarchived, unarchived_ids
    from forage.archive.runner import archive_many
    from forage.archive.targets import ArchiveOutcome
    from forage.db.engine import make_sessionmaker, open_database
    from forage.jobs.worker import job_context

    engine = await asyncio.to_thread(open_database, config.database)
    archived = skipped = 0
    failures: list[ArchiveOutcome] = []
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            named: list[int] = []
            for key in args.keys:
                named += await ctx.transaction(artifact_ids_for_key, key)
            named = list(dict.fromkeys(named))
            total = len(named)
            if args.pending:
                total += await ctx.transaction(count_unarchived, exclude=named)
            artifacts = tqdm(
                total=total, unit=" artifacts", desc="artifacts", disable=not progress,
                file=sys.stderr, position=0,
            )  # fmt: skip
            received = tqdm(
                unit="B", unit_scale=True, unit_divisor=1024, desc="downloaded",
                disable=not progress, file=sys.stderr, position=1,
            )  # fmt: skip

            def done(outcome: ArchiveOutcome) -> None:
                nonlocal archived, skipped
                artifacts.update(1)
                if outcome.error is not None:
                    failures.append(outcome)
                elif outcome.skipped:
                    skipped += 1
                else:
                    archived += 1

            async def archive(ids: list[int]) -> None:
                await archive_many(
                    ctx,
                    ids,
                    concurrency=args.concurrency or config.worker.concurrency,
                    on_bytes=received.update,
                    on_outcome=done,
                )

            with artifacts, received, logging_redirect_tqdm():
                if named:
                    await archive(named)
                after = 0
                while args.pending:
                    page = await ctx.transaction(
                        unarchived_ids, after=after, limit=PAGE, exclude=named
                    )
                    if not page:
                        break
                    await archive(page)
                    after = page[-1]
    finally:
        engine.dispose()
    for outcome in failures:
        again = "; retry later" if outcome.retryable else ""
        print(
            f"forage: failed {outcome.purl} {outcome.filename}: {outcome.error}{again}",
            file=sys.stderr,
        )
    print(
        f"forage: archived {archived}, already archived {skipped}, failed {len(failures)}",
        file=sys.stderr,
    )
    return EXIT_FAILURE if failures else 0
