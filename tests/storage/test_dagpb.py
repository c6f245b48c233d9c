"""The dag-pb codec (storage.dagpb): canonical encoding and strict decoding."""

from __future__ import annotations

import pytest

from storage.cid import DAG_PB, block_cid, parse_cid
from storage.dagpb import PBLink, PBNode, decode_pbnode, encode_pbnode
from storage.errors import BlockFormatError

LEAF = bytes(parse_cid("bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"))


def test_the_empty_block_is_a_node_without_links_or_data() -> None:
    assert decode_pbnode(b"") == PBNode(links=(), data=None)
    assert encode_pbnode(PBNode()) == b""


def test_the_empty_directory_encodes_to_kubos_block() -> None:
    block = encode_pbnode(PBNode(data=b"\x08\x01"))
    assert block == b"\x0a\x02\x08\x01"
    assert str(block_cid(block, codec=DAG_PB, version=0)) == (
        "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    )


def test_a_file_link_keeps_its_empty_name_and_tsize() -> None:
    block = encode_pbnode(PBNode(links=(PBLink(LEAF, "", 262144),)))
    # 12 2c | 0a 24 <36-byte CID> | 12 00 | 18 80 80 10: 46 bytes per raw-leaf link.
    assert block == b"\x12\x2c\x0a\x24" + LEAF + b"\x12\x00\x18\x80\x80\x10"


def test_links_are_written_before_data_whatever_the_field_numbers() -> None:
    block = encode_pbnode(PBNode(links=(PBLink(LEAF, "", 12),), data=b"\x08\x02"))
    assert block.startswith(b"\x12")
    assert block.endswith(b"\x0a\x02\x08\x02")


def test_links_are_sorted_stably_by_name_bytes() -> None:
    other = bytes(block_cid(b"x"))
    links = (PBLink(LEAF, "b", 1), PBLink(other, "a", 2), PBLink(LEAF, "a", 3))
    decoded = decode_pbnode(encode_pbnode(PBNode(links=links)))
    assert [(link.name, link.tsize) for link in decoded.links] == [("a", 2), ("a", 3), ("b", 1)]


def test_absent_name_and_tsize_round_trip_as_none() -> None:
    node = PBNode(links=(PBLink(LEAF, None, None),), data=b"")
    assert decode_pbnode(encode_pbnode(node)) == node


def test_decoded_link_gives_its_cid() -> None:
    node = decode_pbnode(encode_pbnode(PBNode(links=(PBLink(LEAF, "", 12),))))
    assert str(node.links[0].cid) == "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


def test_data_before_links_is_accepted_as_ipfs_data_exists_in_both_orders() -> None:
    link = encode_pbnode(PBNode(links=(PBLink(LEAF, "", 12),)))
    node = decode_pbnode(b"\x0a\x02\x08\x02" + link)
    assert node.data == b"\x08\x02"
    assert node.links[0].hash == LEAF


_LINK = b"\x0a\x24" + LEAF


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (b"\x12\x06\x0a\x24" + LEAF[:4], "runs past"),
        (b"\x12" + bytes((len(_LINK) + 4,)) + b"\x12\x00" + _LINK + b"\x18\x01", "out of order"),
        (b"\x12" + bytes((len(_LINK) * 2,)) + _LINK + _LINK, "out of order or repeated"),
        (b"\x12\x02\x18\x01", "without Hash"),
        (b"\x12\x06\x0a\x04abcd", "not a CID"),
        (b"\x12" + bytes((len(_LINK) + 2,)) + _LINK + b"\x20\x01", "unknown link field"),
        (b"\x0a\x01x\x0a\x01y", "Data appears twice"),
        (b"\x18\x01", "unknown node field"),
        (b"\x0a\x05ab", "runs past"),
        (b"\x0a", "bad varint"),
    ],
)
def test_malformed_blocks_are_rejected_with_the_reason(block: bytes, reason: str) -> None:
    with pytest.raises(BlockFormatError, match=reason):
        decode_pbnode(block)


def test_links_on_both_sides_of_data_are_rejected() -> None:
    link = b"\x12" + bytes((len(_LINK),)) + _LINK
    with pytest.raises(BlockFormatError, match="both sides"):
        decode_pbnode(link + b"\x0a\x00" + link)


def test_a_link_name_must_be_utf8() -> None:
    payload = _LINK + b"\x12\x01\xff"
    with pytest.raises(BlockFormatError, match="UTF-8"):
        decode_pbnode(b"\x12" + bytes((len(payload),)) + payload)
