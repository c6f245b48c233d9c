"""CID parsing, building and block verification (storage.cid)."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest
from multiformats import CID

from storage.cid import (
    DAG_PB,
    RAW,
    Block,
    block_cid,
    cid_from_digest,
    parse_cid,
    split_cid,
    verify_block,
)
from storage.errors import IntegrityError, InvalidCID
from storage.varint import VarintError, decode_varint, encode_varint

HELLO = b"hello world\n"
HELLO_V1 = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
# The zero-length dag-pb block, from the DAG-PB spec.
EMPTY_PB_V1 = "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
EMPTY_PB_V0 = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"


def test_block_cid_of_hello_world_is_the_ipfs_add_cid() -> None:
    assert str(block_cid(HELLO)) == HELLO_V1


def test_block_cid_of_the_empty_dag_pb_block_in_both_versions() -> None:
    assert str(block_cid(b"", codec=DAG_PB)) == EMPTY_PB_V1
    assert str(block_cid(b"", codec=DAG_PB, version=0)) == EMPTY_PB_V0


def test_a_v0_raw_cid_is_built_as_v1_as_kubo_does_for_raw_leaves() -> None:
    cid = block_cid(HELLO, codec=RAW, version=0)
    assert cid.version == 1
    assert str(cid) == HELLO_V1


def test_parse_normalises_any_v1_text_to_base32() -> None:
    base58 = parse_cid(HELLO_V1).set(base="base58btc")
    assert str(base58).startswith("z")
    assert str(parse_cid(str(base58))) == HELLO_V1


def test_parse_accepts_binary_v0_and_v1() -> None:
    v1 = parse_cid(HELLO_V1)
    assert parse_cid(bytes(v1)) == v1
    v0 = parse_cid(EMPTY_PB_V0)
    assert bytes(v0)[:2] == b"\x12\x20"
    assert str(parse_cid(bytes(v0))) == EMPTY_PB_V0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "hello",
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2deve",
        "../../etc",
        b"\x01",
    ],
)
def test_parse_rejects_what_is_not_a_cid(value: str | bytes) -> None:
    with pytest.raises(InvalidCID) as info:
        parse_cid(value)
    assert info.value.value == value


def test_parse_rejects_other_types_with_the_type_named() -> None:
    with pytest.raises(InvalidCID, match="not int"):
        parse_cid(42)  # type: ignore[arg-type]


def test_cid_from_digest_checks_its_inputs() -> None:
    with pytest.raises(InvalidCID, match="32 bytes"):
        cid_from_digest(b"short")
    with pytest.raises(InvalidCID, match="codec"):
        cid_from_digest(bytes(32), codec=0x71)
    with pytest.raises(InvalidCID, match="version"):
        cid_from_digest(bytes(32), version=2)


def test_verify_accepts_matching_bytes_and_reports_a_mismatch() -> None:
    cid = parse_cid(HELLO_V1)
    verify_block(cid, HELLO)
    with pytest.raises(IntegrityError) as info:
        verify_block(cid, b"hello world!")
    assert info.value.expected == "1220" + hashlib.sha256(HELLO).hexdigest()
    assert info.value.actual == "1220" + hashlib.sha256(b"hello world!").hexdigest()


def test_verify_identity_cids_compare_the_inline_bytes() -> None:
    cid = parse_cid("bafkqaaa")  # identity multihash of b""
    verify_block(cid, b"")
    with pytest.raises(IntegrityError):
        verify_block(cid, b"x")


def test_verify_other_hash_functions_through_multiformats() -> None:
    data = b"forage"
    cid = CID("base32", 1, "raw", ("sha2-512", hashlib.sha512(data).digest()))
    verify_block(cid, data)
    with pytest.raises(IntegrityError):
        verify_block(cid, data + b"!")


def test_a_cid_whose_hash_this_python_cannot_compute_is_invalid() -> None:
    if importlib.util.find_spec("blake3") is not None:
        pytest.skip("blake3 is installed here, so multiformats can compute it")
    blake3_cid = b"\x01\x55\x1e\x20" + bytes(32)
    cid = parse_cid(blake3_cid)
    with pytest.raises(InvalidCID, match="blake3 is not supported"):
        verify_block(cid, b"")


def test_split_cid_finds_the_end_of_v0_and_v1() -> None:
    v1 = bytes(parse_cid(HELLO_V1))
    v0 = bytes(parse_cid(EMPTY_PB_V0))
    assert split_cid(v1 + b"tail") == len(v1)
    assert split_cid(b"xx" + v0 + b"tail", 2) == 2 + len(v0)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x12\x20" + bytes(10), "cut short"),
        (b"\x01\x55\x12\x20" + bytes(31), "cut short"),
        (b"\x02\x55\x12\x20" + bytes(32), "version 2"),
        (b"\x01\x55\x12\x81\x02" + bytes(300), "too long"),
        (b"\x01\x55\x12\xff", "bad varint"),
    ],
)
def test_split_cid_rejects_malformed_bytes(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidCID, match=reason):
        split_cid(raw)


def test_block_is_a_frozen_value() -> None:
    block = Block(parse_cid(HELLO_V1), HELLO)
    assert block == Block(parse_cid(HELLO_V1), HELLO)
    with pytest.raises(AttributeError):
        block.data = b""  # type: ignore[misc]


@pytest.mark.parametrize(
    ("codec", "version", "name"), [(RAW, 1, "raw"), (DAG_PB, 1, "dag-pb"), (DAG_PB, 0, "dag-pb")]
)
def test_cids_assembled_from_parts_equal_the_ones_multiformats_builds(
    codec: int, version: int, name: str
) -> None:
    digest = hashlib.sha256(b"parts").digest()
    base = "base32" if version == 1 else "base58btc"
    public = CID(base, version, name, ("sha2-256", digest))
    built = cid_from_digest(digest, codec=codec, version=version)
    assert built == public
    assert str(built) == str(public)
    assert parse_cid(bytes(public)) == public


def test_binary_cids_of_other_codecs_and_hashes_parse_through_multiformats() -> None:
    cbor = CID("base32", 1, "dag-cbor", ("sha2-256", hashlib.sha256(b"x").digest()))
    assert parse_cid(bytes(cbor)) == cbor
    sha512 = CID("base32", 1, "raw", ("sha2-512", hashlib.sha512(b"x").digest()))
    assert parse_cid(bytes(sha512)) == sha512
    with pytest.raises(InvalidCID, match="1 bytes after the CID"):
        parse_cid(bytes(cbor) + b"\x00")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x00", 0),
        (b"\x7f", 127),
        (b"\x80\x01", 128),
        (b"\xac\x02", 300),
        (b"\x80\x80\x10", 262_144),
    ],
)
def test_varints_round_trip(raw: bytes, expected: int) -> None:
    assert decode_varint(raw) == (expected, len(raw))
    assert encode_varint(expected) == raw


def test_varint_limits_differ_between_protobuf_and_multiformats() -> None:
    ten = b"\xff" * 9 + b"\x01"
    assert decode_varint(ten)[0] == (1 << 64) - 1
    with pytest.raises(VarintError, match="longer than 9"):
        decode_varint(ten, multiformats=True)
    with pytest.raises(VarintError, match="minimal"):
        decode_varint(b"\x80\x00", multiformats=True)
    assert decode_varint(b"\x80\x00") == (0, 2)
    with pytest.raises(VarintError, match="cut short"):
        decode_varint(b"\x80")
    with pytest.raises(VarintError, match="over 64 bits"):
        decode_varint(b"\xff" * 9 + b"\x7f")


@pytest.mark.parametrize("text", ["z", "b", "f", "Q", "bafy", "\x00", "b" + "a" * 3])
def test_parse_cid_rejects_short_and_bare_multibase_text(text: str) -> None:
    # A lone multibase prefix made multiformats raise IndexError, which escaped as a 500
    # from the gateway; every malformed text is an InvalidCID naming the input.
    with pytest.raises(InvalidCID, match="invalid CID"):
        parse_cid(text)
