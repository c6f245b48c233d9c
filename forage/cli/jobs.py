"""``forage jobs``: look at the job queue and put dead jobs back to work.

``forage jobs [--state S] [--kind K] [--limit N]`` lists jobs, newest first;
``forage jobs stats`` counts them by kind and state; ``forage jobs retry ID... | --all-dead
[--kind K]`` queues dead jobs again with fresh attempts; ``forage jobs prune --older-than
DAYS`` deletes finished (``done``) jobs.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import Any

from forage.cli import EXIT_USAGE, load_cli_config

STATES = ("queued", "running", "done", "dead")


def register(subparsers: Any) -> None:
    """Add ``jobs`` and its subcommands."""
    parser = subparsers.add_parser("jobs", help="list, count, retry and prune queued jobs")
    parser.add_argument("--state", choices=STATES, help="only jobs in this state")
    parser.add_argument("--kind", help="only jobs of this kind")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.set_defaults(handler=run_list)
    commands = parser.add_subparsers(dest="jobs_command", metavar="COMMAND")
    stats = commands.add_parser("stats", help="count jobs by kind and state")
    stats.set_defaults(handler=run_stats)
    retry = commands.add_parser("retry", help="queue dead jobs again")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead job to retry")
    retry.add_argument("--all-dead", action="store_true", help="retry every dead job")
    retry.add_argument("--kind", dest="retry_kind", help="with --all-dead: only this kind")
    retry.set_defaults(handler=run_retry)
    prune = commands.add_parser("prune", help="delete done jobs finished long ago")
    prune.add_argument(
        "--older-than", type=float, required=True, metavar="DAYS", help="age in days"
    )
    prune.set_defaults(handler=run_prune)


def _sessionmaker(args: argparse.Namespace) -> Any:
    from forage.db.engine import make_engine, make_sessionmaker

    engine = make_engine(load_cli_config(args).database)
    return engine, make_sessionmaker(engine)


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def run_list(args: argparse.Namespace) -> int:
    from forage.jobs import admin

    engine, sessionmaker = _sessionmaker(args)
    try:
        with sessionmaker() as session:
            rows = admin.list_jobs(session, state=args.state, kind=args.kind, limit=args.limit)
    finally:
        engine.dispose()
    print(f"{'ID':>8}  {'KIND':<20} {'STATE':<8} {'TRIES':>5}  {'RUN AFTER':<20} LAST ERROR")
    for row in rows:
        limit = row.max_attempts if row.max_attempts is not None else "-"
        print(
            f"{row.id:>8}  {row.kind:<20} {row.state.value:<8} {row.attempts:>2}/{limit:<2}  "
            f"{row.run_after:%Y-%m-%d %H:%M:%S}  {_short(row.last_error)}"
        )
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from forage.jobs import admin
    from forage.jobs import queue as jobs

    engine, sessionmaker = _sessionmaker(args)
    try:
        with sessionmaker() as session:
            counts = admin.counts(session)
    finally:
        engine.dispose()
    print(f"{'KIND':<24} " + " ".join(f"{s:>8}" for s in STATES))
    for kind in sorted({k for k, _ in counts}):
        row = " ".join(f"{counts.get((kind, jobs.JobState(s)), 0):>8}" for s in STATES)
        print(f"{kind:<24} {row}")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    from forage.jobs import admin

    if bool(args.ids) == bool(args.all_dead):
        print("forage: jobs retry: give job ids or --all-dead (not both)", file=sys.stderr)
        return EXIT_USAGE
    engine, sessionmaker = _sessionmaker(args)
    try:
        with sessionmaker.begin() as session:
            if args.all_dead:
                queued = admin.retry_dead(session, kind=args.retry_kind)
            else:
                queued = sorted({admin.retry(session, job_id) for job_id in args.ids})
    finally:
        engine.dispose()
    print(f"forage: {len(queued)} job(s) queued: {' '.join(map(str, queued))}", file=sys.stderr)
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from forage.db.engine import utcnow
    from forage.jobs import admin

    engine, sessionmaker = _sessionmaker(args)
    try:
        with sessionmaker.begin() as session:
            deleted = admin.prune(
                session, finished_before=utcnow() - timedelta(days=args.older_than)
            )
    finally:
        engine.dispose()
    print(f"forage: {deleted} done job(s) deleted", file=sys.stderr)
    return 0
