"""A fake Lotus node's JSON-RPC 2.0 API on loopback: chain head, genesis, market deals.

Speaks what Lotus speaks (``documentation/en/api-methods-v1-stable.md``; go-jsonrpc for the
envelope): ``POST /rpc/v1`` (and ``/rpc/v0``) with ``{"jsonrpc": "2.0", "method", "params",
"id"}``; the ``id`` is echoed. A body that is not JSON is ``-32700``, an unknown method
``-32601`` and bad params ``-32602``, answered with HTTP 500 as go-jsonrpc does; a method's
own error is code 1. With ``token`` set, a request without ``Authorization: Bearer <token>``
gets 401.

Methods: ``Filecoin.ChainHead`` and ``Filecoin.ChainGetGenesis`` (tipsets whose block
timestamps are ``genesis + 30 * height``), ``Filecoin.StateMarketStorageDeal [id, tsk]`` (the
``MarketDeal`` shape: ``PieceCID`` as ``{"/": ...}``, token amounts as decimal strings, -1 for
unset state epochs; a deal not in the state answers Lotus's "deal N not found - ..." error),
``Filecoin.StateMarketDeals [tsk]`` (``{"<id>": MarketDeal}``).

Deal life, driven by the test: :meth:`FakeLotus.add_deal` publishes (``SectorStartEpoch``
-1), :meth:`activate` seals, :meth:`slash` slashes, :meth:`set_height` moves the head. As on
chain, a deal leaves the state once the head passes its end epoch, or passes its start epoch
without being activated, or is removed with :meth:`remove` (after a slash).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multiformats import CID, multihash

from indexers.fakeserver import Faults, RequestLog, fake_app
from storage.deals import EPOCH_SECONDS, MAINNET_GENESIS

__all__ = ["FakeLotus", "FakeMarketDeal", "fake_piece_cid", "not_found_message"]


def not_found_message(deal_id: int) -> str:
    """Lotus's error text for a deal absent from the market state."""
    return (
        f"deal {deal_id} not found - deal may not have completed sealing before deal proposal "
        "start epoch, or deal may have been slashed"
    )


def _block_cid(height: int, index: int) -> str:
    digest = multihash.digest(f"fake block {height}/{index}".encode(), "sha2-256")
    return str(CID("base32", 1, "dag-cbor", digest))


@dataclass
class FakeMarketDeal:
    """One deal in the fake market state: its proposal and its state."""

    piece_cid: str
    piece_size: int
    provider: str
    client: str
    start_epoch: int
    end_epoch: int
    label: str = ""
    verified: bool = False
    price_per_epoch: str = "0"
    sector_start_epoch: int = -1
    sector_number: int | None = None
    last_updated_epoch: int = -1
    slash_epoch: int = -1

    def to_json(self) -> dict[str, Any]:
        """The ``MarketDeal`` JSON Lotus answers."""
        state: dict[str, Any] = {
            "SectorNumber": self.sector_number or 0,
            "SectorStartEpoch": self.sector_start_epoch,
            "LastUpdatedEpoch": self.last_updated_epoch,
            "SlashEpoch": self.slash_epoch,
        }
        return {
            "Proposal": {
                "PieceCID": {"/": self.piece_cid},
                "PieceSize": self.piece_size,
                "VerifiedDeal": self.verified,
                "Client": self.client,
                "Provider": self.provider,
                "Label": self.label,
                "StartEpoch": self.start_epoch,
                "EndEpoch": self.end_epoch,
                "StoragePricePerEpoch": self.price_per_epoch,
                "ProviderCollateral": "0",
                "ClientCollateral": "0",
            },
            "State": state,
        }


class _RpcError(Exception):
    def __init__(self, code: int, message: str, *, http_status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


@dataclass
class FakeLotus:
    """State of one fake node; ``app()`` serves it. Mutate it from tests between calls."""

    token: str | None = None
    height: int = 4_000_000
    genesis: int = MAINNET_GENESIS
    deals: dict[int, FakeMarketDeal] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)
    #: Method names called, in order (``Filecoin.ChainHead``...).
    calls: list[str] = field(default_factory=list)
    _next_id: int = 100_000

    def app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware)
        app.router.add_post("/rpc/v1", self._rpc)
        app.router.add_post("/rpc/v0", self._rpc)
        return app

    # -- knobs --

    def add_deal(
        self,
        piece_cid: str,
        piece_size: int,
        *,
        provider: str = "f01000",
        client: str = "f0100",
        start_epoch: int | None = None,
        duration: int = 518_400,
        deal_id: int | None = None,
        **fields: Any,
    ) -> int:
        """Publish a deal (not yet activated) and return its id."""
        if deal_id is None:
            deal_id = self._next_id
            self._next_id += 1
        start = self.height + 2880 if start_epoch is None else start_epoch
        self.deals[deal_id] = FakeMarketDeal(
            piece_cid=piece_cid,
            piece_size=piece_size,
            provider=provider,
            client=client,
            start_epoch=start,
            end_epoch=start + duration,
            **fields,
        )
        return deal_id

    def activate(self, deal_id: int, *, epoch: int | None = None, sector: int = 1) -> None:
        """Seal the deal: its sector starts at ``epoch`` (default: the head)."""
        deal = self.deals[deal_id]
        deal.sector_start_epoch = self.height if epoch is None else epoch
        deal.sector_number = sector
        deal.last_updated_epoch = deal.sector_start_epoch

    def slash(self, deal_id: int, *, epoch: int | None = None) -> None:
        deal = self.deals[deal_id]
        deal.slash_epoch = self.height if epoch is None else epoch
        deal.last_updated_epoch = deal.slash_epoch

    def remove(self, deal_id: int) -> None:
        """Drop a deal from the market state (the cron's clean-up after a slash)."""
        del self.deals[deal_id]

    def set_height(self, height: int) -> None:
        """Move the head; deals that expired or missed their start leave the state."""
        self.height = height
        for deal_id, deal in list(self.deals.items()):
            expired = height > deal.end_epoch
            missed = deal.sector_start_epoch < 0 and height > deal.start_epoch
            if expired or missed:
                del self.deals[deal_id]

    # -- protocol --

    def _tipset(self, height: int) -> dict[str, Any]:
        cids = [{"/": _block_cid(height, i)} for i in range(2)]
        timestamp = self.genesis + EPOCH_SECONDS * height
        blocks = [
            {
                "Miner": f"f0{1000 + i}",
                "Height": height,
                "Timestamp": timestamp,
                "ParentStateRoot": {"/": _block_cid(height, 10 + i)},
            }
            for i in range(2)
        ]
        return {"Cids": cids, "Blocks": blocks, "Height": height}

    def _deal_param(self, params: list[Any]) -> int:
        if len(params) != 2 or not isinstance(params[0], int) or isinstance(params[0], bool):
            raise _RpcError(-32602, "expected params [dealID, tipsetKey]", http_status=500)
        return int(params[0])

    def _call(self, method: str, params: list[Any]) -> Any:
        if method == "Filecoin.ChainHead":
            return self._tipset(self.height)
        if method == "Filecoin.ChainGetGenesis":
            return self._tipset(0)
        if method == "Filecoin.StateMarketStorageDeal":
            deal_id = self._deal_param(params)
            deal = self.deals.get(deal_id)
            if deal is None:
                raise _RpcError(1, not_found_message(deal_id))
            return deal.to_json()
        if method == "Filecoin.StateMarketDeals":
            if len(params) != 1:
                raise _RpcError(-32602, "expected params [tipsetKey]", http_status=500)
            return {str(deal_id): deal.to_json() for deal_id, deal in sorted(self.deals.items())}
        raise _RpcError(-32601, f"method '{method}' not found", http_status=500)

    async def _rpc(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization")
        if self.token is not None and authorization != f"Bearer {self.token}":
            return web.Response(status=401, text="missing permission to invoke method\n")
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return self._answer(None, error=_RpcError(-32700, "parse error", http_status=500))
        if not isinstance(body, dict) or body.get("jsonrpc") != "2.0" or "method" not in body:
            return self._answer(None, error=_RpcError(-32600, "invalid request", http_status=500))
        method, params, ident = str(body["method"]), body.get("params") or [], body.get("id")
        self.calls.append(method)
        try:
            result = self._call(method, params if isinstance(params, list) else [])
        except _RpcError as exc:
            return self._answer(ident, error=exc)
        return self._answer(ident, result=result)

    def _answer(
        self, ident: Any, *, result: Any = None, error: _RpcError | None = None
    ) -> web.Response:
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": ident}
        if error is not None:
            reply["error"] = {"code": error.code, "message": error.message}
            status = error.http_status
        else:
            reply["result"] = result
            status = 200
        return web.Response(status=status, text=json.dumps(reply), content_type="application/json")


def fake_piece_cid(seed: bytes) -> str:
    """A well-formed piece CID v1 for deals on pieces Forage does not know."""
    digest = bytearray(hashlib.sha256(seed).digest())
    digest[31] &= 0x3F
    return str(
        CID("base32", 1, "fil-commitment-unsealed", ("sha2-256-trunc254-padded", bytes(digest)))
    )
