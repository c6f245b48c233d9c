"""``forage deals`` and ``forage pieces``: Filecoin pieces and the deals that hold them.

``forage pieces [--limit N] [--json]`` lists pieces, newest first, with member counts and
active deals; ``forage pieces build [--partial]`` packs archives into pieces now (``--partial``
also builds a last piece short of ``filecoin.piece_min_fill``). ``forage deals [--state S]
[--piece CID] [--limit N] [--json]`` lists deals; ``forage deals sync`` reads the configured
deal sources now.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from forage.cli import load_cli_config
from forage.cli.progress import add_progress_option, bar, human_size, wanted

STATES = (
    "proposed",
    "published",
    "active",
    "expired",
    "proposal_expired",
    "rejected",
    "slashed",
    "error",
)


def register(subparsers: Any) -> None:
    """Add ``pieces`` and ``deals`` with their subcommands."""
    pieces = subparsers.add_parser("pieces", help="list Filecoin pieces, or build them now")
    pieces.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    pieces.add_argument("--json", action="store_true", help="one JSON object per line")
    pieces.set_defaults(handler=run_pieces)
    piece_commands = pieces.add_subparsers(dest="pieces_command", metavar="COMMAND")
    build = piece_commands.add_parser("build", help="pack archives into pieces now")
    build.add_argument(
        "--partial", action="store_true", help="also build a last piece short of the minimum fill"
    )
    add_progress_option(build)
    build.set_defaults(handler=run_build)

    deals = subparsers.add_parser("deals", help="list Filecoin deals, or sync them now")
    deals.add_argument("--state", choices=STATES, help="only deals in this state")
    deals.add_argument("--piece", metavar="CID", help="only deals of this piece")
    deals.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    deals.add_argument("--json", action="store_true", help="one JSON object per line")
    deals.set_defaults(handler=run_deals)
    deal_commands = deals.add_subparsers(dest="deals_command", metavar="COMMAND")
    sync = deal_commands.add_parser("sync", help="read the configured deal sources now")
    sync.set_defaults(handler=run_sync)


@contextmanager
def _database(args: argparse.Namespace, *, must_exist: bool = False) -> Iterator[tuple[Any, Any]]:
    """The configuration and a sessionmaker (SQLite is migrated on first use; a listing
    never creates it)."""
    from forage.db.engine import make_sessionmaker, open_database

    config = load_cli_config(args)
    engine = open_database(config.database, must_exist=must_exist)
    try:
        yield config, make_sessionmaker(engine)
    finally:
        engine.dispose()


def _json_line(value: dict[str, Any]) -> str:
    import json

    return json.dumps(value, default=str, sort_keys=True)


def run_pieces(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from forage.filecoin.pieces import list_pieces

    with _database(args, must_exist=True) as (_, sessionmaker), sessionmaker() as session:
        rows = list_pieces(session, limit=args.limit)
    if args.json:
        for row in rows:
            print(_json_line(asdict(row)))
        return 0
    if not rows:
        print(
            "forage: no pieces yet; 'forage pieces build' packs archived files into pieces",
            file=sys.stderr,
        )
        return 0
    print(f"{'PIECE CID':<66} {'PADDED':>10} {'CAR':>10} {'MEMBERS':>8} {'ACTIVE':>6}")
    for row in rows:
        print(
            f"{row.piece_cid:<66} {human_size(row.padded_size):>10} "
            f"{human_size(row.car_size):>10} {row.members:>8} {row.active_deals:>6}"
        )
    return 0


def run_build(args: argparse.Namespace) -> int:
    from forage.archive.blocks import open_blockstore
    from forage.filecoin.pieces import build_pieces

    with _database(args) as (config, sessionmaker):
        total = _unpacked_archives(sessionmaker) if wanted(args) else None
        with bar(args, total=total, desc="packing", unit=" archives") as progress:
            built = build_pieces(
                config,
                sessionmaker,
                open_blockstore(config),
                partial=args.partial,
                progress=lambda piece: progress.update(piece.members),
            )
    for piece in built:
        print(f"{piece.piece_cid} {piece.padded_size} {piece.car_size} {piece.members}")
    if built:
        size = human_size(sum(piece.car_size for piece in built))
        print(f"forage: {len(built)} piece(s) built, {size} of CAR data", file=sys.stderr)
    else:
        print(
            "forage: 0 piece(s) built: no archived file waits for a piece, or too few to "
            "fill one (--partial builds it anyway)",
            file=sys.stderr,
        )
    return 0


def _unpacked_archives(sessionmaker: Any) -> int:
    """How many archived files wait for a piece (the bar's total)."""
    import sqlalchemy as sa

    from forage.db.models import Archive, ArchiveStatus, PieceMember

    packed = sa.select(PieceMember.archive_id).where(PieceMember.archive_id == Archive.id)
    with sessionmaker() as session:
        return int(
            session.scalar(
                sa.select(sa.func.count()).where(
                    Archive.status == ArchiveStatus.ARCHIVED,
                    Archive.cid.is_not(None),
                    ~packed.exists(),
                )
            )
            or 0
        )


def run_deals(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from forage.db.models import DealState
    from forage.filecoin.deals import list_deals

    state = DealState(args.state) if args.state else None
    with _database(args, must_exist=True) as (_, sessionmaker), sessionmaker() as session:
        rows = list_deals(session, state=state, piece_cid=args.piece, limit=args.limit)
    if args.json:
        for row in rows:
            print(_json_line({**asdict(row), "state": row.state.value}))
        return 0
    if not rows:
        print(
            "forage: no deals recorded; 'forage deals sync' reads the configured deal sources "
            "([filecoin] lotus_url or deal_service_url)",
            file=sys.stderr,
        )
        return 0
    print(f"{'DEAL':>10}  {'SOURCE':<11} {'PROVIDER':<10} {'STATE':<16} {'ENDS':<10} PIECE CID")
    for row in rows:
        ends = f"{row.end_at:%Y-%m-%d}" if row.end_at else "-"
        print(
            f"{row.deal_id:>10}  {row.source:<11} {row.provider:<10} {row.state.value:<16} "
            f"{ends:<10} {row.piece_cid}"
        )
    return 0


def run_sync(args: argparse.Namespace) -> int:
    import asyncio

    from forage.filecoin.deals import open_sources, sync_deals

    async def run(config: Any, sessionmaker: Any) -> Any:
        async with open_sources(config.filecoin) as sources:
            return await sync_deals(sessionmaker, sources)

    with _database(args) as (config, sessionmaker):
        report = asyncio.run(run(config, sessionmaker))
    print(
        f"forage: deals synced at epoch {report.head}: {report.recorded} new, "
        f"{report.updated} updated, {report.ended} ended, {report.ignored} ignored",
        file=sys.stderr,
    )
    return 0
