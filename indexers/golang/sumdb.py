"""The Go checksum database's formats: signed notes, the transparency log, its tiles.

What a client of ``sum.golang.org`` checks, in Python (golang.org/x/mod ``sumdb/note`` and
``sumdb/tlog``; https://go.dev/design/25530-sumdb, https://research.swtch.com/tlog):

- a *record* is the go.sum lines of one module version, ``"<path> <version> <h1>\\n<path>
  <version>/go.mod <h1>\\n"``; its leaf hash is ``SHA-256(0x00 || record)``, an interior
  node ``SHA-256(0x01 || left || right)`` (RFC 6962), the tree hash over ``n`` records splits
  at the largest power of two below ``n``;
- a *tree note* ``"go.sum database tree\\n<n>\\n<base64 hash>\\n"`` is signed: a blank line,
  then one ``"\\u2014 <name> <base64(key hash[4] || Ed25519 signature)>\\n"`` line per signer,
  where the key hash is the first four bytes of ``SHA-256(name + "\\n" + 0x01 + public key)``
  and a verifier key reads ``<name>+<hash hex>+<base64(0x01 || public key)>`` (``GOSUMDB``);
- a *lookup* answers ``"<record id>\\n<record>\\n<signed tree note>"``;
- *tiles* ``tile/<H>/<L>/<NNN>[.p/<W>]`` hold the ``W`` consecutive hashes of level ``L*H``
  (level ``data``: the records themselves), ``NNN`` the tile number in groups of three digits
  (``x001/x234/067``); tiles never change once written, partial ones included.

:class:`TransparencyLog` is a small in-memory log (the loopback fake's sumdb); the parsing
functions are what Forage's checksum-database proxy uses on upstream answers.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from indexers.errors import FeedError

#: Tile height of sum.golang.org (the go command asks for height 8).
TILE_HEIGHT = 8
HASH_SIZE = 32
TREE_PREFIX = "go.sum database tree\n"
SIGNATURE_PREFIX = "\u2014 "
_ALG_ED25519 = 1
_PATH_BASE = 1000
_TILE_RE = re.compile(
    r"tile/([1-9][0-9]?)/(data|0|[1-9][0-9]?)/((?:x[0-9]{3}/){0,6}[0-9]{3})(?:\.p/([1-9][0-9]*))?"
)
_NAME_RE = re.compile(r"[^\s+]+")


def record_hash(data: bytes) -> bytes:
    """The leaf hash of a record (RFC 6962 §2.1)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node (RFC 6962 §2.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def subtree_hash(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash over ``leaves`` (leaf hashes, at least one)."""
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(subtree_hash(leaves[:split]), subtree_hash(leaves[split:]))


def format_record(record_id: int, text: bytes) -> bytes:
    """A record as a lookup answers it (``tlog.FormatRecord``)."""
    return f"{record_id}\n".encode() + text + b"\n"


def format_tree(size: int, root: bytes) -> str:
    """The text of a tree note (``tlog.FormatTree``)."""
    return f"{TREE_PREFIX}{size}\n{base64.b64encode(root).decode()}\n"


def key_hash(name: str, public: bytes) -> int:
    """The 32-bit key id signatures and verifier keys carry (``note.keyHash``)."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([_ALG_ED25519]) + public).digest()
    value: int = struct.unpack(">I", digest[:4])[0]
    return value


@dataclass(frozen=True)
class Tile:
    """One tile: height ``h``, level ``level`` (-1 for record data), number ``n``, width ``w``."""

    h: int
    level: int
    n: int
    w: int

    @property
    def path(self) -> str:
        """``tile/H/L/NNN[.p/W]``, as ``tlog.Tile.Path`` spells it."""
        n, digits = self.n, f"{self.n % _PATH_BASE:03d}"
        while n >= _PATH_BASE:
            n //= _PATH_BASE
            digits = f"x{n % _PATH_BASE:03d}/{digits}"
        level = "data" if self.level == -1 else str(self.level)
        partial = f".p/{self.w}" if self.w != 1 << self.h else ""
        return f"tile/{self.h}/{level}/{digits}{partial}"


def parse_tile_path(path: str) -> Tile | None:
    """The tile ``path`` names, or ``None`` unless it is spelled exactly as ``Tile.path``
    would (so one tile has one cache file)."""
    match = _TILE_RE.fullmatch(path)
    if match is None:
        return None
    height = int(match.group(1))
    if height > 30:
        return None
    level = -1 if match.group(2) == "data" else int(match.group(2))
    number = 0
    for group in match.group(3).split("/"):
        number = number * _PATH_BASE + int(group.removeprefix("x"))
    width = int(match.group(4)) if match.group(4) else 1 << height
    if width > 1 << height or level > 63:
        return None
    tile = Tile(height, level, number, width)
    return tile if tile.path == path else None


@dataclass(frozen=True)
class Signer:
    """An Ed25519 note signer named ``name`` (``note.NewSigner``)."""

    name: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> Signer:
        if _NAME_RE.fullmatch(name) is None:
            raise ValueError(f"not a note signer name: {name!r}")
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_key(cls, skey: str) -> Signer:
        """The signer a ``PRIVATE+KEY+<name>+<hash>+<base64>`` key (``note.NewSigner``) names."""
        fields = skey.split("+", 4)
        key = base64.b64decode(fields[4]) if len(fields) == 5 else b""
        if fields[:2] != ["PRIVATE", "KEY"] or len(key) != 33 or key[0] != _ALG_ED25519:
            raise ValueError("not an Ed25519 note signer key")
        signer = cls(fields[2], Ed25519PrivateKey.from_private_bytes(key[1:]))
        if f"{key_hash(signer.name, signer.public):08x}" != fields[3]:
            raise ValueError("signer key hash does not match its key")
        return signer

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes_raw()

    @property
    def verifier_key(self) -> str:
        """The ``GOSUMDB`` value naming this signer: ``<name>+<hash>+<key>``."""
        encoded = base64.b64encode(bytes([_ALG_ED25519]) + self.public).decode()
        return f"{self.name}+{key_hash(self.name, self.public):08x}+{encoded}"

    def sign(self, text: str) -> bytes:
        """``text`` (ending in a newline) as a signed note."""
        signature = struct.pack(">I", key_hash(self.name, self.public))
        signature += self.private.sign(text.encode())
        line = f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(signature).decode()}\n"
        return (text + "\n" + line).encode()


def split_note(note: bytes, *, url: str) -> tuple[str, list[tuple[str, bytes]]]:
    """A signed note's text and its ``(signer name, key hash + signature)`` lines."""
    try:
        decoded = note.decode()
    except UnicodeDecodeError as exc:
        raise FeedError(url, "note is not UTF-8") from exc
    head, blank, tail = decoded.rpartition("\n\n")
    if not blank or not tail.endswith("\n"):
        raise FeedError(url, "not a signed note")
    signatures = []
    for line in tail[:-1].split("\n"):
        name, _, encoded = line.removeprefix(SIGNATURE_PREFIX).partition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raw = b""
        if not line.startswith(SIGNATURE_PREFIX) or not _NAME_RE.fullmatch(name) or len(raw) < 5:
            raise FeedError(url, f"malformed note signature line {line[:100]!r}")
        signatures.append((name, raw))
    return head + "\n", signatures


def verify_note(note: bytes, verifier_key: str, *, url: str) -> str:
    """The text of ``note`` if the key ``verifier_key`` signed it, else ``FeedError``."""
    name, hash_hex, encoded = [*verifier_key.split("+", 2), "", ""][:3]
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        key = b""
    if len(key) != 33 or key[0] != _ALG_ED25519 or f"{key_hash(name, key[1:]):08x}" != hash_hex:
        raise FeedError(url, f"malformed verifier key for {name!r}")
    text, signatures = split_note(note, url=url)
    public = Ed25519PublicKey.from_public_bytes(key[1:])
    for signer, raw in signatures:
        if signer == name and raw[:4].hex() == hash_hex:
            try:
                public.verify(raw[4:], text.encode())
            except InvalidSignature:
                break
            return text
    raise FeedError(url, f"note has no valid signature by {name}")


def parse_tree(text: str, *, url: str) -> tuple[int, bytes]:
    """The size and root hash of a tree note's text."""
    lines = text.split("\n")
    if text.startswith(TREE_PREFIX) and len(lines) >= 4 and lines[1].isdigit():
        try:
            root = base64.b64decode(lines[2], validate=True)
        except ValueError:
            root = b""
        if len(root) == HASH_SIZE:
            return int(lines[1]), root
    raise FeedError(url, "not a go.sum database tree note")


def split_lookup(answer: bytes, *, url: str) -> tuple[int, bytes, bytes]:
    """A lookup answer's record id, record text and signed tree note (``tlog.ParseRecord``)."""
    first, _, rest = answer.partition(b"\n")
    text, blank, note = rest.partition(b"\n\n")
    if not first.isdigit() or not blank or not note.startswith(TREE_PREFIX.encode()):
        raise FeedError(url, "not a checksum database lookup answer")
    split_note(note, url=url)
    return int(first), text + b"\n", note


class TransparencyLog:
    """An append-only log of go.sum records, signed by ``signer``, served as a sumdb is."""

    def __init__(self, signer: Signer, *, height: int = TILE_HEIGHT) -> None:
        self.signer = signer
        self.height = height
        self.records: list[bytes] = []
        self._leaves: list[bytes] = []

    def append(self, text: bytes) -> int:
        """Add a record; returns its id."""
        self.records.append(text)
        self._leaves.append(record_hash(text))
        return len(self.records) - 1

    def signed_tree(self) -> bytes:
        """The signed note of the log as it stands."""
        size = len(self._leaves)
        root = subtree_hash(self._leaves) if size else hashlib.sha256(b"").digest()
        return self.signer.sign(format_tree(size, root))

    def lookup(self, record_id: int) -> bytes:
        """A lookup answer for record ``record_id``."""
        return format_record(record_id, self.records[record_id]) + self.signed_tree()

    def tile(self, tile: Tile) -> bytes | None:
        """A tile's bytes, or ``None`` when the log is too short (or the height differs)."""
        start = tile.n << tile.h
        if tile.h != self.height:
            return None
        if tile.level == -1:
            if start + tile.w > len(self.records):
                return None
            return b"".join(text + b"\n" for text in self.records[start : start + tile.w])
        span = 1 << (tile.level * tile.h)
        if (start + tile.w) * span > len(self._leaves):
            return None
        return b"".join(
            subtree_hash(self._leaves[(start + i) * span : (start + i + 1) * span])
            for i in range(tile.w)
        )


__all__ = [
    "HASH_SIZE",
    "TILE_HEIGHT",
    "Signer",
    "Tile",
    "TransparencyLog",
    "format_record",
    "format_tree",
    "key_hash",
    "node_hash",
    "parse_tile_path",
    "parse_tree",
    "record_hash",
    "split_lookup",
    "split_note",
    "subtree_hash",
    "verify_note",
]
