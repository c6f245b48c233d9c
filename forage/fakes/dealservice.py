"""A fake deal-making service on loopback, in Estuary's API shape (what the 2021 Forage used).

Routes (application-research/estuary ``api/v1/handlers.go``; fields as the JSON tags of
``util.Content`` and ``model.ContentDeal``), all behind ``Authorization: Bearer <token>`` (401
``{"error": {"code": 401, "reason": "ERR_INVALID_AUTH", "details": ...}}`` otherwise):

- ``GET /content/deals?limit=&offset=``: the contents that have at least one deal, newest id
  first, each a ``Content`` plus ``aggregatedFiles``; ``limit`` defaults to 20;
- ``GET /content/status/{id}``: ``{"content", "deals": [{"deal": ContentDeal, "transfer":
  null, "onChainState": {"sectorStartEpoch", "lastUpdatedEpoch", "slashEpoch"} | null}],
  "failuresCount"}``; 404 for an unknown id;
- ``GET /content/aggregated/{id}``: the contents aggregated into ``id``.

A content is what the service was given (a CAR, named by its root ``cid``); a deal of it gets
a chain ``dealId`` once published (0 before). Tests drive it with
:meth:`FakeDealService.add_content`, :meth:`add_deal` and :meth:`set_on_chain`; ``faults`` and
``requests`` as in every fake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from indexers.fakeserver import Faults, RequestLog, fake_app

__all__ = ["FakeContent", "FakeContentDeal", "FakeDealService"]

_ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass
class FakeContentDeal:
    """One ``ContentDeal`` row: a deal (or attempt) for a content with one provider."""

    id: int
    content: int
    miner: str
    deal_id: int = 0
    failed: bool = False
    verified: bool = True
    slashed: bool = False
    on_chain: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "CreatedAt": "2024-01-02T03:04:05Z",
            "UpdatedAt": "2024-01-02T03:04:05Z",
            "DeletedAt": None,
            "content": self.content,
            "user_id": 1,
            "propCid": "bafyreigqj2m6ajfvvzfqyf4zuiyzqbz7oh4qj6wqf3xi6kfrdq3mdnnv7m",
            "dealUuid": f"0b6a0bb0-0000-4000-8000-{self.id:012d}",
            "miner": self.miner,
            "dealId": self.deal_id,
            "failed": self.failed,
            "verified": self.verified,
            "slashed": self.slashed,
            "failedAt": _ZERO_TIME,
            "dtChan": "",
            "transferStarted": _ZERO_TIME,
            "transferFinished": _ZERO_TIME,
            "onChainAt": _ZERO_TIME,
            "sealedAt": _ZERO_TIME,
            "deal_protocol_version": "/fil/storage/mk/1.2.0",
            "miner_version": "1.23.0",
        }


@dataclass
class FakeContent:
    """One ``Content``: data the service holds, by root CID."""

    id: int
    cid: str
    name: str
    size: int
    aggregated_in: int = 0
    deals: list[FakeContentDeal] = field(default_factory=list)

    def to_json(self, aggregated_files: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "updatedAt": "2024-01-02T03:04:05Z",
            "cid": self.cid,
            "name": self.name,
            "userId": 1,
            "description": "",
            "size": self.size,
            "type": 0,
            "active": True,
            "offloaded": False,
            "replication": 6,
            "aggregatedIn": self.aggregated_in,
            "aggregate": aggregated_files > 0,
            "pinning": False,
            "pinMeta": "",
            "replace": False,
            "origins": "",
            "failed": False,
            "location": "local",
            "dagSplit": False,
            "splitFrom": 0,
            "aggregatedFiles": aggregated_files,
        }


def _failure(status: int, reason: str, details: str) -> web.Response:
    return web.json_response(
        {"error": {"code": status, "reason": reason, "details": details}}, status=status
    )


@dataclass
class FakeDealService:
    """State of one fake service; ``app()`` serves it. Mutate it from tests between calls."""

    token: str = "dealservice-token"  # noqa: S105 (a fake's default)
    contents: dict[int, FakeContent] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)
    _next: int = 1

    def app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware, self._auth)
        app.router.add_get("/content/deals", self._deals)
        app.router.add_get("/content/status/{id}", self._status)
        app.router.add_get("/content/aggregated/{id}", self._aggregated)
        return app

    # -- knobs --

    def add_content(
        self, cid: str, *, name: str = "", size: int = 0, aggregated_in: int = 0
    ) -> int:
        content_id = self._take_id()
        self.contents[content_id] = FakeContent(content_id, cid, name or cid, size, aggregated_in)
        return content_id

    def add_deal(self, content_id: int, miner: str, *, deal_id: int = 0, **fields: Any) -> int:
        """Record a deal of a content with ``miner``; ``deal_id`` 0 means not yet on chain."""
        row = FakeContentDeal(self._take_id(), content_id, miner, deal_id, **fields)
        self.contents[content_id].deals.append(row)
        return row.id

    def set_on_chain(
        self, content_id: int, deal_id: int, *, sector_start: int, slash: int = -1
    ) -> None:
        """What Lotus says of the deal, as the service caches it in ``onChainState``."""
        for row in self.contents[content_id].deals:
            if row.deal_id == deal_id:
                row.on_chain = {
                    "sectorStartEpoch": sector_start,
                    "lastUpdatedEpoch": max(sector_start, slash),
                    "slashEpoch": slash,
                }
                row.slashed = slash > 0

    def _take_id(self) -> int:
        self._next += 1
        return self._next - 1

    # -- protocol --

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _failure(401, "ERR_INVALID_AUTH", "invalid or missing API key")
        response: web.StreamResponse = await handler(request)
        return response

    def _aggregated_count(self, content_id: int) -> int:
        return sum(1 for c in self.contents.values() if c.aggregated_in == content_id)

    async def _deals(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "20"))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return _failure(400, "ERR_INVALID_QUERY_PARAM", "limit and offset must be integers")
        if limit < 1 or offset < 0:
            return _failure(400, "ERR_INVALID_QUERY_PARAM", "limit must be >= 1, offset >= 0")
        dealt = sorted(
            (c for c in self.contents.values() if c.deals and not c.aggregated_in),
            key=lambda c: c.id,
            reverse=True,
        )
        page = dealt[offset : offset + limit]
        return web.json_response([c.to_json(self._aggregated_count(c.id)) for c in page])

    def _content(self, request: web.Request) -> FakeContent | None:
        try:
            return self.contents.get(int(request.match_info["id"]))
        except ValueError:
            return None

    async def _status(self, request: web.Request) -> web.Response:
        content = self._content(request)
        if content is None:
            return _failure(404, "ERR_CONTENT_NOT_FOUND", "content not found")
        deals = [
            {"deal": row.to_json(), "transfer": None, "onChainState": row.on_chain}
            for row in content.deals
        ]
        return web.json_response(
            {
                "content": content.to_json(self._aggregated_count(content.id)),
                "deals": deals,
                "failuresCount": sum(1 for row in content.deals if row.failed),
            }
        )

    async def _aggregated(self, request: web.Request) -> web.Response:
        content = self._content(request)
        if content is None:
            return _failure(404, "ERR_CONTENT_NOT_FOUND", "content not found")
        members = [c for c in self.contents.values() if c.aggregated_in == content.id]
        return web.json_response([c.to_json(0) for c in sorted(members, key=lambda c: c.id)])
