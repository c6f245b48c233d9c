"""CAR v1 (storage.car): exact bytes, DFS order, verifying reader, both export paths."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from storage.blockstore import MemoryBlockstore
from storage.car import (
    CarWriter,
    encode_car_header,
    export_car,
    read_car,
    write_car_from_file,
)
from storage.cid import Block, block_cid, parse_cid
from storage.dag import walk_dag
from storage.errors import CarFormatError, CarTruncated, IntegrityError
from storage.flatfs import FilesystemBlockstore
from storage.unixfs import import_file
from tests.storage.conftest import Measure
from tests.vectors import content, load

HELLO = b"hello world\n"
INTEROP = Path(__file__).parent.parent / "interop"


def _hello_car() -> bytes:
    digest = hashlib.sha256(HELLO).digest()
    cid = b"\x01\x55\x12\x20" + digest
    header = b"\xa2\x65roots\x81\xd8\x2a\x58\x25\x00" + cid + b"\x67version\x01"
    return bytes((len(header),)) + header + bytes((len(cid) + len(HELLO),)) + cid + HELLO


def test_one_block_car_is_the_108_bytes_the_spec_layout_gives() -> None:
    out = io.BytesIO()
    result = write_car_from_file(io.BytesIO(HELLO), out)
    assert out.getvalue() == _hello_car()
    assert len(out.getvalue()) == 108
    assert str(result.cid) == "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


def test_a_v0_root_gives_a_56_byte_header() -> None:
    header = encode_car_header([parse_cid("QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH")])
    assert header[:16] == bytes.fromhex("38a265726f6f747381d82a5823001220")
    assert len(header) == 1 + 56


def _dfs_expected(store: MemoryBlockstore, root: Any) -> list[str]:
    """Depth-first, root-first order with repeats removed, computed independently."""
    from storage.dagpb import decode_pbnode

    order: list[str] = []

    def visit(cid: Any) -> None:
        if str(cid) in order:
            return
        order.append(str(cid))
        if cid.codec.name == "dag-pb":
            for link in decode_pbnode(store.get(cid).data).links:
                visit(link.cid)

    visit(root)
    return order


@pytest.mark.parametrize("version", [1, 0])
@pytest.mark.parametrize("size", [0, 12, 262_144, 262_145, 1_048_583])
def test_both_export_paths_write_the_same_dfs_car(tmp_path: Path, size: int, version: int) -> None:
    """A CAR from a blockstore and a CAR from the file in two passes are byte-identical;
    reading either gives the root in the header, the root first, DFS order, every block
    verified, none repeated."""
    data = content(f"forage-vector:{size}", size)
    store = MemoryBlockstore()
    result = import_file(data, sink=store, cid_version=version)
    from_store = io.BytesIO()
    written = export_car(store, result.cid, from_store)
    path = tmp_path / "input"
    path.write_bytes(data)
    from_file = io.BytesIO()
    assert write_car_from_file(path, from_file, cid_version=version) == result
    assert from_file.getvalue() == from_store.getvalue()
    assert written == len(from_store.getvalue())
    reader = read_car(io.BytesIO(from_store.getvalue()))
    assert reader.roots == (result.cid,)
    blocks = list(reader)
    assert [str(block.cid) for block in blocks] == _dfs_expected(store, result.cid)
    assert len(blocks) == len(store)


def test_repeated_chunks_are_written_once(tmp_path: Path) -> None:
    path = tmp_path / "zeros"
    path.write_bytes(bytes(5 * 262_144 + 7))
    out = io.BytesIO()
    result = write_car_from_file(path, out)
    cids = [str(block.cid) for block in read_car(io.BytesIO(out.getvalue()))]
    assert cids[0] == str(result.cid)
    assert len(cids) == 3  # root, the all-zero 256 KiB leaf once, the 7-byte tail
    assert cids[1] == str(block_cid(bytes(262_144)))


def test_car_writer_takes_blocks_from_any_producer() -> None:
    out = io.BytesIO()
    first, second = Block(block_cid(b"a"), b"a"), Block(block_cid(b"b"), b"b")
    writer = CarWriter(out, [first.cid])
    for block in (first, second, first):
        writer.put(block)
    assert writer.size == len(out.getvalue())
    assert list(read_car(io.BytesIO(out.getvalue()))) == [first, second]


class ChangingFile(io.BytesIO):
    """A file whose bytes are replaced when it is rewound, as if rewritten between reads."""

    def __init__(self, first: bytes, second: bytes) -> None:
        super().__init__(first)
        self._second = second

    def seek(self, offset: int, whence: int = 0) -> int:
        if self._second is not None:
            self.__init__(self._second, None)  # type: ignore[misc]
        return super().seek(offset, whence)


@pytest.mark.parametrize("change", ["edited", "grown", "shrunk"])
def test_a_file_changed_between_the_passes_is_an_integrity_error(change: str) -> None:
    data = content("forage-vector:1048583", 1_048_583)
    second = {
        "edited": data[:500_000] + b"X" + data[500_001:],
        "grown": data + b"more",
        "shrunk": data[:-1],
    }[change]
    with pytest.raises(IntegrityError, match="file changed between passes"):
        write_car_from_file(ChangingFile(data, second), io.BytesIO())


@pytest.fixture
def car_bytes() -> bytes:
    data = content("forage-vector:262145", 262_145)
    out = io.BytesIO()
    write_car_from_file(io.BytesIO(data), out)
    return out.getvalue()


def _read_all(raw: bytes) -> list[Block]:
    return list(read_car(io.BytesIO(raw)))


def test_every_cut_of_a_car_is_reported_as_truncated(car_bytes: bytes) -> None:
    """Cut inside the header, a section length, a CID and block data: CarTruncated each time
    (a cut exactly between sections is a shorter valid CAR, which CARv1 cannot tell apart)."""
    header_end = 1 + car_bytes[0]
    for cut in (0, 1, 30, header_end + 1, header_end + 10, header_end + 200, len(car_bytes) - 1):
        with pytest.raises(CarTruncated):
            _read_all(car_bytes[:cut])


def test_a_flipped_data_byte_is_an_integrity_error(car_bytes: bytes) -> None:
    corrupt = bytearray(car_bytes)
    corrupt[-100] ^= 1
    with pytest.raises(IntegrityError, match="block bafkrei"):
        _read_all(bytes(corrupt))
    assert len(list(read_car(io.BytesIO(bytes(corrupt)), verify=False))) == 3


def _car(header: bytes, body: bytes = b"") -> bytes:
    return bytes((len(header),)) + header + body


VALID_HEADER = encode_car_header([block_cid(HELLO)])[1:]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00", "header length 0"),
        (b"\xff\xff\xff\xff\x0f", "out of range"),
        (_car(b"\xa1\x67version\x02"), "CARv2 is not supported"),
        (_car(b"\xa1\x67version\x03"), "version 3 is not 1"),
        (_car(b"\xa1\x65roots\x80"), "version None"),
        (_car(b"\xa2\x65roots\x80\x67version\x01\x00"), "bytes after"),
        (_car(b"\xa2\x65roots\x81\x01\x67version\x01"), "roots must be a list of CIDs"),
        (_car(b"\xa2\x65roots\x81\xd8\x2a\x42\x01\x02\x67version\x01"), "starting with 00"),
        (_car(b"\xa2\x65roots\x81\xd8\x2a\x43\x00\x01\x02\x67version\x01"), "bad root CID"),
        (_car(b"\xa2\x65roots\x9f\xff\x67version\x01"), "additional info 31"),
        (_car(b"\xa2\x65roots\x80\x65roots\x80"), "distinct"),
        (_car(b"\x80"), "not a CBOR map"),
        (_car(b"\xc1\x00"), "tag 1"),
        (_car(VALID_HEADER, b"\x00"), "section 0 length 0"),
        (_car(VALID_HEADER, b"\x05\x01\x55\x12\x20\x00"), "bad CID"),
        (_car(VALID_HEADER, b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"), "longer than 9"),
    ],
)
def test_malformed_cars_raise_car_format_error(raw: bytes, reason: str) -> None:
    with pytest.raises(CarFormatError, match=reason):
        _read_all(raw)


def test_an_empty_stream_has_no_header() -> None:
    with pytest.raises(CarTruncated, match="empty"):
        read_car(io.BytesIO(b""))


def test_a_section_longer_than_the_limit_is_refused_before_reading_it() -> None:
    raw = _car(VALID_HEADER, b"\x80\x80\x80\x20")
    with pytest.raises(CarFormatError, match="out of range"):
        list(read_car(io.BytesIO(raw), max_section_size=1 << 20))


def test_export_from_a_filesystem_blockstore(tmp_path: Path) -> None:
    store = FilesystemBlockstore(tmp_path / "store", durable=False)
    data = content("forage-vector:1048583", 1_048_583)
    result = import_file(data, sink=store)
    out = io.BytesIO()
    export_car(store, result.cid, out)
    blocks = list(read_car(io.BytesIO(out.getvalue())))
    assert [block.cid for block in blocks] == [block.cid for block in walk_dag(store, result.cid)]
    assert blocks[0].cid == result.cid


def _node_reader() -> list[str]:
    if not (INTEROP / "node_modules").is_dir() or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("interop check needs `npm ci --prefix tests/interop` and node under CI")
        pytest.skip("tests/interop/node_modules missing: run npm ci --prefix tests/interop")
    return ["node", str(INTEROP / "read_car.mjs")]


def test_javascript_ipfs_reads_forage_cars(tmp_path: Path) -> None:
    """@ipld/car and ipfs-unixfs-exporter read our CARs of the vectors (a two-level tree
    included), v1 and v0: one root, the root first, no duplicates, every block hashing to its
    CID, and the exported file is the input."""
    command = _node_reader()
    vectors = [v for v in load("unixfs") if v["size"] < 2_000_000 or v["size"] == 45_613_057]
    cases = []
    for index, vector in enumerate(vectors):
        for version, key in ((1, "cid_v1_raw_leaves"), (0, "cid_v0")):
            car = tmp_path / f"{index}-v{version}.car"
            with car.open("wb") as out:
                source = io.BytesIO(content(vector["content"], vector["size"]))
                result = write_car_from_file(source, out, cid_version=version)
            assert str(result.cid) == vector[key]
            cases.append((car, vector, vector[key]))
    done = subprocess.run(
        [*command, *(str(car) for car, _, _ in cases)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(reports) == len(cases)
    for report, (car, vector, expected) in zip(reports, cases, strict=True):
        assert report["roots"] == [expected], car.name
        assert report["order"][0] == expected, car.name
        assert report["duplicates"] == [] and report["corrupt"] == [], car.name
        assert (report["size"], report["sha256"]) == (vector["size"], vector["sha256"]), car.name


CAR_MEMORY_SCRIPT = """
import json, os, sys
from storage import FilesystemBlockstore, export_car, import_file, write_car_from_file
path, store_dir = sys.argv[1], sys.argv[2]
with open(os.devnull, "wb") as out:
    two_pass = write_car_from_file(path, out)
store = FilesystemBlockstore(store_dir, durable=False)
with open(path, "rb") as stream:
    imported = import_file(stream, sink=store)
with open(os.devnull, "wb") as out:
    size = export_car(store, imported.cid, out)
print(json.dumps({"two_pass": str(two_pass.cid), "export": str(imported.cid), "car": size}))
"""


@pytest.mark.slow
def test_both_car_paths_run_in_constant_memory(tmp_path: Path, run_measured: Measure) -> None:
    """Memory, not time: a 300 MiB file packed by two passes, then stored and exported from
    the blockstore, peaks below 100 MiB RSS (holding the file would take 300)."""
    size = 300 << 20
    path = tmp_path / "big"
    with path.open("wb") as out:
        for index in range(300):
            out.write(hashlib.shake_128(b"car%d" % index).digest(1 << 20))
    report, peak_kib = run_measured(CAR_MEMORY_SCRIPT, str(path), str(tmp_path / "store"))
    assert report["two_pass"] == report["export"]
    assert report["car"] > size
    assert peak_kib < 100 * 1024, peak_kib
