"""``ObjectPackedBlockstore``: a ``PackedBlockstore`` whose packs are objects in an
``ObjectStore`` (``storage.objects``): an S3 bucket (``storage.s3``) or a local directory.

The packs are the same bytes under the same names as in a local packed store (the key of a
pack is ``packs/ab/cd/<name>.pack``, its path relative to a local store's root), so a local
packed store copied into a bucket, with its locator, is an object-stored one. A batch is
staged in a temporary file under the local ``root`` as in ``storage.packs``, then committed:

1. the pack is noted in the locator as *expected*;
2. it is put into the object store (one atomic PUT, or a multipart upload completed at once;
   nothing half-written is ever visible);
3. its entries are recorded, which clears the note.

A crash between 2 and 3 loses nothing: opening the store records every expected pack that is
in the object store (reading its footer and index: a HEAD and two ranged GETs). Each thread
commits its own packs (an upload does not wait for another's, unlike the local group commit
that shares ``syncfs`` calls). Reads are ranged GETs: ``get`` verifies the bytes against their CIDs,
``get_trusted`` does not. Several hosts share one store when they
share the object store and a locator all of them reach (``forage.archive.locator``'s
database one); each host keeps its own staging directory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence

from multiformats import CID

from storage.errors import (
    BlockNotFound,
    BlockstoreError,
    ObjectNotFound,
    ObjectStoreUnavailable,
)
from storage.locator import BlockLocator
from storage.objects import ObjectStore
from storage.packformat import (
    FOOTER_SIZE,
    PACK_NAME,
    IndexEntry,
    decode_footer,
    decode_index,
    pack_name,
)
from storage.packrecovery import STALE_NOTE, RebuildReport
from storage.packs import PACKS_DIR, PackedBlockstore, _Sealed

__all__ = [
    "ObjectPackedBlockstore",
    "pack_key",
    "read_object_index",
    "rebuild_object_locator",
]

log = logging.getLogger(__name__)


def pack_key(name: str) -> str:
    """The object key of the pack ``name``: its path relative to a local store's root."""
    return f"{PACKS_DIR}/{name[:2]}/{name[2:4]}/{name}.pack"


def read_object_index(objects: ObjectStore, name: str) -> list[IndexEntry]:
    """The index of the pack ``name`` in ``objects``, checked against the name (a HEAD and
    two ranged reads). ``ObjectNotFound`` if absent, ``BlockstoreError`` if not a whole pack."""
    key = pack_key(name)
    size = objects.size(key)
    if size is None:
        raise ObjectNotFound(repr(objects), key)
    what = f"pack {name} in {objects!r}"
    if size < FOOTER_SIZE:
        raise BlockstoreError(f"{what}: {size} bytes, shorter than its footer")
    footer = objects.get_range(key, size - FOOTER_SIZE, FOOTER_SIZE)
    index_offset, index_length, count = decode_footer(footer, size, what=what)
    index = objects.get_range(key, index_offset, index_length)
    if pack_name(index) != name:
        raise BlockstoreError(f"{what}: index does not hash to the pack's name")
    return decode_index(index, count, index_offset, what=what)


class _ObjectCommitter:
    """Puts each sealed pack into the object store in its writer's own thread."""

    def __init__(self, store: ObjectPackedBlockstore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.batches = 0

    def commit(self, sealed: _Sealed) -> None:
        """Return once ``sealed`` is in the object store and recorded."""
        store = self._store
        store.locator.expect([sealed.name])
        store.objects.put(pack_key(sealed.name), sealed.path)
        store.locator.record(sealed.name, sealed.entries)
        with self._lock:
            self.batches += 1

    @property
    def groups(self) -> int:
        """Sync rounds: one per pack (each upload is its own)."""
        return self.batches


class ObjectPackedBlockstore(PackedBlockstore):
    """Packs in ``objects``, located by ``locator``, staged under the local ``root``.

    Unlike ``PackedBlockstore`` the locator is required: it must be reachable by every process
    that shares the object store (a SQLite one serves processes of one host only).
    """

    def __init__(
        self, objects: ObjectStore, root: str | os.PathLike[str], *, locator: BlockLocator
    ) -> None:
        self.objects = objects
        # The object store makes each pack durable; the local files are only staging.
        super().__init__(root, durable=False, locator=locator)
        self._committer = _ObjectCommitter(self)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ObjectPackedBlockstore({self.objects!r})"

    def pack_path(self, name: str) -> str:
        """The object key of the pack ``name``."""
        return pack_key(name)

    def _recover(self) -> None:
        """Record expected packs that are in the object store; drop stale notes."""
        now = time.time()
        for name, noted in self.locator.expected():
            try:
                entries = read_object_index(self.objects, name)
            except ObjectNotFound:
                if now - noted > STALE_NOTE:
                    self.locator.abandon(name)
                continue
            except ObjectStoreUnavailable:
                raise
            except BlockstoreError as exc:  # a damaged pack: the others still open, as on disk
                log.error("expected pack %s cannot be recorded: %s", name, exc)
                continue
            self.locator.record(name, entries)

    def _read_span(
        self, pack: str, offset: int, lengths: Sequence[int], cids: Sequence[CID]
    ) -> list[bytes]:
        """The adjacent blocks ``cids`` from ``offset`` in ``pack``, with one ranged GET. A
        pack gone from the object store makes its blocks absent (forgotten), as on disk."""
        total = sum(lengths)
        try:
            data = self.objects.get_range(pack_key(pack), offset, total)
        except ObjectNotFound as exc:
            log.warning("blockstore %s: pack %s is missing; forgetting its blocks", self, pack)
            self.locator.forget(bytes(cid.digest) for cid in cids)
            raise BlockNotFound(cids[0]) from exc
        if len(lengths) == 1:
            return [data]
        view = memoryview(data)
        parts, position = [], 0
        for length in lengths:
            parts.append(bytes(view[position : position + length]))
            position += length
        return parts

    def check(self) -> None:
        """Raise ``BlockstoreError`` unless the object store answers and accepts us (a health
        check: one request to a bucket)."""
        self.objects.check()

    def close(self) -> None:
        """Release the locator's connections and the object store's client."""
        super().close()
        self.objects.close()


def rebuild_object_locator(store: ObjectPackedBlockstore) -> RebuildReport:
    """Record every pack in the store's object store that its locator does not know (the way
    back from a lost locator: one listing, then a footer and index read per unknown pack)."""
    recorded = known = blocks = 0
    damaged: list[str] = []
    for key in store.objects.keys(f"{PACKS_DIR}/"):
        name = os.path.basename(key).removesuffix(".pack")
        if not key.endswith(".pack") or not PACK_NAME.fullmatch(name) or key != pack_key(name):
            continue
        if store.locator.recorded(name):
            known += 1
            continue
        try:
            entries = read_object_index(store.objects, name)
        except ObjectNotFound:
            continue  # deleted since the listing
        except ObjectStoreUnavailable:
            raise
        except BlockstoreError:
            damaged.append(name)
            continue
        store.locator.record(name, entries)
        recorded += 1
        blocks += len(entries)
    return RebuildReport(recorded, known, blocks, tuple(damaged))
