"""A fake IPFS Pinning Service API v1.0.0 on loopback.

Follows github.com/ipfs/pinning-services-api-spec ``ipfs-pinning-service.yaml``:

- every request needs ``Authorization: Bearer <token>``; otherwise 401 with the ``Failure``
  body ``{"error": {"reason": "UNAUTHORIZED", "details": ...}}``;
- ``POST /pins`` validates the ``Pin`` (``cid`` parses, ``name`` <= 255, ``origins`` <= 20
  multiaddrs, ``meta`` string to string) and answers 202 with a ``PinStatus``: a fresh
  opaque ``requestid``, ``status: queued``, a unique RFC 3339 ``created`` with microseconds,
  ``delegates`` (at least one), the ``pin`` echoed and ``info: {}``;
- ``GET /pins`` filters by ``cid`` (at most 10, else 400), ``name``/``match``, ``status``
  (default ``pinned`` only), ``before``/``after``, ``meta``, and pages with ``limit``
  (1-1000, default 10, else 400), newest first, ``count`` = all matches;
- ``GET``/``POST`` (replace) /``DELETE /pins/{requestid}``, 404 ``NOT_FOUND`` when unknown,
  DELETE answering 202 with no body;
- 409 ``INSUFFICIENT_FUNDS`` when ``insufficient_funds`` is set.

Statuses move only when the test says so: ``advance()`` steps every unfinished pin
``queued -> pinning -> pinned`` (or ``failed`` with ``info.status_details`` for a CID marked
with ``fail_cid``); ``set_status`` jumps. Faults (5xx, 429 with ``Retry-After``, resets)
come from ``faults``, every request is recorded in ``requests``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from multiformats import CID

from indexers.fakeserver import Faults, RequestLog, fake_app

__all__ = ["FakePinningService", "ServicePin"]

STATUSES = ("queued", "pinning", "pinned", "failed")
MATCHES = ("exact", "iexact", "partial", "ipartial")
DEFAULT_DELEGATE = (
    "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
)


@dataclass
class ServicePin:
    """One pin object the fake holds."""

    requestid: str
    cid: str
    name: str | None
    origins: list[str]
    meta: dict[str, str]
    created: datetime
    status: str = "queued"
    info: dict[str, str] = field(default_factory=dict)

    def to_json(self, delegates: list[str]) -> dict[str, Any]:
        pin: dict[str, Any] = {"cid": self.cid}
        if self.name is not None:
            pin["name"] = self.name
        if self.origins:
            pin["origins"] = self.origins
        if self.meta:
            pin["meta"] = self.meta
        return {
            "requestid": self.requestid,
            "status": self.status,
            "created": _rfc3339(self.created),
            "pin": pin,
            "delegates": delegates,
            "info": dict(self.info),
        }


class Failure(Exception):
    """An error answered as the spec's ``Failure`` body."""

    def __init__(self, status: int, reason: str, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.reason = reason
        self.details = details


@dataclass
class FakePinningService:
    """State of one fake service; ``app()`` serves it. Mutate it from tests between calls.

    ``echo_token`` makes 401 details quote the token presented (some services do), so a
    test can check the client keeps it out of its errors.
    """

    tokens: frozenset[str] = frozenset({"secret-token"})
    delegates: list[str] = field(default_factory=lambda: [DEFAULT_DELEGATE])
    echo_token: bool = False
    insufficient_funds: bool = False
    pins: dict[str, ServicePin] = field(default_factory=dict)
    failing: dict[str, str] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)
    _last_created: datetime = field(
        init=False, default_factory=lambda: datetime(2024, 1, 1, tzinfo=UTC)
    )

    def app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware, self._auth)
        app.router.add_get("/pins", self._list)
        app.router.add_post("/pins", self._add)
        app.router.add_get("/pins/{requestid}", self._get)
        app.router.add_post("/pins/{requestid}", self._replace)
        app.router.add_delete("/pins/{requestid}", self._delete)
        return app

    # -- knobs --

    def fail_cid(self, cid: str, details: str) -> None:
        """Pins of ``cid`` end ``failed`` with ``details`` instead of ``pinned``."""
        self.failing[cid] = details

    def advance(self, requestid: str | None = None) -> None:
        """Move one pin (or every pin) one step along queued -> pinning -> pinned/failed."""
        targets = [self.pins[requestid]] if requestid else list(self.pins.values())
        for pin in targets:
            if pin.status == "queued":
                pin.status = "pinning"
                pin.info["status_details"] = "fetching from origins"
            elif pin.status == "pinning":
                if pin.cid in self.failing:
                    pin.status = "failed"
                    pin.info["status_details"] = self.failing[pin.cid]
                else:
                    pin.status = "pinned"
                    pin.info.pop("status_details", None)

    def set_status(self, requestid: str, status: str, details: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        pin = self.pins[requestid]
        pin.status = status
        if details is None:
            pin.info.pop("status_details", None)
        else:
            pin.info["status_details"] = details

    def list_requests(self) -> int:
        """How many ``GET /pins`` list requests the fake has answered."""
        return sum(1 for r in self.requests.seen if r.method == "GET" and r.path == "/pins")

    # -- HTTP --

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            details = "Access token is missing or invalid"
            if self.echo_token and token:
                details = f"access token {token!r} is not valid"
            return _failure(Failure(401, "UNAUTHORIZED", details))
        try:
            return await handler(request)
        except Failure as failure:
            return _failure(failure)

    def _created(self) -> datetime:
        """A strictly increasing creation time, so ``before`` pagination never ties."""
        now = datetime.now(UTC)
        self._last_created = max(now, self._last_created + timedelta(microseconds=1))
        return self._last_created

    async def _read_pin(self, request: web.Request) -> ServicePin:
        if self.insufficient_funds:
            raise Failure(409, "INSUFFICIENT_FUNDS", "Unable to process request: no funds")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise Failure(400, "BAD_REQUEST", f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("cid"), str):
            raise Failure(400, "BAD_REQUEST", "Pin.cid is required")
        try:
            CID.decode(body["cid"])
        except (ValueError, KeyError) as exc:
            raise Failure(400, "BAD_REQUEST", f"invalid cid: {exc}") from exc
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 255):
            raise Failure(400, "BAD_REQUEST", "Pin.name must be a string of at most 255")
        origins = body.get("origins", [])
        if (
            not isinstance(origins, list)
            or len(origins) > 20
            or not all(isinstance(o, str) and "/p2p/" in o for o in origins)
        ):
            raise Failure(400, "BAD_REQUEST", "Pin.origins: at most 20 multiaddrs with /p2p/")
        meta = body.get("meta", {})
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise Failure(400, "BAD_REQUEST", "Pin.meta must map strings to strings")
        return ServicePin(
            requestid=secrets.token_hex(12),
            cid=body["cid"],
            name=name,
            origins=origins,
            meta=meta,
            created=self._created(),
        )

    async def _add(self, request: web.Request) -> web.Response:
        pin = await self._read_pin(request)
        self.pins[pin.requestid] = pin
        return web.json_response(pin.to_json(self.delegates), status=202)

    def _find(self, request: web.Request) -> ServicePin:
        pin = self.pins.get(request.match_info["requestid"])
        if pin is None:
            raise Failure(404, "NOT_FOUND", "The specified resource was not found")
        return pin

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self._find(request).to_json(self.delegates))

    async def _replace(self, request: web.Request) -> web.Response:
        old = self._find(request)
        pin = await self._read_pin(request)
        del self.pins[old.requestid]
        self.pins[pin.requestid] = pin
        return web.json_response(pin.to_json(self.delegates), status=202)

    async def _delete(self, request: web.Request) -> web.Response:
        del self.pins[self._find(request).requestid]
        return web.Response(status=202)

    async def _list(self, request: web.Request) -> web.Response:
        query = request.query
        matches = list(self.pins.values())
        if "cid" in query:
            cids = [c for c in query["cid"].split(",") if c]
            if not cids or len(cids) > 10:
                raise Failure(400, "BAD_REQUEST", f"cid: between 1 and 10 CIDs, got {len(cids)}")
            matches = [p for p in matches if p.cid in cids]
        statuses = query.get("status", "pinned").split(",")
        if any(s not in STATUSES for s in statuses):
            raise Failure(400, "BAD_REQUEST", f"status: unknown value in {query['status']!r}")
        matches = [p for p in matches if p.status in statuses]
        if "name" in query:
            matches = [p for p in matches if _name_matches(p.name, query)]
        for bound in ("before", "after"):
            if bound in query:
                try:
                    when = datetime.fromisoformat(query[bound])
                except ValueError as exc:
                    raise Failure(400, "BAD_REQUEST", f"{bound}: {exc}") from exc
                if bound == "before":
                    matches = [p for p in matches if p.created < when]
                else:
                    matches = [p for p in matches if p.created > when]
        if "meta" in query:
            try:
                meta = json.loads(query["meta"])
            except ValueError as exc:
                raise Failure(400, "BAD_REQUEST", f"meta: {exc}") from exc
            if not isinstance(meta, dict):
                raise Failure(400, "BAD_REQUEST", "meta must be a JSON object")
            matches = [p for p in matches if all(p.meta.get(k) == v for k, v in meta.items())]
        try:
            limit = int(query.get("limit", "10"))
        except ValueError as exc:
            raise Failure(400, "BAD_REQUEST", f"limit: {exc}") from exc
        if not 1 <= limit <= 1000:
            raise Failure(400, "BAD_REQUEST", f"limit must be between 1 and 1000, got {limit}")
        matches.sort(key=lambda p: p.created, reverse=True)
        results = [p.to_json(self.delegates) for p in matches[:limit]]
        return web.json_response({"count": len(matches), "results": results})


def _name_matches(name: str | None, query: Any) -> bool:
    match = query.get("match", "exact")
    if match not in MATCHES:
        raise Failure(400, "BAD_REQUEST", f"match: unknown strategy {match!r}")
    if name is None:
        return False
    wanted = query["name"]
    if match.startswith("i"):
        name, wanted = name.lower(), wanted.lower()
    return name == wanted if match.endswith("exact") else wanted in name


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _failure(failure: Failure) -> web.Response:
    return web.json_response(
        {"error": {"reason": failure.reason, "details": failure.details}}, status=failure.status
    )
