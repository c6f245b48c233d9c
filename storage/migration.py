"""Moving a flatfs store's blocks into packs, one archive per pack, resumably.

``migrate_archive`` packs the DAG under one root (walked depth-first, root first: the order
a CAR has) and only then, once the pack is durable and recorded, removes the DAG's flatfs
files, the root last. So after a kill at any point a root still in flatfs means "not done":
a root that is packed too only needs its files removed; a pack is never written twice (a
packed root is skipped), and no block is removed before its pack is in place. ``migrate_loose``
then packs whatever flatfs still holds (blocks no archive reaches) into loose packs, and
``remove_empty_flatfs`` removes the emptied flatfs directories, so the directory opens as a
plain packed store.

The packed store given must read through to the flatfs one (``PackedBlockstore(legacy=)``):
two archives may share blocks, and the second one's walk finds them in the first one's pack.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from multiformats import CID

from storage.dag import walk_dag
from storage.errors import BlockFormatError, BlockNotFound, IntegrityError
from storage.flatfs import FilesystemBlockstore
from storage.packs import PackedBlockstore

__all__ = [
    "LOOSE_PACK_SIZE",
    "MigrationReport",
    "migrate_archive",
    "migrate_loose",
    "remove_empty_flatfs",
]

log = logging.getLogger(__name__)

#: The most block bytes one loose pack holds.
LOOSE_PACK_SIZE = 1024 * 1024 * 1024


@dataclass(slots=True)
class MigrationReport:
    """What a migration did: archives packed now, found packed by an earlier run, found in
    neither store, or left in flatfs because a block is missing or corrupt; blocks and bytes
    written into packs; loose blocks packed; flatfs files removed; corrupt loose blocks left."""

    archives: int = 0
    already: int = 0
    missing: int = 0
    damaged: list[str] = field(default_factory=list)
    blocks: int = 0
    bytes: int = 0
    loose: int = 0
    removed: int = 0
    corrupt: list[str] = field(default_factory=list)


def migrate_archive(
    flatfs: FilesystemBlockstore, packed: PackedBlockstore, root: CID, report: MigrationReport
) -> None:
    """Pack the DAG under ``root`` (unless packed already), then remove its flatfs files."""
    if packed.locate(root) is not None:
        if not flatfs.has(root):
            report.already += 1
            return
        cids = [block.cid for block in walk_dag(packed, root)]  # resuming after a kill
        report.already += 1
    elif not flatfs.has(root):
        report.missing += 1
        return
    else:
        cids = []
        try:
            with packed.batch() as batch:
                for block in walk_dag(packed, root):  # verified as read
                    batch.put(block)
                    cids.append(block.cid)
                    report.blocks += 1
                    report.bytes += len(block.data)
        except (BlockNotFound, IntegrityError, BlockFormatError) as exc:
            log.warning("archive %s left in flatfs: %s", root, exc)
            report.damaged.append(str(root))
            return
        report.archives += 1
    for cid in reversed(cids):  # the root last: its absence means every file is gone
        if flatfs.has(cid):
            flatfs.delete(cid)
            report.removed += 1


def migrate_loose(
    flatfs: FilesystemBlockstore,
    packed: PackedBlockstore,
    report: MigrationReport,
    *,
    pack_size: int = LOOSE_PACK_SIZE,
    on_block: Callable[[], None] | None = None,
) -> None:
    """Pack every block still in flatfs into loose packs of at most ``pack_size`` bytes,
    removing each pack's files once it is in place; corrupt blocks stay (and are listed)."""
    remaining = flatfs.iterate()
    exhausted = False
    while not exhausted:
        done: list[CID] = []
        size = 0
        exhausted = True
        with packed.batch() as batch:
            for cid in remaining:
                if packed.locate(cid) is None:
                    try:
                        block = flatfs.get(cid)
                    except IntegrityError as exc:
                        log.warning("loose block %s left in flatfs: %s", cid, exc)
                        report.corrupt.append(str(cid))
                        continue
                    except BlockNotFound:
                        continue  # removed meanwhile
                    batch.put(block)
                    size += len(block.data)
                    report.loose += 1
                    report.bytes += len(block.data)
                    if on_block is not None:
                        on_block()
                done.append(cid)  # packed now, or by an earlier run: only its file is left
                if size >= pack_size:
                    exhausted = False
                    break
        _remove(flatfs, done, report)


def _remove(flatfs: FilesystemBlockstore, cids: list[CID], report: MigrationReport) -> None:
    for cid in cids:
        flatfs.delete(cid)
        report.removed += 1


def remove_empty_flatfs(flatfs: FilesystemBlockstore) -> int:
    """Remove the flatfs store's empty shard directories, then its block directory if it
    is empty; return how many blocks it still holds."""
    blocks = flatfs.root / "blocks"
    if not blocks.is_dir():
        return 0
    for shard in os.listdir(blocks):
        with contextlib.suppress(OSError):
            os.rmdir(blocks / shard)  # only if empty
    left = sum(1 for _ in flatfs.iterate())
    if left == 0:
        with contextlib.suppress(OSError):
            os.rmdir(blocks)
    return left
