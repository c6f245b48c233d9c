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
        "keys", nargs="*", metavar="KEY", help="pkg:TYPE/NAME@VERSION or PLATFORM:NAME:VERSION"
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
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

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
    engine = open_database(config.database, read_only=True)
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
