"""The pack file format: one archive's blocks in one file, with an index and a fixed footer.

A pack is written once and never changed::

    block 0 bytes | block 1 bytes | ... | index | footer

- the blocks, in the order they were put, back to back (no framing: the index says where);
- the index, one entry per block: ``u8`` multihash length, the multihash, ``u64`` offset and
  ``u32`` length of its bytes (little-endian);
- the footer, ``FOOTER_SIZE`` bytes: ``u64`` index offset, ``u64`` index length, ``u32``
  entry count, ``u32`` format version, then the 8-byte magic ``FORAGEPK``.

So a reader finds the index with one small read of the file's tail, and the pack describes
itself: a locator can always be rebuilt by reading the packs. A pack is named by the SHA-256
of its index (hex), which names every block and where it is, so the same blocks in the same
order always make the same pack, and a reader can check an index against the file's name.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storage.errors import BlockstoreError

__all__ = [
    "FOOTER_SIZE",
    "MAGIC",
    "IndexEntry",
    "decode_footer",
    "decode_index",
    "encode_index",
    "pack_footer",
    "pack_name",
    "read_pack_index",
]

MAGIC = b"FORAGEPK"
VERSION = 1
_FOOTER = struct.Struct("<QQII8s")
FOOTER_SIZE = _FOOTER.size
_POSITION = struct.Struct("<QI")
#: A pack's name: the lower-case hex SHA-256 of its index.
PACK_NAME = re.compile(r"[0-9a-f]{64}")
#: The longest multihash an index entry holds (its length is one byte).
MAX_MULTIHASH = 255


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """Where one block's bytes are in its pack."""

    multihash: bytes
    offset: int
    length: int


def encode_index(entries: Iterable[IndexEntry]) -> bytes:
    """The index of a pack holding ``entries``."""
    parts: list[bytes] = []
    for entry in entries:
        if not 0 < len(entry.multihash) <= MAX_MULTIHASH:
            raise BlockstoreError(f"multihash of {len(entry.multihash)} bytes cannot be packed")
        parts.append(bytes((len(entry.multihash),)))
        parts.append(entry.multihash)
        parts.append(_POSITION.pack(entry.offset, entry.length))
    return b"".join(parts)


def pack_footer(index_offset: int, index: bytes, count: int) -> bytes:
    """The fixed footer that follows ``index`` (written at ``index_offset``)."""
    return _FOOTER.pack(index_offset, len(index), count, VERSION, MAGIC)


def pack_name(index: bytes) -> str:
    """The name of the pack whose index is ``index``."""
    return hashlib.sha256(index).hexdigest()


def decode_index(index: bytes, count: int, data_end: int, *, what: str) -> list[IndexEntry]:
    """The entries of ``index``, checked: ``count`` of them, each inside the pack's first
    ``data_end`` bytes (``BlockstoreError`` naming ``what`` otherwise)."""
    entries: list[IndexEntry] = []
    view = memoryview(index)
    position = 0
    try:
        while position < len(view):
            size = view[position]
            multihash = bytes(view[position + 1 : position + 1 + size])
            position += 1 + size
            offset, length = _POSITION.unpack_from(view, position)
            position += _POSITION.size
            if size == 0 or len(multihash) != size or offset + length > data_end:
                raise BlockstoreError(f"{what}: index entry {len(entries)} is out of bounds")
            entries.append(IndexEntry(multihash, offset, length))
    except struct.error as exc:
        raise BlockstoreError(f"{what}: index is truncated") from exc
    if len(entries) != count:
        raise BlockstoreError(f"{what}: index holds {len(entries)} entries, footer says {count}")
    return entries


def decode_footer(footer: bytes, size: int, *, what: str) -> tuple[int, int, int]:
    """The index offset, index length and entry count in ``footer``, the last
    ``FOOTER_SIZE`` bytes of a pack of ``size`` bytes (``BlockstoreError`` naming ``what``
    if it is not a pack footer or does not fit the size)."""
    index_offset, index_length, count, version, magic = _FOOTER.unpack(footer)
    if magic != MAGIC or version != VERSION:
        raise BlockstoreError(f"{what}: no pack footer (magic {magic!r}, v{version})")
    if index_offset + index_length != size - FOOTER_SIZE:
        raise BlockstoreError(f"{what}: footer does not match the pack's size")
    return index_offset, index_length, count


def read_pack_index(path: str, *, check_name: bool = True) -> Sequence[IndexEntry]:
    """Read the index of the pack at ``path`` with two reads (footer, then index); with
    ``check_name``, the index must hash to the file's name. ``BlockstoreError`` if the file
    is not a whole pack; ``FileNotFoundError`` passes through."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < FOOTER_SIZE:
            raise BlockstoreError(f"pack {path}: {size} bytes, shorter than its footer")
        footer = os.pread(fd, FOOTER_SIZE, size - FOOTER_SIZE)
        index_offset, index_length, count = decode_footer(footer, size, what=f"pack {path}")
        index = os.pread(fd, index_length, index_offset)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise BlockstoreError(f"reading pack {path}: {exc}") from exc
    finally:
        os.close(fd)
    if len(index) != index_length:
        raise BlockstoreError(f"pack {path}: index is truncated")
    name = os.path.basename(path).removesuffix(".pack")
    if check_name and pack_name(index) != name:
        raise BlockstoreError(f"pack {path}: index does not hash to the pack's name")
    return decode_index(index, count, index_offset, what=f"pack {path}")
