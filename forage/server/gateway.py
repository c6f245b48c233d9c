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

This module answers and streams; ``forage.server.gateway_request`` validates the request and
``forage.server.gateway_dag`` chooses the CAR's blocks.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

from aiohttp import web

from forage.server.gateway_dag import (
    _IDENTITY,
    _get,
    _has,
    _Resolved,
    car_blocks,
    check_servable,
    resolve_path,
)
from forage.server.gateway_request import (
    _CAR_VARIANT,
    MAX_HEADER_LENGTH,
    RAW_TYPE,
    GatewayRequest,
    parse_request,
)
from forage.server.state import BLOCKSTORE
from storage import (
    Block,
    BlockFormatError,
    BlockNotFound,
    Blockstore,
    CarWriter,
    IntegrityError,
    StorageError,
)

log = logging.getLogger(__name__)

#: What every response for an immutable ``/ipfs/`` path carries (path gateway spec).
CACHE_CONTROL = "public, max-age=29030400, immutable"
#: Bytes gathered from the blockstore (in a worker thread) before one write to the client.
CHUNK_SIZE = 1 << 20


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
