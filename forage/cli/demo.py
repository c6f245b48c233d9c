"""``forage demo``: see Forage work end to end on this machine, with no network.

Starts local npm, PyPI and Go registries and a Kubo node (loopback fakes), points a
temporary Forage at them, publishes a handful of small packages, and waits until every file
is archived and pinned; then prints a batch lookup answer (JSON, on stdout) and the URL of a
package's web page, and keeps serving until Ctrl-C (``--once``: exits at once). The
temporary directory is removed at the end. See :mod:`forage.runtime.demo`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from forage.cli import EXIT_USAGE


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="run Forage on local fake registries and show a lookup (no network needed)",
        description="Start local npm, PyPI and Go registries and a Kubo node on 127.0.0.1, "
        "run Forage on them in a temporary directory, archive and pin a few packages, print "
        "a batch lookup answer and the web page URL, and serve until Ctrl-C.",
    )
    parser.add_argument("--once", action="store_true", help="exit after printing the answer")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up if the pipeline has not finished by then (default: %(default)s)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from forage.runtime.demo import DemoReport, run_demo

    if not 0 <= args.port <= 65535:
        print("forage: --port must be between 0 and 65535", file=sys.stderr)
        return EXIT_USAGE
    if not args.verbose:
        # The demo narrates its steps; the pipeline's own log lines only with -v.
        logging.getLogger("forage").setLevel(logging.WARNING)

    def progress(line: str) -> None:
        print(f"forage demo: {line}", file=sys.stderr, flush=True)

    def ready(report: DemoReport) -> None:
        import json

        print(json.dumps(report.lookup, indent=2), flush=True)
        progress(f"batch lookup above: POST {report.url}/api/v1/lookup")
        progress(f"web page: {report.page_url}")
        progress(f"done in {report.seconds:.1f} s")
        if not args.once:
            progress(f"serving on {report.url} with config {report.config_path}; Ctrl-C to stop")

    asyncio.run(
        run_demo(
            once=args.once,
            port=args.port,
            within=args.timeout,
            progress=progress,
            on_ready=ready,
        )
    )
    return 0
