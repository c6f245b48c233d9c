"""Putting a packed blockstore's locator back in step with its packs after a crash or a loss.

``recover`` runs when a ``PackedBlockstore`` opens. Every pack a writer noted as *expected*
is either

- in place (the writer died after the rename): its entries are recorded;
- still in a dead writer's staging area, sealed (with ``sync="syncfs"`` a commit returns
  once the packs' bytes and notes are durable, before the renames are: a power cut may undo
  the rename): every block is checked against its multihash, then the pack is moved into
  place and recorded;
- nowhere: the note is dropped once older than ``STALE_NOTE`` (a live writer may still be
  about to rename it).

Staging areas whose ``flock`` a live writer holds are never touched. ``rebuild_locator``
records every pack the locator does not know, reading only each pack's footer and index:
the way back from a lost locator.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from storage.blockstore import _raw_cid
from storage.cid import verify_block
from storage.errors import BlockstoreError, StorageError
from storage.packformat import PACK_NAME, encode_index, pack_name, read_pack_index

if TYPE_CHECKING:
    from storage.packs import PackedBlockstore

__all__ = [
    "STALE_NOTE",
    "RebuildReport",
    "rebuild_locator",
    "recover",
]

log = logging.getLogger(__name__)

#: An expected pack not in place after this many seconds was abandoned by its writer.
STALE_NOTE = 600.0


def recover(store: PackedBlockstore) -> int:
    """Record the expected packs that arrived, move sealed ones a crash left in staging into
    place, drop stale notes; return how many packs were recorded. Run before the staging
    area is cleaned."""
    expected = dict(store.locator.expected())
    if not expected:
        return 0
    moved = [_move(store, name, path) for name, path in _staged(store, set(expected))]
    if any(moved):
        store._sync_renames([os.path.dirname(store.pack_path(n)) for n in expected])
    recorded = 0
    now = time.time()
    for name, noted in expected.items():
        try:
            entries = read_pack_index(store.pack_path(name))
        except FileNotFoundError:
            if now - noted > STALE_NOTE:
                store.locator.abandon(name)
            continue
        except BlockstoreError as exc:
            log.error("blockstore %s: expected pack %s is damaged: %s", store.root, name, exc)
            continue
        store.locator.record(name, entries)
        recorded += 1
        log.info("blockstore %s: recorded pack %s left unrecorded by a crash", store.root, name)
    return recorded


def _move(store: PackedBlockstore, name: str, path: str) -> bool:
    final = store.pack_path(name)
    if os.path.exists(final):
        return False
    os.makedirs(os.path.dirname(final), exist_ok=True)
    try:
        os.replace(path, final)
    except FileNotFoundError:
        return False  # another process recovering at the same moment moved it
    return True


def _staged(store: PackedBlockstore, names: set[str]) -> Iterator[tuple[str, str]]:
    """``(name, path)`` of whole, verified packs named in ``names`` in dead writers' areas."""
    staging = store.root / "staging"
    for entry in os.scandir(staging):
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd: int | None = os.open(staging / f"{entry.name}.lock", os.O_RDWR)
        except FileNotFoundError:
            fd = None  # no lock file: no live writer
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for file in os.scandir(entry.path):
                name = _sealed_name(file.path, names)
                if name is not None:
                    yield name, file.path
        except BlockingIOError:
            continue  # a live writer holds it
        finally:
            if fd is not None:
                os.close(fd)


def _sealed_name(path: str, names: set[str]) -> str | None:
    """The name of the pack at ``path`` if it is one of ``names`` and every block in it
    hashes to its multihash, else ``None``."""
    try:
        entries = read_pack_index(path, check_name=False)
    except (OSError, BlockstoreError):
        return None
    name = pack_name(encode_index(entries))
    if name not in names:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        for entry in entries:
            verify_block(_raw_cid(entry.multihash), os.pread(fd, entry.length, entry.offset))
    except StorageError as exc:
        log.warning("staged pack %s is not whole, left to be removed: %s", path, exc)
        return None
    finally:
        os.close(fd)
    return name


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """What ``rebuild_locator`` found: packs recorded now, packs already recorded, blocks
    recorded now, and packs that are not whole packs (left in place, logged)."""

    recorded: int
    known: int
    blocks: int
    damaged: tuple[str, ...]


def _pack_files(packs: Path) -> Iterator[tuple[str, Path]]:
    for first in sorted(os.listdir(packs)):
        if len(first) != 2 or not (packs / first).is_dir():
            continue
        for second in sorted(os.listdir(packs / first)):
            directory = packs / first / second
            if len(second) != 2 or not directory.is_dir():
                continue
            for file in sorted(os.listdir(directory)):
                name = file.removesuffix(".pack")
                if file.endswith(".pack") and PACK_NAME.fullmatch(name):
                    yield name, directory / file


def rebuild_locator(store: PackedBlockstore) -> RebuildReport:
    """Record every pack under the store that its locator does not know, reading only each
    pack's footer and index: the way back from a lost or new locator (deletions live only in
    the locator, so a rebuilt one has none)."""
    recorded = known = blocks = 0
    damaged: list[str] = []
    for name, path in _pack_files(store.packs):
        if store.locator.recorded(name):
            known += 1
            continue
        try:
            entries = read_pack_index(str(path))
        except BlockstoreError as exc:
            log.warning("blockstore %s: skipping damaged pack: %s", store.root, exc)
            damaged.append(name)
            continue
        store.locator.record(name, entries)
        recorded += 1
        blocks += len(entries)
    return RebuildReport(recorded, known, blocks, tuple(damaged))
