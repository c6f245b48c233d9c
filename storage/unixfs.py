"""UnixFS file import, byte-identical to ``ipfs add``, and the UnixFS ``Data`` message.

The importer reproduces Kubo's defaults: fixed-size chunks (256 KiB), the balanced layout with
at most 174 links per node, dag-pb nodes whose UnixFS ``Data`` has Type=File, ``filesize``
always written and one unpacked ``blocksizes`` entry per child (file bytes, not Tsize). With
``cid_version=1`` leaves are raw blocks (``ipfs add --cid-version=1``, Forage's default); with
``cid_version=0`` they are dag-pb File nodes and CIDs are base58btc (plain ``ipfs add``).

It streams: ``update()`` takes bytes of any size and returns the blocks completed so far;
``finalize()`` returns the rest, root last. Only one partial chunk and one row of links per
tree level are held, so memory stays flat whatever the file size. No I/O happens inside, so
an async downloader can call it between reads.

Balanced layout, built bottom-up: leaves fill a level-0 row; when a row holds ``max_links``
links and another arrives, the row becomes a node linked from the row above. At the end each
row is closed into a node from the bottom up, and the last single link left on top is the
root. This is the tree boxo's top-down ``fillNodeRec`` builds: every subtree is full before
the next starts, single-child nodes are kept, and a one-chunk file's root is its leaf.

Specs: https://github.com/ipfs/specs/blob/main/UNIXFS.md and boxo
``ipld/unixfs/importer/balanced/builder.go``.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO, Literal, NamedTuple

from storage.blockstore import BlockSink
from storage.cid import DAG_PB, RAW, SHA2_256, Block, cid_from_digest, cid_text, parse_cid
from storage.dagpb import assemble_pbnode, encode_pblink
from storage.errors import BlockFormatError, ImportSizeError
from storage.varint import VarintError, decode_varint, encode_varint

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from multiformats import CID

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_LINKS",
    "MAX_CHUNK_SIZE",
    "ImportResult",
    "UnixFSData",
    "UnixFSImporter",
    "compute_cid",
    "decode_unixfs",
    "encode_leaf",
    "encode_unixfs",
    "import_file",
]

#: Kubo's ``size-262144`` chunker.
DEFAULT_CHUNK_SIZE = 262_144
#: boxo ``DefaultLinksPerBlock`` = 8192 // 47.
DEFAULT_MAX_LINKS = 174
#: boxo ``BlockSizeLimit``: Kubo refuses larger leaves.
MAX_CHUNK_SIZE = 1_048_576

#: UnixFS ``Data.Type`` values.
TYPE_RAW, TYPE_DIRECTORY, TYPE_FILE, TYPE_METADATA, TYPE_SYMLINK, TYPE_HAMT_SHARD = range(6)

_READ_SIZE = 1 << 20
#: Varint fields of the UnixFS Data message: Type, filesize, hashType, fanout, mode.
_SCALARS = (1, 3, 5, 6, 7)

Emit = Literal["all", "internal", "none"]

_V1_RAW = bytes((1, RAW, SHA2_256, 32))
_V1_DAG_PB = bytes((1, DAG_PB, SHA2_256, 32))
_V0 = bytes((SHA2_256, 32))


class UnixFSData(NamedTuple):
    """The UnixFS ``Data`` protobuf carried in a dag-pb node's ``Data`` field.

    ``mtime`` is ``(seconds, nanoseconds or None)``. Absent optional fields are ``None``.
    """

    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: tuple[int, int | None] | None = None


class ImportResult(NamedTuple):
    """What an import produced: the root CID, the file's size and the DAG's total size.

    ``dag_size`` is the root's cumulative size (block bytes of the whole DAG), the ``Size``
    that ``ipfs add`` reports. The root is kept binary: ``text`` needs no multiformats, so
    ``forage cid`` starts without importing it.
    """

    binary: bytes
    size: int
    dag_size: int

    @property
    def cid(self) -> CID:
        """The root CID."""
        return parse_cid(self.binary)

    @property
    def text(self) -> str:
        """The root CID's canonical text (base32 for CIDv1, base58btc for CIDv0)."""
        return cid_text(self.binary)


def _key(number: int, wire_type: int) -> bytes:
    return encode_varint(number << 3 | wire_type)


def encode_unixfs(message: UnixFSData) -> bytes:
    """Encode a UnixFS ``Data`` message in field-number order, as gogo-protobuf does."""
    parts = [_key(1, 0), encode_varint(message.type)]
    if message.data is not None:
        parts += [_key(2, 2), encode_varint(len(message.data)), message.data]
    if message.filesize is not None:
        parts += [_key(3, 0), encode_varint(message.filesize)]
    parts += [b"\x20" + encode_varint(size) for size in message.blocksizes]
    if message.hash_type is not None:
        parts += [_key(5, 0), encode_varint(message.hash_type)]
    if message.fanout is not None:
        parts += [_key(6, 0), encode_varint(message.fanout)]
    if message.mode is not None:
        parts += [_key(7, 0), encode_varint(message.mode)]
    if message.mtime is not None:
        seconds, nanos = message.mtime
        inner = _key(1, 0) + encode_varint(seconds & 0xFFFF_FFFF_FFFF_FFFF)
        if nanos is not None:
            inner += _key(2, 5) + nanos.to_bytes(4, "little")
        parts += [_key(8, 2), encode_varint(len(inner)), inner]
    return b"".join(parts)


def _varint_at(view: memoryview, pos: int) -> tuple[int, int]:
    try:
        return decode_varint(view, pos)
    except VarintError as exc:
        raise BlockFormatError(f"UnixFS: bad varint: {exc}") from exc


def _fields(view: memoryview) -> Iterable[tuple[int, int, int | memoryview]]:
    """Yield ``(field number, wire type, value)`` for each field of a protobuf message."""
    pos = 0
    while pos < len(view):
        key, pos = _varint_at(view, pos)
        number, wire_type = key >> 3, key & 7
        value: int | memoryview
        if wire_type == 0:
            value, pos = _varint_at(view, pos)
        elif wire_type == 2:
            length, pos = _varint_at(view, pos)
            if pos + length > len(view):
                raise BlockFormatError(f"UnixFS: field {number} runs past the end")
            value, pos = view[pos : pos + length], pos + length
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            if pos + width > len(view):
                raise BlockFormatError(f"UnixFS: field {number} runs past the end")
            value, pos = int.from_bytes(view[pos : pos + width], "little"), pos + width
        else:
            raise BlockFormatError(f"UnixFS: unsupported wire type {wire_type}")
        yield number, wire_type, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_unixfs(data: bytes | memoryview) -> UnixFSData:
    """Decode a UnixFS ``Data`` message; raise ``BlockFormatError`` when it is malformed.

    Unknown fields are skipped (proto2 rules); ``blocksizes`` is accepted packed or not.
    """
    scalars: dict[int, int] = {}
    payload: bytes | None = None
    mtime: tuple[int, int | None] | None = None
    blocksizes: list[int] = []
    for number, wire_type, value in _fields(memoryview(data)):
        if isinstance(value, memoryview):
            if number == 2:
                payload = bytes(value)
            elif number == 4:  # packed repeated varints
                pos = 0
                while pos < len(value):
                    size, pos = _varint_at(value, pos)
                    blocksizes.append(size)
            elif number == 8:
                mtime = _decode_mtime(value)
            elif number in _SCALARS:
                raise BlockFormatError(f"UnixFS: field {number} has wire type {wire_type}")
        elif number == 4 and wire_type == 0:
            blocksizes.append(value)
        elif number in _SCALARS and wire_type == 0:
            scalars[number] = value
        elif number in (*_SCALARS, 2, 4, 8):
            raise BlockFormatError(f"UnixFS: field {number} has wire type {wire_type}")
    if 1 not in scalars:
        raise BlockFormatError("UnixFS: Data message without Type")
    return UnixFSData(
        type=scalars[1],
        data=payload,
        filesize=scalars.get(3),
        blocksizes=tuple(blocksizes),
        hash_type=scalars.get(5),
        fanout=scalars.get(6),
        mode=scalars.get(7),
        mtime=mtime,
    )


def _decode_mtime(view: memoryview) -> tuple[int, int | None]:
    seconds: int | None = None
    nanos: int | None = None
    for number, wire_type, value in _fields(view):
        if number == 1 and wire_type == 0 and isinstance(value, int):
            seconds = _signed64(value)
        elif number == 2 and wire_type == 5 and isinstance(value, int):
            nanos = value
    if seconds is None:
        raise BlockFormatError("UnixFS: mtime without Seconds")
    return seconds, nanos


def _leaf_prefix(length: int) -> tuple[bytes, bytes]:
    """The dag-pb bytes around a chunk of ``length`` bytes in a non-raw leaf."""
    inner_head = b"\x08\x02" + (b"\x12" + encode_varint(length) if length else b"")
    inner_tail = b"\x18" + encode_varint(length)
    inner_len = len(inner_head) + length + len(inner_tail)
    return b"\x0a" + encode_varint(inner_len) + inner_head, inner_tail


def encode_leaf(
    chunk: bytes | memoryview, *, raw_leaves: bool, cid_version: int
) -> tuple[bytes, bytes]:
    """Encode one chunk as a leaf block; return ``(binary CID, block bytes)``.

    Raw leaves are the chunk itself under a CIDv1 raw CID; otherwise the chunk is wrapped in a
    dag-pb node with UnixFS Type=File (Kubo keeps File, not Raw, for hash compatibility).
    """
    if raw_leaves:
        data = bytes(chunk)
        return _V1_RAW + hashlib.sha256(data).digest(), data
    head, tail = _leaf_prefix(len(chunk))
    data = b"".join((head, chunk, tail))
    prefix = _V0 if cid_version == 0 else _V1_DAG_PB
    return prefix + hashlib.sha256(data).digest(), data


class _Link:
    """A finished child: its binary CID, sizes, and its ``Links`` entry encoded once."""

    __slots__ = ("cid", "encoded", "filesize", "tsize")

    def __init__(self, cid: bytes, tsize: int, filesize: int) -> None:
        self.cid = cid
        self.tsize = tsize
        self.filesize = filesize
        self.encoded = encode_pblink(cid, "", tsize)


class UnixFSImporter:
    """Streaming UnixFS file importer: feed bytes with ``update``, then call ``finalize``.

    ``emit`` chooses which blocks are returned: ``"all"`` (to store or pack them),
    ``"internal"`` (only the dag-pb nodes above the leaves, a few KiB per 43 MiB: enough to
    write a CAR in a second pass over the file) or ``"none"`` (hash only: nothing is built or
    copied, the CID costs one SHA-256 pass). ``raw_leaves`` defaults to ``cid_version == 1``,
    as in Kubo. Raises ``ImportSizeError`` for a chunk size above 1 MiB or a width below 2.

    Example::

        importer = UnixFSImporter()
        for piece in pieces:
            store_all(importer.update(piece))
        store_all(importer.finalize())
        importer.result.cid
    """

    def __init__(
        self,
        *,
        cid_version: int = 1,
        raw_leaves: bool | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_links: int = DEFAULT_MAX_LINKS,
        emit: Emit = "all",
    ) -> None:
        if cid_version not in (0, 1):
            raise ImportSizeError(f"cid_version must be 0 or 1, not {cid_version!r}")
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ImportSizeError(f"chunk size {chunk_size} is outside 1..{MAX_CHUNK_SIZE} bytes")
        if max_links < 2:
            raise ImportSizeError(f"max_links {max_links} is below 2")
        if emit not in ("all", "internal", "none"):
            raise ImportSizeError(f"emit must be 'all', 'internal' or 'none', not {emit!r}")
        self.cid_version = cid_version
        self.raw_leaves = cid_version == 1 if raw_leaves is None else raw_leaves
        self.chunk_size = chunk_size
        self.max_links = max_links
        self._emit_leaves = emit == "all"
        self._emit_nodes = emit != "none"
        # Hash-only with raw leaves: hash each chunk incrementally, never copying its bytes.
        self._streaming_hash = self.raw_leaves and not self._emit_leaves
        self._hasher = hashlib.sha256()
        self._pending = bytearray()
        self._fill = 0
        self._rows: list[list[_Link]] = [[]]
        self._leaves = 0
        self._size = 0
        self._result: ImportResult | None = None

    @property
    def result(self) -> ImportResult:
        """The root CID and sizes, once ``finalize`` has run."""
        if self._result is None:
            raise ImportSizeError("the import is not finalized yet")
        return self._result

    def add_leaf_digest(self, digest: bytes, length: int) -> list[Block]:
        """Add the next raw leaf by its SHA-256, hashed elsewhere (on another thread), instead
        of its bytes: hash-only raw-leaf imports, whole chunks only (a shorter one last)."""
        if not self._streaming_hash or self._fill or self._result is not None:
            raise ImportSizeError("add_leaf_digest() needs a hash-only raw-leaf import")
        if not 0 < length <= self.chunk_size or len(digest) != 32:
            raise ImportSizeError(f"a leaf of {length} bytes with a {len(digest)}-byte digest")
        out: list[Block] = []
        self._size += length
        self._leaves += 1
        self._push(0, _Link(_V1_RAW + digest, length, length), out)
        return out

    @property
    def takes_leaf_digests(self) -> bool:
        """Whether :meth:`add_leaf_digest` may be used (hash-only, raw leaves)."""
        return self._streaming_hash and not self._fill and self._result is None

    def update(self, data: bytes | bytearray | memoryview) -> list[Block]:
        """Add the next bytes of the file; return the blocks completed by them (maybe none)."""
        if self._result is not None:
            raise ImportSizeError("update() after finalize()")
        view = memoryview(data).cast("B")
        out: list[Block] = []
        size, pos, chunk = len(view), 0, self.chunk_size
        self._size += size
        if self._fill:
            take = min(chunk - self._fill, size)
            self._feed(view[:take])
            pos = take
            if self._fill == chunk:
                self._close_pending(out)
        while size - pos >= chunk:
            self._add_leaf(view[pos : pos + chunk], out)
            pos += chunk
        if pos < size:
            self._feed(view[pos:])
        return out

    def finalize(self) -> list[Block]:
        """Close the last chunk and every open node; return the remaining blocks, root last."""
        if self._result is not None:
            raise ImportSizeError("finalize() called twice")
        out: list[Block] = []
        if self._fill or self._leaves == 0:
            self._close_pending(out)
        level = 0
        while True:
            row = self._rows[level]
            if level == len(self._rows) - 1 and len(row) == 1:
                root = row[0]
                break
            node = self._make_node(row, out)
            self._rows[level] = []
            self._push(level + 1, node, out)
            level += 1
        self._result = ImportResult(binary=root.cid, size=self._size, dag_size=root.tsize)
        return out

    def _feed(self, view: memoryview) -> None:
        """Keep the bytes of a chunk that is not complete yet."""
        if self._streaming_hash:
            if not self._fill:
                self._hasher = hashlib.sha256()
            self._hasher.update(view)
        else:
            self._pending += view
        self._fill += len(view)

    def _close_pending(self, out: list[Block]) -> None:
        if self._streaming_hash:
            self._push(0, _Link(_V1_RAW + self._hasher.digest(), self._fill, self._fill), out)
            self._leaves += 1
        else:
            self._add_leaf(memoryview(self._pending), out)
            self._pending = bytearray()
        self._fill = 0

    def _add_leaf(self, chunk: memoryview, out: list[Block]) -> None:
        length = len(chunk)
        self._leaves += 1
        if self._emit_leaves:
            cid, data = encode_leaf(chunk, raw_leaves=self.raw_leaves, cid_version=self.cid_version)
            codec = RAW if self.raw_leaves else DAG_PB
            version = 1 if self.raw_leaves else self.cid_version
            out.append(Block(cid_from_digest(cid[-32:], codec=codec, version=version), data))
            self._push(0, _Link(cid, len(data), length), out)
        elif self.raw_leaves:
            self._push(0, _Link(_V1_RAW + hashlib.sha256(chunk).digest(), length, length), out)
        else:
            head, tail = _leaf_prefix(length)
            hasher = hashlib.sha256(head)
            hasher.update(chunk)
            hasher.update(tail)
            prefix = _V0 if self.cid_version == 0 else _V1_DAG_PB
            tsize = len(head) + length + len(tail)
            self._push(0, _Link(prefix + hasher.digest(), tsize, length), out)

    def _push(self, level: int, link: _Link, out: list[Block]) -> None:
        """Append ``link`` to row ``level``, first closing that row if it is full."""
        if level == len(self._rows):
            self._rows.append([])
        row = self._rows[level]
        if len(row) == self.max_links:
            node = self._make_node(row, out)
            self._rows[level] = row = []
            self._push(level + 1, node, out)
        row.append(link)

    def _make_node(self, row: list[_Link], out: list[Block]) -> _Link:
        """Encode a dag-pb File node over ``row``'s links; return the link to it."""
        filesize = sum(link.filesize for link in row)
        message = UnixFSData(
            type=TYPE_FILE, filesize=filesize, blocksizes=tuple(link.filesize for link in row)
        )
        data = assemble_pbnode([link.encoded for link in row], encode_unixfs(message))
        digest = hashlib.sha256(data).digest()
        if self._emit_nodes:
            cid = cid_from_digest(digest, codec=DAG_PB, version=self.cid_version)
            out.append(Block(cid, data))
        prefix = _V0 if self.cid_version == 0 else _V1_DAG_PB
        tsize = len(data) + sum(link.tsize for link in row)
        return _Link(prefix + digest, tsize, filesize)


Source = bytes | bytearray | memoryview | BinaryIO | Iterable[bytes]


def _pieces(source: Source) -> Iterator[bytes | bytearray | memoryview]:
    """Bytes as given; a binary file read in 1 MiB pieces into one reused buffer."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield source
    elif hasattr(source, "readinto"):
        buffer = memoryview(bytearray(_READ_SIZE))
        while count := source.readinto(buffer):
            yield buffer[:count]
    elif hasattr(source, "read"):
        while piece := source.read(_READ_SIZE):
            yield piece
    else:
        yield from source


#: Leaves read (and hashed in parallel) at a time: 4 MiB of 256 KiB leaves.
_LEAVES_PER_READ = 16


def _read_full(stream: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` (fewer bytes only at the end of ``stream``), so leaves stay aligned."""
    total = 0
    while total < len(view):
        count = stream.readinto(view[total:])  # type: ignore[attr-defined]
        if not count:
            break
        total += count
    return int(total)


def _sha256(data: memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _known_size(source: object) -> float:
    """The size of a regular file ``source`` reads from, else infinity (a pipe, a socket)."""
    try:
        status = os.fstat(source.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return math.inf
    return status.st_size if stat.S_ISREG(status.st_mode) else math.inf


def hash_workers() -> int:
    """Threads to hash leaves on: every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def leaf_digests(stream: BinaryIO, chunk_size: int, workers: int) -> Iterator[tuple[bytes, int]]:
    """``(sha256, length)`` of each ``chunk_size`` leaf of ``stream``, in order, the leaves
    hashed on ``workers`` threads (hashlib releases the GIL) while the next 16 leaves are read
    into a second buffer. A file of one leaf is hashed here, starting no thread."""
    size = chunk_size * _LEAVES_PER_READ
    buffers = (memoryview(bytearray(size)), memoryview(bytearray(size)))
    pool: ThreadPoolExecutor | None = None
    pending: list[tuple[Future[bytes], int]] = []
    turn = 0
    try:
        while True:
            view = buffers[turn]
            count = _read_full(stream, view)
            for future, length in pending:
                yield future.result(), length
            if not count:
                return
            if pool is None and count <= chunk_size:
                yield _sha256(view[:count]), count
                continue
            if pool is None:
                from concurrent.futures import ThreadPoolExecutor  # a one-leaf file needs none

                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="leaf")
            pending = [
                (
                    pool.submit(_sha256, view[at : min(at + chunk_size, count)]),
                    min(chunk_size, count - at),
                )
                for at in range(0, count, chunk_size)
            ]
            turn ^= 1
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def import_file(
    source: Source,
    *,
    sink: BlockSink | None = None,
    cid_version: int = 1,
    raw_leaves: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_links: int = DEFAULT_MAX_LINKS,
    leaves: bool = True,
) -> ImportResult:
    """Import bytes, a binary file or an iterable of byte pieces; ``put`` blocks into ``sink``.

    Without a sink only the CID is computed (no block is built). Blocks reach the sink as soon
    as they are complete, so memory holds one chunk whatever the size of the input.
    ``leaves=False`` hands the sink only the internal nodes (see ``UnixFSImporter``'s emit).
    """
    emit: Emit = "none" if sink is None else "all" if leaves else "internal"
    importer = UnixFSImporter(
        cid_version=cid_version,
        raw_leaves=raw_leaves,
        chunk_size=chunk_size,
        max_links=max_links,
        emit=emit,
    )
    workers = hash_workers()
    parallel = importer.takes_leaf_digests and hasattr(source, "readinto") and workers > 1
    if parallel and _known_size(source) <= chunk_size:
        parallel = False  # one leaf: not worth the threads nor the read-ahead buffers
    if parallel:
        for digest, length in leaf_digests(source, chunk_size, workers):  # type: ignore[arg-type]
            for block in importer.add_leaf_digest(digest, length):
                sink.put(block)  # type: ignore[union-attr]
    else:
        for piece in _pieces(source):
            for block in importer.update(piece):
                sink.put(block)  # type: ignore[union-attr]
    for block in importer.finalize():
        sink.put(block)  # type: ignore[union-attr]
    return importer.result


def compute_cid(source: Source, *, cid_version: int = 1) -> CID:
    """The CID ``ipfs add`` gives these bytes (``--cid-version=1`` unless 0 is asked)."""
    return import_file(source, cid_version=cid_version).cid
