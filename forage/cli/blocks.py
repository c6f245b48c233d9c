"""``forage blocks``: the blockstore's layout.

``forage blocks migrate`` converts a flatfs store (one file per block) into packs (one file per
archive, :mod:`storage.packs`), archive by archive, resumably; ``forage blocks rebuild`` records
in the locator every pack it does not know (after losing ``locator.sqlite``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from forage.cli import load_cli_config
from forage.cli.progress import add_progress_option, bar, human_size, wanted

MIGRATE_HELP = """\
Convert the flatfs blockstore under <data.dir>/blocks (one file per 256 KiB block) into packs
(one file per archive, with an index; the locator, blocks/locator.sqlite, says where each block
is). Archives are read from the index: each archive's DAG is walked from its root CID, checked
block by block, written as one pack, and only once that pack is durable and recorded are its
flatfs files removed. Blocks no archive reaches go into loose packs at the end, and the emptied
flatfs directories are removed, so the directory opens as a packed store.

Safe to interrupt: running it again continues where it stopped, never packs an archive twice
and never removes a block before its pack is in place. While it runs, a packed store reads the
blocks not moved yet from flatfs; stop workers and servers that were started in the flatfs
layout (or restart them with [data] blocks = "packed") before migrating. An archive with a
missing or corrupt block stays in flatfs and is listed; 'forage blocks migrate' then exits 1.

With [data] blocks = "s3://bucket/prefix" the packs are written to the bucket instead, and
located through the database.
"""


def register(subparsers: Any) -> None:
    """Add ``blocks migrate`` and ``blocks rebuild``."""
    blocks = subparsers.add_parser("blocks", help="the blockstore's layout: migrate to packs")
    commands = blocks.add_subparsers(dest="blocks_command", metavar="COMMAND")
    blocks.set_defaults(handler=lambda args: _usage(blocks))
    migrate = commands.add_parser(
        "migrate",
        help="convert a flatfs blockstore into packs (resumable)",
        description=MIGRATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_progress_option(migrate)
    migrate.set_defaults(handler=run_migrate)
    rebuild = commands.add_parser(
        "rebuild",
        help="record in the locator every pack it does not know",
        description=(
            "Read the footer and index of every pack under <data.dir>/blocks/packs and record "
            "the packs the locator does not know (after losing or restoring locator.sqlite). "
            "With the blocks in a bucket, list the bucket's packs and record them in the "
            "database. Deletions live only in the locator: a rebuilt one has none."
        ),
    )
    rebuild.set_defaults(handler=run_rebuild)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_migrate(args: argparse.Namespace) -> int:
    from forage.archive.blocks import blockstore_path, has_flatfs, open_packed_store
    from forage.db.engine import make_sessionmaker, open_database
    from forage.errors import ConfigError
    from storage.migration import (
        MigrationReport,
        migrate_archive,
        migrate_loose,
        remove_empty_flatfs,
    )

    config = load_cli_config(args)
    if config.data.blocks == "flatfs":
        raise ConfigError(
            "data.blocks",
            'is "flatfs": set it to "packed" (or remove it) before migrating, so that every '
            "process reads the packs",
        )
    root = blockstore_path(config)
    if not has_flatfs(root):
        print(f"forage: nothing to migrate: no flatfs store under {root}", file=sys.stderr)
        return 0
    # Reads the blocks not moved yet from flatfs; with blocks in a bucket, packs go there.
    packed = open_packed_store(config)
    flatfs = packed.legacy
    assert flatfs is not None
    report = MigrationReport()
    engine = open_database(config.database, must_exist=True)
    try:
        sessionmaker = make_sessionmaker(engine)
        total = _archive_count(sessionmaker) if wanted(args) else None
        with bar(args, total=total, desc="archives", unit=" archives") as progress:
            for cid in _archive_roots(sessionmaker):
                migrate_archive(flatfs, packed, cid, report)
                progress.update(1)
        with bar(args, total=None, desc="loose blocks", unit=" blocks") as progress:
            migrate_loose(flatfs, packed, report, on_block=lambda: progress.update(1))
        left = remove_empty_flatfs(flatfs)
    finally:
        engine.dispose()
        packed.close()
    return _summary(report, left, root)


def _summary(report: Any, left: int, root: Any) -> int:
    print(
        f"packed {report.archives} archive(s) now, {report.already} already; "
        f"{report.loose} loose block(s); {report.blocks + report.loose} block(s), "
        f"{human_size(report.bytes)} written; {report.removed} flatfs file(s) removed"
    )
    if report.missing:
        print(f"{report.missing} archive(s) have no blocks in either layout (reverify repairs)")
    for cid in report.damaged:
        print(f"left in flatfs, a block missing or corrupt: archive {cid}")
    for cid in report.corrupt:
        print(f"left in flatfs, corrupt: block {cid}")
    if left:
        print(f"forage: {left} block(s) left in {root}/blocks", file=sys.stderr)
        return 1
    print(f"forage: nothing left in flatfs: {root} is a packed store", file=sys.stderr)
    return 0


def _archive_count(sessionmaker: Any) -> int:
    import sqlalchemy as sa

    from forage.db.models import Archive, ArchiveStatus

    with sessionmaker() as session:
        return int(
            session.scalar(
                sa.select(sa.func.count()).where(
                    Archive.status == ArchiveStatus.ARCHIVED, Archive.cid.is_not(None)
                )
            )
            or 0
        )


def _archive_roots(sessionmaker: Any, *, page: int = 1000) -> Any:
    """Every archived root CID, in pages of short queries (the table may be huge)."""
    import sqlalchemy as sa

    from forage.db.models import Archive, ArchiveStatus
    from storage import parse_cid

    after = 0
    while True:
        with sessionmaker() as session:
            rows = session.execute(
                sa.select(Archive.id, Archive.cid)
                .where(
                    Archive.status == ArchiveStatus.ARCHIVED,
                    Archive.cid.is_not(None),
                    Archive.id > after,
                )
                .order_by(Archive.id)
                .limit(page)
            ).all()
        for row in rows:
            yield parse_cid(row.cid)
        if len(rows) < page:
            return
        after = rows[-1].id


def run_rebuild(args: argparse.Namespace) -> int:
    from forage.archive.blocks import open_packed_store
    from storage import ObjectPackedBlockstore, rebuild_locator, rebuild_object_locator

    config = load_cli_config(args)
    store = open_packed_store(config)  # its locator: the one servers and workers read
    try:
        if isinstance(store, ObjectPackedBlockstore):
            report = rebuild_object_locator(store)
        else:
            report = rebuild_locator(store)
    finally:
        store.close()
    print(
        f"recorded {report.recorded} pack(s) ({report.blocks} blocks); "
        f"{report.known} already known; {len(report.damaged)} damaged"
    )
    for name in report.damaged:
        print(f"damaged, skipped: pack {name}")
    return 1 if report.damaged else 0
