"""Blockstores: where blocks live, behind one small ``Blockstore`` protocol.

Blocks are keyed by multihash, as in Kubo: a block is bytes named by their hash, and the codec
is how a reader interprets them. So ``has``/``get``/``delete`` ignore a CID's codec and
version, and ``iterate`` yields each block once as a CIDv1 raw CID (Kubo's ``AllKeysChan``
does the same).

``FilesystemBlockstore`` is the embedded default. Its layout follows Kubo's flatfs
``next-to-last/2`` sharding: ``blocks/<XY>/<KEY>.data`` where KEY is the unpadded upper-case
base32 of the multihash and XY its next-to-last two characters. Paths are only ever built from
a parsed CID's multihash, never from caller text.

Writes go through batches (``store.batch()``; ``put`` is a batch of one). A batch keeps its
first blocks in memory (at most ``BATCH_BUFFER`` bytes) and writes the rest as files in the
store's staging directory, ``staging/<id>/``, on the same filesystem; nothing is visible
until the ``with`` block exits cleanly, and on an exception or a full disk the staged files
are removed. A clean exit commits: staged data is made durable, each file is renamed into its
shard, and the renames are made durable before ``commit`` returns, so a block is never
visible half-written and a committed batch survives a power cut. Batches of different threads
that commit at the same moment share those syncs (group commit): with ``sync="syncfs"`` (the
default on Linux) one ``syncfs(2)`` before the renames and one after serve every batch of the
group, however many files it holds; with ``sync="fsync"`` each staged file is fsynced as it
is written and each shard directory once per group. The staging directory lives while any
batch is open and is guarded by an ``flock``-ed ``<id>.lock``, so opening the store removes
what killed processes left behind and never what live writers (threads or processes) use.

Spec of the layout: https://github.com/ipfs/go-ds-flatfs (``next-to-last/2``); of the syncs:
syncfs(2), fsync(2) and rename(2) in the Linux man-pages.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import itertools
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from multiformats import CID

from storage.cid import RAW, Block, parse_cid, verify_block
from storage.errors import BlockNotFound, BlockstoreError, BlockstoreFull, StorageError

__all__ = [
    "BATCH_BUFFER",
    "BlockSink",
    "BlockSource",
    "Blockstore",
    "CommitStats",
    "FilesystemBlockstore",
    "MemoryBlockstore",
]

log = logging.getLogger(__name__)

_KEY_FILE = re.compile(r"[A-Z2-7]{4,}\.data")
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

#: Bytes a filesystem batch keeps in memory before it writes staged files: a small artifact's
#: blocks reach the disk once, at commit, and a batch never holds more than this.
BATCH_BUFFER = 256 * 1024

Sync = Literal["syncfs", "fsync"]


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


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    """``syncfs(2)`` from the C library, or ``None`` where there is none (not Linux)."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


def _syncfs(path: Path) -> None:
    """Write back every dirty page and inode of the filesystem holding ``path``."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs(2) is not available", str(path))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
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


class _Staging:
    """The store's staging area, shared by its open batches: created when the first one needs
    it, removed when the last one ends (one directory and lock per busy period, not per batch).
    """

    def __init__(self, staging: Path) -> None:
        self._staging = staging
        self._lock = threading.Lock()
        self._area: _StagingArea | None = None
        self._users = 0
        self._names = itertools.count()

    def acquire(self) -> tuple[str, str]:
        """The area's directory and a file-name prefix no other batch uses; pair with
        ``release``."""
        with self._lock:
            if self._area is None:
                self._area = _StagingArea(self._staging)
            self._users += 1
            return str(self._area.path), f"{next(self._names)}."

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._area is not None:
                self._area.release()
                self._area = None


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
    """Blocks held in memory (up to ``BATCH_BUFFER`` bytes) or written to staged files, moved
    into the store by ``commit``. Entering a batch does no I/O."""

    def __init__(self, store: FilesystemBlockstore) -> None:
        self._store = store
        self._buffer: dict[str, bytes] = {}
        self._buffered = 0
        self._staged: dict[str, str] = {}
        self._present: set[str] = set()
        self._area: tuple[str, str] | None = None
        self._closed = False

    def put(self, block: Block) -> None:
        """Stage ``block`` (kept or written now, visible after commit)."""
        if self._closed:
            raise StorageError("put() on a batch that is already committed or discarded")
        key = self._store._key(block.cid)
        if key in self._buffer or key in self._staged:
            return
        data = bytes(block.data)
        if self._buffered + len(data) <= BATCH_BUFFER:
            self._buffer[key] = data  # looked up in the store when written: no I/O here
            self._buffered += len(data)
            return
        try:
            self._write_buffer()
            self._write(key, data)
        except OSError as exc:
            raise _translate(exc, f"staging block {block.cid}") from exc

    def _write(self, key: str, data: bytes) -> None:
        """Stage ``data`` as a file, unless the store already holds the block."""
        final = self._store._file(key)
        if os.path.exists(final):
            # Another writer's rename may not be durable yet: the commit syncs its shard.
            self._present.add(os.path.dirname(final))
            return
        if self._area is None:
            self._area = self._store._staging.acquire()  # the batch's first file
        directory, prefix = self._area
        path = f"{directory}/{prefix}{key}.data"
        _write_file(path, data, fsync=self._store._sync == "fsync")
        self._staged[key] = path

    def _write_buffer(self) -> None:
        while self._buffer:
            key, data = next(iter(self._buffer.items()))
            self._write(key, data)
            del self._buffer[key]
        self._buffered = 0

    def commit(self) -> None:
        """Write what is still in memory, then move every staged block into place durably."""
        self._closed = True
        try:
            self._write_buffer()
            if self._staged or (self._present and self._store.durable):
                self._store._committer.commit(self._staged.items(), self._present)
        except OSError as exc:
            self.discard()
            raise _translate(exc, "committing staged blocks") from exc
        except BaseException:
            self.discard()
            raise
        self._release()

    def discard(self) -> None:
        """Forget every staged block and remove whatever of it is still in staging."""
        self._closed = True
        self._buffer.clear()
        self._buffered = 0
        for path in self._staged.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._release()

    def _release(self) -> None:
        self._staged.clear()
        self._present.clear()
        if self._area is not None:
            self._area = None
            self._store._staging.release()


@dataclass(frozen=True, slots=True)
class CommitStats:
    """How many batches wrote files and were committed, and in how many groups (sync rounds):
    the ratio is what group commit saved."""

    batches: int
    groups: int


class _Group:
    """What the batches that commit together need: their staged files, the shards of blocks
    they found already in place, and how their commit ended."""

    __slots__ = ("done", "error", "files", "present")

    def __init__(self) -> None:
        self.files: list[tuple[str, str]] = []
        self.present: set[str] = set()
        self.done = False
        self.error: BaseException | None = None


class _GroupCommitter:
    """Moves staged files into place for every thread committing at the same moment.

    A thread that commits while another group is being committed joins the next group; the
    first of its members to get there commits it for all. So concurrent batches share the
    store's syncs instead of paying for them one by one.
    """

    def __init__(self, store: FilesystemBlockstore) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._next = _Group()
        self._busy = False
        self.batches = 0
        self.groups = 0

    def commit(self, files: Iterable[tuple[str, str]], present: Iterable[str] = ()) -> None:
        """Return once the staged ``(key, path)`` files are in place and they and the
        ``present`` shards are durable; raise ``OSError`` if the group they were committed
        with failed (then some of its files may be in place, none half-written)."""
        with self._cond:
            group = self._next
            group.files.extend(files)
            group.present.update(present)
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
                    self._store._move_into_place(group.files, group.present)
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
        if error is not None:
            raise BlockstoreError(f"committing staged blocks: {error!r}") from error


def _write_file(path: str, data: bytes, *, fsync: bool) -> None:
    """Write ``data`` to a new file; on any failure remove what was written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)


class FilesystemBlockstore:
    """Blocks as files under ``root``, flatfs-style; see the module docstring for the layout.

    ``durable=False`` skips every sync (for tests and throwaway stores). ``sync`` chooses how
    a commit is made durable: ``"syncfs"`` (one ``syncfs(2)`` before and one after a group's
    renames; the default where the C library has it, else ``"fsync"``) or ``"fsync"`` (each
    staged file as it is written, then each shard directory a group touched). Opening the
    store creates its directories and removes staging left by killed writers.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, durable: bool = True, sync: Sync | None = None
    ) -> None:
        if sync not in (None, "syncfs", "fsync"):
            raise StorageError(f"unknown sync {sync!r}: use 'syncfs' or 'fsync'")
        if sync == "syncfs" and _SYNCFS is None:
            raise StorageError("syncfs(2) is not available on this system: use sync='fsync'")
        self.root = Path(root)
        self._blocks = str(self.root / "blocks")
        self.durable = durable
        chosen: Sync = sync or ("syncfs" if _SYNCFS is not None else "fsync")
        self._sync: Sync | None = chosen if durable else None
        try:
            (self.root / "blocks").mkdir(parents=True, exist_ok=True)
            (self.root / "staging").mkdir(exist_ok=True)
            removed = _remove_stale_staging(self.root / "staging")
        except OSError as exc:
            raise _translate(exc, f"opening blockstore {self.root}") from exc
        if removed:
            log.info("blockstore %s: removed %d stale staging entries", self.root, removed)
        self._staging = _Staging(self.root / "staging")
        self._committer = _GroupCommitter(self)

    @property
    def sync(self) -> Sync | None:
        """How commits are made durable (``None`` when the store is not durable)."""
        return self._sync

    @property
    def commit_stats(self) -> CommitStats:
        """Batches committed so far by this instance, and the sync rounds they took."""
        return CommitStats(self._committer.batches, self._committer.groups)

    def __repr__(self) -> str:
        return f"FilesystemBlockstore({str(self.root)!r})"

    @staticmethod
    def _key(cid: CID) -> str:
        """The file key: unpadded upper-case base32 of the multihash of a parsed CID."""
        return base64.b32encode(_multihash(cid)).decode().rstrip("=")

    def _path(self, key: str) -> Path:
        return self.root / "blocks" / key[-3:-1] / f"{key}.data"

    def _file(self, key: str) -> str:
        """``_path`` as text, built without pathlib (it is on every block's path)."""
        return f"{self._blocks}/{key[-3:-1]}/{key}.data"

    def _move_into_place(self, staged: list[tuple[str, str]], present: set[str]) -> None:
        """Make the staged files' data durable, rename each into its shard (creating the
        shard on first use), then make the renames, and those of the ``present`` shards'
        blocks, durable."""
        if self._sync == "syncfs":
            _syncfs(self.root)
            if not staged:
                return
        shards = set(present)
        created = False
        for key, path in staged:
            final = self._file(key)
            try:
                os.replace(path, final)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(os.path.dirname(final))
                created = True
                os.replace(path, final)
            shards.add(os.path.dirname(final))
        if self._sync == "syncfs":
            _syncfs(self.root)
        elif self._sync == "fsync":
            for shard in shards:
                _fsync_dir(shard)
            if created:
                _fsync_dir(self.root / "blocks")

    def has(self, cid: CID) -> bool:
        """Whether a block with ``cid``'s multihash is stored."""
        return os.path.exists(self._file(self._key(cid)))

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
        batch = _FilesystemBatch(self)
        try:
            yield batch
        except BaseException:
            batch.discard()
            raise
        batch.commit()
