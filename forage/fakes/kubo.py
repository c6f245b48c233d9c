"""A fake Kubo RPC API (``/api/v0``) on loopback, plus the few IPLD helpers it needs.

Speaks the wire format of github.com/ipfs/kubo ``core/commands`` through go-ipfs-cmds
(``http/handler.go``, ``http/responseemitter.go``, ``error.go``):

- only POST is served under ``/api/v0/`` (405 ``405 - Method Not Allowed`` otherwise), an
  unknown command is 404 ``404 page not found``, a command error is 500 with
  ``{"Message": ..., "Code": 0, "Type": "error"}`` (400 and ``Code`` 1 for a bad argument);
- with a token configured, a missing or wrong ``Authorization`` header gets Kubo's 403;
- ``dag/import`` reads multipart CARv1 files, checks every block's sha2-256, stores the
  blocks, pins the header's roots when ``pin-roots`` (default true) and streams
  ``{"Root": {"Cid": {"/": cid}, "PinErrorMsg": ""}}`` per root (NDJSON);
- ``block/get`` answers a block's bytes (``text/plain``, ``X-Stream-Output: 1``) and
  ``dag/export`` a CARv1 of the DAG, root first, depth-first, each block once
  (``application/vnd.ipld.car``); both fail like an offline node when the root is missing
  (500, ``block was not found locally (offline)``), and an export whose child is missing is
  cut short, as Kubo ends the stream with an ``X-Stream-Error`` trailer;
- ``pin/add`` fails like an offline node when a block of the DAG is missing; ``pin/ls`` with
  arguments fails as a whole on the first one not pinned (``path '<arg>' is not pinned``),
  and streams ``{"Cid","Type","Name"}`` lines with ``stream=true``; ``pin/rm`` of something
  not pinned fails with ``not pinned or pinned indirectly``.

The CAR reader here is deliberately separate from ``storage.car`` (which the clients under
test may use): header = varint length + DAG-CBOR ``{roots, version}``, then sections of
varint length + CID + block (https://ipld.io/specs/transport/car/carv1/). Only raw and dag-pb
blocks hashed with sha2-256 are understood, which is what UnixFS import produces.

Usage::

    kubo = FakeKubo()
    async with serve(kubo.app()) as server:
        ...  # KuboPinning(client, server.url)
    kubo.faults.fail(503, retry_after="7")       # the next request gets a 503
    kubo.fail_pin(cid, "disk quota exceeded")    # pinning cid fails with that message
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multiformats import CID, multihash, varint

from indexers.fakeserver import Faults, RequestLog, fake_app

__all__ = [
    "CarParseError",
    "FakeKubo",
    "car_section",
    "car_v1",
    "dag_links",
    "dag_pb_node",
    "raw_block",
    "read_car",
]

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
IDENTITY = 0x00

COMMANDS = frozenset(
    {"block/get", "dag/export", "dag/import", "pin/add", "pin/ls", "pin/rm", "version"}
)


class CarParseError(ValueError):
    """Bytes that are not a CARv1 the fake accepts (bad framing, CBOR, CID or hash)."""


# --- IPLD helpers: build and read CARv1, raw and dag-pb blocks ----------------------------


def raw_block(data: bytes) -> tuple[str, bytes]:
    """A raw-codec block and its CIDv1 text (``bafkrei…``)."""
    return str(CID("base32", 1, RAW, multihash.digest(data, "sha2-256"))), data


def dag_pb_node(links: Sequence[tuple[str, int]], data: bytes | None = None) -> tuple[str, bytes]:
    """A dag-pb block linking ``(cid, tsize)`` children (empty names), and its CIDv1 text."""
    body = bytearray()
    for link_cid, tsize in links:
        link = bytes(CID.decode(link_cid))
        entry = b"\x0a" + varint.encode(len(link)) + link + b"\x12\x00\x18" + varint.encode(tsize)
        body += b"\x12" + varint.encode(len(entry)) + entry
    if data is not None:
        body += b"\x0a" + varint.encode(len(data)) + data
    block = bytes(body)
    return str(CID("base32", 1, DAG_PB, multihash.digest(block, "sha2-256"))), block


def car_v1(roots: Sequence[str], blocks: Iterable[tuple[str, bytes]]) -> bytes:
    """Frame ``blocks`` as a CARv1 whose header lists ``roots``."""
    header = bytearray(b"\xa2\x65roots")
    header += _cbor_head(4, len(roots))
    for root in roots:
        link = b"\x00" + bytes(CID.decode(root))
        header += b"\xd8\x2a" + _cbor_head(2, len(link)) + link
    header += b"\x67version\x01"
    out = bytearray(varint.encode(len(header)) + header)
    for block_cid, data in blocks:
        out += car_section(block_cid, data)
    return bytes(out)


def car_section(cid: str, data: bytes) -> bytes:
    """One CARv1 section: the varint length, the binary CID, the block."""
    section = bytes(CID.decode(cid)) + data
    return bytes(varint.encode(len(section))) + section


def read_car(data: bytes) -> tuple[list[str], list[tuple[str, bytes]]]:
    """Parse a CARv1: its roots and its blocks, each block's hash checked against its CID."""
    view = memoryview(data)
    length, pos = _varint(view, 0)
    if length == 0 or pos + length > len(view):
        raise CarParseError("truncated CAR header")
    header, end = _cbor(view, pos)
    if end != pos + length or not isinstance(header, dict):
        raise CarParseError("CAR header is not one CBOR map")
    if header.get("version") != 1:
        raise CarParseError(f"unsupported CAR version {header.get('version')!r}")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, CID) for r in roots):
        raise CarParseError("CAR header roots are not a list of CIDs")
    pos = end
    blocks: list[tuple[str, bytes]] = []
    while pos < len(view):
        length, pos = _varint(view, pos)
        if pos + length > len(view):
            raise CarParseError("truncated CAR section")
        section = bytes(view[pos : pos + length])
        pos += length
        cid, cid_length = _section_cid(section)
        block = section[cid_length:]
        if cid.hashfun.code != SHA2_256:
            raise CarParseError(f"block {cid}: unsupported hash {cid.hashfun.name}")
        if hashlib.sha256(block).digest() != bytes(cid.raw_digest):
            raise CarParseError(f"block {cid}: sha2-256 of the data does not match the CID")
        blocks.append((_text(cid), block))
    return [_text(root) for root in roots], blocks


def dag_links(cid: str, data: bytes) -> list[str]:
    """The CIDs a block links to: none for raw, the ``PBLink.Hash`` values for dag-pb."""
    codec = CID.decode(cid).codec.code
    if codec == RAW:
        return []
    if codec != DAG_PB:
        raise CarParseError(f"block {cid}: codec {codec:#x} is not raw or dag-pb")
    links = []
    for field_number, value in _protobuf_fields(data):
        if field_number == 2 and isinstance(value, bytes):
            for link_field, link_value in _protobuf_fields(value):
                if link_field == 1 and isinstance(link_value, bytes):
                    links.append(_text(CID.decode(link_value)))
    return links


def _text(cid: CID) -> str:
    """Kubo's default spelling: base32 for CIDv1, base58btc (``Qm…``) for CIDv0."""
    return str(cid.set(base="base32")) if cid.version == 1 else str(cid)


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(view):
            raise CarParseError("truncated varint")
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CarParseError("varint longer than 9 bytes")


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    if value < 256:
        return bytes([major << 5 | 24, value])
    return bytes([major << 5 | 25]) + value.to_bytes(2, "big")


def _cbor(view: memoryview, pos: int) -> tuple[Any, int]:
    """Decode the CBOR subset a CAR header uses: ints, strings, arrays, maps, tag 42."""
    if pos >= len(view):
        raise CarParseError("truncated CBOR")
    major, info = view[pos] >> 5, view[pos] & 0x1F
    pos += 1
    if info < 24:
        arg = info
    elif info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        arg = int.from_bytes(view[pos : pos + size], "big")
        pos += size
    else:
        raise CarParseError(f"unsupported CBOR additional info {info}")
    if major == 0:
        return arg, pos
    if major in (2, 3):
        raw = bytes(view[pos : pos + arg])
        if len(raw) != arg:
            raise CarParseError("truncated CBOR string")
        return (raw if major == 2 else raw.decode()), pos + arg
    if major == 4:
        items = []
        for _ in range(arg):
            item, pos = _cbor(view, pos)
            items.append(item)
        return items, pos
    if major == 5:
        mapping = {}
        for _ in range(arg):
            key, pos = _cbor(view, pos)
            mapping[key], pos = _cbor(view, pos)
        return mapping, pos
    if major == 6 and arg == 42:
        link, pos = _cbor(view, pos)
        if not isinstance(link, bytes) or link[:1] != b"\x00":
            raise CarParseError("tag 42 without a 0x00-prefixed byte string")
        try:
            return CID.decode(link[1:]), pos
        except (ValueError, KeyError) as exc:
            raise CarParseError(f"bad CID in header: {exc}") from exc
    if major == 7 and info in (20, 21, 22):
        return {20: False, 21: True, 22: None}[info], pos
    raise CarParseError(f"unsupported CBOR major type {major}")


def _section_cid(section: bytes) -> tuple[CID, int]:
    """Read the CID that starts a CAR section and how many bytes it took."""
    view = memoryview(section)
    if section[:2] == b"\x12\x20":
        length = 34
    else:
        pos = 0
        for _ in range(3):  # version, codec, hash code
            _, pos = _varint(view, pos)
        digest_length, pos = _varint(view, pos)
        length = pos + digest_length
    if length > len(section):
        raise CarParseError("truncated CID in CAR section")
    try:
        return CID.decode(section[:length]), length
    except (ValueError, KeyError) as exc:
        raise CarParseError(f"bad CID in CAR section: {exc}") from exc


def _protobuf_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        key, pos = _varint(view, pos)
        field_number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(view, pos)
            yield field_number, value
        elif wire_type == 2:
            length, pos = _varint(view, pos)
            yield field_number, bytes(view[pos : pos + length])
            pos += length
        else:
            raise CarParseError(f"dag-pb: unsupported wire type {wire_type}")


# --- the fake node --------------------------------------------------------------------


def _key(cid: str) -> bytes:
    """Blockstore key: the multihash, as Kubo's blockstore keys blocks."""
    return bytes(CID.decode(cid).digest)


class CommandError(Exception):
    """A command failure, answered as go-ipfs-cmds' error body."""

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class FakeKubo:
    """State of one fake Kubo node; ``app()`` serves it. Mutate it from tests between calls.

    ``token``: when set, requests need ``Authorization: Bearer <token>`` (else 403).
    ``blocks`` maps multihash bytes to block data; ``pins`` maps a recursively pinned CID to
    its name. ``pin_ls_args`` records the ``arg`` list of every ``pin/ls`` call.
    """

    token: str | None = None
    blocks: dict[bytes, bytes] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)
    failing: dict[str, str] = field(default_factory=dict)
    pin_ls_args: list[list[str]] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)

    def app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware)
        app.router.add_route("*", "/api/v0/{command:.+}", self._handle)
        return app

    # -- knobs --

    def fail_pin(self, cid: str, message: str) -> None:
        """Make every later attempt to pin ``cid`` fail with ``message``."""
        self.failing[cid] = message

    def add_blocks(self, blocks: Iterable[tuple[str, bytes]]) -> None:
        """Put blocks in the node's blockstore (as if fetched earlier)."""
        for block_cid, data in blocks:
            self.blocks[_key(block_cid)] = data

    def is_pinned(self, cid: str) -> bool:
        return any(_key(pinned) == _key(cid) for pinned in self.pins)

    # -- HTTP --

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(
                status=405,
                text="405 - Method Not Allowed\n",
                headers={"Allow": "OPTIONS, POST"},
            )
        if self.token is not None and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            return web.Response(
                status=403,
                text="Kubo RPC Access Denied: Please provide a valid authorization token as "
                "defined in the API.Authorizations configuration.\n",
            )
        command = request.match_info["command"]
        if command not in COMMANDS:
            return web.Response(status=404, text="404 page not found\n")
        args = request.query.getall("arg", [])
        try:
            if command == "dag/import":
                return await self._dag_import(request)
            if command == "block/get":
                return self._block_get(args)
            if command == "dag/export":
                return await self._dag_export(request, args)
            if command == "pin/add":
                return _json(self._pin_add(args, request.query.get("name", "")))
            if command == "pin/ls":
                return await self._pin_ls(request, args)
            if command == "pin/rm":
                return _json(self._pin_rm(args))
            return _json({"Version": "0.0.0-fake", "Commit": "", "Repo": "16", "System": ""})
        except CommandError as exc:
            return web.json_response(
                {"Message": exc.message, "Code": exc.code, "Type": "error"},
                status=400 if exc.code == 1 else 500,
            )

    def _parse(self, arg: str) -> str:
        try:
            return _text(CID.decode(arg.removeprefix("/ipfs/")))
        except (ValueError, KeyError) as exc:
            raise CommandError(f"invalid path {arg!r}: {exc}") from exc

    def _missing(self, root: str) -> str | None:
        """The first block of ``root``'s DAG not in the blockstore, or ``None``."""
        stack, seen = [root], set()
        while stack:
            cid = stack.pop()
            key = _key(cid)
            if key in seen:
                continue
            seen.add(key)
            data = self.blocks.get(key)
            if data is None:
                return cid
            stack.extend(dag_links(cid, data))
        return None

    def _try_pin(self, cid: str, name: str) -> str:
        """Pin ``cid`` recursively; return the error message, or "" when pinned."""
        if cid in self.failing:
            return self.failing[cid]
        missing = self._missing(cid)
        if missing is not None:
            return f"block was not found locally (offline): ipld: could not find {missing}"
        for pinned in [p for p in self.pins if _key(p) == _key(cid)]:
            del self.pins[pinned]
        self.pins[cid] = name
        return ""

    async def _dag_import(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise CommandError("file argument 'path' is required", code=1)
        roots: list[str] = []
        count = size = 0
        reader = await request.multipart()
        async for part in reader:
            if part.filename is None and part.name != "file":
                continue
            data = await part.read()  # type: ignore[union-attr]
            try:
                car_roots, blocks = read_car(bytes(data))
            except CarParseError as exc:
                raise CommandError(f"import failed: {exc}") from exc
            self.add_blocks(blocks)
            count += len(blocks)
            size += sum(len(data) for _, data in blocks)
            roots.extend(r for r in car_roots if r not in roots)
        events: list[dict[str, Any]] = []
        if request.query.get("pin-roots", "true") == "true":
            for root in roots:
                message = self._try_pin(root, "")
                events.append({"Root": {"Cid": {"/": root}, "PinErrorMsg": message}})
        if request.query.get("stats") == "true":
            events.append({"Stats": {"BlockCount": count, "BlockBytesCount": size}})
        return _ndjson(events)

    def _stored(self, args: list[str], what: str) -> tuple[str, bytes]:
        """The one CID argument of ``block/get``/``dag/export`` and its block."""
        if not args:
            raise CommandError(f'argument "{what}" is required', code=1)
        cid = self._parse(args[0])
        data = self.blocks.get(_key(cid))
        if data is None:
            raise CommandError(f"block was not found locally (offline): ipld: could not find {cid}")
        return cid, data

    def _block_get(self, args: list[str]) -> web.Response:
        _, data = self._stored(args, "cid")
        return web.Response(body=data, content_type="text/plain", headers=STREAM_HEADERS)

    async def _dag_export(self, request: web.Request, args: list[str]) -> web.StreamResponse:
        root, _ = self._stored(args, "root")
        response = web.StreamResponse(headers=STREAM_HEADERS)
        response.content_type = "application/vnd.ipld.car"
        await response.prepare(request)
        await response.write(car_v1([root], []))
        stack, seen = [root], set()
        while stack:
            cid = stack.pop()
            if _key(cid) in seen or CID.decode(cid).hashfun.code == IDENTITY:
                continue
            seen.add(_key(cid))
            data = self.blocks.get(_key(cid))
            if data is None:  # Kubo reports it in the X-Stream-Error trailer: the CAR is cut
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write(car_section(cid, data))
            stack.extend(reversed(dag_links(cid, data)))
        await response.write_eof()
        return response

    def _pin_add(self, args: list[str], name: str) -> dict[str, Any]:
        if not args:
            raise CommandError('argument "ipfs-path" is required', code=1)
        if len(name.encode()) > 255:
            raise CommandError(f"pin name is {len(name.encode())} bytes (max 255 bytes)")
        pinned = []
        for arg in args:
            cid = self._parse(arg)
            message = self._try_pin(cid, name)
            if message:
                raise CommandError(f"pin: {message}")
            pinned.append(cid)
        return {"Pins": pinned}

    def _indirect(self) -> dict[bytes, tuple[str, str]]:
        """Multihash of every block below a recursive pin -> (its CID, that pin's CID)."""
        reached: dict[bytes, tuple[str, str]] = {}
        for root in self.pins:
            stack = [root]
            while stack:
                cid = stack.pop()
                data = self.blocks.get(_key(cid))
                if data is None:
                    continue
                for child in dag_links(cid, data):
                    if _key(child) not in reached:
                        reached[_key(child)] = (child, root)
                        stack.append(child)
        return reached

    def _pin_type(self, cid: str, wanted: str) -> str | None:
        for pinned in self.pins:
            if _key(pinned) == _key(cid) and wanted in ("all", "recursive"):
                return "recursive"
        if wanted in ("all", "indirect"):
            reached = self._indirect().get(_key(cid))
            if reached is not None:
                return f"indirect through {reached[1]}"
        return None

    async def _pin_ls(self, request: web.Request, args: list[str]) -> web.Response:
        wanted = request.query.get("type", "all")
        if wanted not in ("all", "direct", "indirect", "recursive"):
            raise CommandError(
                f"invalid type '{wanted}', must be one of {{direct, indirect, recursive, all}}"
            )
        self.pin_ls_args.append(list(args))
        entries: list[tuple[str, str, str]] = []
        if args:
            for arg in args:
                cid = self._parse(arg)
                pin_type = self._pin_type(cid, wanted)
                if pin_type is None:
                    raise CommandError(f"path '{arg}' is not pinned")
                entries.append((cid, pin_type, ""))
        else:
            if wanted in ("all", "recursive"):
                entries += [(cid, "recursive", name) for cid, name in self.pins.items()]
            if wanted in ("all", "indirect"):
                entries += [
                    (child, f"indirect through {root}", "")
                    for child, root in self._indirect().values()
                ]
        if request.query.get("stream") != "true":
            keys = {cid: {"Type": pin_type, "Name": name} for cid, pin_type, name in entries}
            return _json({"Keys": keys})
        items = []
        for cid, pin_type, name in entries:
            item = {"Cid": cid, "Type": pin_type}
            if name:
                item["Name"] = name
            items.append(item)
        return _ndjson(items)

    def _pin_rm(self, args: list[str]) -> dict[str, Any]:
        if not args:
            raise CommandError('argument "ipfs-path" is required', code=1)
        removed = []
        for arg in args:
            cid = self._parse(arg)
            matches = [pinned for pinned in self.pins if _key(pinned) == _key(cid)]
            if not matches:
                raise CommandError("not pinned or pinned indirectly")
            for pinned in matches:
                del self.pins[pinned]
            removed.append(cid)
        return {"Pins": removed}


#: What go-ipfs-cmds sends with a command's byte stream output.
STREAM_HEADERS = {"X-Stream-Output": "1", "Trailer": "X-Stream-Error"}


def _ndjson(items: list[dict[str, Any]]) -> web.Response:
    """Channel output: one JSON value per line (sent whole, so faults can replace it)."""
    body = "".join(json.dumps(item) + "\n" for item in items)
    headers = {"X-Chunked-Output": "1", "Trailer": "X-Stream-Error"}
    return web.Response(text=body, content_type="application/json", headers=headers)


def _json(body: object) -> web.Response:
    """A command's single JSON value, newline-terminated as go-ipfs-cmds encodes it."""
    return web.Response(text=json.dumps(body) + "\n", content_type="application/json")
