"""Blockstores: where blocks live, behind one small ``Blockstore`` protocol.

Blocks are keyed by multihash, as in Kubo: a block is bytes named by their hash, and the codec
is how a reader interprets them. So ``has``/``get``/``delete`` ignore a CID's codec and
version, and ``iterate`` yields each block once as a CIDv1 raw CID (Kubo's ``AllKeysChan``
does the same).

This module holds the protocols and ``MemoryBlockstore``; ``PackedBlockstore``, the embedded
default (one pack file per archive), is in ``storage.packs``, and ``FilesystemBlockstore`` (one
file per block, Kubo's flatfs layout) in ``storage.flatfs``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from storage.cid import RAW, Block, parse_cid, verify_block
from storage.errors import BlockNotFound

if TYPE_CHECKING:
    from multiformats import CID

__all__ = [
    "BlockSink",
    "BlockSource",
    "Blockstore",
    "MemoryBlockstore",
]


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
