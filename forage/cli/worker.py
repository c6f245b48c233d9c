"""``forage worker``: run queued jobs until stopped.

``--concurrency N`` jobs at once (default ``worker.concurrency``); ``--once`` runs one batch
and exits; ``--drain`` runs until no job is ready and none is running anywhere (jobs delayed
by backoff are left). SIGTERM or Ctrl-C stops claiming and waits for the jobs in hand, then
exits 0; a second signal interrupts them and gives their leases back.

Operator hook: ``--handlers MODULE:FUNCTION`` replaces the built-in job kinds
(:func:`forage.jobs.handlers.default_handlers`) by the mapping that function returns, e.g. a
site's own job kinds or the test suite's; ``--kind K`` (repeatable) runs only some kinds.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from forage.cli import EXIT_USAGE, load_cli_config


def register(subparsers: Any) -> None:
    """Add the ``worker`` subcommand."""
    parser = subparsers.add_parser("worker", help="run queued jobs")
    parser.add_argument("--concurrency", type=int, metavar="N", help="jobs run at once")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="run one batch of ready jobs, exit")
    mode.add_argument(
        "--drain", action="store_true", help="run until no job is ready or running, exit"
    )
    parser.add_argument(
        "--handlers",
        metavar="MODULE:FUNCTION",
        default="forage.jobs.handlers:default_handlers",
        help="function returning the kind -> handler mapping (default: %(default)s)",
    )
    parser.add_argument(
        "--kind", action="append", dest="kinds", metavar="KIND", help="only run this kind"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from forage.jobs.worker import load_handlers, run_worker

    config = load_cli_config(args)
    handlers = load_handlers(args.handlers)
    if args.concurrency is not None and args.concurrency < 1:
        print("forage: --concurrency must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    mode = "once" if args.once else "drain" if args.drain else "forever"
    stats = asyncio.run(
        run_worker(
            config,
            handlers,
            concurrency=args.concurrency,
            mode=mode,
            kinds=args.kinds,
            handle_signals=True,
        )
    )
    print(
        f"forage: worker done: {stats.done} done, {stats.retried} to retry, {stats.dead} dead, "
        f"{stats.lost} lost, {stats.released} released",
        file=sys.stderr,
    )
    return 0
