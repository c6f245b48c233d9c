"""A fake IPFS trustless gateway on loopback: raw blocks and CARs under ``/ipfs/{cid}``.

Speaks the Trustless Gateway specification
(https://specs.ipfs.tech/http-gateways/trustless-gateway/), the parts a client fetching
blocks meets:

- ``GET|HEAD /ipfs/{cid}``; ``format=raw|car`` wins over ``Accept``
  (``application/vnd.ipld.raw``, ``application/vnd.ipld.car``); neither is a 400 (a strict
  trustless gateway serves nothing deserialized), an ``Accept`` naming neither a 406, as is a
  CAR variant other than ``version=1``, ``order=dfs``/``unk``, ``dups=n``;
- raw: the block's bytes, ``Content-Type: application/vnd.ipld.raw``,
  ``Content-Disposition: attachment; filename="<cid>.bin"``, a strong ``Etag``; 404 when
  the block is absent;
- CAR: ``Content-Type: application/vnd.ipld.car; version=1; order=dfs; dups=n``, the
  requested CID as the header's root, every block of the DAG once, depth-first, root first
  (``dag-scope=block`` gives the root alone), identity blocks left out; 404 when the root is
  absent; a child missing once the stream has begun cuts the stream short;
- ``/ipfs/bafkqaaa`` (the empty identity CID) answers 200 (the specification's probe).

Only raw and dag-pb blocks are followed (what UnixFS import produces), through the separate
IPLD helpers of :mod:`forage.fakes.kubo`. Knobs for tests: ``serve_car = False`` makes it a
block-only gateway (CAR requests get 406), ``lie(cid, data)`` serves wrong bytes under a CID
(in raw answers and in CARs alike).

Usage::

    gateway = FakeGateway()
    gateway.add_blocks(blocks)                      # (cid text, bytes) pairs
    async with serve(gateway.app()) as server:
        ...                                         # GET server.url + "/ipfs/<cid>?format=car"
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web
from multiformats import CID

from forage.fakes.kubo import IDENTITY, car_section, car_v1, dag_links
from indexers.fakeserver import Faults, RequestLog, fake_app

__all__ = ["FakeGateway"]

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
#: The empty identity CID every trustless gateway answers (the specification's probe).
PROBE = "bafkqaaa"
CACHE_CONTROL = "public, max-age=29030400, immutable"


def _key(cid: str) -> bytes:
    return bytes(CID.decode(cid).digest)


@dataclass
class FakeGateway:
    """State of one fake gateway; ``app()`` serves it. Mutate it from tests between calls.

    ``blocks`` maps multihash bytes to the bytes served for it.
    """

    blocks: dict[bytes, bytes] = field(default_factory=dict)
    serve_car: bool = True
    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)

    def app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware)
        app.router.add_get("/ipfs/{cid}", self._handle)
        return app

    def add_blocks(self, blocks: Iterable[tuple[str, bytes]]) -> None:
        """Hold these blocks (as if the gateway's node had them)."""
        for cid, data in blocks:
            self.blocks[_key(cid)] = data

    def lie(self, cid: str, data: bytes) -> None:
        """Serve ``data`` as the block named ``cid`` (a broken or malicious gateway)."""
        self.blocks[_key(cid)] = data

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        text = request.match_info["cid"]
        try:
            cid = CID.decode(text)
        except (ValueError, KeyError) as exc:
            return web.Response(status=400, text=f"invalid CID {text!r}: {exc}\n")
        wanted = _negotiate(request)
        if isinstance(wanted, web.Response):
            return wanted
        if wanted == "car" and not self.serve_car:
            return web.Response(status=406, text="CAR responses are not supported here\n")
        headers = {
            "Cache-Control": CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
            "Vary": "Accept",
            "Etag": f'"{text}.{wanted}"',
        }
        identity = cid.hashfun.code == IDENTITY
        data = bytes(cid.raw_digest) if identity else self.blocks.get(_key(text))
        if data is None:
            return web.Response(status=404, text=f"ipld: could not find {text}\n")
        if wanted == "raw":
            headers["Content-Disposition"] = f'attachment; filename="{text}.bin"'
            return web.Response(body=data, content_type=RAW_TYPE, headers=headers)
        headers["Content-Disposition"] = f'attachment; filename="{text}.car"'
        response = web.StreamResponse(headers=headers)
        response.content_type = CAR_TYPE
        await response.prepare(request)
        await response.write(car_v1([text], []))
        if request.query.get("dag-scope") == "block":
            if not identity:
                await response.write(car_section(text, data))
            await response.write_eof()
            return response
        stack, seen = [text], set()
        while stack:
            block_cid = stack.pop()
            if _key(block_cid) in seen or CID.decode(block_cid).hashfun.code == IDENTITY:
                continue
            seen.add(_key(block_cid))
            block = self.blocks.get(_key(block_cid))
            if block is None:  # the stream has begun: all a gateway can do is stop short
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write(car_section(block_cid, block))
            try:
                links = dag_links(block_cid, block)
            except ValueError:  # a lie that does not decode: the client finds out
                links = []
            stack.extend(reversed(links))
        await response.write_eof()
        return response


def _negotiate(request: web.Request) -> str | web.Response:
    """``raw`` or ``car`` from ``format`` or ``Accept``, or the error response."""
    given = request.query.get("format")
    if given is not None:
        if given in ("raw", "car"):
            return given
        return web.Response(status=400, text=f"unsupported format {given!r}\n")
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        return web.Response(
            status=400, text="a trustless gateway needs format= or an Accept header\n"
        )
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media == RAW_TYPE:
            return "raw"
        if media == CAR_TYPE:
            options = dict(p.split("=", 1) for p in params if "=" in p)
            if (
                options.get("version", "1") == "1"
                and options.get("order", "dfs") in ("dfs", "unk")
                and options.get("dups", "n") == "n"
            ):
                return "car"
    return web.Response(status=406, text=f"none of {accept!r} can be served\n")
