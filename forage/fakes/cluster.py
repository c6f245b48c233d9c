"""A fake IPFS Cluster REST API on loopback.

Follows github.com/ipfs-cluster/ipfs-cluster ``api/rest/restapi.go``, ``api/common/api.go``
(``SendResponse``, ``StreamResponse``) and the JSON tags of ``api/types.go``:

- ``POST /pins/{cid}`` with pin options in the query (``name``, ``replication-min``,
  ``replication-max``, ``origins``, ``meta-<key>``) answers 200 with the ``Pin`` object;
- ``POST /add?format=car`` reads one multipart CARv1 with exactly one root (500 ``only CAR
  files with a single root are supported`` otherwise), checks each block's sha2-256 and pins
  the root; ``stream-channels=false`` answers a JSON array of ``AddedOutput``, the default
  answers NDJSON (a failure there goes in an HTTP trailer in the real thing; this fake
  answers 200 with no lines, which is what an httpx client sees);
- ``GET /pins?cids=a,b`` streams one ``GlobalPinInfo`` per line, an untracked CID reporting
  ``unpinned`` on every peer; without ``cids`` it streams every tracked pin (``filter`` by
  status); 204 when there is nothing to send; ``GET /pins/{cid}`` answers one;
- ``DELETE /pins/{cid}`` answers the ``Pin``, or 404 ``pin is not part of the pinset``;
- errors are ``{"code": <status>, "message": ...}``; with a token configured a missing or
  wrong bearer gets 401 ``unauthorized: ...``.

Peers' statuses move only when the test says so: ``advance()`` steps allocated peers
``pin_queued -> pinning -> pinned`` (``pin_error`` for a CID marked with ``fail_cid``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multiformats import CID

from forage.fakes.kubo import CarParseError, dag_links, read_car
from indexers.fakeserver import Faults, RequestLog, fake_app

__all__ = ["ClusterPin", "FakeCluster"]

DEFAULT_PEERS = (
    "12D3KooWGxMDzJgvLrBUqZZLrKVuA1fzsQn2DRNPqRsbmWLGHRm5",
    "12D3KooWMh6J4BAqcfmWdE4WgeCWz4YgtVBBAZTjbXvwT5sVUMvD",
    "12D3KooWRZrSVYALnbkAGbx3GeZ2xYsExH52cFFqhB4KxfV9gK2N",
)
ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass
class ClusterPin:
    """One entry of the fake's pinset, with each allocated peer's tracker status."""

    cid: str
    name: str
    replication_min: int
    replication_max: int
    origins: list[str]
    metadata: dict[str, str]
    allocations: list[str]
    created: datetime
    statuses: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeCluster:
    """State of one fake cluster; ``app()`` serves it. Mutate it from tests between calls.

    ``ignore_cids`` behaves like a cluster from before ``GET /pins?cids=``: the parameter is
    ignored and every tracked pin is streamed.
    """

    token: str | None = None
    peers: tuple[str, ...] = DEFAULT_PEERS
    pins: dict[str, ClusterPin] = field(default_factory=dict)
    blocks: dict[bytes, bytes] = field(default_factory=dict)
    failing: dict[str, str] = field(default_factory=dict)
    ignore_cids: bool = False
    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)

    def app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware, self._auth)
        app.router.add_post("/add", self._add)
        app.router.add_get("/pins", self._status_all)
        app.router.add_get("/pins/{cid}", self._status)
        app.router.add_post("/pins/{cid}", self._pin)
        app.router.add_delete("/pins/{cid}", self._unpin)
        return app

    # -- knobs --

    def fail_cid(self, cid: str, error: str) -> None:
        """Pins of ``cid`` end in ``pin_error`` with ``error`` on the first allocated peer."""
        self.failing[cid] = error

    def advance(self, cid: str | None = None) -> None:
        """Step allocated peers of one pin (or all) along pin_queued -> pinning -> pinned."""
        for pin in [self.pins[cid]] if cid else list(self.pins.values()):
            for index, peer in enumerate(pin.allocations):
                status = pin.statuses[peer]
                if status == "pin_queued":
                    pin.statuses[peer] = "pinning"
                elif status == "pinning":
                    if pin.cid in self.failing and index == 0:
                        pin.statuses[peer] = "pin_error"
                        pin.errors[peer] = self.failing[pin.cid]
                    else:
                        pin.statuses[peer] = "pinned"

    def status_requests(self) -> int:
        """How many status requests (``GET /pins`` and ``GET /pins/{cid}``) were answered."""
        return sum(
            1 for r in self.requests.seen if r.method == "GET" and r.path.startswith("/pins")
        )

    # -- HTTP --

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is not None:
            header = request.headers.get("Authorization", "")
            if not header:
                return _error(401, "unauthorized: no auth provided")
            if header != f"Bearer {self.token}":
                return _error(401, "unauthorized: invalid token")
        return await handler(request)

    def _parse_cid(self, text: str) -> str | web.Response:
        try:
            return str(CID.decode(text))
        except (ValueError, KeyError) as exc:
            return _error(400, f"error decoding Cid: {exc}")

    def _track(self, cid: str, query: Any) -> ClusterPin | web.Response:
        """Add or update a pin from the pin options in ``query``."""
        try:
            rmin = int(query.get("replication-min", query.get("replication", "0")) or 0)
            rmax = int(query.get("replication-max", query.get("replication", "0")) or 0)
        except ValueError:
            return _error(400, "parameter replication-min/max is invalid")
        origins = [o for o in query.get("origins", "").split(",") if o]
        for origin in origins:
            if "/p2p/" not in origin:
                return _error(400, "multiaddress does not contain peer ID")
        wanted = len(self.peers) if rmax <= 0 else min(rmax, len(self.peers))
        allocations = list(self.peers[:wanted])
        pin = ClusterPin(
            cid=cid,
            name=query.get("name", ""),
            replication_min=rmin or -1,
            replication_max=rmax or -1,
            origins=origins,
            metadata={k[5:]: v for k, v in query.items() if k.startswith("meta-") and k[5:]},
            allocations=allocations,
            created=datetime.now(UTC),
            statuses={
                peer: "pin_queued" if peer in allocations else "remote" for peer in self.peers
            },
        )
        self.pins[cid] = pin
        return pin

    async def _pin(self, request: web.Request) -> web.Response:
        cid = self._parse_cid(request.match_info["cid"])
        if isinstance(cid, web.Response):
            return cid
        pin = self._track(cid, request.query)
        if isinstance(pin, web.Response):
            return pin
        return web.json_response(_pin_json(pin))

    async def _add(self, request: web.Request) -> web.Response:
        if request.query.get("format", "unixfs") != "car":
            return _error(400, "this fake only adds CAR files (format=car)")
        if not request.content_type.startswith("multipart/"):
            return _error(400, "request Content-Type isn't multipart/form-data")
        streaming = request.query.get("stream-channels", "true") != "false"
        reader = await request.multipart()
        part = await reader.next()
        if part is None:
            return _error(500, "no CAR file in the request")
        data = await part.read()  # type: ignore[union-attr]
        try:
            roots, blocks = read_car(bytes(data))
            if len(roots) != 1:
                raise CarParseError("only CAR files with a single root are supported")
            for block_cid, block in blocks:
                dag_links(block_cid, block)  # refuses codecs other than raw and dag-pb
                self.blocks[bytes(CID.decode(block_cid).digest)] = block
        except CarParseError as exc:
            if streaming:
                return web.Response(status=200, content_type="application/json")
            return _error(500, str(exc))
        pin = self._track(roots[0], request.query)
        if isinstance(pin, web.Response):
            return pin
        added = {
            "name": part.filename or "",  # type: ignore[union-attr]
            "cid": roots[0],
            "bytes": sum(len(block) for _, block in blocks),
            "size": 0,
            "allocations": pin.allocations,
        }
        if streaming:
            return _ndjson([added], {"X-Chunked-Output": "1", "Trailer": "X-Stream-Error"})
        return web.json_response([added])

    def _info(self, cid: str) -> dict[str, Any]:
        pin = self.pins.get(cid)
        if pin is None:
            peer_map = {
                peer: _peer_info(peer, index, "unpinned", "")
                for index, peer in enumerate(self.peers)
            }
            return {
                "cid": cid,
                "name": "",
                "allocations": [],
                "origins": [],
                "created": ZERO_TIME,
                "metadata": None,
                "peer_map": peer_map,
            }
        return {
            "cid": cid,
            "name": pin.name,
            "allocations": pin.allocations,
            "origins": pin.origins,
            "created": _rfc3339(pin.created),
            "metadata": pin.metadata or None,
            "peer_map": {
                peer: _peer_info(peer, index, pin.statuses[peer], pin.errors.get(peer, ""))
                for index, peer in enumerate(self.peers)
            },
        }

    async def _status(self, request: web.Request) -> web.Response:
        cid = self._parse_cid(request.match_info["cid"])
        if isinstance(cid, web.Response):
            return cid
        return web.json_response(self._info(cid))

    async def _status_all(self, request: web.Request) -> web.Response:
        if request.query.get("cids") and not self.ignore_cids:
            cids = []
            for text in request.query["cids"].split(","):
                cid = self._parse_cid(text)
                if isinstance(cid, web.Response):
                    return cid
                cids.append(cid)
            infos = [self._info(cid) for cid in cids]
        else:
            wanted = {s for s in request.query.get("filter", "").split(",") if s}
            infos = [
                self._info(cid)
                for cid, pin in self.pins.items()
                if not wanted or wanted & set(pin.statuses.values())
            ]
        if not infos:
            return web.Response(status=204)
        return _ndjson(infos, {"Trailer": "X-Stream-Error"})

    async def _unpin(self, request: web.Request) -> web.Response:
        cid = self._parse_cid(request.match_info["cid"])
        if isinstance(cid, web.Response):
            return cid
        pin = self.pins.pop(cid, None)
        if pin is None:
            return _error(404, "pin is not part of the pinset")
        return web.json_response(_pin_json(pin))


def _peer_info(peer: str, index: int, status: str, error: str) -> dict[str, Any]:
    return {
        "peername": f"cluster-{index}",
        "ipfs_peer_id": peer,
        "ipfs_peer_addresses": [f"/ip4/127.0.0.1/tcp/{4001 + index}/p2p/{peer}"],
        "status": status,
        "timestamp": _rfc3339(datetime.now(UTC)),
        "error": error,
        "attempt_count": 0,
        "priority_pin": False,
    }


def _pin_json(pin: ClusterPin) -> dict[str, Any]:
    return {
        "replication_factor_min": pin.replication_min,
        "replication_factor_max": pin.replication_max,
        "name": pin.name,
        "mode": "recursive",
        "shard_size": 0,
        "user_allocations": None,
        "expire_at": ZERO_TIME,
        "metadata": pin.metadata or None,
        "pin_update": None,
        "origins": pin.origins,
        "cid": pin.cid,
        "type": "pin",
        "allocations": pin.allocations,
        "max_depth": -1,
        "reference": None,
        "timestamp": _rfc3339(pin.created),
    }


def _ndjson(items: list[dict[str, Any]], headers: dict[str, str]) -> web.Response:
    """A stream of JSON values, one per line (sent whole, so faults can replace it)."""
    body = "".join(json.dumps(item) + "\n" for item in items)
    return web.Response(text=body, content_type="application/json", headers=headers)


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)
