"""CIDs and the ``Block`` value: parsing, building and checking content identifiers.

A CID names a block by its codec and the multihash of its bytes. ``multiformats`` does the
encoding (multibase, multicodec, multihash, varint); this module fixes Forage's conventions on
top of it: CIDv1 text is always base32 (``bafy…``/``bafk…``), CIDv0 is base58btc (``Qm…``), and
bytes are verified against their CID before anyone relies on them.

CIDs of the common shape (SHA-256, a codec multiformats knows) are assembled from their parts
without going through multiformats' argument validation: that validation raises and catches
``TypeError``s internally, and the tracebacks form reference cycles that keep every frame of
the caller alive, chunk buffers included, until the cycle collector runs (measured: +50 MiB
per GiB imported). Everything else, and all CID text, goes through ``CID.decode``.

Specs: https://github.com/multiformats/cid and https://github.com/multiformats/multihash
"""

from __future__ import annotations

import binascii
import hashlib
from base64 import b32decode, b32encode
from functools import cache, lru_cache
from types import SimpleNamespace
from typing import TYPE_CHECKING, NamedTuple

from storage.errors import IntegrityError, InvalidCID
from storage.varint import VarintError, decode_varint, encode_varint

if TYPE_CHECKING:
    from multiformats import CID
    from multiformats.multicodec import Multicodec

__all__ = [
    "DAG_PB",
    "IDENTITY",
    "RAW",
    "SHA2_256",
    "Block",
    "block_cid",
    "cid_from_digest",
    "cid_text",
    "parse_cid",
    "split_cid",
    "verify_block",
]

#: Multicodec codes used by UnixFS and CAR files.
RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
IDENTITY = 0x00

_SHA2_256_PREFIX = bytes((SHA2_256, 32))
#: A multihash longer than this is refused: blockstore file names are built from it.
MAX_MULTIHASH_LENGTH = 128


class Block(NamedTuple):
    """A block: bytes and the CID that names them (the unit importers emit and stores keep)."""

    cid: CID
    data: bytes


@cache
def _multiformats() -> SimpleNamespace:
    """multiformats and the tables used here, imported on first use: loading its codec table
    costs tens of milliseconds, which a command that only prints a CID should not pay."""
    from multiformats import CID, multibase, multicodec, multihash

    return SimpleNamespace(
        CID=CID,
        multicodec=multicodec,
        base32=multibase.get("base32"),
        base58=multibase.get("base58btc"),
        sha2_256=multihash.get(code=SHA2_256),
    )


@lru_cache(maxsize=256)
def _codec(code: int) -> Multicodec | None:
    """The multicodec for ``code``, or ``None`` if multiformats does not know it."""
    try:
        return _multiformats().multicodec.get(code=code)  # type: ignore[no-any-return]
    except KeyError:
        return None


def _assemble(version: int, codec: Multicodec, multihash_bytes: bytes) -> CID:
    """A SHA-256 CID from parts already checked (see the module docstring for why)."""
    mf = _multiformats()
    base = mf.base32 if version == 1 else mf.base58
    return mf.CID._new_instance(mf.CID, base, version, codec, mf.sha2_256, multihash_bytes)  # type: ignore[no-any-return]


def cid_text(binary: bytes) -> str:
    """The canonical text of a binary CID: multibase base32 (RFC 4648, lower case, unpadded,
    prefix ``b``) for CIDv1, which the standard library encodes; base58btc for CIDv0."""
    if binary[:2] == _SHA2_256_PREFIX:
        return str(parse_cid(binary))
    return "b" + b32encode(binary).decode("ascii").lower().rstrip("=")


def _from_binary(raw: bytes) -> CID:
    """Parse a binary CID: the common SHA-256 shapes directly, anything else via multiformats."""
    version, codec_code, hash_code, start, end = _cid_fields(memoryview(raw))
    if end != len(raw):
        raise InvalidCID(raw, f"{len(raw) - end} bytes after the CID")
    codec = _codec(codec_code)
    if hash_code == SHA2_256 and end - start == 34 and codec is not None:
        return _assemble(version, codec, raw[start:end])
    try:
        return _multiformats().CID.decode(raw)  # type: ignore[no-any-return]
    except ImportError as exc:  # multiformats lacks the hash function's module
        raise InvalidCID(raw, f"hash function not supported: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidCID(raw, str(exc)) from exc


def _base32_binary(text: str) -> bytes | None:
    """The bytes of a CIDv1 in multibase base32 (``b`` then lower-case RFC 4648, unpadded),
    decoded by the standard library: multiformats' text decoder costs more than reading a
    small archive, and a mirror's fallback listing parses thousands. ``None`` for any other
    text (multiformats decodes it, or says why it cannot)."""
    body = text[1:]
    if text[:1] != "b" or not body or body != body.lower():
        return None
    try:
        return b32decode(body.upper() + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        return None


def _normalise(cid: CID) -> CID:
    """Give a CIDv1 the base32 text form, so ``str(cid)`` is canonical everywhere."""
    if cid.version == 1 and cid.base.name != "base32":
        return cid.set(base=_multiformats().base32)
    return cid


def parse_cid(value: str | bytes | bytearray | memoryview | CID) -> CID:
    """Parse a CID from text or binary form, with v1 normalised to base32 text.

    Raises ``InvalidCID`` for anything that is not a well-formed CIDv0 or CIDv1, or whose
    multihash is too long to be a key.
    """
    cid_class = _multiformats().CID
    if isinstance(value, cid_class):
        cid = value
    elif isinstance(value, bytes | bytearray | memoryview):
        if not value:
            raise InvalidCID(value, "empty")
        cid = _from_binary(bytes(value))
    elif isinstance(value, str):
        if not value:
            raise InvalidCID(value, "empty")
        binary = _base32_binary(value)
        try:
            cid = cid_class.decode(value) if binary is None else _from_binary(binary)
        except InvalidCID as exc:  # named by the text given, not its bytes
            raise InvalidCID(value, exc.reason) from None
        except ImportError as exc:  # multiformats lacks the hash function's module
            raise InvalidCID(value, f"hash function not supported: {exc}") from exc
        except (ValueError, KeyError, TypeError, IndexError) as exc:
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
    if codec not in (RAW, DAG_PB):
        raise InvalidCID(codec, "only the raw (0x55) and dag-pb (0x70) codecs are built here")
    if len(digest) != 32:
        raise InvalidCID(digest, "a SHA-256 digest is 32 bytes")
    if version not in (0, 1):
        raise InvalidCID(version, "CID version must be 0 or 1")
    codec_object = _codec(codec)
    assert codec_object is not None  # raw and dag-pb are in every multiformats table
    version = 0 if version == 0 and codec == DAG_PB else 1
    return _assemble(version, codec_object, _SHA2_256_PREFIX + bytes(digest))


def block_cid(data: bytes | memoryview, *, codec: int = RAW, version: int = 1) -> CID:
    """Hash ``data`` with SHA-256 and return its CID (v1 base32 unless v0 dag-pb is asked)."""
    return cid_from_digest(hashlib.sha256(data).digest(), codec=codec, version=version)


def _multihash_of(cid: CID, data: bytes | memoryview) -> bytes:
    """The multihash ``data`` has under ``cid``'s hash function."""
    code = cid.hashfun.code
    if code == SHA2_256:
        return _SHA2_256_PREFIX + hashlib.sha256(data).digest()
    if code == IDENTITY:
        return encode_varint(IDENTITY) + encode_varint(len(data)) + bytes(data)
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


def _cid_fields(view: memoryview) -> tuple[int, int, int, int, int]:
    """Parse the structure of the binary CID at the start of ``view``.

    Returns ``(version, codec, hash code, multihash start, end)``; raises ``InvalidCID``.
    """
    if len(view) >= 2 and view[0] == SHA2_256 and view[1] == 32:
        if len(view) < 34:
            raise InvalidCID(bytes(view[:40]), "CIDv0 cut short")
        return 0, DAG_PB, SHA2_256, 0, 34
    pos = 0
    fields = []
    try:
        for _ in range(4):
            value, pos = decode_varint(view, pos, multiformats=True)
            fields.append(value)
            if len(fields) == 2:
                start = pos
    except VarintError as exc:
        raise InvalidCID(bytes(view[:40]), f"bad varint: {exc}") from exc
    version, codec, code, length = fields
    if version != 1:
        raise InvalidCID(bytes(view[:40]), f"unsupported CID version {version}")
    if length > MAX_MULTIHASH_LENGTH:
        raise InvalidCID(bytes(view[:40]), f"digest length {length} is too long")
    if pos + length > len(view):
        raise InvalidCID(bytes(view[:40]), "digest cut short")
    return version, codec, code, start, pos + length


def split_cid(buf: bytes | memoryview, offset: int = 0) -> int:
    """Return where the binary CID starting at ``buf[offset]`` ends, checking its structure.

    A CIDv0 is a bare 34-byte SHA-256 multihash (``12 20``); a CIDv1 is
    ``varint(1) varint(codec) varint(hash code) varint(length) digest``. Raises ``InvalidCID``
    when the bytes cannot be a CID or run past the end of ``buf``.
    """
    return offset + _cid_fields(memoryview(buf)[offset:])[4]
