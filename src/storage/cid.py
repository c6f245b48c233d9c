"""CIDs and the ``Block`` value: parsing, building and checking content identifiers.

A CID names a block by its codec and the multihash of its bytes. ``multiformats`` does the
encoding (multibase, multicodec, multihash, varint); this module fixes Forage's conventions on
top of it: CIDv1 text is always base32 (``bafy…``/``bafk…``), CIDv0 is base58btc (``Qm…``), and
bytes are verified against their CID before anyone relies on them.

Specs: https://github.com/multiformats/cid and https://github.com/multiformats/multihash
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from multiformats import CID, multibase, multicodec, varint

from storage.errors import IntegrityError, InvalidCID

__all__ = [
    "DAG_PB",
    "IDENTITY",
    "RAW",
    "SHA2_256",
    "Block",
    "block_cid",
    "cid_from_digest",
    "parse_cid",
    "split_cid",
    "verify_block",
]

#: Multicodec codes used by UnixFS and CAR files.
RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
IDENTITY = 0x00

_BASE32 = multibase.get("base32")
_BASE58 = multibase.get("base58btc")
_CODECS = {RAW: multicodec.get(code=RAW), DAG_PB: multicodec.get(code=DAG_PB)}
_SHA2_256_PREFIX = bytes((SHA2_256, 32))
#: A multihash longer than this is refused: blockstore file names are built from it.
MAX_MULTIHASH_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Block:
    """A block: bytes and the CID that names them (the unit importers emit and stores keep)."""

    cid: CID
    data: bytes


def _normalise(cid: CID) -> CID:
    """Give a CIDv1 the base32 text form, so ``str(cid)`` is canonical everywhere."""
    if cid.version == 1 and cid.base.name != "base32":
        return cid.set(base=_BASE32)
    return cid


def parse_cid(value: str | bytes | bytearray | memoryview | CID) -> CID:
    """Parse a CID from text or binary form, with v1 normalised to base32 text.

    Raises ``InvalidCID`` for anything that is not a well-formed CIDv0 or CIDv1, or whose
    multihash is too long to be a key.
    """
    if isinstance(value, CID):
        cid = value
    elif isinstance(value, str | bytes | bytearray | memoryview):
        raw = bytes(value) if not isinstance(value, str) else value
        if not raw:
            raise InvalidCID(value, "empty")
        try:
            cid = CID.decode(raw)
        except ImportError as exc:  # multiformats lacks the hash function's module
            raise InvalidCID(value, f"hash function not supported: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidCID(value, str(exc)) from exc
    else:
        raise InvalidCID(value, f"expected a CID, str or bytes, not {type(value).__name__}")
    if len(cid.digest) > MAX_MULTIHASH_LENGTH:
        raise InvalidCID(value, f"multihash longer than {MAX_MULTIHASH_LENGTH} bytes")
    return _normalise(cid)


def cid_from_digest(digest: bytes, *, codec: int = RAW, version: int = 1) -> CID:
    """Build the CID of a block whose SHA-256 ``digest`` is already known.

    CIDv0 exists only for dag-pb: asking for a v0 raw CID gives v1, as Kubo does for raw leaves.
    """
    if codec not in _CODECS:
        raise InvalidCID(codec, "only the raw (0x55) and dag-pb (0x70) codecs are built here")
    if len(digest) != 32:
        raise InvalidCID(digest, "a SHA-256 digest is 32 bytes")
    mh = _SHA2_256_PREFIX + digest
    if version == 0 and codec == DAG_PB:
        return CID(_BASE58, 0, _CODECS[DAG_PB], mh)
    if version not in (0, 1):
        raise InvalidCID(version, "CID version must be 0 or 1")
    return CID(_BASE32, 1, _CODECS[codec], mh)


def block_cid(data: bytes | memoryview, *, codec: int = RAW, version: int = 1) -> CID:
    """Hash ``data`` with SHA-256 and return its CID (v1 base32 unless v0 dag-pb is asked)."""
    return cid_from_digest(hashlib.sha256(data).digest(), codec=codec, version=version)


def _multihash_of(cid: CID, data: bytes | memoryview) -> bytes:
    """The multihash ``data`` has under ``cid``'s hash function."""
    code = cid.hashfun.code
    if code == SHA2_256:
        return _SHA2_256_PREFIX + hashlib.sha256(data).digest()
    if code == IDENTITY:
        return bytes(varint.encode(IDENTITY) + varint.encode(len(data))) + bytes(data)
    try:
        return bytes(cid.hashfun.digest(bytes(data), size=len(cid.raw_digest)))
    except (ImportError, ValueError, KeyError, TypeError) as exc:
        raise InvalidCID(str(cid), f"hash function {cid.hashfun.name} is not supported") from exc


def verify_block(cid: CID, data: bytes | memoryview) -> None:
    """Raise ``IntegrityError`` unless ``data`` hashes to ``cid``'s multihash.

    Raises ``InvalidCID`` when the hash function is one this Python cannot compute.
    """
    actual = _multihash_of(cid, data)
    if actual != cid.digest:
        expected_hex = bytes(cid.digest).hex()
        raise IntegrityError(f"block {cid}", expected_hex, actual.hex())


def split_cid(buf: bytes | memoryview, offset: int = 0) -> int:
    """Return where the binary CID starting at ``buf[offset]`` ends, checking its structure.

    A CIDv0 is a bare 34-byte SHA-256 multihash (``12 20``); a CIDv1 is
    ``varint(1) varint(codec) varint(hash code) varint(length) digest``. Raises ``InvalidCID``
    when the bytes cannot be a CID or run past the end of ``buf``.
    """
    view = memoryview(buf)[offset:]
    if len(view) >= 2 and view[0] == SHA2_256 and view[1] == 32:
        if len(view) < 34:
            raise InvalidCID(bytes(view[:40]), "CIDv0 cut short")
        return offset + 34
    pos = 0
    fields = []
    try:
        for _ in range(4):
            value, size, _rest = varint.decode_raw(view[pos:])
            fields.append(value)
            pos += size
    except ValueError as exc:
        raise InvalidCID(bytes(view[:40]), f"bad varint: {exc}") from exc
    version, _codec, _code, length = fields
    if version != 1:
        raise InvalidCID(bytes(view[:40]), f"unsupported CID version {version}")
    if length > MAX_MULTIHASH_LENGTH:
        raise InvalidCID(bytes(view[:40]), f"digest length {length} is too long")
    if pos + length > len(view):
        raise InvalidCID(bytes(view[:40]), "digest cut short")
    return offset + pos + length
