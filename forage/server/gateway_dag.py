"""The blocks of a trustless gateway's CAR: the content path followed through UnixFS
directories (501 for a sharded one), then the terminus's blocks as ``dag-scope`` and
``entity-bytes`` select them, depth-first; and the checks that refuse, before the stream
starts, what is known to fail.

Spec: https://specs.ipfs.tech/http-gateways/trustless-gateway/ (``dag-scope``,
``entity-bytes``) and https://github.com/ipfs/specs/blob/main/UNIXFS.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from aiohttp import web
from multiformats import CID

from forage.server.gateway_request import GatewayRequest, _bad_request
from storage import (
    Block,
    BlockFormatError,
    BlockNotFound,
    Blockstore,
    UnixFSData,
    decode_pbnode,
    decode_unixfs,
    walk_dag,
)

#: A UnixFS file deeper than this is malformed (Kubo's trees are 4 levels deep at 1 PiB).
MAX_DEPTH = 64

_RAW_CODEC = 0x55
_DAG_PB_CODEC = 0x70
_IDENTITY = 0x00
#: UnixFS ``Data.Type`` values (https://github.com/ipfs/specs/blob/main/UNIXFS.md).
_UNIXFS_RAW, _UNIXFS_DIRECTORY, _UNIXFS_FILE, _UNIXFS_HAMT = 0, 1, 2, 5


def _get(source: Blockstore, cid: CID) -> Block:
    """Fetch a block; identity CIDs carry their bytes and are never looked up."""
    if cid.hashfun.code == _IDENTITY:
        return Block(cid, bytes(cid.raw_digest))
    return source.get(cid)


def _has(source: Blockstore, cid: CID) -> bool:
    return cid.hashfun.code == _IDENTITY or source.has(cid)


def _unixfs(block: Block) -> tuple[UnixFSData | None, list[CID]]:
    """The UnixFS data (``None`` if not UnixFS) and the links of a dag-pb block."""
    node = decode_pbnode(block.data)
    links = [link.cid for link in node.links]
    if node.data is None:
        return None, links
    return decode_unixfs(node.data), links


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A content path followed to its end: the blocks that prove it, then its terminus."""

    proof: tuple[Block, ...]
    terminus: Block


def resolve_path(source: Blockstore, root: CID, path: Sequence[str]) -> _Resolved:
    """Follow ``path`` from ``root`` through plain UnixFS directories.

    Raises ``web.HTTPNotFound`` when a segment is missing or a block on the way is absent,
    ``web.HTTPNotImplemented`` for a sharded directory on the path.
    """
    proof: list[Block] = []
    block = _get(source, root)
    for depth, segment in enumerate(path):
        if block.cid.codec.code != _DAG_PB_CODEC:
            raise web.HTTPNotFound(text=f"no path below a {block.cid.codec.name} block")
        node = decode_pbnode(block.data)
        meta = decode_unixfs(node.data) if node.data is not None else None
        if meta is None or meta.type not in (_UNIXFS_DIRECTORY, _UNIXFS_HAMT):
            where = "/".join(path[:depth]) or "the root"
            raise web.HTTPNotFound(text=f"{where} is not a UnixFS directory")
        if meta.type == _UNIXFS_HAMT:
            raise web.HTTPNotImplemented(text="paths through sharded directories are not served")
        child = next((link.cid for link in node.links if link.name == segment), None)
        if child is None:
            raise web.HTTPNotFound(text="no such entry on the content path")
        proof.append(block)
        try:
            block = _get(source, child)
        except BlockNotFound:
            raise web.HTTPNotFound(text="a block on the content path is missing") from None
    return _Resolved(tuple(proof), block)


def _file_size(block: Block, meta: UnixFSData | None) -> int | None:
    """The byte length of a UnixFS file entity, or ``None`` if the block is not one."""
    if block.cid.codec.code == _RAW_CODEC:
        return len(block.data)
    if meta is None or meta.type not in (_UNIXFS_FILE, _UNIXFS_RAW):
        return None
    if meta.filesize is not None:
        return meta.filesize
    return len(meta.data or b"") + sum(meta.blocksizes)


def _range_blocks(
    source: Blockstore, block: Block, first: int, last: int, offset: int, depth: int
) -> Iterator[Block]:
    """Blocks of the file subtree at ``block`` (starting at byte ``offset``) that hold any
    byte in ``[first, last]``, root first, depth-first."""
    if depth > MAX_DEPTH:
        raise BlockFormatError(f"UnixFS file deeper than {MAX_DEPTH} levels at {block.cid}")
    yield block
    if block.cid.codec.code != _DAG_PB_CODEC:
        return
    meta, links = _unixfs(block)
    if meta is None or not links:
        return
    if len(meta.blocksizes) != len(links):
        for child in links:  # extents unknown: every child may hold the range
            yield from walk_dag(source, child)
        return
    position = offset + len(meta.data or b"")
    for child, size in zip(links, meta.blocksizes, strict=True):
        if position > last:
            break
        if size and position + size > first:
            yield from _range_blocks(source, _get(source, child), first, last, position, depth + 1)
        position += size


def _hamt_blocks(source: Blockstore, block: Block, depth: int) -> Iterator[Block]:
    """A sharded directory's own nodes (its enumeration), not the entries' contents."""
    if depth > MAX_DEPTH:
        raise BlockFormatError(f"HAMT deeper than {MAX_DEPTH} levels at {block.cid}")
    yield block
    node = decode_pbnode(block.data)
    meta = decode_unixfs(node.data) if node.data is not None else None
    if meta is None or meta.fanout is None or meta.fanout < 2:
        raise BlockFormatError(f"{block.cid}: HAMT node without a fanout")
    width = len(f"{meta.fanout - 1:X}")
    for link in node.links:
        if link.name is not None and len(link.name) == width:  # a sub-shard, not an entry
            yield from _hamt_blocks(source, _get(source, link.cid), depth + 1)


def car_blocks(source: Blockstore, request: GatewayRequest, resolved: _Resolved) -> Iterator[Block]:
    """Every block of the CAR answering ``request``, in order (identity blocks included;
    the writer leaves them out)."""
    yield from resolved.proof
    terminus = resolved.terminus
    codec = terminus.cid.codec.code
    if request.scope == "block" or codec not in (_RAW_CODEC, _DAG_PB_CODEC):
        yield terminus
        return
    if request.scope == "all":
        yield from walk_dag(source, terminus.cid)
        return
    meta = _unixfs(terminus)[0] if codec == _DAG_PB_CODEC else None
    size = _file_size(terminus, meta)
    if size is None:
        if meta is not None and meta.type == _UNIXFS_HAMT:
            yield from _hamt_blocks(source, terminus, 0)
        else:
            yield terminus  # a directory's enumeration is its node; other data is one block
        return
    if request.byte_range is None:
        yield from walk_dag(source, terminus.cid)
        return
    span = request.byte_range.resolve(size)
    if span is None:
        yield terminus
        return
    yield from _range_blocks(source, terminus, span[0], span[1], 0, 0)


def check_servable(request: GatewayRequest, resolved: _Resolved) -> None:
    """Refuse, before streaming, what is known to fail: ``entity-bytes`` starting past the
    end of a file (400) and a whole DAG under a codec we cannot follow (501)."""
    terminus = resolved.terminus
    codec = terminus.cid.codec.code
    if codec not in (_RAW_CODEC, _DAG_PB_CODEC):
        if request.scope == "all":
            raise web.HTTPNotImplemented(
                text=f"cannot follow links of codec {terminus.cid.codec.name}:"
                " ask for dag-scope=block or format=raw"
            )
        return
    if request.byte_range is None or request.byte_range.start < 0:
        return
    size = _file_size(terminus, _unixfs(terminus)[0] if codec == _DAG_PB_CODEC else None)
    if size and request.byte_range.start >= size:
        raise _bad_request(
            f"entity-bytes starts at {request.byte_range.start}, past the end of the"
            f" {size}-byte file"
        )
