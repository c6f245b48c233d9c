"""IPFS Trustless Gateway over Forage's blockstore: ``GET|HEAD /ipfs/{cid}[/{path}]``.

Any IPFS client can fetch archived bytes from Forage itself and check them without trusting
it: a raw block (``?format=raw`` or ``Accept: application/vnd.ipld.raw``) hashes to its CID,
and a CAR (``?format=car`` or ``Accept: application/vnd.ipld.car``) carries every block of the
DAG in depth-first order, each once (``order=dfs; dups=n``), so the client rebuilds and checks
the file itself. Blocks are read one at a time and written out as they come, so a CAR of any
size is served in constant memory.

What this gateway does, per the specification:

- ``format`` wins over ``Accept``; without either the request is refused with 400 (a strict
  trustless gateway serves no deserialized responses); an ``Accept`` that lists none of the
  two types, or only CAR variants we cannot produce (``dups=y``, ``version=2``), gets 406;
- ``dag-scope=block|entity|all`` and ``entity-bytes=from:to`` (negative offsets and ``*``
  allowed) for CARs; a range wholly past the end of the file is a 400, a range that resolves
  to nothing answers as ``dag-scope=block``;
- a ``/{path}`` after the CID is followed through plain UnixFS directories (CAR only; the
  directory blocks that prove the path come first); a sharded (HAMT) directory on the path is
  answered 501;
- the root block missing gives 404 (412 with ``Cache-Control: only-if-cached``); a block
  missing under the root once the CAR has started cuts the stream short (the client sees an
  incomplete chunked body), as the specification prescribes;
- ``Etag`` is strong (the bytes are deterministic) and varies with format, path, scope and
  range; ``If-None-Match`` answers 304; ``Cache-Control: public, max-age=29030400,
  immutable``; ``X-Content-Type-Options: nosniff``; ``Content-Disposition: attachment``;
  ``Vary: Accept``;
- the probe ``/ipfs/bafkqaaa`` (the empty identity CID) answers 200; identity blocks are never
  put in a CAR.

Spec: https://specs.ipfs.tech/http-gateways/trustless-gateway/ (with the path gateway's
status codes and headers, https://specs.ipfs.tech/http-gateways/path-gateway/, and the CAR
content type parameters of IPIP-0412).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from multiformats import CID

from forage.server.state import BLOCKSTORE
from storage import (
    Block,
    BlockFormatError,
    BlockNotFound,
    Blockstore,
    CarWriter,
    IntegrityError,
    InvalidCID,
    StorageError,
    UnixFSData,
    decode_pbnode,
    decode_unixfs,
    parse_cid,
    walk_dag,
)

log = logging.getLogger(__name__)

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
#: What every response for an immutable ``/ipfs/`` path carries (path gateway spec).
CACHE_CONTROL = "public, max-age=29030400, immutable"
#: Formats other gateways serve that this one does not produce (406 rather than 400).
OTHER_FORMATS = frozenset({"dag-json", "dag-cbor", "json", "cbor", "tar", "ipns-record"})
#: Bytes gathered from the blockstore (in a worker thread) before one write to the client.
CHUNK_SIZE = 1 << 20
#: A content path deeper than this is refused before any block is read.
MAX_PATH_SEGMENTS = 64
#: A UnixFS file deeper than this is malformed (Kubo's trees are 4 levels deep at 1 PiB).
MAX_DEPTH = 64
#: Longest ``Accept`` or ``If-None-Match`` header value parsed; longer ones are refused.
MAX_HEADER_LENGTH = 4096

_RAW_CODEC = 0x55
_DAG_PB_CODEC = 0x70
_IDENTITY = 0x00
#: UnixFS ``Data.Type`` values (https://github.com/ipfs/specs/blob/main/UNIXFS.md).
_UNIXFS_RAW, _UNIXFS_DIRECTORY, _UNIXFS_FILE, _UNIXFS_HAMT = 0, 1, 2, 5

#: The one CAR variant produced: blocks depth-first from the root, each once (IPIP-0412).
_CAR_VARIANT = f"{CAR_TYPE}; version=1; order=dfs; dups=n"
_CAR_KEYS = ("version", "order", "dups")
#: Values of ``car-version``, ``car-order`` and ``car-dups`` that are well-formed at all.
_CAR_QUERY_VALUES = {"version": ("1", "2"), "order": ("dfs", "unk"), "dups": ("y", "n")}

Query = Mapping[str, str]
Format = Literal["raw", "car"]
Scope = Literal["block", "entity", "all"]
_SCOPES: dict[str, Scope] = {"block": "block", "entity": "entity", "all": "all"}


@dataclass(frozen=True, slots=True)
class ByteRange:
    """``entity-bytes=from:to`` as asked: inclusive, negative from the end, ``None`` for ``*``."""

    start: int
    end: int | None

    def resolve(self, size: int) -> tuple[int, int] | None:
        """The inclusive ``(first, last)`` byte offsets within a ``size``-byte entity.

        ``None`` when the range holds no byte of the entity (the caller answers as for
        ``dag-scope=block``).
        """
        first = self.start if self.start >= 0 else max(size + self.start, 0)
        if self.end is None:
            last = size - 1
        elif self.end >= 0:
            last = min(self.end, size - 1)
        else:
            last = size + self.end
        if first > last or first >= size:
            return None
        return first, last

    def token(self) -> str:
        return f"{self.start}:{'*' if self.end is None else self.end}"


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    """One request, validated: what to send and how (the key of its ``Etag``)."""

    cid: CID
    path: tuple[str, ...]
    format: Format
    scope: Scope
    byte_range: ByteRange | None
    #: Whether ``?format=`` named the format (else ``Content-Location`` says how to).
    explicit_format: bool

    @property
    def etag(self) -> str:
        """A strong validator: the same request always yields the same bytes."""
        if self.format == "raw":
            return f'"{self.cid}.raw"'
        variant = "\0".join(
            [
                "/".join(self.path),
                self.scope,
                self.byte_range.token() if self.byte_range else "",
                "version=1;order=dfs;dups=n",
            ]
        )
        digest = hashlib.sha256(variant.encode()).hexdigest()[:16]
        return f'"{self.cid}.car.{digest}"'


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message)


def _not_acceptable(message: str) -> web.HTTPNotAcceptable:
    return web.HTTPNotAcceptable(text=message)


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an ``Accept`` header."""

    type: str
    params: dict[str, str]
    q: float


def parse_accept(header: str) -> list[MediaRange]:
    """Parse an ``Accept`` header (RFC 9110, section 12.5.1), best ``q`` first, stable.

    Malformed entries are skipped, as servers commonly do; a malformed ``q`` counts as 0.
    """
    ranges = []
    for entry in header.split(","):
        media_type, *raw_params = (part.strip() for part in entry.split(";"))
        if "/" not in media_type:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for raw in raw_params:
            name, sep, value = raw.partition("=")
            if not sep:
                continue
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
            else:
                params[name] = value
        ranges.append(MediaRange(media_type.lower(), params, q))
    ranges.sort(key=lambda media: -media.q)
    return ranges


def _check_car_query(query: Query) -> None:
    """400 for a ``car-version``, ``car-order`` or ``car-dups`` value no gateway knows."""
    for key, values in _CAR_QUERY_VALUES.items():
        value = query.get(f"car-{key}")
        if value is not None and value not in values:
            raise _bad_request(f"car-{key} must be one of {', '.join(values)}")


def _car_variant_ok(media: MediaRange | None, query: Query) -> bool:
    """Whether we produce the CAR variant asked by ``media`` with the query's ``car-*``
    parameters taking precedence: version 1, any order (we send ``dfs``), no duplicates."""
    asked = {key: media.params.get(key) if media else None for key in _CAR_KEYS}
    for key in _CAR_KEYS:
        if f"car-{key}" in query:
            asked[key] = query[f"car-{key}"]
    return (
        asked["version"] in (None, "1")
        and asked["order"] in (None, "dfs", "unk")
        and asked["dups"] in (None, "n")
    )


def negotiate_format(query: Query, accept: str | None) -> tuple[Format, bool]:
    """Pick raw or CAR from ``?format=`` (which wins) or ``Accept``; return it and whether
    ``format`` named it. Raises 400 or 406 as the specification says."""
    if accept is not None and len(accept) > MAX_HEADER_LENGTH:
        raise _bad_request(f"Accept header longer than {MAX_HEADER_LENGTH} characters")
    ranges = [media for media in parse_accept(accept or "") if media.q > 0]
    cars = [media for media in ranges if media.type == CAR_TYPE]
    fmt = query.get("format")
    if fmt is not None:
        if fmt in OTHER_FORMATS:
            raise _not_acceptable(
                f"format={fmt} is not served by this trustless gateway: use format=raw or car"
            )
        if fmt == "raw":
            return "raw", True
        if fmt != "car":
            raise _bad_request("format must be raw or car")
        _check_car_query(query)
        candidates: list[MediaRange | None] = [*cars] or [None]
        if not any(_car_variant_ok(media, query) for media in candidates):
            raise _not_acceptable(f"this trustless gateway serves CARs as {_CAR_VARIANT}")
        return "car", True
    if not accept or not accept.strip():
        raise _bad_request(
            "this is a trustless gateway: ask for format=raw or format=car, or send"
            f" Accept: {RAW_TYPE} or {CAR_TYPE}"
        )
    for media in ranges:
        if media.type == RAW_TYPE:
            return "raw", False
        if media.type == CAR_TYPE:
            _check_car_query(query)
            if _car_variant_ok(media, query):
                return "car", False
    raise _not_acceptable(f"this trustless gateway serves {RAW_TYPE} and {_CAR_VARIANT}")


def parse_entity_bytes(value: str) -> ByteRange:
    """Parse ``from:to`` (integers, ``to`` may be ``*``); 400 on anything else."""
    start_text, sep, end_text = value.partition(":")
    if not sep or len(value) > 64:
        raise _bad_request("entity-bytes must be FROM:TO, e.g. 0:1023, -1024:* or 100:-100")
    try:
        start = int(start_text, 10)
        end = None if end_text == "*" else int(end_text, 10)
    except ValueError:
        raise _bad_request("entity-bytes offsets must be integers (TO may be *)") from None
    if end is not None and start >= 0 and end >= 0 and end < start:
        raise _bad_request("entity-bytes TO is before FROM")
    return ByteRange(start, end)


def parse_request(
    cid_text: str,
    path_text: str,
    query: Query,
    accept: str | None,
) -> GatewayRequest:
    """Validate everything the request says before any block is read."""
    try:
        cid = parse_cid(cid_text)
    except InvalidCID as exc:
        raise _bad_request(f"invalid CID: {exc.reason}") from exc
    fmt, explicit = negotiate_format(query, accept)
    path = tuple(segment for segment in path_text.split("/") if segment)
    if fmt == "raw":
        if path:
            raise _bad_request("a raw block is asked for by its CID alone: no path")
        return GatewayRequest(cid, (), "raw", "block", None, explicit)
    if len(path) > MAX_PATH_SEGMENTS:
        raise _bad_request(f"content path longer than {MAX_PATH_SEGMENTS} segments")
    scope = _SCOPES.get(query.get("dag-scope", "all"))
    if scope is None:
        raise _bad_request("dag-scope must be block, entity or all")
    byte_range = None
    if "entity-bytes" in query:
        if scope != "entity" and "dag-scope" in query:
            raise _bad_request("entity-bytes implies dag-scope=entity")
        byte_range = parse_entity_bytes(query["entity-bytes"])
        scope = "entity"
    return GatewayRequest(cid, path, "car", scope, byte_range, explicit)


def _get(source: Blockstore, cid: CID) -> Block:
    """Fetch a block; identity CIDs carry their bytes and are never looked up."""
    if cid.hashfun.code == _IDENTITY:
        return Block(cid, bytes(cid.raw_digest))
    return source.get(cid)


def _has(source: Blockstore, cid: CID) -> bool:
    return cid.hashfun.code == _IDENTITY or source.has(cid)


def _unixfs(block: Block) -> tuple[UnixFSData | None, list[CID]]:
    """The UnixFS data (``None`` if not UnixFS) and the links of a dag-pb block."""
    node = decode_pbnode(block.data)
    links = [link.cid for link in node.links]
    if node.data is None:
        return None, links
    return decode_unixfs(node.data), links


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A content path followed to its end: the blocks that prove it, then its terminus."""

    proof: tuple[Block, ...]
    terminus: Block


def resolve_path(source: Blockstore, root: CID, path: Sequence[str]) -> _Resolved:
    """Follow ``path`` from ``root`` through plain UnixFS directories.

    Raises ``web.HTTPNotFound`` when a segment is missing or a block on the way is absent,
    ``web.HTTPNotImplemented`` for a sharded directory on the path.
    """
    proof: list[Block] = []
    block = _get(source, root)
    for depth, segment in enumerate(path):
        if block.cid.codec.code != _DAG_PB_CODEC:
            raise web.HTTPNotFound(text=f"no path below a {block.cid.codec.name} block")
        node = decode_pbnode(block.data)
        meta = decode_unixfs(node.data) if node.data is not None else None
        if meta is None or meta.type not in (_UNIXFS_DIRECTORY, _UNIXFS_HAMT):
            where = "/".join(path[:depth]) or "the root"
            raise web.HTTPNotFound(text=f"{where} is not a UnixFS directory")
        if meta.type == _UNIXFS_HAMT:
            raise web.HTTPNotImplemented(text="paths through sharded directories are not served")
        child = next((link.cid for link in node.links if link.name == segment), None)
        if child is None:
            raise web.HTTPNotFound(text="no such entry on the content path")
        proof.append(block)
        try:
            block = _get(source, child)
        except BlockNotFound:
            raise web.HTTPNotFound(text="a block on the content path is missing") from None
    return _Resolved(tuple(proof), block)


def _file_size(block: Block, meta: UnixFSData | None) -> int | None:
    """The byte length of a UnixFS file entity, or ``None`` if the block is not one."""
    if block.cid.codec.code == _RAW_CODEC:
        return len(block.data)
    if meta is None or meta.type not in (_UNIXFS_FILE, _UNIXFS_RAW):
        return None
    if meta.filesize is not None:
        return meta.filesize
    return len(meta.data or b"") + sum(meta.blocksizes)


def _range_blocks(
    source: Blockstore, block: Block, first: int, last: int, offset: int, depth: int
) -> Iterator[Block]:
    """Blocks of the file subtree at ``block`` (starting at byte ``offset``) that hold any
    byte in ``[first, last]``, root first, depth-first."""
    if depth > MAX_DEPTH:
        raise BlockFormatError(f"UnixFS file deeper than {MAX_DEPTH} levels at {block.cid}")
    yield block
    if block.cid.codec.code != _DAG_PB_CODEC:
        return
    meta, links = _unixfs(block)
    if meta is None or not links:
        return
    if len(meta.blocksizes) != len(links):
        for child in links:  # extents unknown: every child may hold the range
            yield from walk_dag(source, child)
        return
    position = offset + len(meta.data or b"")
    for child, size in zip(links, meta.blocksizes, strict=True):
        if position > last:
            break
        if size and position + size > first:
            yield from _range_blocks(source, _get(source, child), first, last, position, depth + 1)
        position += size


def _hamt_blocks(source: Blockstore, block: Block, depth: int) -> Iterator[Block]:
    """A sharded directory's own nodes (its enumeration), not the entries' contents."""
    if depth > MAX_DEPTH:
        raise BlockFormatError(f"HAMT deeper than {MAX_DEPTH} levels at {block.cid}")
    yield block
    node = decode_pbnode(block.data)
    meta = decode_unixfs(node.data) if node.data is not None else None
    if meta is None or meta.fanout is None or meta.fanout < 2:
        raise BlockFormatError(f"{block.cid}: HAMT node without a fanout")
    width = len(f"{meta.fanout - 1:X}")
    for link in node.links:
        if link.name is not None and len(link.name) == width:  # a sub-shard, not an entry
            yield from _hamt_blocks(source, _get(source, link.cid), depth + 1)


def car_blocks(source: Blockstore, request: GatewayRequest, resolved: _Resolved) -> Iterator[Block]:
    """Every block of the CAR answering ``request``, in order (identity blocks included;
    the writer leaves them out)."""
    yield from resolved.proof
    terminus = resolved.terminus
    codec = terminus.cid.codec.code
    if request.scope == "block" or codec not in (_RAW_CODEC, _DAG_PB_CODEC):
        yield terminus
        return
    if request.scope == "all":
        yield from walk_dag(source, terminus.cid)
        return
    meta = _unixfs(terminus)[0] if codec == _DAG_PB_CODEC else None
    size = _file_size(terminus, meta)
    if size is None:
        if meta is not None and meta.type == _UNIXFS_HAMT:
            yield from _hamt_blocks(source, terminus, 0)
        else:
            yield terminus  # a directory's enumeration is its node; other data is one block
        return
    if request.byte_range is None:
        yield from walk_dag(source, terminus.cid)
        return
    span = request.byte_range.resolve(size)
    if span is None:
        yield terminus
        return
    yield from _range_blocks(source, terminus, span[0], span[1], 0, 0)


def check_servable(request: GatewayRequest, resolved: _Resolved) -> None:
    """Refuse, before streaming, what is known to fail: ``entity-bytes`` starting past the
    end of a file (400) and a whole DAG under a codec we cannot follow (501)."""
    terminus = resolved.terminus
    codec = terminus.cid.codec.code
    if codec not in (_RAW_CODEC, _DAG_PB_CODEC):
        if request.scope == "all":
            raise web.HTTPNotImplemented(
                text=f"cannot follow links of codec {terminus.cid.codec.name}:"
                " ask for dag-scope=block or format=raw"
            )
        return
    if request.byte_range is None or request.byte_range.start < 0:
        return
    size = _file_size(terminus, _unixfs(terminus)[0] if codec == _DAG_PB_CODEC else None)
    if size and request.byte_range.start >= size:
        raise _bad_request(
            f"entity-bytes starts at {request.byte_range.start}, past the end of the"
            f" {size}-byte file"
        )


def _fill(writer: CarWriter, buffer: io.BytesIO, blocks: Iterator[Block]) -> tuple[bytes, bool]:
    """Write blocks until about ``CHUNK_SIZE`` bytes are buffered; return them and whether the
    DAG is exhausted (runs in a worker thread: blockstore reads block)."""
    done = True
    for block in blocks:
        if block.cid.hashfun.code != _IDENTITY:
            writer.put(block)
        if buffer.tell() >= CHUNK_SIZE:
            done = False
            break
    chunk = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return chunk, done


def _headers(request: GatewayRequest, http: web.Request) -> dict[str, str]:
    headers = {
        "Cache-Control": CACHE_CONTROL,
        "Etag": request.etag,
        "X-Content-Type-Options": "nosniff",
        "Vary": "Accept",
    }
    if request.format == "raw":
        headers["Content-Type"] = RAW_TYPE
        headers["Content-Disposition"] = f'attachment; filename="{request.cid}.bin"'
    else:
        headers["Content-Type"] = _CAR_VARIANT
        headers["Content-Disposition"] = f'attachment; filename="{request.cid}.car"'
        headers["Accept-Ranges"] = "none"
    if not request.explicit_format:
        headers["Content-Location"] = str(http.rel_url.update_query(format=request.format))
    return headers


def _if_none_match(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` (weak comparison, RFC 9110 section 13.1.2)."""
    if not header or len(header) > MAX_HEADER_LENGTH:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def _load(source: Blockstore, request: GatewayRequest) -> Block | _Resolved | None:
    """What the response needs, in one trip to a worker thread: ``None`` when the root block
    is absent, else the raw block or the resolved content path (checked servable)."""
    if not _has(source, request.cid):
        return None
    if request.format == "raw":
        return _get(source, request.cid)
    resolved = resolve_path(source, request.cid, request.path)
    check_servable(request, resolved)
    return resolved


def _absent(http: web.Request, request: GatewayRequest) -> web.HTTPException:
    """404, or 412 when the client asked for cached content only."""
    if "only-if-cached" in http.headers.get("Cache-Control", ""):
        return web.HTTPPreconditionFailed(text="the root block is not in this gateway")
    return web.HTTPNotFound(text=f"{request.cid} is not in this gateway")


async def ipfs(http: web.Request) -> web.StreamResponse:
    """``GET|HEAD /ipfs/{cid}[/{path}]``: a verifiable raw block or CAR stream."""
    request = parse_request(
        http.match_info["cid"],
        http.match_info.get("path", ""),
        http.query,
        http.headers.get("Accept"),
    )
    source = http.app[BLOCKSTORE]
    headers = _headers(request, http)
    if _if_none_match(http.headers.get("If-None-Match"), request.etag):
        if not await asyncio.to_thread(_has, source, request.cid):
            raise _absent(http, request)
        kept = {name: headers[name] for name in ("Etag", "Cache-Control", "Vary")}
        return web.Response(status=304, headers=kept)
    try:
        found = await asyncio.to_thread(_load, source, request)
    except BlockNotFound:
        found = None
    except IntegrityError as exc:
        log.error("gateway: stored block fails verification: %s", exc)
        raise web.HTTPInternalServerError(text="a stored block failed verification") from exc
    except BlockFormatError as exc:  # the path gateway's 404 for an invalid DAG node
        raise web.HTTPNotFound(text=f"cannot traverse a malformed block: {exc}") from exc
    if found is None:
        raise _absent(http, request)
    if isinstance(found, Block):
        return web.Response(body=found.data, headers=headers)
    response = web.StreamResponse(headers=headers)
    await response.prepare(http)
    if http.method == "HEAD":
        return response
    await _stream_car(http, response, source, request, found)
    return response


async def _stream_car(
    http: web.Request,
    response: web.StreamResponse,
    source: Blockstore,
    request: GatewayRequest,
    resolved: _Resolved,
) -> None:
    """Write the CAR; on a missing or bad block, cut the connection so the client sees an
    incomplete body (the status line has already gone out)."""
    buffer = io.BytesIO()
    writer = CarWriter(buffer, [request.cid])
    blocks = car_blocks(source, request, resolved)
    try:
        done = False
        while not done:
            chunk, done = await asyncio.to_thread(_fill, writer, buffer, blocks)
            if chunk:
                await response.write(chunk)
    except StorageError as exc:
        log.warning("gateway: CAR for %s cut short: %s", request.cid, exc)
        if http.transport is not None:
            http.transport.close()
        return
    except ConnectionResetError:
        log.debug("gateway: client left during the CAR for %s", request.cid)
        return
    await response.write_eof()


def setup(app: web.Application) -> None:
    """Add the gateway's routes (``add_get`` also answers ``HEAD``)."""
    app.router.add_get("/ipfs/{cid}", ipfs, name="ipfs")
    app.router.add_get("/ipfs/{cid}/{path:.*}", ipfs, name="ipfs-path")
