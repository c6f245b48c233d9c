"""``PackedBlockstore``: one file per batch (one archive) instead of one file per block.

At registry scale a store of one file per 256 KiB block holds hundreds of millions of small
files. Here a ``batch()`` is written as one *pack* (``storage.packformat``: the blocks back to
back, an index, a footer), named by the SHA-256 of its index and sharded by its first four hex
digits: ``<root>/packs/ab/cd/<name>.pack``. A ``BlockLocator`` (by default ``SQLiteLocator`` in
``<root>/locator.sqlite``) maps each multihash to its pack and offset.

A batch keeps its first bytes in memory and writes the rest, in order, to a temporary file in
the store's staging area (``<root>/staging``, the same ``flock``-guarded areas as
``storage.flatfs``, so opening a store removes what killed writers left and nothing a live
writer uses). A clean exit seals the file (index, footer) and commits it:

1. the pack and every pack committing at the same moment (group commit, as in
   ``storage.flatfs``) are noted in the locator as *expected*;
2. their bytes and the notes are made durable: one ``syncfs(2)`` for the group (or, with
   ``sync="fsync"``, an ``fsync`` per pack when sealed and a synced note);
3. each is renamed into its shard (with ``fsync``, the renames are synced);
4. their entries are recorded, which clears the notes.

So nothing half-written is ever visible and ``has()`` is true only for a block whose pack is
in place. A crash after 2 loses nothing: opening the store (``storage.packrecovery``) records
every expected pack that is in place, moves sealed and verified ones still in a dead writer's
staging into place (a power cut may undo a rename the ``syncfs`` mode did not sync), and
forgets notes whose pack never came. One sync per group, where flatfs needs two. A batch
whose blocks are all stored already writes nothing.

``get`` verifies a block against its CID; ``get_trusted`` does not (the mirror, after
verifying an archive once). ``delete``
marks the block deleted in the locator; its bytes stay in the pack until a compaction (not
written yet) rewrites packs. A store opened with ``legacy=`` a flatfs store reads through to
it for blocks not packed yet (``forage blocks migrate`` moves them), and deletes in both.

Spec of the syncs: syncfs(2), fsync(2) and rename(2) in the Linux man-pages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from multiformats import CID

from storage.blockstore import BlockSink, _multihash, _raw_cid
from storage.cid import Block, parse_cid, verify_block
from storage.errors import (
    BlockNotFound,
    BlockstoreError,
    IntegrityError,
    StorageError,
    medium_error,
)
from storage.flatfs import CommitStats, FilesystemBlockstore
from storage.locator import BlockLocation, BlockLocator, SQLiteLocator
from storage.packformat import IndexEntry, encode_index, pack_footer, pack_name
from storage.packrecovery import STALE_NOTE, RebuildReport, recover
from storage.staging import _SYNCFS, _fsync_dir, _remove_stale_staging, _Staging, _syncfs

__all__ = [
    "STALE_NOTE",
    "PackedBlockstore",
    "RebuildReport",
]

log = logging.getLogger(__name__)

#: Bytes a batch keeps in memory before it starts its temporary file: most archives' packs
#: are written with one ``write`` at commit.
BATCH_BUFFER = 1024 * 1024
#: Where the packs are, under the store's root.
PACKS_DIR = "packs"
LOCATOR_FILE = "locator.sqlite"

Sync = Literal["syncfs", "fsync"]


@dataclass(slots=True)
class _Sealed:
    """A batch's finished temporary file, waiting for its group's commit."""

    name: str
    path: str
    entries: list[IndexEntry]


class _PackBatch:
    """One pack being written: the blocks in order, in memory then in a temporary file."""

    def __init__(self, store: PackedBlockstore) -> None:
        self._store = store
        self._entries: list[IndexEntry] = []
        self._seen: set[bytes] = set()
        self._buffer = bytearray()
        self._size = 0
        self._fd: int | None = None
        self._path: str | None = None
        self._closed = False

    def put(self, block: Block) -> None:
        """Append ``block`` to the pack (once; visible after commit)."""
        if self._closed:
            raise StorageError("put() on a batch that is already committed or discarded")
        multihash = _multihash(block.cid)
        if multihash in self._seen:
            return
        self._seen.add(multihash)
        data = block.data
        self._entries.append(IndexEntry(multihash, self._size, len(data)))
        self._size += len(data)
        self._buffer += data
        if len(self._buffer) >= BATCH_BUFFER:
            try:
                self._flush()
            except OSError as exc:
                raise medium_error(exc, f"staging block {block.cid}") from exc

    def _flush(self) -> None:
        if self._fd is None:
            directory, prefix = self._store._staging.acquire()
            self._path = f"{directory}/{prefix}pack"
            try:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except BaseException:
                self._path = None
                self._store._staging.release()
                raise
        while self._buffer:
            del self._buffer[: os.write(self._fd, self._buffer)]

    def commit(self) -> None:
        """Seal the pack and move it into place, unless every block is stored already."""
        self._closed = True
        try:
            if self._entries and not self._store._all_stored(self._entries):
                index = encode_index(self._entries)
                self._buffer += index
                self._buffer += pack_footer(self._size, index, len(self._entries))
                self._flush()
                assert self._fd is not None and self._path is not None
                if self._store.sync == "fsync":
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
                sealed = _Sealed(pack_name(index), self._path, self._entries)
                self._store._committer.commit(sealed)
        except OSError as exc:
            self.discard()
            raise medium_error(exc, "committing a pack") from exc
        except BaseException:
            self.discard()
            raise
        self.discard()

    def discard(self) -> None:
        """Forget the blocks and remove the temporary file, if any is left."""
        self._closed = True
        self._buffer.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None
            self._store._staging.release()


class _Group:
    __slots__ = ("done", "error", "sealed")

    def __init__(self) -> None:
        self.sealed: list[_Sealed] = []
        self.done = False
        self.error: BaseException | None = None


class _GroupCommitter:
    """Commits the packs of every thread committing at the same moment, sharing the syncs
    (a thread arriving while a group commits joins the next, which the first of its members
    to get there commits for all)."""

    def __init__(self, store: PackedBlockstore) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._next = _Group()
        self._busy = False
        self.batches = 0
        self.groups = 0

    def commit(self, sealed: _Sealed) -> None:
        """Return once ``sealed`` is in place, durable and recorded; raise if its group
        failed (then its pack may be in place and expected, never half-written)."""
        with self._cond:
            group = self._next
            group.sealed.append(sealed)
            self.batches += 1
            while not group.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                self._next = _Group()
                self.groups += 1
                self._cond.release()
                try:
                    self._store._move_into_place(group.sealed)
                except BaseException as exc:
                    group.error = exc
                    if not isinstance(exc, Exception):
                        raise
                finally:
                    self._cond.acquire()
                    group.done = True
                    self._busy = False
                    self._cond.notify_all()
        error = group.error
        if isinstance(error, OSError):
            raise OSError(error.errno, error.strerror, error.filename) from error
        if isinstance(error, BlockstoreError):
            raise type(error)(str(error)) from error
        if error is not None:
            raise BlockstoreError(f"committing packs: {error!r}") from error


class PackedBlockstore:
    """Blocks in packs under ``root``, one pack per batch; see the module docstring.

    ``locator`` defaults to a ``SQLiteLocator`` at ``<root>/locator.sqlite``. ``durable=False``
    skips every sync (tests, throwaway stores); ``sync`` is ``"syncfs"`` (the default where
    the C library has it) or ``"fsync"``, as for ``FilesystemBlockstore``. ``legacy`` is a
    flatfs store read through for blocks not packed yet. Opening removes staging left by
    killed writers and records packs a crash left unrecorded.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        durable: bool = True,
        sync: Sync | None = None,
        locator: BlockLocator | None = None,
        legacy: FilesystemBlockstore | None = None,
    ) -> None:
        if sync not in (None, "syncfs", "fsync"):
            raise StorageError(f"unknown sync {sync!r}: use 'syncfs' or 'fsync'")
        if sync == "syncfs" and _SYNCFS is None:
            raise StorageError("syncfs(2) is not available on this system: use sync='fsync'")
        self.root = Path(root)
        self.packs = self.root / PACKS_DIR
        self.durable = durable
        chosen: Sync = sync or ("syncfs" if _SYNCFS is not None else "fsync")
        self.sync: Sync | None = chosen if durable else None
        self.legacy = legacy
        try:
            self.packs.mkdir(parents=True, exist_ok=True)
            (self.root / "staging").mkdir(exist_ok=True)
        except OSError as exc:
            raise medium_error(exc, f"opening blockstore {self.root}") from exc
        self.locator: BlockLocator = locator or SQLiteLocator(
            self.root / LOCATOR_FILE, durable=durable, sync_expect=self.sync != "syncfs"
        )  # with syncfs, the sync before the renames also makes the expected note durable
        try:
            self._recover()  # before the cleaning: a crash may leave sealed packs in staging
            removed = _remove_stale_staging(self.root / "staging")
        except OSError as exc:
            raise medium_error(exc, f"opening blockstore {self.root}") from exc
        if removed:
            log.info("blockstore %s: removed %d stale staging entries", self.root, removed)
        self._staging = _Staging(self.root / "staging")
        self._committer = _GroupCommitter(self)

    def __repr__(self) -> str:
        return f"PackedBlockstore({str(self.root)!r})"

    @property
    def commit_stats(self) -> CommitStats:
        """Packs committed so far by this instance, and the sync rounds they took."""
        return CommitStats(self._committer.batches, self._committer.groups)

    def pack_path(self, name: str) -> str:
        """Where the pack ``name`` lives (``name`` is a checked 64-digit hex name)."""
        return f"{self.packs}/{name[:2]}/{name[2:4]}/{name}.pack"

    def _recover(self) -> None:
        """Bring the locator in step with the packs after a crash (``storage.packrecovery``;
        a store keeping its packs elsewhere overrides it)."""
        recover(self)

    def _all_stored(self, entries: Sequence[IndexEntry]) -> bool:
        return all(self.locator.find(entry.multihash) is not None for entry in entries)

    def _move_into_place(self, group: list[_Sealed]) -> None:
        """Note the group's packs, make them (and the notes) durable, rename each into its
        shard, then record their entries. With ``syncfs`` the renames are not synced: a
        crash that undoes one leaves a sealed pack in staging and its note, from which the
        next opening moves it into place (``storage.packrecovery``). With ``fsync`` (each
        pack was synced when sealed, the note is committed with a sync) the renames are."""
        self.locator.expect([sealed.name for sealed in group])
        if self.sync == "syncfs":
            _syncfs(self.root)
        shards: set[str] = set()
        for sealed in group:
            final = self.pack_path(sealed.name)
            try:
                os.replace(sealed.path, final)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.replace(sealed.path, final)
            shards.add(os.path.dirname(final))
        if self.sync == "fsync":
            self._sync_renames(shards)
        for sealed in group:
            self.locator.record(sealed.name, sealed.entries)

    def _sync_renames(self, shards: Iterable[str]) -> None:
        """Make renames into ``shards`` (and the shards' own creation) durable."""
        if self.sync == "syncfs":
            _syncfs(self.root)
        elif self.sync == "fsync":
            directories = set(shards)
            directories |= {os.path.dirname(shard) for shard in directories}
            for directory in sorted(directories | {str(self.packs)}, key=len, reverse=True):
                _fsync_dir(directory)

    def locate(self, cid: CID) -> BlockLocation | None:
        """Where a packed block is (``None``: not packed, perhaps in ``legacy``)."""
        return self.locator.find(_multihash(cid))

    def has(self, cid: CID) -> bool:
        """Whether a block with ``cid``'s multihash is stored."""
        if self.locator.find(_multihash(cid)) is not None:
            return True
        return self.legacy is not None and self.legacy.has(cid)

    def _read(self, cid: CID) -> Block | None:
        """The packed block's bytes as stored (``None``: not packed)."""
        location = self.locator.find(bytes(cid.digest))
        if location is None:
            return None
        (data,) = self._read_span(location.pack, location.offset, [location.length], [cid])
        return Block(cid, data)

    def _read_span(
        self, pack: str, offset: int, lengths: Sequence[int], cids: Sequence[CID]
    ) -> list[bytes]:
        """The adjacent blocks ``cids`` (``lengths`` bytes each from ``offset`` in ``pack``),
        with one read. A pack gone from disk makes its blocks absent: they are forgotten (so
        ``has`` stays true only for readable blocks, and a repair can store them again)."""
        total = sum(lengths)
        try:
            fd = os.open(self.pack_path(pack), os.O_RDONLY)
        except FileNotFoundError as exc:
            log.warning("blockstore %s: pack %s is missing; forgetting its blocks", self, pack)
            self.locator.forget(bytes(cid.digest) for cid in cids)
            raise BlockNotFound(cids[0]) from exc
        except OSError as exc:
            raise medium_error(exc, f"reading block {cids[0]}") from exc
        try:
            data = os.pread(fd, total, offset)
        except OSError as exc:
            raise medium_error(exc, f"reading block {cids[0]}") from exc
        finally:
            os.close(fd)
        if len(data) != total:
            raise IntegrityError(f"pack {pack}", f"{total} bytes at {offset}", f"{len(data)}")
        if len(lengths) == 1:
            return [data]
        view = memoryview(data)
        parts, position = [], 0
        for length in lengths:
            parts.append(bytes(view[position : position + length]))
            position += length
        return parts

    def get(self, cid: CID) -> Block:
        """The stored block, verified against ``cid`` (``IntegrityError`` if corrupt)."""
        cid = parse_cid(cid)
        block = self._read(cid)
        if block is None:
            if self.legacy is None:
                raise BlockNotFound(cid)
            return self.legacy.get(cid)
        verify_block(cid, block.data)
        return block

    def get_trusted(self, cid: CID) -> Block:
        """The stored block, not re-hashed: for callers that verified it since it was written
        (the mirror checks each archive once per process)."""
        cid = parse_cid(cid)
        block = self._read(cid)
        if block is None:
            if self.legacy is None:
                raise BlockNotFound(cid)
            return self.legacy.get_trusted(cid)
        return block

    def put(self, block: Block) -> None:
        """Store ``block`` durably (a batch of one)."""
        with self.batch() as batch:
            batch.put(block)

    def delete(self, cid: CID) -> None:
        """Mark the block deleted (its bytes stay in its pack until a compaction)."""
        self.locator.forget([_multihash(cid)])
        if self.legacy is not None:
            self.legacy.delete(cid)

    def iterate(self) -> Iterator[CID]:
        """Every stored block's CID (CIDv1, raw codec), once each."""
        for multihash in self.locator.multihashes():
            yield _raw_cid(multihash)
        if self.legacy is not None and (self.legacy.root / "blocks").is_dir():  # not migrated
            for cid in self.legacy.iterate():
                if self.locator.find(bytes(cid.digest)) is None:
                    yield cid

    @contextmanager
    def batch(self) -> Iterator[BlockSink]:
        """A pack in the making: committed on a clean exit, removed on an exception.

        Raises ``BlockstoreFull`` (the temporary file removed) when the disk fills up.
        """
        batch = _PackBatch(self)
        try:
            yield batch
        except BaseException:
            batch.discard()
            raise
        batch.commit()

    def close(self) -> None:
        """Release the locator's connections."""
        self.locator.close()
