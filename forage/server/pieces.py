"""``GET|HEAD /pieces/{piece_cid}`` (and ``/piece/{piece_cid}``): a piece's bytes for storage
providers to fetch, with ``Range`` support (206, 416, ``If-Range``, ETag).

The path takes a piece CID v1 (``baga...``, what deal proposals carry) or v2 (FRC-0069,
``bafkzcib...``, mapped to its v1). Only pieces recorded in the index are served, from their
file under ``<data.dir>/pieces``; the body is the piece's CAR, so the content type is
``application/vnd.ipld.car; version=1`` and, the bytes being fixed by the CID, the answer is
cacheable forever. Spec: the piece gateway draft
(https://github.com/ipfs/specs/blob/main/src/http-gateways/piece-gateway.md) and RFC 9110
§14 (ranges), which aiohttp's ``FileResponse`` implements.
"""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa
from aiohttp import web
from multiformats import multibase, varint

from forage.db.models import Piece
from forage.filecoin.pieces import piece_path
from forage.server.state import CONFIG, SESSIONMAKER
from storage import InvalidCID, piece_cid_v1

log = logging.getLogger(__name__)

CAR_TYPE = "application/vnd.ipld.car; version=1"
CACHE_CONTROL = "public, max-age=29030400, immutable"
#: v1: fil-commitment-unsealed, sha2-256-trunc254-padded; v2: raw, fr32-sha256-trunc254-padbintree.
_V1_CODEC, _V1_HASH = 0xF101, 0x1012
_RAW, _V2_HASH = 0x55, 0x1011


def v1_piece_cid(text: str) -> str:
    """The v1 piece CID named by ``text`` (v1 itself, or v2 per FRC-0069); else InvalidCID.

    multiformats does not know the v2 multihash (0x1011), so the bytes are read here:
    ``01 55 varint(0x1011) varint(len) varint(padding) height root[32]``.
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
    if (version, codec, code, length) == (1, _V1_CODEC, _V1_HASH, 32) and len(digest) == 32:
        return piece_cid_v1(digest)
    if (version, codec, code) == (1, _RAW, _V2_HASH) and len(digest) == length:
        _, used, _ = varint.decode_raw(digest)  # the padding, then one byte of tree height
        if len(digest) == used + 1 + 32:
            return piece_cid_v1(digest[used + 1 :])
    raise InvalidCID(text, "not a piece CID (fil-commitment-unsealed v1, or FRC-0069 v2)")


async def serve_piece(request: web.Request) -> web.StreamResponse:
    """Stream a recorded piece's file; aiohttp answers ranges, conditionals and HEAD."""
    piece_cid = v1_piece_cid(request.match_info["piece_cid"])
    sessionmaker = request.app[SESSIONMAKER]

    def known() -> bool:
        with sessionmaker() as session:
            found = session.execute(sa.select(Piece.id).where(Piece.piece_cid == piece_cid))
            return found.first() is not None

    if not await asyncio.to_thread(known):
        raise web.HTTPNotFound(text=f"no piece {piece_cid} in this archive")
    path = piece_path(request.app[CONFIG], piece_cid)
    if not path.is_file():
        log.error("piece %s is recorded but its file %s is missing", piece_cid, path)
        raise web.HTTPNotFound(text=f"piece {piece_cid} is recorded but its file is missing")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": CAR_TYPE,
            "Cache-Control": CACHE_CONTROL,
            "Content-Disposition": f'attachment; filename="{piece_cid}.car"',
            "X-Content-Type-Options": "nosniff",
        },
    )


def setup(app: web.Application) -> None:
    """Add the piece routes (GET also answers HEAD)."""
    app.router.add_get("/pieces/{piece_cid}", serve_piece)
    app.router.add_get("/piece/{piece_cid}", serve_piece)
