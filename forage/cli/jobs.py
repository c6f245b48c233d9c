"""``forage jobs``: look at the job queue and put dead jobs back to work.

``forage jobs [--state S] [--kind K] [--limit N]`` lists jobs, newest first (errors cut to
a line); ``forage jobs show ID`` prints one job whole: its payload and its last error in
full; ``forage jobs stats`` counts them by kind and state; ``forage jobs retry ID... | --all-dead
[--kind K]`` queues dead jobs again with fresh attempts; ``forage jobs prune --older-than
DAYS`` deletes finished (``done``) jobs.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from forage.cli import EXIT_NOT_FOUND, EXIT_USAGE, load_cli_config

if TYPE_CHECKING:
    from datetime import datetime

STATES = ("queued", "running", "done", "dead")


def register(subparsers: Any) -> None:
    """Add ``jobs`` and its subcommands."""
    parser = subparsers.add_parser("jobs", help="list, count, retry and prune queued jobs")
    parser.add_argument("--state", choices=STATES, help="only jobs in this state")
    parser.add_argument("--kind", help="only jobs of this kind")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.set_defaults(handler=run_list)
    commands = parser.add_subparsers(dest="jobs_command", metavar="COMMAND")
    show = commands.add_parser("show", help="one job: payload, times and the whole error")
    show.add_argument("job_id", type=int, metavar="ID", help="the job's id (from 'forage jobs')")
    show.set_defaults(handler=run_show)
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
    from forage.db.engine import make_sessionmaker, open_database

    engine = open_database(load_cli_config(args).database, must_exist=True)
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
    if not rows:
        which = " ".join(f"{k}={v}" for k, v in (("state", args.state), ("kind", args.kind)) if v)
        print(
            f"forage: no jobs{' with ' + which if which else ''}; 'forage watch', 'forage "
            "import' and the scheduler queue them, 'forage worker' runs them",
            file=sys.stderr,
        )
        return 0
    print(f"{'ID':>8}  {'KIND':<20} {'STATE':<8} {'TRIES':>5}  {'RUN AFTER':<20} LAST ERROR")
    for row in rows:
        limit = row.max_attempts if row.max_attempts is not None else "-"
        print(
            f"{row.id:>8}  {row.kind:<20} {row.state.value:<8} {row.attempts:>2}/{limit:<2}  "
            f"{row.run_after:%Y-%m-%d %H:%M:%S}  {_short(row.last_error)}"
        )
    return 0


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def run_show(args: argparse.Namespace) -> int:
    import json
    import textwrap

    from forage.db.models import JobRecord

    engine, sessionmaker = _sessionmaker(args)
    try:
        with sessionmaker() as session:
            job = session.get(JobRecord, args.job_id)
    finally:
        engine.dispose()
    if job is None:
        print(f"forage: no job {args.job_id}; 'forage jobs' lists them", file=sys.stderr)
        return EXIT_NOT_FOUND
    limit = job.max_attempts if job.max_attempts is not None else "unlimited"
    lease = f"{job.lease_owner} until {_when(job.lease_expires_at)}" if job.lease_owner else "-"
    print(f"job       {job.id}")
    print(f"kind      {job.kind}")
    print(f"state     {job.state.value}")
    print(f"attempts  {job.attempts} of {limit}")
    print(f"created   {_when(job.created_at)}")
    print(f"updated   {_when(job.updated_at)}")
    print(f"run after {_when(job.run_after)}")
    print(f"finished  {_when(job.finished_at)}")
    print(f"lease     {lease}")
    print(f"dedup key {job.dedup_key or '-'}")
    print("payload")
    print(textwrap.indent(json.dumps(job.payload, indent=2, sort_keys=True), "  "))
    print("last error" + ("" if job.last_error else "  -"))
    if job.last_error:
        print(textwrap.indent(job.last_error.rstrip("\n"), "  "))
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
    if not counts:
        print("forage: the job queue is empty", file=sys.stderr)
        return 0
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
    from datetime import timedelta

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
