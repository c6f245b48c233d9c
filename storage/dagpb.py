"""DAG-PB, the protobuf codec that carries UnixFS: strict encoder and decoder.

Wire form, as Kubo (boxo) writes it: every ``PBLink`` first (field 2), then ``Data`` (field 1);
inside a link ``Hash`` (1), ``Name`` (2), ``Tsize`` (3) strictly in that order. Boxo always
writes ``Name`` and ``Tsize``, so a file link with an empty name is encoded as ``12 00``. The
decoder follows the spec's strictness rules: link fields in order, no duplicates, no unknown
fields or wire types, ``Hash`` required and shaped like a CID; ``Data`` may come before or
after the links, as both forms exist in IPFS.

Spec: https://ipld.io/specs/codecs/dag-pb/spec/
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from storage.cid import parse_cid, split_cid
from storage.errors import BlockFormatError, InvalidCID
from storage.varint import VarintError, decode_varint, encode_varint

if TYPE_CHECKING:
    from multiformats import CID

__all__ = [
    "PBLink",
    "PBNode",
    "assemble_pbnode",
    "decode_pbnode",
    "encode_pblink",
    "encode_pbnode",
]

_LENGTH_DELIMITED = 2
_VARINT = 0


class PBLink(NamedTuple):
    """A link of a dag-pb node: the binary CID of the child, its name and cumulative size.

    ``name`` and ``tsize`` are ``None`` when the field is absent from the wire form; Kubo
    always writes both (``name=""`` for file chunks).
    """

    hash: bytes
    name: str | None = ""
    tsize: int | None = None

    @property
    def cid(self) -> CID:
        """The child's CID, parsed from ``hash``."""
        return parse_cid(self.hash)


class PBNode(NamedTuple):
    """A dag-pb node: ordered links and optional opaque data (a UnixFS ``Data`` message)."""

    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return encode_varint(number << 3 | _LENGTH_DELIMITED) + encode_varint(len(payload)) + payload


def encode_pblink(hash_: bytes, name: str | None = "", tsize: int | None = None) -> bytes:
    """One encoded ``Links`` entry: tag ``12``, length, then Hash, Name, Tsize in order.

    ``assemble_pbnode`` joins these; the importer encodes each link once, as it is made.
    """
    encoded = b"\x0a" + encode_varint(len(hash_)) + hash_
    if name is not None:
        raw_name = name.encode()
        encoded += b"\x12" + encode_varint(len(raw_name)) + raw_name
    if tsize is not None:
        encoded += b"\x18" + encode_varint(tsize)
    return b"\x12" + encode_varint(len(encoded)) + encoded


def assemble_pbnode(links: Iterable[bytes], data: bytes | None) -> bytes:
    """A node from links already encoded by ``encode_pblink`` (in order) and its data."""
    encoded = b"".join(links)
    if data is not None:
        encoded += _field(1, data)
    return encoded


def encode_pbnode(node: PBNode) -> bytes:
    """Encode ``node`` canonically: links (stably sorted by name bytes) first, then data."""
    links: Iterable[PBLink] = node.links
    if any(link.name for link in node.links):
        links = sorted(node.links, key=lambda link: (link.name or "").encode())
    return assemble_pbnode(
        (encode_pblink(link.hash, link.name, link.tsize) for link in links), node.data
    )


def _read_varint(view: memoryview, pos: int, what: str) -> tuple[int, int]:
    try:
        return decode_varint(view, pos)
    except VarintError as exc:
        raise BlockFormatError(f"dag-pb: bad varint in {what}: {exc}") from exc


def _read_bytes(view: memoryview, pos: int, what: str) -> tuple[memoryview, int]:
    """Read a length-delimited payload at ``view[pos]``."""
    length, pos = _read_varint(view, pos, what)
    end = pos + length
    if end > len(view):
        raise BlockFormatError(f"dag-pb: {what} runs past the end of the block")
    return view[pos:end], end


def _decode_link(view: memoryview) -> PBLink:
    pos, last_field = 0, 0
    hash_: bytes | None = None
    name: str | None = None
    tsize: int | None = None
    while pos < len(view):
        key, pos = _read_varint(view, pos, "link field key")
        number, wire_type = key >> 3, key & 7
        if number <= last_field:
            raise BlockFormatError(f"dag-pb: link field {number} out of order or repeated")
        last_field = number
        if number == 1 and wire_type == _LENGTH_DELIMITED:
            payload, pos = _read_bytes(view, pos, "link Hash")
            hash_ = bytes(payload)
        elif number == 2 and wire_type == _LENGTH_DELIMITED:
            payload, pos = _read_bytes(view, pos, "link Name")
            try:
                name = bytes(payload).decode()
            except UnicodeDecodeError as exc:
                raise BlockFormatError("dag-pb: link Name is not UTF-8") from exc
        elif number == 3 and wire_type == _VARINT:
            tsize, pos = _read_varint(view, pos, "link Tsize")
        else:
            raise BlockFormatError(f"dag-pb: unknown link field {number} (wire type {wire_type})")
    if hash_ is None:
        raise BlockFormatError("dag-pb: link without Hash")
    try:
        end = split_cid(hash_)
    except InvalidCID as exc:
        raise BlockFormatError(f"dag-pb: link Hash is not a CID: {exc.reason}") from exc
    if end != len(hash_):
        raise BlockFormatError("dag-pb: link Hash has bytes after the CID")
    return PBLink(hash=hash_, name=name, tsize=tsize)


def decode_pbnode(data: bytes | memoryview) -> PBNode:
    """Decode a dag-pb block strictly; raise ``BlockFormatError`` when it is malformed."""
    view = memoryview(data)
    pos = 0
    links: list[PBLink] = []
    payload: bytes | None = None
    links_after_data = False
    while pos < len(view):
        key, pos = _read_varint(view, pos, "node field key")
        number, wire_type = key >> 3, key & 7
        if wire_type != _LENGTH_DELIMITED or number not in (1, 2):
            raise BlockFormatError(f"dag-pb: unknown node field {number} (wire type {wire_type})")
        if number == 2:
            if payload is not None and links and not links_after_data:
                raise BlockFormatError("dag-pb: links on both sides of Data")
            links_after_data = payload is not None
            link_bytes, pos = _read_bytes(view, pos, "link")
            links.append(_decode_link(link_bytes))
        else:
            if payload is not None:
                raise BlockFormatError("dag-pb: Data appears twice")
            data_view, pos = _read_bytes(view, pos, "Data")
            payload = bytes(data_view)
    return PBNode(links=tuple(links), data=payload)
