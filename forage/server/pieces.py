"""``GET|HEAD /pieces/{piece_cid}`` (and ``/piece/{piece_cid}``): a piece's bytes for storage
providers to fetch, per RFC 9110 (ranges §14, conditionals §13).

The path takes a piece CID v1 (``baga...``, what deal proposals carry) or v2 (FRC-0069,
``bafkzcib...``). A v2 CID also names the tree height and the payload's padding: it is served
only when those match the recorded piece (padded size, CAR size), else 404, as another piece
could share nothing but the name's prefix; a v2 CID whose sizes cannot exist is a 400. Only
pieces recorded in the index are served, from their file under ``<data.dir>/pieces``; the
body is the piece's CAR (``application/vnd.ipld.car; version=1``), fixed by the CID, so it is
cacheable forever and its strong ``ETag`` is the v1 piece CID in quotes; ``Last-Modified`` is
when the piece was built. Spec: the piece gateway draft
(https://github.com/ipfs/specs/blob/main/src/http-gateways/piece-gateway.md).

RFC 9110 as served (rules in :mod:`forage.server.byteranges`): ``If-Match``,
``If-Unmodified-Since`` (412), ``If-None-Match``, ``If-Modified-Since`` (304); ``Range`` on
GET: one range gives 206 with ``Content-Range``, several give 206 ``multipart/byteranges``
(overlapping or adjacent ones coalesced, parts in request order), none satisfiable gives 416
with ``Content-Range: bytes */size``, more than 32 or a malformed header gives the whole 200;
``If-Range`` (entity-tag compared strongly, or the exact ``Last-Modified`` date) that does not
match gives the whole 200. HEAD answers GET's status line and headers without a body; as
§14.2 defines ranges for GET only, a HEAD ignores ``Range``. Bodies stream from the file in
1 MiB reads, so no piece is ever held in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

import sqlalchemy as sa
from aiohttp import web
from multiformats import multibase, varint

from forage.db.models import Piece
from forage.filecoin.pieces import piece_path
from forage.server.byteranges import (
    Multipart,
    Span,
    http_date,
    if_range_allows,
    multipart,
    parse_range,
    precondition,
)
from forage.server.state import CONFIG, SESSIONMAKER
from storage import CommPError, InvalidCID, piece_cid_v1, piece_cid_v2

log = logging.getLogger(__name__)

CAR_TYPE = "application/vnd.ipld.car; version=1"
CACHE_CONTROL = "public, max-age=29030400, immutable"
#: v1: fil-commitment-unsealed, sha2-256-trunc254-padded; v2: raw, fr32-sha256-trunc254-padbintree.
_V1_CODEC, _V1_HASH = 0xF101, 0x1012
_RAW, _V2_HASH = 0x55, 0x1011
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class PieceRef:
    """What a piece CID in a path names: the v1 CID, and for a v2 CID the sizes it encodes."""

    cid_v1: str
    padded_size: int | None = None
    payload_size: int | None = None


def parse_piece_cid(text: str) -> PieceRef:
    """The piece named by ``text`` (v1, or v2 per FRC-0069); else InvalidCID (a 400).

    multiformats does not know the v2 multihash (0x1011), so the bytes are read here:
    ``01 55 varint(0x1011) varint(len) varint(padding) height root[32]``; its sizes are
    checked as :func:`storage.piece_cid_v2` checks them when it makes one.
    """
    try:
        raw = multibase.decode(text)
        fields = []
        view = memoryview(raw)
        for _ in range(4):  # version, codec, hash code, digest length
            value, used, _ = varint.decode_raw(view)
            fields.append(value)
            view = view[used:]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidCID(text, str(exc)) from exc
    version, codec, code, length = fields
    digest = bytes(view)
    try:
        if (version, codec, code, length) == (1, _V1_CODEC, _V1_HASH, 32) and len(digest) == 32:
            return PieceRef(piece_cid_v1(digest))
        if (version, codec, code) == (1, _RAW, _V2_HASH) and len(digest) == length:
            padding, used, _ = varint.decode_raw(digest)
            if len(digest) == used + 1 + 32:
                height, commp = digest[used], digest[used + 1 :]
                padded = 1 << (height + 5) if 2 <= height <= 31 else 0
                payload = padded // 128 * 127 - padding
                piece_cid_v2(commp, padded, payload_size=payload)  # CommPError if impossible
                return PieceRef(piece_cid_v1(commp), padded, payload)
    except (CommPError, ValueError) as exc:
        raise InvalidCID(text, f"not a valid piece CID: {exc}") from exc
    raise InvalidCID(text, "not a piece CID (fil-commitment-unsealed v1, or FRC-0069 v2)")


def _open_piece(request: web.Request, ref: PieceRef) -> tuple[BinaryIO, int, datetime]:
    """The recorded piece's open file, size and build time; 404 when it is not served here."""
    with request.app[SESSIONMAKER]() as session:
        row = session.execute(
            sa.select(Piece.padded_size, Piece.car_size, Piece.created_at).where(
                Piece.piece_cid == ref.cid_v1
            )
        ).first()
    cid = ref.cid_v1
    if row is None:
        raise web.HTTPNotFound(text=f"no piece {cid} in this archive")
    padded_size, car_size, created_at = row
    if ref.padded_size is not None and (ref.padded_size, ref.payload_size) != (
        padded_size,
        car_size,
    ):
        raise web.HTTPNotFound(
            text=f"the piece CID v2 names {ref.payload_size} bytes in {ref.padded_size} padded"
            f" bytes; piece {cid} here is {car_size} bytes in {padded_size}"
        )
    path = piece_path(request.app[CONFIG], cid)
    try:
        file = path.open("rb")
    except FileNotFoundError:
        log.error("piece %s is recorded but its file %s is missing", cid, path)
        raise web.HTTPNotFound(text=f"piece {cid} is recorded but its file is missing") from None
    size = os.fstat(file.fileno()).st_size
    if size != car_size:
        file.close()
        log.error("piece %s: file %s has %d bytes, recorded %d", cid, path, size, car_size)
        raise web.HTTPNotFound(text=f"piece {cid} is recorded but its file is damaged")
    return file, size, created_at


async def _copy(response: web.StreamResponse, file: BinaryIO, span: Span) -> None:
    """Write ``span`` of ``file`` in 1 MiB reads, each off the event loop."""
    position, left = span.first, span.length

    def read(offset: int, count: int) -> bytes:
        file.seek(offset)
        return file.read(count)

    while left:
        chunk = await asyncio.to_thread(read, position, min(left, _CHUNK))
        if not chunk:
            raise OSError(f"piece file ended {left} bytes early")
        await response.write(chunk)
        position, left = position + len(chunk), left - len(chunk)


async def serve_piece(request: web.Request) -> web.StreamResponse:
    """Answer a piece request: conditionals, then the whole body, one range or several."""
    ref = parse_piece_cid(request.match_info["piece_cid"])
    file, size, created_at = await asyncio.to_thread(_open_piece, request, ref)
    try:
        return await _answer(request, ref, file, size, created_at)
    finally:
        file.close()


async def _answer(
    request: web.Request, ref: PieceRef, file: BinaryIO, size: int, created_at: datetime
) -> web.StreamResponse:
    etag = f'"{ref.cid_v1}"'
    validators = {
        "ETag": etag,
        "Last-Modified": http_date(created_at),
        "Cache-Control": CACHE_CONTROL,
        "Accept-Ranges": "bytes",
    }
    status = precondition(request.method, request.headers, etag, created_at)
    if status == 304:
        return web.Response(status=304, headers=validators)
    if status == 412:
        raise web.HTTPPreconditionFailed(text=f"a precondition failed for piece {ref.cid_v1}")
    spans: list[Span] | None = None
    header = request.headers.get("Range")
    if (
        request.method == "GET"
        and header is not None
        and if_range_allows(request.headers, etag, created_at)
    ):
        spans = parse_range(header, size)
    if spans == []:
        refused = web.json_response(
            {"error": {"status": 416, "message": f"no range of {header!r} is within {size} bytes"}},
            status=416,
        )
        refused.headers.update({"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})
        return refused
    response = web.StreamResponse(
        headers={
            **validators,
            "Content-Disposition": f'attachment; filename="{ref.cid_v1}.car"',
            "X-Content-Type-Options": "nosniff",
        }
    )
    body: list[tuple[bytes, Span]]
    if spans is None:
        response.headers["Content-Type"], response.content_length = CAR_TYPE, size
        body, tail = [(b"", Span(0, size - 1))], b""
    elif len(spans) == 1:
        response.set_status(206)
        response.headers["Content-Range"] = spans[0].content_range(size)
        response.headers["Content-Type"] = CAR_TYPE
        response.content_length = spans[0].length
        body, tail = [(b"", spans[0])], b""
    else:
        layout: Multipart = multipart(spans, size, CAR_TYPE, secrets.token_hex(16))
        response.set_status(206)
        response.headers["Content-Type"] = layout.content_type
        response.content_length = layout.length
        body, tail = list(layout.parts), layout.tail
    await response.prepare(request)
    if request.method != "HEAD":
        for head, span in body:
            if head:
                await response.write(head)
            await _copy(response, file, span)
        await response.write(tail)
    await response.write_eof()
    return response


def setup(app: web.Application) -> None:
    """Add the piece routes (GET also answers HEAD)."""
    app.router.add_get("/pieces/{piece_cid}", serve_piece)
    app.router.add_get("/piece/{piece_cid}", serve_piece)
