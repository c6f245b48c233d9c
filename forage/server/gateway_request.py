"""The trustless gateway's requests, validated before any block is read.

Format negotiation (``?format=`` wins over ``Accept``; 400 without either, 406 for a type or
CAR variant this gateway does not produce, per IPIP-0412's ``version``, ``order`` and ``dups``
parameters), ``dag-scope``, ``entity-bytes`` and the content path, gathered into the
``GatewayRequest`` that also names the response's ``Etag``.

Spec: https://specs.ipfs.tech/http-gateways/trustless-gateway/
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from multiformats import CID

from storage import InvalidCID, parse_cid

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
#: Formats other gateways serve that this one does not produce (406 rather than 400).
OTHER_FORMATS = frozenset({"dag-json", "dag-cbor", "json", "cbor", "tar", "ipns-record"})
#: A content path deeper than this is refused before any block is read.
MAX_PATH_SEGMENTS = 64
#: Longest ``Accept`` or ``If-None-Match`` header value parsed; longer ones are refused.
MAX_HEADER_LENGTH = 4096

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
