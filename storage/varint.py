"""Unsigned LEB128 varints, as protobuf (dag-pb, UnixFS), CIDs and CAR sections use them.

Seven bits a byte, least significant first, high bit set on every byte but the last.
Multiformats varints are the same encoding restricted to 9 bytes and minimal form; protobuf
allows 10 bytes (64-bit values). ``multiformats.varint`` validates its arguments with
``typing_validation``, which raises and catches ``TypeError``s internally when handed a
``memoryview``; the tracebacks form reference cycles holding the caller's frames (and their
block buffers) until the cycle collector runs, so the hot paths use these instead.

Spec: https://github.com/multiformats/unsigned-varint
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["VarintError", "decode_varint", "encode_varint"]

_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


class VarintError(ValueError):
    """Malformed varint; callers translate it into their own ``StorageError``."""


def encode_varint(value: int) -> bytes:
    """The varint of a non-negative integer."""
    if value < 0x80:
        return _ONE_BYTE[value]
    return _encode_long(value)


@lru_cache(maxsize=4096)
def _encode_long(value: int) -> bytes:
    """Cached: a DAG repeats the same few sizes (chunk size, Tsize of full subtrees)."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(
    buf: bytes | bytearray | memoryview, pos: int = 0, *, multiformats: bool = False
) -> tuple[int, int]:
    """Decode the varint at ``buf[pos]``; return it and the position after it.

    ``multiformats=True`` also enforces the multiformats rules (at most 9 bytes, minimal
    form). Raises ``VarintError`` when the varint is cut short or too long.
    """
    value = shift = 0
    start = pos
    limit = 9 if multiformats else 10
    while True:
        if pos >= len(buf):
            raise VarintError("varint cut short")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if pos - start >= limit:
            raise VarintError(f"varint longer than {limit} bytes")
    if multiformats and byte == 0 and pos - start > 1:
        raise VarintError("varint not in minimal form")
    if value >> 64:
        raise VarintError("varint over 64 bits")
    return value, pos
