"""A deal-making service's HTTP API, in the shape the original Forage used (Estuary's).

The 2021 Forage asked Estuary which of its uploads had deals: ``GET /content/deals?limit=&
offset=`` lists the caller's contents that have at least one deal (``id``, ``cid`` = the
payload root, ``size``, ``aggregatedFiles``...), newest first, and ``GET /content/status/{id}``
gives a content's deals: ``{"content": {...}, "deals": [{"deal": {"dealId", "miner",
"failed", "verified", "slashed", ...}, "transfer": ..., "onChainState": {"sectorStartEpoch",
"lastUpdatedEpoch", "slashEpoch"} | null}], "failuresCount": n}``. Auth is ``Authorization:
Bearer <API key>``. Source: application-research/estuary ``api/v1/handlers.go``,
``model/content_deal.go``. A deal with ``dealId`` 0 has no chain deal yet and is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

import httpx

from storage.deals.base import DealInfo
from storage.pinning._client import HttpBackend

log = logging.getLogger(__name__)

#: Contents asked for per ``/content/deals`` page.
PAGE_SIZE = 100


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class DealService(HttpBackend):
    """Client of a deal-making service; a ``DealSource`` that links deals by payload CID."""

    default_name = "dealservice"

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        token: str | None = None,
        name: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        super().__init__(client, base_url, token=token, name=name)
        self._page_size = page_size

    def _server_message(self, payload: Any, text: str) -> str:
        if isinstance(payload, Mapping):
            error = payload.get("error")
            if isinstance(error, Mapping):
                return str(error.get("details") or error.get("reason") or text)
            if isinstance(error, str):
                return error
        return text

    async def contents(self) -> AsyncIterator[Mapping[str, Any]]:
        """Every content that has deals, page by page (``/content/deals``)."""
        offset = 0
        while True:
            params = {"limit": str(self._page_size), "offset": str(offset)}
            async with self._open("GET", "/content/deals", params=params) as response:
                page = await self._json(response, "GET", "/content/deals")
            if not isinstance(page, list):
                raise self._shape_error("GET", "/content/deals", "expected a JSON array")
            for content in page:
                if isinstance(content, Mapping):
                    yield content
            if len(page) < self._page_size:
                return
            offset += len(page)

    async def content_deals(self, content: Mapping[str, Any]) -> list[DealInfo]:
        """The chain deals of one content (``/content/status/{id}``)."""
        content_id = content.get("id")
        path = f"/content/status/{content_id}"
        async with self._open("GET", path) as response:
            status = await self._json(response, "GET", path)
        if not isinstance(status, Mapping) or not isinstance(status.get("deals"), list):
            raise self._shape_error("GET", path, "expected {content, deals: [...]}")
        payload = content.get("cid") if isinstance(content.get("cid"), str) else None
        deals = []
        for entry in status["deals"]:
            deal = entry.get("deal") if isinstance(entry, Mapping) else None
            if not isinstance(deal, Mapping):
                raise self._shape_error("GET", path, "a deals entry has no deal object")
            deal_id = _positive(deal.get("dealId"))
            miner = deal.get("miner")
            if deal_id is None or not isinstance(miner, str) or not miner:
                log.debug("%s: content %s: deal without a chain id skipped", self.name, content_id)
                continue
            chain = entry.get("onChainState")
            chain = chain if isinstance(chain, Mapping) else {}
            slash = _positive(chain.get("slashEpoch"))
            deals.append(
                DealInfo(
                    deal_id=deal_id,
                    provider=miner,
                    payload_cid=payload,
                    verified=bool(deal.get("verified")),
                    activation_epoch=_positive(chain.get("sectorStartEpoch")),
                    slash_epoch=slash,
                    failed=bool(deal.get("failed")) and slash is None,
                )
            )
        return deals

    async def find_deals(
        self, *, piece_cids: Collection[str], payload_cids: Collection[str]
    ) -> AsyncIterator[DealInfo]:
        """``DealSource``: the chain deals of the contents whose CID is in ``payload_cids``."""
        wanted = frozenset(payload_cids)
        async for content in self.contents():
            if content.get("cid") in wanted:
                for deal in await self.content_deals(content):
                    yield deal
