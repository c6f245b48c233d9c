"""Blockstores: where blocks live, behind one small ``Blockstore`` protocol.

Blocks are keyed by multihash, as in Kubo: a block is bytes named by their hash, and the codec
is how a reader interprets them. So ``has``/``get``/``delete`` ignore a CID's codec and
version, and ``iterate`` yields each block once as a CIDv1 raw CID (Kubo's ``AllKeysChan``
does the same).

``FilesystemBlockstore`` is the embedded default. Its layout follows Kubo's flatfs
``next-to-last/2`` sharding: ``blocks/<XY>/<KEY>.data`` where KEY is the unpadded upper-case
base32 of the multihash and XY its next-to-last two characters. Paths are only ever built from
a parsed CID's multihash, never from caller text. Writes are atomic (temp file, fsync,
rename, fsync of the directory). Staged batches (``store.batch()``) write into a private
directory under ``staging/`` on the same filesystem and move into place only when the
``with`` block exits cleanly; on an exception or a full disk they are removed. Each staging
directory is guarded by an ``flock``-ed lock file, so opening the store removes what killed
processes left behind and never what live writers (threads or processes) are using.

Spec of the layout: https://github.com/ipfs/go-ds-flatfs (``next-to-last/2``).
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

from multiformats import CID

from storage.cid import RAW, Block, parse_cid, verify_block
from storage.errors import BlockNotFound, BlockstoreError, BlockstoreFull, StorageError

__all__ = [
    "BlockSink",
    "BlockSource",
    "Blockstore",
    "FilesystemBlockstore",
    "MemoryBlockstore",
]

log = logging.getLogger(__name__)

_KEY_FILE = re.compile(r"[A-Z2-7]{4,}\.data")
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class BlockSink(Protocol):
    """Anything blocks can be handed to: a blockstore, a staged batch, a CAR writer."""

    def put(self, block: Block) -> None:
        """Accept ``block``; putting the same block twice is harmless."""


class BlockSource(Protocol):
    """Anything that returns a block by CID (what DAG traversal needs)."""

    def get(self, cid: CID) -> Block:
        """Return the block named ``cid``, verified; raise ``BlockNotFound`` if absent."""


@runtime_checkable
class Blockstore(Protocol):
    """The contract every block store backend implements (synchronous methods).

    - ``has`` / ``get`` / ``delete`` match on the multihash only;
    - ``get`` verifies the bytes and raises ``IntegrityError`` when they do not hash to the
      CID, ``BlockNotFound`` when there is no such block;
    - ``put`` is idempotent and safe under concurrent writers of the same block; it trusts the
      block (importer and CAR reader output is verified by construction; check other bytes
      with ``verify_block`` first);
    - ``delete`` of an absent block does nothing;
    - ``iterate`` yields every stored block once, as a CIDv1 raw CID;
    - ``batch()`` is a context manager whose ``put``s become visible together on a clean exit
      and are discarded on an exception.
    Failures of the medium raise ``BlockstoreError`` (``BlockstoreFull`` when out of space).
    """

    def has(self, cid: CID) -> bool:
        """Whether a block with ``cid``'s multihash is stored."""

    def get(self, cid: CID) -> Block:
        """The stored block, verified against ``cid``."""

    def put(self, block: Block) -> None:
        """Store ``block`` durably."""

    def delete(self, cid: CID) -> None:
        """Remove the block with ``cid``'s multihash, if any."""

    def iterate(self) -> Iterator[CID]:
        """Every stored block's CID (CIDv1, raw codec)."""

    def batch(self) -> AbstractContextManager[BlockSink]:
        """A staging area committed on clean exit, discarded on error."""


def _multihash(cid: CID) -> bytes:
    """The multihash of a CID parsed and checked by ``parse_cid``."""
    return bytes(parse_cid(cid).digest)


def _raw_cid(multihash: bytes) -> CID:
    return parse_cid(b"\x01" + bytes((RAW,)) + multihash)


class MemoryBlockstore:
    """A blockstore in a dict: for tests, hash-only pipelines and small temporary DAGs."""

    def __init__(self) -> None:
        self._blocks: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def has(self, cid: CID) -> bool:
        """Whether a block with ``cid``'s multihash is stored."""
        return _multihash(cid) in self._blocks

    def get(self, cid: CID) -> Block:
        """The stored block, verified against ``cid``."""
        cid = parse_cid(cid)
        data = self._blocks.get(bytes(cid.digest))
        if data is None:
            raise BlockNotFound(cid)
        verify_block(cid, data)
        return Block(cid, data)

    def put(self, block: Block) -> None:
        """Store ``block``."""
        self._blocks[_multihash(block.cid)] = bytes(block.data)

    def delete(self, cid: CID) -> None:
        """Remove the block with ``cid``'s multihash, if any."""
        self._blocks.pop(_multihash(cid), None)

    def iterate(self) -> Iterator[CID]:
        """Every stored block's CID (CIDv1, raw codec)."""
        for multihash in list(self._blocks):
            yield _raw_cid(multihash)

    @contextmanager
    def batch(self) -> Iterator[BlockSink]:
        """Stage puts in a separate dict; merge them only on a clean exit."""
        staged = MemoryBlockstore()
        yield staged
        self._blocks.update(staged._blocks)


def _translate(exc: OSError, what: str) -> BlockstoreError:
    """Turn an ``OSError`` into the matching ``BlockstoreError``."""
    if exc.errno in _FULL_ERRNOS:
        return BlockstoreFull(f"{what}: no space left ({exc.strerror})")
    return BlockstoreError(f"{what}: {exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _StagingArea:
    """A private directory under ``staging/``, guarded by an ``flock`` on ``<name>.lock``.

    The lock file is created and locked before the directory exists, and checked to still be
    the file on disk once locked, so a cleaner never removes a live writer's directory.
    """

    def __init__(self, staging: Path) -> None:
        while True:
            name = uuid.uuid4().hex
            lock_path = staging / f"{name}.lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                still_there = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                still_there = False
            except BaseException:
                os.close(fd)
                raise
            if still_there:
                break
            os.close(fd)
        self._lock_fd = fd
        self.lock_path = lock_path
        self.path = staging / name
        try:
            self.path.mkdir()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Remove the directory and everything in it, then the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.lock_path.unlink(missing_ok=True)
        os.close(self._lock_fd)


def _remove_stale_staging(staging: Path) -> int:
    """Remove staging directories and lock files whose writer is gone; return how many."""
    removed = 0
    for entry in os.scandir(staging):
        name = entry.name
        if entry.is_dir(follow_symlinks=False):
            lock_path, dir_path = staging / f"{name}.lock", Path(entry.path)
        elif name.endswith(".lock"):
            lock_path, dir_path = Path(entry.path), staging / name.removesuffix(".lock")
            if dir_path.is_dir():
                continue  # handled with its directory
        else:
            os.unlink(entry.path)
            removed += 1
            continue
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            shutil.rmtree(dir_path, ignore_errors=True)  # written by no one: stale
            removed += 1
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live writer holds it
            continue
        try:
            shutil.rmtree(dir_path, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    return removed


class _FilesystemBatch:
    """Blocks written to a staging directory, moved into the store by ``commit``."""

    def __init__(self, store: FilesystemBlockstore) -> None:
        self._store = store
        self._area = _StagingArea(store.root / "staging")
        self._keys: dict[str, None] = {}
        self._closed = False

    def put(self, block: Block) -> None:
        """Stage ``block`` (written and fsynced now, visible after commit)."""
        if self._closed:
            raise StorageError("put() on a batch that is already committed or discarded")
        key = self._store._key(block.cid)
        if key in self._keys or self._store._path(key).exists():
            return
        staged = self._area.path / f"{key}.data"
        try:
            _write_file(staged, block.data, durable=self._store.durable)
        except OSError as exc:
            raise _translate(exc, f"staging block {block.cid}") from exc
        self._keys[key] = None

    def commit(self) -> None:
        """Move every staged block into place, then make the renames durable."""
        self._closed = True
        shards: set[Path] = set()
        try:
            for key in self._keys:
                final = self._store._path(key)
                if final.parent not in shards:
                    final.parent.mkdir(exist_ok=True)
                    shards.add(final.parent)
                os.replace(self._area.path / f"{key}.data", final)
            if self._store.durable:
                for shard in shards:
                    _fsync_dir(shard)
        except OSError as exc:
            raise _translate(exc, "committing staged blocks") from exc
        finally:
            self._area.release()

    def discard(self) -> None:
        """Remove every staged block."""
        self._closed = True
        self._area.release()


def _write_file(path: Path, data: bytes, *, durable: bool) -> None:
    """Write ``data`` to a new file; on any failure remove what was written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


class FilesystemBlockstore:
    """Blocks as files under ``root``, flatfs-style; see the module docstring for the layout.

    ``durable=False`` skips fsync (for tests and throwaway stores). Opening the store creates
    its directories and removes staging left by killed writers.
    """

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        try:
            (self.root / "blocks").mkdir(parents=True, exist_ok=True)
            (self.root / "staging").mkdir(exist_ok=True)
            removed = _remove_stale_staging(self.root / "staging")
        except OSError as exc:
            raise _translate(exc, f"opening blockstore {self.root}") from exc
        if removed:
            log.info("blockstore %s: removed %d stale staging entries", self.root, removed)

    def __repr__(self) -> str:
        return f"FilesystemBlockstore({str(self.root)!r})"

    @staticmethod
    def _key(cid: CID) -> str:
        """The file key: unpadded upper-case base32 of the multihash of a parsed CID."""
        return base64.b32encode(_multihash(cid)).decode().rstrip("=")

    def _path(self, key: str) -> Path:
        return self.root / "blocks" / key[-3:-1] / f"{key}.data"

    def has(self, cid: CID) -> bool:
        """Whether a block with ``cid``'s multihash is stored."""
        return self._path(self._key(cid)).exists()

    def get(self, cid: CID) -> Block:
        """The stored block, verified against ``cid`` (``IntegrityError`` if corrupt)."""
        cid = parse_cid(cid)
        try:
            data = self._path(self._key(cid)).read_bytes()
        except FileNotFoundError as exc:
            raise BlockNotFound(cid) from exc
        except OSError as exc:
            raise _translate(exc, f"reading block {cid}") from exc
        verify_block(cid, data)
        return Block(cid, data)

    def put(self, block: Block) -> None:
        """Store ``block`` atomically and durably (a batch of one)."""
        if self.has(block.cid):
            return
        with self.batch() as batch:
            batch.put(block)

    def delete(self, cid: CID) -> None:
        """Remove the block with ``cid``'s multihash, if any."""
        try:
            self._path(self._key(cid)).unlink(missing_ok=True)
        except OSError as exc:
            raise _translate(exc, f"deleting block {cid}") from exc

    def iterate(self) -> Iterator[CID]:
        """Every stored block's CID (CIDv1, raw codec); stray files are skipped."""
        blocks = self.root / "blocks"
        for shard in sorted(os.listdir(blocks)):
            shard_path = blocks / shard
            if not shard_path.is_dir():
                continue
            for name in sorted(os.listdir(shard_path)):
                if not _KEY_FILE.fullmatch(name) or name[-8:-6] != shard:
                    continue
                key = name[: -len(".data")]
                try:
                    multihash = base64.b32decode(key + "=" * (-len(key) % 8))
                    yield _raw_cid(multihash)
                except (binascii.Error, StorageError):
                    log.warning("blockstore %s: skipping stray file %s", self.root, name)

    @contextmanager
    def batch(self) -> Iterator[BlockSink]:
        """Stage blocks on disk; move them into place on a clean exit, remove them on error.

        Raises ``BlockstoreFull`` (staged blocks removed) when the disk fills up.
        """
        try:
            batch = _FilesystemBatch(self)
        except OSError as exc:
            raise _translate(exc, f"creating a staging area in {self.root}") from exc
        try:
            yield batch
        except BaseException:
            batch.discard()
            raise
        batch.commit()
