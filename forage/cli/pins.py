"""``forage pins``: where archives are pinned, and the status check on demand.

``forage pins [--backend NAME] [--failed] [--limit N] [--json]`` counts pins per backend and
state (and the archived archives not yet queued there); ``--failed`` also lists failed pins
with the backend's reason. ``forage pins check [--backend NAME] [--json]`` runs the batched
status check now (the ``pin_check`` job does the same on its schedule): states are updated,
failed and lost pins re-queued, archives missing a backend queued. See :mod:`forage.pins.check`
and :mod:`forage.pins.report`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from forage.cli import EXIT_FAILURE, load_cli_config

STATES = ("queued", "pinning", "pinned", "failed")


def register(subparsers: Any) -> None:
    """Add ``pins`` and ``pins check``."""
    parser = subparsers.add_parser("pins", help="pin states per backend; run the status check")
    parser.add_argument("--backend", metavar="NAME", help="only this backend")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--failed", action="store_true", help="also list failed pins")
    parser.add_argument(
        "--limit", type=int, default=50, help="failed pins listed at most (default 50)"
    )
    parser.set_defaults(handler=run_show)
    commands = parser.add_subparsers(dest="pins_command", metavar="COMMAND")
    check = commands.add_parser("check", help="ask the backends about pin states now")
    check.add_argument("--backend", dest="check_backend", metavar="NAME", help="only this one")
    check.add_argument("--json", dest="check_json", action="store_true", help="print JSON")
    check.set_defaults(handler=run_check)


def _short(text: str | None, width: int = 70) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= width else line[: width - 1] + "…"


def run_show(args: argparse.Namespace) -> int:
    import json

    from forage.db.engine import make_sessionmaker, open_database
    from forage.pins.report import failed_pins, pin_counts

    config = load_cli_config(args)
    engine = open_database(config.database, must_exist=True)
    try:
        with make_sessionmaker(engine)() as session:
            counts = pin_counts(session, config)
            if args.backend is not None and args.backend not in counts:
                config.pinning.backend(args.backend)  # raises, listing the configured ones
            if args.backend is not None:
                counts = {args.backend: counts[args.backend]}
            failed = (
                failed_pins(session, backend=args.backend, limit=args.limit) if args.failed else []
            )
    finally:
        engine.dispose()
    if args.json:
        report: dict[str, Any] = {"backends": counts}
        if args.failed:
            report["failed"] = [pin.to_dict() for pin in failed]
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not counts:
        print("forage: no pinning backend configured ([pinning.backends.<name>])", file=sys.stderr)
        return 0
    print(f"{'BACKEND':<20} {'TYPE':<8} " + " ".join(f"{s:>8}" for s in STATES) + " NOT QUEUED")
    for name, entry in counts.items():
        kind = entry["type"] or "(gone)"
        states = " ".join(f"{entry['states'][s]:>8}" for s in STATES)
        print(f"{name:<20} {kind:<8} {states} {entry['not_queued']:>10}")
    if args.failed:
        print()
        print(f"{'ARCHIVE':>8}  {'BACKEND':<16} {'CID':<62} ERROR")
        for pin in failed:
            print(
                f"{pin.archive_id:>8}  {pin.backend:<16} {pin.cid or '-':<62} {_short(pin.error)}"
            )
    return 0


def run_check(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from forage.db.engine import make_sessionmaker, open_database
    from forage.pins.check import check_pins

    config = load_cli_config(args)
    backend = args.check_backend or args.backend
    if backend is not None:
        config.pinning.backend(backend)
    if not config.pinning.backends:
        print("forage: no pinning backend configured ([pinning.backends.<name>])", file=sys.stderr)
        return 0
    engine = open_database(config.database)
    try:
        reports = asyncio.run(check_pins(config, make_sessionmaker(engine), backend=backend))
    finally:
        engine.dispose()
    if args.check_json or args.json:
        json.dump([report.to_dict() for report in reports], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for report in reports:
            states = ", ".join(f"{n} {state}" for state, n in sorted(report.states.items()))
            print(
                f"{report.backend}: {report.checked} pins checked in {report.batches} "
                f"batches{': ' + states if states else ''}; {report.gone} gone, "
                f"{report.requeued} re-queued, {report.queued} archives queued"
                + (f"; stopped: {report.error}" if report.error else "")
            )
    return EXIT_FAILURE if any(report.error for report in reports) else 0
