"""Filecoin piece commitment (CommP) of a byte stream, and its piece CIDs v1 and v2.

Spec: https://spec.filecoin.io/#section-systems.filecoin_files.piece.data-representation and
FRC-0069 (https://github.com/filecoin-project/FIPs/blob/master/FRCs/frc-0069.md). Reference
implementation: go-fil-commp-hashhash (``commp.go``).

The payload is zero-filled to a whole number of 127-byte quads; Fr32 padding turns each quad
into four 32-byte leaves (four 254-bit quanta, top two bits zero); the leaf count is padded with
zero leaves to a power of two; each node is SHA-256(left ‖ right) with the top two bits of its
last byte cleared. :class:`CommP` does this incrementally with one pending node per tree level,
so a deal's CAR can be hashed while it streams past, in constant memory.

Two paths compute the tree: the C extension ``storage._commp`` (built by the package's own build
where a compiler and OpenSSL headers exist; about 4 SHA-256 calls on 64-byte messages per 127
input bytes make per-call overhead the cost, so this path matters) and a pure-Python fallback.
Both are tested against the same vectors; ``implementation="auto"`` picks the compiled one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, runtime_checkable

from multiformats import CID, multibase, multihash, varint

from storage.errors import CommPError

log = logging.getLogger(__name__)

BytesLike: TypeAlias = bytes | bytearray | memoryview
Implementation: TypeAlias = Literal["auto", "compiled", "python"]

#: go-fil-commp-hashhash and filecoin-ffi refuse payloads shorter than this.
MIN_PAYLOAD_SIZE = 65
#: 64 GiB, the largest Filecoin sector (a tree of height 31).
MAX_PADDED_SIZE = 1 << 36
MAX_PAYLOAD_SIZE = MAX_PADDED_SIZE // 128 * 127

_QUAD = 127
_NODE = 32
_MAX_HEIGHT = 31
_MASK254 = (1 << 254) - 1
_TRUNCATED_LAST = [bytes((b & 0x3F,)) for b in range(256)]
# FRC-0069 multihash fr32-sha256-trunc254-padbintree; multiformats 0.3 does not know the code.
_PADBINTREE_PREFIX = bytes([1]) + varint.encode(0x55) + varint.encode(0x1011)

try:
    from storage._commp import Tree as _CompiledTree
except ImportError:  # built without a compiler or OpenSSL headers
    _CompiledTree = None  # type: ignore[assignment, misc]
    log.debug("storage._commp is not built; CommP uses the pure-Python path")

#: Whether the compiled path (``storage._commp``) was built and imports.
COMPILED_AVAILABLE = _CompiledTree is not None


class _Tree(Protocol):
    def update(self, data: BytesLike, /) -> None: ...
    def root(self) -> bytes: ...


@runtime_checkable
class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def _hash_pair(pair: bytes) -> bytes:
    digest = hashlib.sha256(pair).digest()
    return digest[:31] + _TRUNCATED_LAST[digest[31]]


def _zero_roots() -> tuple[bytes, ...]:
    roots = [bytes(_NODE)]
    for _ in range(_MAX_HEIGHT):
        roots.append(_hash_pair(roots[-1] * 2))
    return tuple(roots)


_ZERO_ROOTS = _zero_roots()


class _PythonTree:
    """Pure-Python twin of ``storage._commp.Tree``, for builds without the extension."""

    __slots__ = ("_carry", "_quads", "_stack")

    def __init__(self) -> None:
        self._carry = b""
        self._quads = 0
        self._stack = [b""] * (_MAX_HEIGHT + 1)

    def update(self, data: BytesLike, /) -> None:
        view = memoryview(data).cast("B")
        if self._carry:
            need = _QUAD - len(self._carry)
            if len(view) < need:
                self._carry += view
                return
            self._push(self._stack, self._quads, _quad_node(self._carry + view[:need]))
            self._quads += 1
            view = view[need:]
        whole = len(view) - len(view) % _QUAD
        stack, push = self._stack, self._push
        for offset in range(0, whole, _QUAD):
            push(stack, self._quads, _quad_node(view[offset : offset + _QUAD]))
            self._quads += 1
        self._carry = bytes(view[whole:])

    def root(self) -> bytes:
        stack, quads = list(self._stack), self._quads
        if self._carry or not quads:
            self._push(stack, quads, _quad_node(self._carry.ljust(_QUAD, b"\0")))
            quads += 1
        height = 2 + (quads - 1).bit_length()
        acc = b""
        for level in range(2, height):
            if (quads >> (level - 2)) & 1:
                acc = _hash_pair(stack[level] + (acc or _ZERO_ROOTS[level]))
            elif acc:
                acc = _hash_pair(acc + _ZERO_ROOTS[level])
        return stack[height] if (quads >> (height - 2)) & 1 else acc

    @staticmethod
    def _push(stack: list[bytes], index: int, node: bytes) -> None:
        """Add quad ``index``'s node; while it is a right child, merge it with its pending left."""
        level = 2
        while index & 1:
            node = _hash_pair(stack[level] + node)
            index >>= 1
            level += 1
        stack[level] = node


def _quad_node(quad: BytesLike) -> bytes:
    """Fr32-expand 127 bytes into four 254-bit leaves and hash them down to one node."""
    value = int.from_bytes(quad, "little")
    leaves = [
        ((value >> shift) & _MASK254).to_bytes(_NODE, "little") for shift in (0, 254, 508, 762)
    ]
    return _hash_pair(_hash_pair(leaves[0] + leaves[1]) + _hash_pair(leaves[2] + leaves[3]))


def _new_tree(implementation: Implementation) -> _Tree:
    if implementation == "python" or (implementation == "auto" and _CompiledTree is None):
        return _PythonTree()
    if implementation not in ("auto", "compiled"):
        raise CommPError(
            f"unknown CommP implementation {implementation!r}: use auto, compiled or python"
        )
    if _CompiledTree is None:
        raise CommPError(
            "the compiled CommP path storage._commp is not built "
            "(it needs a C compiler and OpenSSL headers when the package is installed)"
        )
    return _CompiledTree()


def padded_piece_size(payload_size: int) -> int:
    """Padded piece size of a payload, without hashing it: to plan what fits in a deal."""
    if payload_size < MIN_PAYLOAD_SIZE:
        raise CommPError(
            f"a piece commitment needs at least {MIN_PAYLOAD_SIZE} bytes of payload, got "
            f"{payload_size} (go-fil-commp-hashhash and filecoin-ffi refuse shorter inputs)"
        )
    if payload_size > MAX_PAYLOAD_SIZE:
        raise CommPError(
            f"a payload of {payload_size} bytes exceeds the largest piece "
            f"({MAX_PAYLOAD_SIZE} bytes fill a 64 GiB padded piece)"
        )
    quads = -(-payload_size // _QUAD)
    return 128 << (quads - 1).bit_length()


def _check_commp(commp: bytes) -> None:
    if len(commp) != _NODE:
        raise CommPError(f"a piece commitment is 32 bytes, got {len(commp)}")
    if commp[31] & 0xC0:
        raise CommPError("not a piece commitment: the top two bits of its last byte are set")


def _check_sizes(padded_size: int, payload_size: int) -> None:
    """A padded size is a power of two; its padding is less than the payload (FRC-0069)."""
    if padded_size < 128 or padded_size > MAX_PADDED_SIZE or padded_size & (padded_size - 1):
        raise CommPError(
            f"padded piece size {padded_size} is not a power of two from 128 to {MAX_PADDED_SIZE}"
        )
    capacity = padded_size // 128 * 127
    if not 0 <= payload_size <= capacity or (padded_size > 128 and payload_size * 2 <= capacity):
        raise CommPError(
            f"a payload of {payload_size} bytes does not make a piece of {padded_size} padded bytes"
        )


def piece_cid_v1(commp: bytes) -> str:
    """Piece CID v1 (fil-commitment-unsealed, sha2-256-trunc254-padded): what deals put on chain."""
    _check_commp(commp)
    digest = multihash.wrap(commp, "sha2-256-trunc254-padded")
    return str(CID("base32", 1, "fil-commitment-unsealed", digest))


def piece_cid_v2(commp: bytes, padded_size: int, *, payload_size: int | None = None) -> str:
    """Piece CID v2 (FRC-0069): carries tree height and payload padding, so the CID alone suffices.

    Without ``payload_size`` the whole padded piece counts as payload (padding 0): the FRC's
    conversion of an on-chain (v1 CID, padded size) pair.
    """
    _check_commp(commp)
    capacity = padded_size // 128 * 127
    if payload_size is None:
        payload_size = capacity
    _check_sizes(padded_size, payload_size)
    height = padded_size.bit_length() - 6
    digest = varint.encode(capacity - payload_size) + bytes([height]) + commp
    return multibase.encode(_PADBINTREE_PREFIX + varint.encode(len(digest)) + digest, "base32")


@dataclass(frozen=True, slots=True)
class PieceInfo:
    """A payload's piece commitment and sizes: what a piece row and a deal proposal need."""

    commp: bytes
    padded_size: int
    payload_size: int

    def __post_init__(self) -> None:
        _check_commp(self.commp)
        _check_sizes(self.padded_size, self.payload_size)

    @property
    def cid_v1(self) -> str:
        """Piece CID v1, as in ``DealProposal.PieceCID``."""
        return piece_cid_v1(self.commp)

    @property
    def cid_v2(self) -> str:
        """Piece CID v2 (FRC-0069), which also encodes the padded and payload sizes."""
        return piece_cid_v2(self.commp, self.padded_size, payload_size=self.payload_size)


class CommP:
    """Incremental CommP hasher: ``update`` with chunks as they stream by, then ``digest``.

    State is the partial quad plus one pending node per tree level, whatever the input size.
    ``digest`` and ``piece_info`` do not reset it: more data may follow.
    """

    __slots__ = ("_size", "_tree")

    def __init__(self, *, implementation: Implementation = "auto") -> None:
        self._tree = _new_tree(implementation)
        self._size = 0

    @property
    def payload_size(self) -> int:
        """Bytes absorbed so far."""
        return self._size

    def update(self, data: BytesLike) -> None:
        """Absorb a chunk of any length."""
        with memoryview(data) as view:
            size = self._size + view.nbytes
            if size > MAX_PAYLOAD_SIZE:
                raise CommPError(
                    f"a payload of more than {MAX_PAYLOAD_SIZE} bytes exceeds the largest "
                    "(64 GiB padded) piece"
                )
            self._tree.update(view)
        self._size = size

    def digest(self) -> bytes:
        """The 32-byte piece commitment of the bytes so far."""
        padded_piece_size(self._size)
        return self._tree.root()

    def piece_info(self) -> PieceInfo:
        """Commitment, padded size and payload size of the bytes so far."""
        return PieceInfo(self.digest(), padded_piece_size(self._size), self._size)


def piece_commitment(
    source: BytesLike | _Readable | Iterable[BytesLike],
    *,
    implementation: Implementation = "auto",
    chunk_size: int = 1 << 20,
) -> PieceInfo:
    """CommP of bytes, a binary file (read in ``chunk_size`` pieces) or an iterable of chunks."""
    hasher = CommP(implementation=implementation)
    if isinstance(source, bytes | bytearray | memoryview):
        hasher.update(source)
    elif isinstance(source, _Readable):
        while block := source.read(chunk_size):
            hasher.update(block)
    else:
        for chunk in source:
            hasher.update(chunk)
    return hasher.piece_info()
