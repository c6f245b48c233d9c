"""Repair from the network: fetch an archive's missing or damaged blocks, verify, restore.

A block lost or damaged on the local disk exists elsewhere: on the operator's pinning
backends (every archive is pinned there) and on any IPFS node that gateways reach. Fetching
it back is cheaper than downloading the artifact from its registry again, and works when the
registry no longer has the release. :func:`repair_dag` walks the archive's DAG from its root
(deleting blocks whose bytes no longer match their CID), then asks each source
(:mod:`forage.archive.sources`: the Kubo pinning backends' RPC, the backends' gateways, the
``[repair] gateways``) in turn for what is missing: first a CAR of the whole DAG, keeping
only the blocks it lacks, then, for whatever the CAR did not bring, single blocks. Children
of a fetched node join the wanted set as they appear, and the walk is repeated until nothing
is missing.

Nothing is trusted: every block, from a CAR or alone, is checked against its CID before it
is stored. A source that sends wrong bytes, fails (5xx, timeout, refusal, redirect, an
answer over its size bound) or overruns the ``[repair] deadline`` is dropped for that
archive and the next one asked; one that merely lacks a block (404) is still asked for the
others. A block is at most ``max_block_size`` bytes, a CAR the archive's size plus room for
its DAG.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

from multiformats import CID

from forage.archive.sources import RepairSource, car_blocks
from forage.config import RepairConfig
from storage import (
    Block,
    BlockNotFound,
    BlockSource,
    Blockstore,
    BlockstoreError,
    IntegrityError,
    StorageError,
    decode_pbnode,
    parse_cid,
    verify_block,
    walk_dag,
)

__all__ = [
    "RepairReport",
    "Supplied",
    "TolerantSource",
    "find_damage",
    "repair_dag",
]

log = logging.getLogger(__name__)

#: Walk, fetch, walk again: a node fetched in one round may reveal missing children for the
#: next. Kubo's trees are 4 levels deep at 1 PiB, so a few rounds always suffice.
MAX_ROUNDS = 6
#: Verified blocks held in memory before they are stored together.
FLUSH_BYTES = 8 << 20


# -- finding the damage -------------------------------------------------------------------------


class TolerantSource:
    """A block source that notes missing and corrupt blocks instead of stopping at the first,
    standing in an empty block for them (so a walk still reaches the rest of the DAG)."""

    def __init__(self, source: BlockSource) -> None:
        self.source = source
        self.corrupt: list[CID] = []
        self.missing: list[CID] = []

    def get(self, cid: CID) -> Block:
        try:
            return self.source.get(cid)
        except IntegrityError:
            self.corrupt.append(cid)
        except BlockNotFound:
            self.missing.append(cid)
        return Block(cid, b"")


def find_damage(store: Blockstore, root: CID) -> dict[bytes, CID]:
    """The blocks of ``root``'s DAG that are missing or corrupt, by multihash; the corrupt ones
    are deleted (a blockstore never overwrites a block it has, so the repair can store them)."""
    tolerant = TolerantSource(store)
    try:
        for _block in walk_dag(tolerant, root):
            pass
    except StorageError:
        log.debug("DAG walk of %s stopped early", root, exc_info=True)
    for cid in tolerant.corrupt:
        store.delete(cid)
    return {bytes(cid.digest): cid for cid in [*tolerant.missing, *tolerant.corrupt]}


# -- the repair --------------------------------------------------------------------------------


@dataclass(slots=True)
class Supplied:
    """What one source supplied: blocks and their bytes."""

    blocks: int = 0
    bytes: int = 0


@dataclass(slots=True)
class RepairReport:
    """What one repair found and did.

    ``damaged`` counts the distinct blocks found missing or corrupt (children of missing
    nodes included, as they came to light), ``left`` those no source supplied, ``supplied``
    maps each source's label to what it gave, ``problems`` says why sources were dropped.
    """

    damaged: int = 0
    left: int = 0
    supplied: dict[str, Supplied] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def fetched(self) -> int:
        """Blocks fetched and stored, from every source."""
        return sum(s.blocks for s in self.supplied.values())

    def describe(self) -> str:
        """Where the bytes came from, in words: ``2 blocks (300 B) from gw (gateway)``."""
        parts = [
            f"{s.blocks} block{'s' if s.blocks != 1 else ''} ({s.bytes} B) from {label}"
            for label, s in self.supplied.items()
            if s.blocks
        ]
        return ", ".join(parts) or "nothing fetched"

    def shortfall(self) -> str:
        """Why the repair did not make the archive whole, in words."""
        if not self.damaged:
            return "no block is missing or corrupt, so there was nothing to fetch"
        if not self.left:
            return "every block was restored, yet the file still fails verification"
        found = f"{self.left} of {self.damaged} blocks found nowhere"
        return "; ".join([found, *self.problems])


@dataclass(slots=True)
class _Repair:
    """One DAG's repair in progress: what is wanted, the limits, the report."""

    store: Blockstore
    root: CID
    config: RepairConfig
    car_limit: int
    report: RepairReport
    wanted: dict[bytes, CID] = field(default_factory=dict)
    seen: set[bytes] = field(default_factory=set)
    fetched: set[bytes] = field(default_factory=set)
    held: list[Block] = field(default_factory=list)
    held_bytes: int = 0
    dropped: set[int] = field(default_factory=set)

    def want(self, cids: dict[bytes, CID]) -> None:
        self.wanted.update(cids)
        self.seen.update(cids)

    async def store_block(self, cid: CID, data: bytes, supplied: Supplied) -> None:
        """Keep a verified block for the store; its children the store lacks become wanted."""
        self.fetched.add(bytes(cid.digest))
        self.held.append(Block(cid, data))
        self.held_bytes += len(data)
        supplied.blocks += 1
        supplied.bytes += len(data)
        if self.held_bytes >= FLUSH_BYTES:
            await self.flush()
        if cid.codec.name != "dag-pb":
            return
        for link in decode_pbnode(data).links:
            child = link.cid
            key = bytes(child.digest)
            if child.hashfun.name == "identity" or key in self.wanted or key in self.fetched:
                continue
            if not await asyncio.to_thread(self.store.has, child):
                self.want({key: child})

    async def flush(self) -> None:
        """Store the blocks held, in one batch (one commit; one pack in a packed store)."""
        blocks, self.held, self.held_bytes = self.held, [], 0
        if blocks:
            await asyncio.to_thread(_put_all, self.store, blocks)

    async def from_car(self, source: RepairSource, supplied: Supplied) -> None:
        """Keep the wanted blocks of a CAR of the whole DAG; stop once none is wanted."""
        async with (
            source.car(self.root, limit=self.car_limit) as body,
            aclosing(car_blocks(body, max_block_size=self.config.max_block_size)) as blocks,
        ):
            async for block in blocks:
                cid = self.wanted.pop(bytes(block.cid.digest), None)
                if cid is not None:
                    await self.store_block(cid, block.data, supplied)
                if not self.wanted:
                    return

    async def from_blocks(self, source: RepairSource, supplied: Supplied) -> None:
        """Ask for each wanted block alone; a block the source lacks stays wanted."""
        asked: set[bytes] = set()
        while pending := [key for key in self.wanted if key not in asked]:
            for key in pending:
                asked.add(key)
                cid = self.wanted[key]
                try:
                    data = await source.block(cid, limit=self.config.max_block_size)
                except BlockNotFound:
                    continue
                verify_block(cid, data)
                del self.wanted[key]
                await self.store_block(cid, data, supplied)

    async def ask(self, source: RepairSource) -> None:
        """Fetch what is wanted from one source; drop it on wrong bytes or failure."""
        supplied = self.report.supplied.setdefault(source.label, Supplied())
        try:
            async with asyncio.timeout(self.config.deadline):
                try:
                    await self.from_car(source, supplied)
                except (IntegrityError, BlockstoreError):
                    raise
                except StorageError as exc:
                    log.info("repair of %s: no whole CAR from %s: %s", self.root, source.label, exc)
                if self.wanted:
                    await self.from_blocks(source, supplied)
        except BlockstoreError:
            raise  # the local disk failed, not the source
        except IntegrityError as exc:
            self.drop(source, f"sent wrong bytes ({exc})")
        except StorageError as exc:
            self.drop(source, str(exc))
        except TimeoutError:
            self.drop(source, f"no answer within the {self.config.deadline:g} s deadline")
        await self.flush()  # what was verified before a failure is kept

    def drop(self, source: RepairSource, why: str) -> None:
        self.dropped.add(id(source))
        self.report.problems.append(f"{source.label}: {why}")
        log.warning("repair of %s: %s dropped: %s", self.root, source.label, why)


async def repair_dag(
    store: Blockstore,
    root: str | CID,
    sources: Sequence[RepairSource],
    *,
    size: int,
    config: RepairConfig,
) -> RepairReport:
    """Restore the missing and corrupt blocks of the DAG under ``root`` from ``sources``.

    ``size`` is the file's size, which bounds a CAR of its DAG. Returns what was found and
    fetched; the caller verifies the archive again (a repaired DAG holds the blocks its CIDs
    name, which is not yet the digest the registry published).
    """
    root = parse_cid(root)
    repair = _Repair(store, root, config, size + size // 8 + (1 << 20), RepairReport())
    for round_ in range(MAX_ROUNDS + 1):
        repair.wanted = {}
        repair.want(await asyncio.to_thread(find_damage, store, root))
        if not repair.wanted or round_ == MAX_ROUNDS:
            break
        before = repair.report.fetched
        for source in _live(sources, repair.dropped):
            if repair.wanted:
                await repair.ask(source)
        if repair.report.fetched == before:
            break
    repair.report.damaged = len(repair.seen)
    repair.report.left = len(repair.wanted)
    return repair.report


def _put_all(store: Blockstore, blocks: list[Block]) -> None:
    with store.batch() as sink:
        for block in blocks:
            sink.put(block)


def _live(sources: Sequence[RepairSource], dropped: set[int]) -> Iterator[RepairSource]:
    return (source for source in sources if id(source) not in dropped)
