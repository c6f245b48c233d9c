"""Piece commitment (CommP) and piece CIDs, on both paths (compiled ``storage._commp`` and pure
Python): the shared vectors, the FRC-0069 examples, streaming in odd chunks, size limits."""

from __future__ import annotations

import array
import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import (
    CommP,
    CommPError,
    PieceInfo,
    padded_piece_size,
    piece_cid_v1,
    piece_cid_v2,
    piece_commitment,
)
from storage.commp import COMPILED_AVAILABLE, MAX_PAYLOAD_SIZE, Implementation
from tests.vectors import content, content_chunks, load

IMPLEMENTATIONS: tuple[Implementation, ...] = ("compiled", "python")
#: Larger vectors take seconds on the pure-Python path.
PYTHON_FAST_LIMIT = 4 << 20


def require(implementation: Implementation) -> Implementation:
    """Skip the compiled path where it is not built; in CI its absence is a failure."""
    if implementation == "compiled" and not COMPILED_AVAILABLE:
        if os.environ.get("CI") == "true":
            pytest.fail("storage._commp is not built: CI must build the compiled CommP path")
        pytest.skip("storage._commp is not built (no C compiler or OpenSSL headers)")
    return implementation


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest) -> Implementation:
    return require(request.param)


def vector_cases() -> Iterator[Any]:
    for vector in load("commp"):
        for impl in IMPLEMENTATIONS:
            slow = impl == "python" and vector["size"] > PYTHON_FAST_LIMIT
            yield pytest.param(
                impl,
                vector,
                id=f"{impl}-{vector['size']}",
                marks=[pytest.mark.slow] if slow else [],
            )


def trunc254_sha256(pair: bytes) -> bytes:
    digest = bytearray(hashlib.sha256(pair).digest())
    digest[31] &= 0x3F
    return bytes(digest)


def zero_piece_commp(height: int) -> bytes:
    """Root of an all-zero tree of 2**height leaves, computed here independently."""
    node = bytes(32)
    for _ in range(height):
        node = trunc254_sha256(node + node)
    return node


# FRC-0069 "Test Cases": 127 bytes each of 0x00, 0x01, 0x02, 0x03.
FRC_QUADS = b"".join(bytes([value]) * 127 for value in range(4))


@pytest.mark.parametrize(("impl", "vector"), list(vector_cases()))
def test_vectors(impl: Implementation, vector: dict[str, Any]) -> None:
    """Streaming each vector's input in 1 MiB chunks gives its reference CIDs and padded size."""
    info = piece_commitment(
        content_chunks(vector["content"], vector["size"]), implementation=require(impl)
    )
    assert info.cid_v1 == vector["piece_cid_v1"]
    assert info.cid_v2 == vector["piece_cid_v2"]
    assert info.padded_size == vector["padded_piece_size"]
    assert info.payload_size == vector["size"]


@pytest.mark.parametrize(
    ("data", "v1", "v2"),
    [
        (
            FRC_QUADS,
            "baga6ea4seaqes3nobte6ezpp4wqan2age2s5yxcatzotcvobhgcmv5wi2xh5mbi",
            "bafkzcibcaaces3nobte6ezpp4wqan2age2s5yxcatzotcvobhgcmv5wi2xh5mbi",
        ),
        (
            FRC_QUADS + bytes(127 * 4),
            "baga6ea4seaqn42av3szurbbscwuu3zjssvfwbpsvbjf6y3tukvlgl2nf5rha6pa",
            "bafkzcibcaac542av3szurbbscwuu3zjssvfwbpsvbjf6y3tukvlgl2nf5rha6pa",
        ),
        (
            FRC_QUADS + bytes(4),
            "baga6ea4seaqn42av3szurbbscwuu3zjssvfwbpsvbjf6y3tukvlgl2nf5rha6pa",
            "bafkzcibd7abqlxticxolgseegik2stpfgkkuwyf6kufex3doorkvmzpjuxwe4dz4",
        ),
        (
            FRC_QUADS + bytes(5),
            "baga6ea4seaqn42av3szurbbscwuu3zjssvfwbpsvbjf6y3tukvlgl2nf5rha6pa",
            "bafkzcibd64bqlxticxolgseegik2stpfgkkuwyf6kufex3doorkvmzpjuxwe4dz4",
        ),
        (bytes(127), None, "bafkzcibcaabdomn3tgwgrh3g532zopskstnbrd2n3sxfqbze7rxt7vqn7veigmy"),
        (bytes(128), None, "bafkzcibcpybwiktap34inmaex4wbs6cghlq5i2j2yd2bb2zndn5ep7ralzphkdy"),
    ],
    ids=["4-quads", "8-quads", "512-bytes", "513-bytes", "127-zeros", "128-zeros"],
)
def test_frc0069_examples(
    implementation: Implementation, data: bytes, v1: str | None, v2: str
) -> None:
    """The FRC's examples: data zero-filled into the tree gives the same v1 but its own v2."""
    info = piece_commitment(data, implementation=implementation)
    if v1 is not None:
        assert info.cid_v1 == v1
    assert info.cid_v2 == v2


def test_frc0069_size_conversions() -> None:
    """(v1, padded size) converts to a v2 with padding 0; an empty payload pads 127 bytes."""
    assert piece_cid_v1(zero_piece_commp(30)) == (
        "baga6ea4seaqao7s73y24kcutaosvacpdjgfe5pw76ooefnyqw4ynr3d2y6x2mpq"
    )
    assert piece_cid_v2(zero_piece_commp(30), 32 << 30) == (
        "bafkzcibcaapao7s73y24kcutaosvacpdjgfe5pw76ooefnyqw4ynr3d2y6x2mpq"
    )
    assert piece_cid_v1(zero_piece_commp(31)) == (
        "baga6ea4seaqomqafu276g53zko4k23xzh4h4uecjwicbmvhsuqi7o4bhthhm4aq"
    )
    assert piece_cid_v2(zero_piece_commp(31), 64 << 30) == (
        "bafkzcibcaap6mqafu276g53zko4k23xzh4h4uecjwicbmvhsuqi7o4bhthhm4aq"
    )
    assert piece_cid_v2(zero_piece_commp(2), 128, payload_size=0) == (
        "bafkzcibcp4bdomn3tgwgrh3g532zopskstnbrd2n3sxfqbze7rxt7vqn7veigmy"
    )


def test_zero_filled_payload_matches_zero_piece(implementation: Implementation) -> None:
    """Zero bytes filling 16 quads hash to the zero-subtree root of height 6 (64 leaves)."""
    assert piece_commitment(bytes(127 * 16), implementation=implementation).commp == (
        zero_piece_commp(6)
    )


def test_chunking_does_not_change_the_commitment(implementation: Implementation) -> None:
    """Chunks that split quads anywhere (1 byte up to 64 KiB + 1) give the one-shot result."""
    data = content("forage-vector:262145", 262145)
    hasher = CommP(implementation=implementation)
    sizes = [1, 2, 126, 127, 128, 253, 4095, 4096, 65537]
    offset = i = 0
    while offset < len(data):
        hasher.update(data[offset : offset + sizes[i % len(sizes)]])
        offset += sizes[i % len(sizes)]
        i += 1
    assert hasher.payload_size == len(data)
    assert hasher.piece_info() == piece_commitment(data, implementation=implementation)


def test_digest_keeps_state(implementation: Implementation) -> None:
    """``digest`` mid-stream gives the prefix's commitment and later updates still count."""
    data = content("forage-vector:1000", 1000)
    hasher = CommP(implementation=implementation)
    hasher.update(data[:300])
    assert hasher.digest() == piece_commitment(data[:300], implementation=implementation).commp
    assert hasher.digest() == hasher.digest()
    hasher.update(data[300:])
    assert hasher.piece_info().cid_v1 == load("commp")[1]["piece_cid_v1"]


def test_compiled_and_python_paths_agree() -> None:
    """Every payload size from 65 to 700 bytes, and quad-boundary sizes, on both paths."""
    require("compiled")
    data = hashlib.shake_128(b"commp-agree").digest(127 * 70)
    sizes = [*range(65, 701), 1016, 1017, 2032, 2033, 127 * 64, 127 * 64 + 1, len(data)]
    for size in sizes:
        compiled = piece_commitment(data[:size], implementation="compiled")
        python = piece_commitment(data[:size], implementation="python")
        assert compiled == python, size


def test_compiled_path_releases_the_gil() -> None:
    """Other Python threads keep running while the compiled path hashes a large chunk."""
    require("compiled")
    hasher = CommP(implementation="compiled")
    finished = threading.Event()

    def hash_large_chunk() -> None:
        hasher.update(bytes(32 << 20))
        finished.set()

    worker = threading.Thread(target=hash_large_chunk)
    worker.start()
    time.sleep(0.02)  # lets the worker enter the C loop; with the GIL held we would wait here
    spins = 0
    while not finished.is_set():
        spins += 1
    worker.join()
    assert spins > 1000
    assert hasher.payload_size == 32 << 20


def test_sources_bytes_files_and_iterables(tmp_path: Path, implementation: Implementation) -> None:
    """bytes, bytearray, memoryviews of any format, file objects and chunk iterables agree."""
    data = content("forage-vector:1000", 1000)
    path = tmp_path / "payload.car"
    path.write_bytes(data)
    words = array.array("I", data)
    expected = piece_commitment(data, implementation=implementation)
    with path.open("rb") as stream:
        from_file = piece_commitment(stream, implementation=implementation, chunk_size=300)
    assert from_file == expected
    assert piece_commitment(bytearray(data), implementation=implementation) == expected
    assert piece_commitment(memoryview(words), implementation=implementation) == expected
    assert piece_commitment(io.BytesIO(data), implementation=implementation) == expected
    assert piece_commitment([data[:1], data[1:]], implementation=implementation) == expected


def test_text_is_not_bytes(implementation: Implementation) -> None:
    """A str is rejected rather than silently encoded."""
    with pytest.raises(TypeError):
        piece_commitment("x" * 200, implementation=implementation)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, 64])
def test_payloads_under_65_bytes_are_refused(implementation: Implementation, size: int) -> None:
    """go-fil-commp-hashhash's minimum: under 65 bytes is a CommPError naming the limit."""
    with pytest.raises(CommPError, match=f"at least 65 bytes of payload, got {size}"):
        piece_commitment(bytes(size), implementation=implementation)


def test_65_bytes_is_zero_filled_to_a_quad(implementation: Implementation) -> None:
    """65 bytes commit like the same bytes zero-filled to 127; only the v2 padding differs."""
    data = content("forage-vector:127", 127)[:65]
    short = piece_commitment(data, implementation=implementation)
    filled = piece_commitment(data + bytes(62), implementation=implementation)
    assert (short.commp, short.padded_size) == (filled.commp, 128)
    assert short.cid_v1 == filled.cid_v1
    assert short.cid_v2 != filled.cid_v2
    assert short.cid_v2 == piece_cid_v2(short.commp, 128, payload_size=65)


@pytest.mark.parametrize(
    ("payload", "padded"),
    [
        (65, 128),
        (127, 128),
        (128, 256),
        (254, 256),
        (255, 512),
        (1016, 1024),
        (1017, 2048),
        (MAX_PAYLOAD_SIZE, 64 << 30),
    ],
)
def test_padded_piece_size(payload: int, padded: int) -> None:
    """Quads of 127 bytes become 128; the total rounds up to a power of two."""
    assert padded_piece_size(payload) == padded


@pytest.mark.parametrize(
    ("payload", "message"), [(64, "at least 65"), (MAX_PAYLOAD_SIZE + 1, "exceeds the largest")]
)
def test_padded_piece_size_out_of_range(payload: int, message: str) -> None:
    """Payloads under 65 bytes or over 64 GiB * 127/128 have no piece."""
    with pytest.raises(CommPError, match=message):
        padded_piece_size(payload)


def test_invalid_commitments_and_sizes() -> None:
    """Bad commitments and sizes are CommPErrors that say what is wrong."""
    good = zero_piece_commp(2)
    with pytest.raises(CommPError, match="32 bytes, got 31"):
        piece_cid_v1(good[:31])
    with pytest.raises(CommPError, match="top two bits"):
        piece_cid_v1(b"\xff" * 32)
    with pytest.raises(CommPError, match="not a power of two"):
        piece_cid_v2(good, 1000)
    with pytest.raises(CommPError, match="not a power of two"):
        piece_cid_v2(good, 128 << 30)
    # Padding may not reach the payload's size (FRC-0069): 508 of 1016 bytes is too little.
    with pytest.raises(CommPError, match="508 bytes does not make a piece of 1024"):
        piece_cid_v2(good, 1024, payload_size=508)
    with pytest.raises(CommPError, match="1017 bytes does not make a piece of 1024"):
        PieceInfo(good, 1024, 1017)
