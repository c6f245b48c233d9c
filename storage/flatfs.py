"""``FilesystemBlockstore``, the embedded default blockstore: Kubo's flatfs layout on disk.

The layout follows Kubo's flatfs ``next-to-last/2`` sharding: ``blocks/<XY>/<KEY>.data``
where KEY is the unpadded upper-case base32 of the multihash and XY its next-to-last two
characters. Paths are only ever built from a parsed CID's multihash, never from caller text.

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
what killed processes left behind and never what live writers (threads or processes) use
(see ``storage.staging``).

Spec of the layout: https://github.com/ipfs/go-ds-flatfs (``next-to-last/2``); of the syncs:
syncfs(2), fsync(2) and rename(2) in the Linux man-pages.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
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
    StorageError,
    medium_error,
)
from storage.staging import (
    _SYNCFS,
    _fsync_dir,
    _remove_stale_staging,
    _Staging,
    _syncfs,
    _write_file,
)

__all__ = [
    "BATCH_BUFFER",
    "CommitStats",
    "FilesystemBlockstore",
]

log = logging.getLogger(__name__)

_KEY_FILE = re.compile(r"[A-Z2-7]{4,}\.data")
#: Bytes a filesystem batch keeps in memory before it writes staged files: a small artifact's
#: blocks reach the disk once, at commit, and a batch never holds more than this.
BATCH_BUFFER = 256 * 1024

Sync = Literal["syncfs", "fsync"]


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
            raise medium_error(exc, f"staging block {block.cid}") from exc

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
            raise medium_error(exc, "committing staged blocks") from exc
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
            raise medium_error(exc, f"opening blockstore {self.root}") from exc
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
            raise medium_error(exc, f"reading block {cid}") from exc
        verify_block(cid, data)
        return Block(cid, data)

    def get_trusted(self, cid: CID) -> Block:
        """The stored block, not re-hashed: for callers that verified its file since it was
        written (the mirror checks each archive once per process; ``reverify`` samples)."""
        cid = parse_cid(cid)
        try:
            return Block(cid, self._path(self._key(cid)).read_bytes())
        except FileNotFoundError as exc:
            raise BlockNotFound(cid) from exc
        except OSError as exc:
            raise medium_error(exc, f"reading block {cid}") from exc

    def put(self, block: Block) -> None:
        """Store ``block`` atomically and durably (a batch of one)."""
        with self.batch() as batch:
            batch.put(block)

    def delete(self, cid: CID) -> None:
        """Remove the block with ``cid``'s multihash, if any."""
        try:
            self._path(self._key(cid)).unlink(missing_ok=True)
        except OSError as exc:
            raise medium_error(exc, f"deleting block {cid}") from exc

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
