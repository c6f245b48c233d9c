"""The UnixFS importer (storage.unixfs): byte-identical to ``ipfs add``, streaming, decodable."""

from __future__ import annotations

import gc
import hashlib
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from storage.blockstore import MemoryBlockstore
from storage.car import export_car, read_car, write_car_from_file
from storage.cid import DAG_PB, RAW, Block, parse_cid, verify_block
from storage.dag import read_file
from storage.dagpb import decode_pbnode
from storage.errors import BlockFormatError, ImportSizeError
from storage.unixfs import (
    TYPE_FILE,
    UnixFSData,
    UnixFSImporter,
    compute_cid,
    decode_unixfs,
    encode_unixfs,
    import_file,
)
from tests.storage.conftest import Measure
from tests.vectors import content, content_chunks, load

VECTORS = load("unixfs")
VERSIONS = [(1, "cid_v1_raw_leaves"), (0, "cid_v0")]


class CheckingSink:
    """Stores blocks in memory after checking each hashes to its CID and decodes."""

    def __init__(self) -> None:
        self.store = MemoryBlockstore()
        self.order: list[Block] = []

    def put(self, block: Block) -> None:
        verify_block(block.cid, block.data)
        if block.cid.codec.code == DAG_PB:
            node = decode_pbnode(block.data)
            assert node.data is not None
            meta = decode_unixfs(node.data)
            assert meta.type == TYPE_FILE
            assert meta.filesize is not None
            if node.links:
                assert len(meta.blocksizes) == len(node.links)
                assert sum(meta.blocksizes) == meta.filesize
            else:
                assert len(meta.data or b"") == meta.filesize
        else:
            assert block.cid.codec.code == RAW
        self.order.append(Block(block.cid, b""))
        self.store.put(block)


@pytest.mark.parametrize(("version", "key"), VERSIONS, ids=["v1", "v0"])
@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['size']}B" for v in VECTORS])
def test_import_matches_ipfs_add_and_reassembles(
    vector: dict[str, Any], version: int, key: str
) -> None:
    """Every vector: the root CID is kubo's; every block verifies and decodes as UnixFS; the
    DAG reads back to the input; a hash-only import agrees on CID and DAG size."""
    sink = CheckingSink()
    pieces = content_chunks(vector["content"], vector["size"])
    result = import_file(pieces, sink=sink, cid_version=version)
    assert str(result.cid) == vector[key]
    assert result.size == vector["size"]
    assert sink.order[-1].cid == result.cid  # root last
    digest, size = hashlib.sha256(), 0
    for piece in read_file(sink.store, result.cid):
        digest.update(piece)
        size += len(piece)
    assert (size, digest.hexdigest()) == (vector["size"], vector["sha256"])
    hash_only = import_file(content_chunks(vector["content"], vector["size"]), cid_version=version)
    assert hash_only == result


@pytest.mark.parametrize("piece_size", [1, 7, 65_536, 262_143, 262_145, 1_048_577])
def test_cid_does_not_depend_on_how_the_input_is_cut(piece_size: int) -> None:
    vector = next(v for v in VECTORS if v["size"] == 1_048_583)
    data = content(vector["content"], vector["size"])
    if piece_size == 1:
        data = data[:300_000]  # one byte at a time is slow; still spans a chunk boundary
        expected = {1: compute_cid(data), 0: compute_cid(data, cid_version=0)}
    else:
        expected = {1: vector["cid_v1_raw_leaves"], 0: vector["cid_v0"]}
    for version in (1, 0):
        for emit in ("none", "all"):
            importer = UnixFSImporter(cid_version=version, emit=emit)  # type: ignore[arg-type]
            for start in range(0, len(data), piece_size):
                importer.update(data[start : start + piece_size])
            importer.finalize()
            assert str(importer.result.cid) == str(expected[version]), (version, emit)


def test_bytes_file_and_iterable_sources_agree() -> None:
    data = content("forage-vector:1048583", 1_048_583)
    expected = "bafybeialxsxdqk45272l3ajafnngzrz5tfdjzcfau4k7wymuhydq3yjydi"
    assert str(compute_cid(data)) == expected
    assert str(compute_cid(io.BytesIO(data))) == expected
    assert str(compute_cid(iter([data[:5], data[5:]]))) == expected
    assert str(compute_cid(memoryview(data))) == expected


def test_spec_example_1026_bytes_in_256_byte_chunks_has_a_245_byte_root() -> None:
    """The UnixFS spec's multiblock example: 5 raw leaves, root of 245 bytes, Tsize 1271."""
    importer = UnixFSImporter(chunk_size=256)
    blocks = importer.update(bytes(range(256)) * 4 + b"ab")
    blocks += importer.finalize()
    root = blocks[-1]
    assert root.cid == importer.result.cid
    assert len(root.data) == 245
    assert importer.result.dag_size == 245 + 1026
    meta = decode_unixfs(decode_pbnode(root.data).data or b"")
    assert meta == UnixFSData(type=TYPE_FILE, filesize=1026, blocksizes=(256, 256, 256, 256, 2))
    assert [link.tsize for link in decode_pbnode(root.data).links] == [256, 256, 256, 256, 2]


def test_empty_file_blocks_are_kubos() -> None:
    v0 = UnixFSImporter(cid_version=0)
    v0.update(b"")
    assert v0.finalize() == [Block(v0.result.cid, b"\x0a\x04\x08\x02\x18\x00")]
    v1 = UnixFSImporter()
    assert v1.finalize() == [Block(v1.result.cid, b"")]
    assert (v1.result.size, v1.result.dag_size) == (0, 0)


def _kubo_layout(leaves: int, width: int) -> object:
    """Kubo's balanced builder, top-down (boxo balanced/builder.go), over leaf numbers."""
    numbers = iter(range(leaves))
    remaining = [leaves - 1]

    def fill(node: list[object], depth: int) -> None:
        while len(node) < width and remaining[0]:
            if depth == 1:
                node.append(next(numbers))
                remaining[0] -= 1
            else:
                child: list[object] = []
                fill(child, depth - 1)
                node.append(child)

    root: object = next(numbers)
    depth = 1
    while remaining[0]:
        node: list[object] = [root]
        fill(node, depth)
        root, depth = node, depth + 1
    return root


def _layout(store: MemoryBlockstore, cid: Any) -> object:
    """The shape of a stored DAG: a leaf is its one byte, a node the list of its children."""
    block = store.get(cid)
    if cid.codec.code == RAW:
        return block.data[0]
    return [_layout(store, link.cid) for link in decode_pbnode(block.data).links]


@pytest.mark.parametrize("leaves", [*range(1, 32), 39, 40, 41])
def test_tree_shape_is_kubos_balanced_layout(leaves: int) -> None:
    """With one-byte chunks and 3 links per node, trees up to 4 levels deep take exactly the
    shape of kubo's top-down builder, single-child nodes included."""
    store = MemoryBlockstore()
    result = import_file(bytes(range(leaves)), sink=store, chunk_size=1, max_links=3)
    assert _layout(store, result.cid) == _kubo_layout(leaves, 3)


def test_v1_without_raw_leaves_uses_dag_pb_v1_leaves() -> None:
    store = MemoryBlockstore()
    data = content("forage-vector:262145", 262_145)
    result = import_file(data, sink=store, raw_leaves=False)
    assert str(result.cid).startswith("bafybei")
    links = decode_pbnode(store.get(result.cid).data).links
    assert {(link.cid.version, link.cid.codec.code) for link in links} == {(1, DAG_PB)}
    assert b"".join(read_file(store, result.cid)) == data


def test_v0_with_raw_leaves_links_v1_raw_leaves_from_a_v0_root() -> None:
    store = MemoryBlockstore()
    data = content("forage-vector:262145", 262_145)
    result = import_file(data, sink=store, cid_version=0, raw_leaves=True)
    assert str(result.cid).startswith("Qm")
    links = decode_pbnode(store.get(result.cid).data).links
    assert {(link.cid.version, link.cid.codec.code) for link in links} == {(1, RAW)}
    assert b"".join(read_file(store, result.cid)) == data


def test_emit_none_returns_nothing_and_internal_only_the_dag_pb_nodes() -> None:
    data = content("forage-vector:1048583", 1_048_583)
    for version in (0, 1):
        hash_only = UnixFSImporter(cid_version=version, emit="none")
        assert hash_only.update(data) + hash_only.finalize() == []
        internal = UnixFSImporter(cid_version=version, emit="internal")
        blocks = internal.update(data) + internal.finalize()
        assert [block.cid for block in blocks] == [hash_only.result.cid]


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"chunk_size": 1_048_577}, "outside"),
        ({"chunk_size": 0}, "outside"),
        ({"max_links": 1}, "below 2"),
        ({"cid_version": 2}, "cid_version"),
        ({"emit": "leaves"}, "emit"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], reason: str) -> None:
    with pytest.raises(ImportSizeError, match=reason):
        UnixFSImporter(**options)


def test_the_importer_is_used_once() -> None:
    importer = UnixFSImporter()
    with pytest.raises(ImportSizeError, match="not finalized"):
        _ = importer.result
    importer.finalize()
    with pytest.raises(ImportSizeError, match="after finalize"):
        importer.update(b"x")
    with pytest.raises(ImportSizeError, match="twice"):
        importer.finalize()


def test_unixfs_data_round_trips_every_field() -> None:
    message = UnixFSData(
        type=TYPE_FILE,
        data=b"abc",
        filesize=3,
        blocksizes=(1, 2),
        hash_type=0x22,
        fanout=256,
        mode=0o644,
        mtime=(-5, 999),
    )
    assert decode_unixfs(encode_unixfs(message)) == message


def test_unixfs_file_fields_are_written_in_field_order_with_filesize_always() -> None:
    encoded = encode_unixfs(UnixFSData(type=TYPE_FILE, filesize=0, blocksizes=(5, 6)))
    assert encoded == b"\x08\x02\x18\x00\x20\x05\x20\x06"


def test_unixfs_decoder_accepts_packed_blocksizes_and_skips_unknown_fields() -> None:
    decoded = decode_unixfs(b"\x08\x02\x22\x02\x05\x06\x50\x01")
    assert decoded == UnixFSData(type=TYPE_FILE, blocksizes=(5, 6))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x18\x00", "without Type"),
        (b"\x08", "bad varint"),
        (b"\x08\x02\x12\x05ab", "runs past"),
        (b"\x0a\x00", "wire type"),
        (b"\x08\x02\x0b", "unsupported wire type"),
        (b"\x08\x02\x42\x00", "mtime without Seconds"),
    ],
)
def test_unixfs_decoder_rejects_malformed_messages(data: bytes, reason: str) -> None:
    with pytest.raises(BlockFormatError, match=reason):
        decode_unixfs(data)


MEMORY_SCRIPT = """
import json, os
from storage import UnixFSImporter
importer = UnixFSImporter()
piece = bytearray(os.urandom(1 << 20))
blocks = 0
for i in range(1024):
    piece[:8] = i.to_bytes(8, "little")
    blocks += len(importer.update(piece))
blocks += len(importer.finalize())
print(json.dumps({"blocks": blocks, "size": importer.result.size}))
"""


@pytest.mark.slow
def test_importing_1_gib_with_every_block_emitted_stays_under_100_mib(
    run_measured: Measure,
) -> None:
    """Memory, not time: a 1 GiB import emitting every block peaks below 100 MiB RSS."""
    report, peak_kib = run_measured(MEMORY_SCRIPT)
    assert report["size"] == 1 << 30
    assert report["blocks"] == 4096 + 24 + 1  # leaves, 24 full-or-last depth-1 nodes, root
    assert peak_kib < 100 * 1024, peak_kib


def _chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_every_block_cid_is_the_hash_of_its_bytes_under_its_codec() -> None:
    importer = UnixFSImporter(cid_version=0, chunk_size=1000, max_links=4)
    blocks: list[Block] = []
    for piece in _chunks_of(content("forage-vector:12345", 12_345), 999):
        blocks += importer.update(piece)
    blocks += importer.finalize()
    assert len({block.cid for block in blocks}) == len(blocks) == 13 + 4 + 1
    for block in blocks:
        assert block.cid == parse_cid(block.cid)
        verify_block(block.cid, block.data)


def _hot_paths() -> dict[str, Callable[[], object]]:
    data = content("forage-vector:1048583", 1_048_583)
    store = MemoryBlockstore()
    root = import_file(data, sink=store, cid_version=0).cid
    car = io.BytesIO()
    export_car(store, root, car)
    return {
        "import": lambda: import_file(data, sink=MemoryBlockstore()),
        "hash only": lambda: compute_cid(io.BytesIO(data)),
        "export_car": lambda: export_car(store, root, io.BytesIO()),
        "read_car": lambda: list(read_car(io.BytesIO(car.getvalue()))),
        "read_file": lambda: b"".join(read_file(store, root)),
        "iterate": lambda: list(store.iterate()),
        "write_car_from_file": lambda: write_car_from_file(io.BytesIO(data), io.BytesIO()),
    }


@pytest.mark.parametrize("name", list(_hot_paths()))
def test_hot_paths_leave_no_reference_cycles(name: str) -> None:
    """Cyclic garbage would keep block buffers alive until the cycle collector runs (as
    multiformats' argument validation does); every streaming path must free as it goes."""
    operation = _hot_paths()[name]
    operation()  # warm caches
    gc.collect()
    gc.disable()
    try:
        operation()
        assert gc.collect() == 0
    finally:
        gc.enable()
