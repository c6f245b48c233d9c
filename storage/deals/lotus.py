"""A Lotus node's JSON-RPC 2.0 API: chain head and genesis, market deals one by one or all.

Transport: ``POST <url>`` (``http://host:1234/rpc/v1``) with ``{"jsonrpc": "2.0", "method":
"Filecoin.<Name>", "params": [...], "id": n}``, ``Authorization: Bearer <JWT>`` when a token is
set; the answer is ``{"result": ...}`` or ``{"error": {"code", "message"}}``. Methods:
``Filecoin.ChainHead``, ``Filecoin.ChainGetGenesis``, ``Filecoin.StateMarketStorageDeal``
(``[deal id, tipset key]``), ``Filecoin.StateMarketDeals`` (``[tipset key]``, every deal on
chain: gigabytes on mainnet, so it is parsed as a stream with ijson and filtered as it goes).
A ``null`` tipset key means the head. Spec:
https://github.com/filecoin-project/lotus/blob/master/documentation/en/api-methods-v1-stable.md
and https://www.jsonrpc.org/specification.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

import httpx
import ijson  # type: ignore[import-untyped]

from storage.deals.base import ChainHead, DealInfo, parse_market_deal
from storage.errors import BackendRejected, BackendUnavailable
from storage.pinning._client import HttpBackend

log = logging.getLogger(__name__)

#: JSON-RPC 2.0 codes that mean the request itself is wrong (retrying will not help).
_REQUEST_ERRORS = frozenset({-32700, -32600, -32601, -32602})
#: How Lotus (and Forest) say a deal is not in the market state: expired, slashed, or never
#: activated before its start epoch.
_DEAL_NOT_FOUND = "not found"


class _AsyncBody:
    """The ``async read(n)`` file ijson wants, over an httpx response stream."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_bytes()
        self._buffer = b""

    async def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = await anext(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


class LotusClient(HttpBackend):
    """Client of one Lotus (or Forest, or Glif) JSON-RPC endpoint; also a ``DealSource``.

    ``url`` is the full RPC endpoint (``.../rpc/v1``). With ``scan`` false, ``find_deals``
    yields nothing: the node is then only asked about deals by id (``market_deal``), which
    suits a public gateway where ``StateMarketDeals`` is too big to fetch.
    """

    default_name = "lotus"

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        token: str | None = None,
        name: str | None = None,
        scan: bool = True,
    ) -> None:
        super().__init__(client, url, token=token, name=name)
        self._ids = itertools.count(1)
        self.scan = scan

    def _body(self, method: str, params: list[Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "method": method, "params": params, "id": next(self._ids)}

    def _rpc_error(self, method: str, error: Any) -> BackendRejected | BackendUnavailable:
        code = error.get("code") if isinstance(error, Mapping) else None
        message = str(error.get("message", "")) if isinstance(error, Mapping) else str(error)
        text = self._scrub(f"{method}: error {code}: {message}"[:300])
        if code in _REQUEST_ERRORS:
            return BackendRejected(self.name, text)
        return BackendUnavailable(self.name, text)

    async def call(self, method: str, params: list[Any]) -> Any:
        """Call ``method`` and return its ``result``; an ``error`` answer raises."""
        async with self._open("POST", "", json_body=self._body(method, params), ok={500}) as resp:
            answer = await self._json(resp, "POST", method)
        if not isinstance(answer, Mapping) or ("result" not in answer and "error" not in answer):
            if resp.status_code >= 400:
                raise BackendUnavailable(self.name, f"{method}: HTTP {resp.status_code}")
            raise self._shape_error("POST", method, "not a JSON-RPC 2.0 response")
        if answer.get("error") is not None:
            raise self._rpc_error(method, answer["error"])
        return answer.get("result")

    async def chain_head(self) -> ChainHead:
        """The current head tipset's height, timestamp and block CIDs."""
        head = await self.call("Filecoin.ChainHead", [])
        return self._tipset(head, "Filecoin.ChainHead")

    async def genesis_timestamp(self) -> int:
        """Unix time of the chain's genesis block (what epoch dates count from)."""
        genesis = await self.call("Filecoin.ChainGetGenesis", [])
        return self._tipset(genesis, "Filecoin.ChainGetGenesis").timestamp

    def _tipset(self, tipset: Any, method: str) -> ChainHead:
        try:
            blocks = tipset["Blocks"]
            return ChainHead(
                height=int(tipset["Height"]),
                timestamp=int(blocks[0]["Timestamp"]),
                cids=tuple(str(cid["/"]) for cid in tipset.get("Cids") or ()),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise self._shape_error("POST", method, f"not a tipset: {exc!r}") from exc

    async def market_deal(self, deal_id: int) -> DealInfo | None:
        """One deal from the market state, or ``None`` when the chain no longer (or never)
        had it: expired, slashed, or not activated before its start epoch."""
        method = "Filecoin.StateMarketStorageDeal"
        try:
            deal = await self.call(method, [deal_id, None])
        except BackendUnavailable as exc:
            if _DEAL_NOT_FOUND in str(exc) and f"deal {deal_id}" in str(exc):
                return None
            raise
        try:
            return parse_market_deal(deal_id, deal)
        except (ValueError, AttributeError) as exc:
            raise self._shape_error("POST", method, str(exc)) from exc

    async def market_deals(
        self, *, piece_cids: Collection[str] | None = None
    ) -> AsyncIterator[DealInfo]:
        """Every deal in the market state (those holding ``piece_cids`` when given), streamed."""
        method = "Filecoin.StateMarketDeals"
        wanted = None if piece_cids is None else frozenset(piece_cids)
        body = self._body(method, [None])
        async with self._open("POST", "", json_body=body, ok={500}) as response:
            error: dict[str, Any] = {}
            key: str | None = None
            builder: ijson.ObjectBuilder | None = None
            try:
                async for prefix, event, value in ijson.parse_async(
                    _AsyncBody(response), use_float=True
                ):
                    if prefix == "result" and event == "map_key":
                        key, builder = value, ijson.ObjectBuilder()
                    elif builder is not None and key is not None and prefix.startswith("result."):
                        builder.event(event, value)
                        if prefix == f"result.{key}" and event not in ("start_map", "map_key"):
                            info = self._market_entry(key, builder.value)
                            builder = None
                            if info is not None and (wanted is None or info.piece_cid in wanted):
                                yield info
                    elif prefix in ("error.code", "error.message"):
                        error[prefix[6:]] = value
            except ijson.JSONError as exc:
                raise BackendUnavailable(self.name, f"{method}: malformed JSON: {exc}") from exc
            if error:
                raise self._rpc_error(method, error)

    def _market_entry(self, key: str, deal: Any) -> DealInfo | None:
        """One ``{"<deal id>": MarketDeal}`` entry; a malformed one is logged and skipped, so
        one odd deal among millions does not stop the scan."""
        try:
            return parse_market_deal(int(key), deal)
        except (ValueError, AttributeError, TypeError) as exc:
            log.warning("%s: skipping malformed market deal %r: %s", self.name, key, exc)
            return None

    async def find_deals(
        self, *, piece_cids: Collection[str], payload_cids: Collection[str]
    ) -> AsyncIterator[DealInfo]:
        """``DealSource``: scan the market state for deals of ``piece_cids`` (if ``scan``)."""
        if not self.scan or not piece_cids:
            return
        async for deal in self.market_deals(piece_cids=piece_cids):
            yield deal
