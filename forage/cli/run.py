"""``forage run`` (the whole system in one process) and ``forage scheduler`` (the periodic tasks).

``run`` starts the HTTP server, a worker and the scheduler on the configured database
(the embedded SQLite store and filesystem blockstore under ``data.dir`` by default) and keeps
them running until SIGINT or SIGTERM; a second signal interrupts the jobs in hand.
``scheduler`` runs only the scheduler: on PostgreSQL start one on several machines, one leads
and the others take over when it dies. ``scheduler --list`` prints the schedule with the next
run times the database holds; ``scheduler --run TASK`` runs one task now and exits.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from forage.cli import EXIT_USAGE, load_cli_config


def register(subparsers: Any) -> None:
    """Add ``run`` and ``scheduler``."""
    run = subparsers.add_parser(
        "run",
        help="run everything in one process: HTTP server, worker and scheduler",
        description="Run the HTTP server, a worker and the scheduler in one process until "
        "SIGINT or SIGTERM. Without a configuration file this is the embedded set-up: SQLite "
        "and a filesystem blockstore under ./forage-data.",
    )
    run.add_argument("--host", help="listen address (default: server.host)")
    run.add_argument(
        "--port", type=int, help="listen port; 0 picks a free one (default: server.port)"
    )
    run.add_argument("--concurrency", type=int, metavar="N", help="jobs run at once")
    run.set_defaults(handler=run_all)

    scheduler = subparsers.add_parser(
        "scheduler",
        help="run the periodic tasks (one leader at a time)",
        description="Run the scheduler alone: it queues watcher, archive, retry, "
        "re-verification and housekeeping jobs on the intervals of the [schedule] section "
        "(and registries.<name>.interval). Several may run; one leads at a time.",
    )
    what = scheduler.add_mutually_exclusive_group()
    what.add_argument(
        "--list", action="store_true", help="print the schedule and its next run times, exit"
    )
    what.add_argument("--run", metavar="TASK", help="run one task now and exit")
    scheduler.set_defaults(handler=run_scheduler)


def run_all(args: argparse.Namespace) -> int:
    import asyncio

    from forage.runtime.run import run_forage

    if args.concurrency is not None and args.concurrency < 1:
        print("forage: --concurrency must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.port is not None and not 0 <= args.port <= 65535:
        print("forage: --port must be between 0 and 65535", file=sys.stderr)
        return EXIT_USAGE
    config = load_cli_config(args)

    def ready(running: Any) -> None:
        print(f"forage: serving {running.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)

    return asyncio.run(
        run_forage(
            config,
            host=args.host,
            port=args.port,
            concurrency=args.concurrency,
            on_ready=ready,
        )
    )


def run_scheduler(args: argparse.Namespace) -> int:
    import asyncio

    config = load_cli_config(args)
    if args.list:
        return _list(config)
    if args.run:
        return _run_one(config, args.run)
    from forage.runtime.run import run_forage

    return asyncio.run(run_forage(config, http=False, workers=False))


def _list(config: Any) -> int:
    from forage.db.engine import open_database
    from forage.jobs.leader import current_leader
    from forage.jobs.scheduler import planned_tasks

    engine = open_database(config.database)
    try:
        planned = planned_tasks(config, engine)
        leader = current_leader(engine)
    finally:
        engine.dispose()
    rows = [("task", "every (s)", "next run (UTC)")]
    rows += [
        (
            task.name,
            f"{task.interval:g}",
            task.next_run.strftime("%Y-%m-%d %H:%M:%S") if task.next_run else "at first start",
        )
        for task in planned
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"leader: {leader or 'none running'}", file=sys.stderr)
    return 0


def _run_one(config: Any, name: str) -> int:
    from forage.db.engine import open_database
    from forage.jobs.scheduler import Scheduler

    engine = open_database(config.database)
    try:
        scheduler = Scheduler(config, engine)
        if name not in scheduler.tasks:
            print(f"forage: no task {name!r}; known: {', '.join(scheduler.tasks)}", file=sys.stderr)
            return EXIT_USAGE
        result = scheduler.run_task(name)
    finally:
        engine.dispose()
    if result is None:
        print(f"forage: task {name} failed (see the log)", file=sys.stderr)
        return 1
    summary = ", ".join(f"{key} {value}" for key, value in result.items()) or "nothing to do"
    print(f"forage: {name}: {summary}", file=sys.stderr)
    return 0
