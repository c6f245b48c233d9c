"""``forage db``: create, migrate and inspect the database schema.

``forage db upgrade`` creates the schema on an empty database or migrates it to the newest
revision; ``downgrade REV`` goes back; ``current`` prints where the database is; ``check``
fails if the live schema and the models differ; ``revision -m MSG`` (developers) writes a new
migration script by comparing the models with the database; ``render-answers`` renders the
lookup answers that changed or were never rendered (the scheduler does it a batch at a time);
``optimize`` refreshes the query planner's statistics (:mod:`forage.db.statistics`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from forage.cli import EXIT_FAILURE, load_cli_config
from forage.cli.progress import add_progress_option, bar, wanted


def register(subparsers: Any) -> None:
    """Add ``db`` and its subcommands."""
    parser = subparsers.add_parser("db", help="create, migrate and inspect the database")
    commands = parser.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    upgrade = commands.add_parser("upgrade", help="create the schema or migrate it forward")
    upgrade.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    upgrade.set_defaults(handler=run_upgrade)
    downgrade = commands.add_parser("downgrade", help="migrate the schema back")
    downgrade.add_argument("revision", help="target revision; 'base' drops every table")
    downgrade.set_defaults(handler=run_downgrade)
    current = commands.add_parser("current", help="print the database's revision")
    current.set_defaults(handler=run_current)
    check = commands.add_parser("check", help="fail if the schema differs from the models")
    check.set_defaults(handler=run_check)
    render = commands.add_parser(
        "render-answers",
        help="render lookup answers ahead of lookups",
        description="Compute and store the lookup answer of every version whose answer is "
        "missing, changed or past its deals' end, so lookups of them read one stored answer. "
        "The scheduler's render_answers task does the same, schedule.render_batch at a time.",
    )
    render.add_argument("--limit", type=int, help="stop after about this many answers")
    add_progress_option(render)
    render.set_defaults(handler=run_render_answers)
    optimize = commands.add_parser(
        "optimize",
        help="refresh the query planner's statistics",
        description="PRAGMA optimize (SQLite) or ANALYZE (PostgreSQL) of the tables whose "
        "distribution changes; the scheduler's optimize task does the same every "
        "schedule.optimize seconds.",
    )
    optimize.set_defaults(handler=run_optimize)
    revision = commands.add_parser("revision", help="write a new migration (developers)")
    revision.add_argument("-m", "--message", required=True, help="what the migration does")
    revision.set_defaults(handler=run_revision)


def _engine(args: argparse.Namespace, *, must_exist: bool = False) -> Any:
    import logging

    from forage.db.engine import make_engine, require_existing

    if not args.verbose:
        # Alembic narrates every step at INFO; our own summary line is enough.
        logging.getLogger("alembic").setLevel(logging.WARNING)

    config = load_cli_config(args)
    if must_exist:
        require_existing(config.database)
    return config, make_engine(config.database)


def run_upgrade(args: argparse.Namespace) -> int:
    from forage.db.engine import current_revision, upgrade

    config, engine = _engine(args)
    try:
        before = current_revision(engine)
        upgrade(engine, args.revision)
        after = current_revision(engine)
    finally:
        engine.dispose()
    where = config.database.display_url
    if before == after:
        print(f"forage: {where} already at revision {after}", file=sys.stderr)
    else:
        print(f"forage: {where} migrated from {before or 'empty'} to {after}", file=sys.stderr)
    return 0


def run_downgrade(args: argparse.Namespace) -> int:
    from forage.db.engine import current_revision, downgrade

    config, engine = _engine(args)
    try:
        downgrade(engine, args.revision)
        after = current_revision(engine)
    finally:
        engine.dispose()
    print(f"forage: {config.database.display_url} now at {after or 'base'}", file=sys.stderr)
    return 0


def run_current(args: argparse.Namespace) -> int:
    from forage.db.engine import current_revision, head_revision

    _config, engine = _engine(args, must_exist=True)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    note = "(head)" if revision == head else f"(head is {head}; run forage db upgrade)"
    print(f"{revision or 'empty'} {note}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from forage.db.schema import schema_diff

    _config, engine = _engine(args, must_exist=True)
    try:
        diff = schema_diff(engine)
    finally:
        engine.dispose()
    for item in diff:
        print(f"forage: schema differs: {item}", file=sys.stderr)
    return EXIT_FAILURE if diff else 0


def run_render_answers(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from forage.db import statistics
    from forage.db.engine import make_sessionmaker, utcnow
    from forage.lookup.answers import render_stale, stale_ids

    if args.limit is not None and args.limit < 1:
        print("forage: --limit must be at least 1", file=sys.stderr)
        return 2
    config, engine = _engine(args)
    try:
        sessions = make_sessionmaker(engine)
        total = None
        if wanted(args):
            with sessions() as session:
                stale = stale_ids(after=0, now=utcnow()).subquery()
                total = session.scalar(sa.select(sa.func.count()).select_from(stale))
            total = total if args.limit is None else min(total or 0, args.limit)
        with bar(args, total=total, desc="rendering", unit=" answers") as progress:
            stored = render_stale(sessions, limit=args.limit, progress=progress.update)
        if stored >= statistics.BULK:
            with engine.begin() as connection:
                statistics.refresh(connection)
    finally:
        engine.dispose()
    print(
        f"forage: {stored} lookup answers rendered in {config.database.display_url}",
        file=sys.stderr,
    )
    return 0


def run_optimize(args: argparse.Namespace) -> int:
    from forage.db.statistics import refresh

    config, engine = _engine(args)
    try:
        with engine.begin() as connection:
            refreshed = refresh(connection)
    finally:
        engine.dispose()
    dropped = f"; dropped the distorted statistics of {', '.join(refreshed.dropped)}"
    print(
        f"forage: statistics of {len(refreshed.tables)} tables refreshed in "
        f"{config.database.display_url}{dropped if refreshed.dropped else ''}",
        file=sys.stderr,
    )
    return 0


def run_revision(args: argparse.Namespace) -> int:
    from alembic import command

    from forage.db.engine import alembic_config

    _config, engine = _engine(args)
    try:
        with engine.begin() as connection:
            config = alembic_config(connection)
            config.set_main_option("hooks", "ruff_format")
            config.set_main_option("ruff_format.type", "exec")
            config.set_main_option("ruff_format.executable", "ruff")
            config.set_main_option("ruff_format.options", "format REVISION_SCRIPT_FILENAME")
            command.revision(config, message=args.message, autogenerate=True)
    finally:
        engine.dispose()
    return 0
