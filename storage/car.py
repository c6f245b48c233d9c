"""CAR v1 (Content Addressable aRchive): streaming writer, verifying reader, DAG export.

Layout: ``varint(len(H)) H section*`` where H is the DAG-CBOR map ``{roots: [CID], version:
1}`` (keys length-first, each CID as tag 42 over ``00 ‖ binary CID``) and each section is
``varint(len(cid) + len(data)) cid data``. The header is small and fixed in shape, so it is
encoded and decoded here rather than through a general CBOR library; the decoder accepts any
well-formed definite-length CBOR and rejects the rest.

What Forage writes is what other IPFS tools expect: one root, blocks in depth-first order
from the root (root first), each block once. The root of a file is only known after the import
but the header comes first, so:

- ``export_car`` walks a DAG already in a block source;
- ``write_car_from_file`` reads a file twice: the first pass keeps only the internal nodes
  (one per 174 chunks), the second re-reads the chunks in file order, which is the DFS order
  of the leaves, and writes them interleaved with the nodes. The second pass checks every leaf
  against the first, so a file changed in between raises ``IntegrityError``.

Spec: https://ipld.io/specs/transport/car/carv1/
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from multiformats import CID

from storage.blockstore import BlockSource
from storage.cid import Block, parse_cid, split_cid, verify_block
from storage.dag import walk_dag
from storage.dagpb import decode_pbnode
from storage.errors import CarFormatError, CarTruncated, IntegrityError, InvalidCID
from storage.unixfs import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_LINKS,
    ImportResult,
    encode_leaf,
    import_file,
)
from storage.varint import VarintError, decode_varint, encode_varint

__all__ = [
    "CarReader",
    "CarWriter",
    "encode_car_header",
    "export_car",
    "read_car",
    "write_car_from_file",
]

#: Limits that stop a corrupt length prefix from allocating gigabytes (go-car uses 32 MiB).
MAX_HEADER_SIZE = 1 << 20
MAX_SECTION_SIZE = 32 << 20
_CBOR_MAX_DEPTH = 16


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes((major << 5 | value,))
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * width):
            return bytes((major << 5 | info,)) + value.to_bytes(width, "big")
    raise CarFormatError(f"CBOR length {value} too large")


def _cbor_text(text: str) -> bytes:
    raw = text.encode()
    return _cbor_head(3, len(raw)) + raw


def encode_car_header(roots: Sequence[CID]) -> bytes:
    """The CARv1 header for ``roots``, with its varint length prefix."""
    parts = [_cbor_head(5, 2), _cbor_text("roots"), _cbor_head(4, len(roots))]
    for root in roots:
        link = b"\x00" + bytes(parse_cid(root))
        parts += [b"\xd8\x2a", _cbor_head(2, len(link)), link]
    parts += [_cbor_text("version"), b"\x01"]
    header = b"".join(parts)
    return bytes(encode_varint(len(header))) + header


def _cbor_decode(view: memoryview, pos: int, depth: int) -> tuple[object, int]:
    """Decode one definite-length CBOR item at ``view[pos]`` (tag 42 becomes a CID)."""
    if depth > _CBOR_MAX_DEPTH:
        raise CarFormatError("CAR header: CBOR nested too deeply")
    if pos >= len(view):
        raise CarFormatError("CAR header: CBOR cut short")
    initial = view[pos]
    major, info = initial >> 5, initial & 31
    pos += 1
    if info < 24:
        arg = info
    elif info <= 27:
        width = 1 << (info - 24)
        if pos + width > len(view):
            raise CarFormatError("CAR header: CBOR cut short")
        arg = int.from_bytes(view[pos : pos + width], "big")
        pos += width
    else:
        raise CarFormatError(f"CAR header: CBOR additional info {info} is not allowed")
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        if pos + arg > len(view):
            raise CarFormatError("CAR header: CBOR string cut short")
        raw = bytes(view[pos : pos + arg])
        if major == 2:
            return raw, pos + arg
        try:
            return raw.decode(), pos + arg
        except UnicodeDecodeError as exc:
            raise CarFormatError("CAR header: CBOR text is not UTF-8") from exc
    if major == 4:
        if arg > len(view) - pos:
            raise CarFormatError("CAR header: CBOR array longer than the header")
        items = []
        for _ in range(arg):
            item, pos = _cbor_decode(view, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        if arg > len(view) - pos:
            raise CarFormatError("CAR header: CBOR map longer than the header")
        mapping: dict[str, object] = {}
        for _ in range(arg):
            key, pos = _cbor_decode(view, pos, depth + 1)
            if not isinstance(key, str) or key in mapping:
                raise CarFormatError("CAR header: map keys must be distinct strings")
            mapping[key], pos = _cbor_decode(view, pos, depth + 1)
        return mapping, pos
    if major == 6:
        if arg != 42:
            raise CarFormatError(f"CAR header: CBOR tag {arg} is not allowed")
        link, pos = _cbor_decode(view, pos, depth + 1)
        if not isinstance(link, bytes) or not link.startswith(b"\x00"):
            raise CarFormatError("CAR header: tag 42 must wrap bytes starting with 00")
        try:
            return parse_cid(link[1:]), pos
        except InvalidCID as exc:
            raise CarFormatError(f"CAR header: bad root CID: {exc.reason}") from exc
    simple = {20: False, 21: True, 22: None}
    if info in simple:
        return simple[info], pos
    raise CarFormatError(f"CAR header: CBOR simple value or float {initial:#x} is not allowed")


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    """Read ``size`` bytes, fewer only at the end of the stream."""
    data = stream.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    missing = size - len(data)
    while missing:
        more = stream.read(missing)
        if not more:
            break
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)


def _read_uvarint(stream: IO[bytes], what: str) -> int | None:
    """Read a varint from ``stream``; ``None`` at a clean end of stream."""
    raw = bytearray()
    while True:
        byte = stream.read(1)
        if not byte:
            if raw:
                raise CarTruncated(f"CAR stream ended inside the length of {what}")
            return None
        raw += byte
        if not byte[0] & 0x80:
            break
        if len(raw) >= 9:
            raise CarFormatError(f"CAR: varint of {what} longer than 9 bytes")
    try:
        return decode_varint(raw, multiformats=True)[0]
    except VarintError as exc:
        raise CarFormatError(f"CAR: bad varint in {what}: {exc}") from exc


class CarReader:
    """Reads a CARv1 stream: ``roots`` from the header, then blocks by iterating.

    Every block is checked against its CID (``IntegrityError``) unless ``verify=False``. A
    malformed stream raises ``CarFormatError``, one cut short ``CarTruncated``. The stream is
    read once, section by section, so memory stays at one block.
    """

    def __init__(
        self, stream: IO[bytes], *, verify: bool = True, max_section_size: int = MAX_SECTION_SIZE
    ) -> None:
        self._stream = stream
        self._verify = verify
        self._max_section_size = max_section_size
        self._sections = 0
        length = _read_uvarint(stream, "the header")
        if length is None:
            raise CarTruncated("CAR stream is empty: no header")
        if not 0 < length <= MAX_HEADER_SIZE:
            raise CarFormatError(f"CAR header length {length} is out of range")
        raw = _read_exact(stream, length)
        if len(raw) < length:
            raise CarTruncated(f"CAR header cut short: {len(raw)} of {length} bytes")
        header, end = _cbor_decode(memoryview(raw), 0, 0)
        if end != length:
            raise CarFormatError("CAR header has bytes after its CBOR map")
        if not isinstance(header, dict):
            raise CarFormatError("CAR header is not a CBOR map")
        version = header.get("version")
        if version == 2:
            raise CarFormatError("CARv2 is not supported: only CARv1 streams can be read")
        if version != 1:
            raise CarFormatError(f"CAR version {version!r} is not 1")
        roots = header.get("roots")
        if not isinstance(roots, list) or not all(isinstance(root, CID) for root in roots):
            raise CarFormatError("CAR header roots must be a list of CIDs")
        self.version = 1
        self.roots: tuple[CID, ...] = tuple(roots)

    def __iter__(self) -> Iterator[Block]:
        """Yield the blocks in stream order, each verified against its CID."""
        while True:
            what = f"section {self._sections}"
            length = _read_uvarint(self._stream, what)
            if length is None:
                return
            if not 0 < length <= self._max_section_size:
                raise CarFormatError(f"CAR {what} length {length} is out of range")
            section = _read_exact(self._stream, length)
            if len(section) < length:
                raise CarTruncated(f"CAR {what} cut short: {len(section)} of {length} bytes")
            try:
                end = split_cid(section)
                cid = parse_cid(section[:end])
            except InvalidCID as exc:
                raise CarFormatError(f"CAR {what}: bad CID: {exc.reason}") from exc
            data = section[end:]
            if self._verify:
                verify_block(cid, data)
            self._sections += 1
            yield Block(cid, data)


def read_car(
    stream: IO[bytes], *, verify: bool = True, max_section_size: int = MAX_SECTION_SIZE
) -> CarReader:
    """Open a CARv1 stream: read and check its header; iterate the result for blocks."""
    return CarReader(stream, verify=verify, max_section_size=max_section_size)


class CarWriter:
    """Writes a CARv1 stream: the header at once, then one section per new block.

    ``put`` skips a block already written (by CID), so a DAG with repeated chunks is stored
    once. ``size`` counts the bytes written so far.
    """

    def __init__(self, stream: IO[bytes], roots: Sequence[CID]) -> None:
        self._stream = stream
        self._seen: set[bytes] = set()
        header = encode_car_header(roots)
        stream.write(header)
        self.size = len(header)

    def put(self, block: Block) -> None:
        """Append ``block`` unless it was written before."""
        self._write(bytes(block.cid), block.data)

    def _write(self, cid: bytes, data: bytes) -> None:
        if cid in self._seen:
            return
        self._seen.add(cid)
        prefix = encode_varint(len(cid) + len(data))
        self._stream.write(prefix)
        self._stream.write(cid)
        self._stream.write(data)
        self.size += len(prefix) + len(cid) + len(data)


def export_car(source: BlockSource, root: CID, out: IO[bytes]) -> int:
    """Write the DAG under ``root`` as a CARv1 to ``out``, depth-first; return bytes written."""
    writer = CarWriter(out, [root])
    for block in walk_dag(source, root):
        writer.put(block)
    return writer.size


class _NodeCollector:
    """Keeps the internal nodes of the first pass, keyed by binary CID."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}

    def put(self, block: Block) -> None:
        self.nodes[bytes(block.cid)] = block.data


def write_car_from_file(
    source: str | os.PathLike[str] | IO[bytes],
    out: IO[bytes],
    *,
    cid_version: int = 1,
    raw_leaves: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_links: int = DEFAULT_MAX_LINKS,
) -> ImportResult:
    """Import a file and write its DAG as a CARv1 to ``out`` in two passes over the file.

    ``source`` is a path or a seekable binary file (read from its current position). Memory
    holds the internal nodes only (about 8 KiB per 43 MiB of file). Raises
    ``IntegrityError`` if the file changes between the passes.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as stream:
            return write_car_from_file(
                stream,
                out,
                cid_version=cid_version,
                raw_leaves=raw_leaves,
                chunk_size=chunk_size,
                max_links=max_links,
            )
    start = source.tell()
    collector = _NodeCollector()
    result = import_file(
        source,
        sink=collector,
        leaves=False,
        cid_version=cid_version,
        raw_leaves=raw_leaves,
        chunk_size=chunk_size,
        max_links=max_links,
    )
    source.seek(start)
    pass_two = _SecondPass(
        nodes=collector.nodes,
        source=source,
        writer=CarWriter(out, [result.cid]),
        chunk_size=chunk_size,
        raw_leaves=cid_version == 1 if raw_leaves is None else raw_leaves,
        cid_version=cid_version,
    )
    pass_two.visit(bytes(result.cid))
    if source.read(1):
        raise IntegrityError("file changed between passes", f"{result.size} bytes", "more")
    return result


@dataclass(frozen=True, slots=True)
class _SecondPass:
    """Writes the DAG in DFS order: nodes from memory, leaves re-read from the file in order."""

    nodes: dict[bytes, bytes]
    source: IO[bytes]
    writer: CarWriter
    chunk_size: int
    raw_leaves: bool
    cid_version: int

    def visit(self, cid: bytes) -> None:
        """Write the block ``cid`` and, for a node, its subtree."""
        node = self.nodes.get(cid)
        if node is not None:
            self.writer._write(cid, node)
            for link in decode_pbnode(node).links:
                self.visit(link.hash)
            return
        chunk = _read_exact(self.source, self.chunk_size)
        leaf_cid, leaf = encode_leaf(
            chunk, raw_leaves=self.raw_leaves, cid_version=self.cid_version
        )
        if leaf_cid != cid:
            raise IntegrityError("file changed between passes", cid.hex(), leaf_cid.hex())
        self.writer._write(leaf_cid, leaf)
