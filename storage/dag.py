"""Walking DAGs held in any block source: depth-first block order and UnixFS file bytes.

``walk_dag`` yields each block of a DAG once, root first, children in link order: the order
of a "filecoin-deterministic" CAR and of a trustless gateway's ``order=dfs`` response.
``read_file`` streams a UnixFS file's bytes back from its root, checking the sizes recorded
in every node. Both keep only the current path through the tree (plus, for ``walk_dag``, the
set of CIDs already emitted), never the data.

Specs: https://ipld.io/specs/transport/car/carv1/ and
https://github.com/ipfs/specs/blob/main/UNIXFS.md
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

from multiformats import CID

from storage.blockstore import BlockSource
from storage.cid import DAG_PB, IDENTITY, RAW, Block, parse_cid
from storage.dagpb import decode_pbnode
from storage.errors import BlockFormatError
from storage.unixfs import TYPE_FILE, TYPE_RAW, decode_unixfs

__all__ = ["read_file", "walk_dag"]

#: A UnixFS file deeper than this is refused (Kubo's trees are 4 levels deep at 1 PiB).
MAX_DEPTH = 64


def _get(source: BlockSource, cid: CID) -> Block:
    """Fetch a block; identity CIDs carry their bytes and are never looked up."""
    if cid.hashfun.code == IDENTITY:
        return Block(cid, bytes(cid.raw_digest))
    return source.get(cid)


def _children(block: Block) -> list[CID]:
    codec = block.cid.codec.code
    if codec == RAW:
        return []
    if codec == DAG_PB:
        return [link.cid for link in decode_pbnode(block.data).links]
    raise BlockFormatError(f"cannot follow links of {block.cid}: codec {block.cid.codec.name}")


def walk_dag(source: BlockSource, root: CID) -> Iterator[Block]:
    """Yield every block reachable from ``root`` once, depth-first, root first.

    Raw and dag-pb blocks are followed; any other codec raises ``BlockFormatError``. A missing
    block raises ``BlockNotFound`` from the source.
    """
    seen: set[tuple[int, bytes]] = set()
    stack: list[Iterator[CID]] = [iter([parse_cid(root)])]
    while stack:
        cid = next(stack[-1], None)
        if cid is None:
            stack.pop()
            continue
        key = (cid.codec.code, bytes(cid.digest))
        if key in seen:
            continue
        seen.add(key)
        block = _get(source, cid)
        yield block
        children = _children(block)
        if children:
            stack.append(iter(children))


def read_file(source: BlockSource, root: CID) -> Iterator[bytes]:
    """Yield the bytes of the UnixFS file at ``root``, in order.

    Raises ``BlockFormatError`` when a node is not a UnixFS file (a directory, say), when the
    sizes recorded in a node disagree with its children, or when the tree is absurdly deep.
    """
    yield from _file_bytes(source, parse_cid(root), None, 0)


def _file_bytes(
    source: BlockSource, cid: CID, expected: int | None, depth: int
) -> Generator[bytes, None, int]:
    """Yield one subtree's bytes; return how many there were."""
    if depth > MAX_DEPTH:
        raise BlockFormatError(f"UnixFS file deeper than {MAX_DEPTH} levels at {cid}")
    block = _get(source, cid)
    codec = cid.codec.code
    if codec == RAW:
        total = len(block.data)
        if block.data:
            yield block.data
    elif codec == DAG_PB:
        node = decode_pbnode(block.data)
        if node.data is None:
            raise BlockFormatError(f"{cid}: dag-pb node without UnixFS data")
        meta = decode_unixfs(node.data)
        if meta.type not in (TYPE_FILE, TYPE_RAW):
            raise BlockFormatError(f"{cid}: UnixFS type {meta.type} is not a file")
        if meta.blocksizes and len(meta.blocksizes) != len(node.links):
            raise BlockFormatError(
                f"{cid}: {len(meta.blocksizes)} blocksizes for {len(node.links)} links"
            )
        total = 0
        if meta.data:
            total += len(meta.data)
            yield meta.data
        for index, link in enumerate(node.links):
            size = meta.blocksizes[index] if meta.blocksizes else None
            total += yield from _file_bytes(source, link.cid, size, depth + 1)
        if meta.filesize is not None and total != meta.filesize:
            raise BlockFormatError(f"{cid}: filesize {meta.filesize} but {total} bytes below")
    else:
        raise BlockFormatError(f"{cid}: codec {cid.codec.name} is not a UnixFS file")
    if expected is not None and total != expected:
        raise BlockFormatError(f"{cid}: parent records {expected} bytes, node holds {total}")
    return total
