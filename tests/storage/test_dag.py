"""DAG traversal over block sources (storage.dag): DFS order, file reassembly, bad DAGs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from multiformats import CID

from storage.blockstore import MemoryBlockstore
from storage.cid import DAG_PB, Block, block_cid
from storage.dag import read_file, walk_dag
from storage.dagpb import PBLink, PBNode, decode_pbnode, encode_pbnode
from storage.errors import BlockFormatError, BlockNotFound
from storage.flatfs import FilesystemBlockstore
from storage.unixfs import TYPE_DIRECTORY, TYPE_FILE, UnixFSData, encode_unixfs, import_file
from tests.vectors import content


def _preorder(store: MemoryBlockstore, cid: Any, seen: set[str]) -> list[str]:
    """Root-first depth-first order, each CID once, computed by plain recursion."""
    if str(cid) in seen:
        return []
    seen.add(str(cid))
    order = [str(cid)]
    if cid.codec.code == DAG_PB:
        for link in decode_pbnode(store.get(cid).data).links:
            order += _preorder(store, link.cid, seen)
    return order


def test_walk_is_root_first_depth_first_in_link_order() -> None:
    store = MemoryBlockstore()
    data = bytes(range(200)) * 3  # 600 one-byte leaves: repeats and a four-level tree
    result = import_file(data, sink=store, chunk_size=1, max_links=3, cid_version=0)
    walked = [str(block.cid) for block in walk_dag(store, result.cid)]
    assert walked == _preorder(store, result.cid, set())
    assert len(walked) == len(set(walked)) == len(store)


def test_read_file_streams_the_bytes_back_from_a_filesystem_store(tmp_path: Path) -> None:
    store = FilesystemBlockstore(tmp_path, durable=False)
    data = content("forage-vector:1048583", 1_048_583)
    result = import_file(data, sink=store, cid_version=0)
    pieces = list(read_file(store, str(result.cid)))  # type: ignore[arg-type]
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) == 262_144


def _node(links: list[tuple[CID, int]], meta: UnixFSData) -> Block:
    data = encode_pbnode(
        PBNode(
            links=tuple(PBLink(bytes(cid), "", size) for cid, size in links),
            data=encode_unixfs(meta),
        )
    )
    return Block(block_cid(data, codec=DAG_PB), data)


def test_a_missing_block_is_block_not_found() -> None:
    store = MemoryBlockstore()
    leaf = block_cid(b"abc")
    root = _node([(leaf, 3)], UnixFSData(type=TYPE_FILE, filesize=3, blocksizes=(3,)))
    store.put(root)
    with pytest.raises(BlockNotFound):
        b"".join(read_file(store, root.cid))
    with pytest.raises(BlockNotFound):
        list(walk_dag(store, root.cid))


def test_sizes_that_disagree_with_the_children_are_rejected() -> None:
    store = MemoryBlockstore()
    leaf = Block(block_cid(b"abc"), b"abc")
    store.put(leaf)
    lying = _node([(leaf.cid, 3)], UnixFSData(type=TYPE_FILE, filesize=4, blocksizes=(4,)))
    store.put(lying)
    with pytest.raises(BlockFormatError, match="records 4 bytes, node holds 3"):
        b"".join(read_file(store, lying.cid))
    miscounted = _node([(leaf.cid, 3)], UnixFSData(type=TYPE_FILE, filesize=3, blocksizes=()))
    store.put(miscounted)
    assert b"".join(read_file(store, miscounted.cid)) == b"abc"  # blocksizes are optional
    short = _node([(leaf.cid, 3)], UnixFSData(type=TYPE_FILE, filesize=9))
    store.put(short)
    with pytest.raises(BlockFormatError, match="filesize 9 but 3 bytes"):
        b"".join(read_file(store, short.cid))
    two = _node([(leaf.cid, 3)], UnixFSData(type=TYPE_FILE, filesize=3, blocksizes=(1, 2)))
    store.put(two)
    with pytest.raises(BlockFormatError, match="2 blocksizes for 1 links"):
        b"".join(read_file(store, two.cid))


def test_a_directory_is_not_a_file() -> None:
    store = MemoryBlockstore()
    directory = _node([], UnixFSData(type=TYPE_DIRECTORY))
    store.put(directory)
    with pytest.raises(BlockFormatError, match="type 1 is not a file"):
        b"".join(read_file(store, directory.cid))


def test_identity_cids_are_read_from_the_cid_itself() -> None:
    store = MemoryBlockstore()
    inline = CID("base32", 1, "raw", ("identity", b"inline"))
    root = _node([(inline, 6)], UnixFSData(type=TYPE_FILE, filesize=6, blocksizes=(6,)))
    store.put(root)
    assert b"".join(read_file(store, root.cid)) == b"inline"
    assert [block.data for block in walk_dag(store, root.cid)][1] == b"inline"


def test_other_codecs_cannot_be_followed() -> None:
    store = MemoryBlockstore()
    cbor = CID("base32", 1, "dag-cbor", ("sha2-256", hashlib.sha256(b"\xa0").digest()))
    store.put(Block(cbor, b"\xa0"))
    with pytest.raises(BlockFormatError, match="dag-cbor"):
        list(walk_dag(store, cbor))
    with pytest.raises(BlockFormatError, match="not a UnixFS file"):
        list(read_file(store, cbor))
