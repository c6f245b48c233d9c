"""Pin with any provider of the IPFS Pinning Service API v1.0.0 (Pinata, Filebase, Cluster's
``pinsvcapi``, self-hosted services).

Spec: https://ipfs.github.io/pinning-services-api-spec/ (OpenAPI source
github.com/ipfs/pinning-services-api-spec ``ipfs-pinning-service.yaml``).

Wire facts this client relies on:

- Every request carries ``Authorization: Bearer <token>``; 401 when it is missing or wrong.
- ``POST /pins`` with ``{"cid", "name"?, "origins"?, "meta"?}`` answers 202 with a
  ``PinStatus`` ``{"requestid", "status", "created", "pin", "delegates", "info"?}``.
  ``origins`` are the multiaddrs of nodes holding the data (at most 20, each ending in
  ``/p2p/<peer id>``); the service fetches from them over bitswap.
- ``GET /pins`` filters with ``cid`` (at most **10**, comma-separated), ``status``
  (comma-separated) and pages with ``limit`` (1-1000, default 10) and ``before`` (the
  ``created`` of the oldest result seen); ``count`` is the number of matches in all.
  **Without a ``status`` filter only ``pinned`` pins are listed**, so it is always sent.
- ``GET /pins/{requestid}`` answers one ``PinStatus`` or 404; ``DELETE /pins/{requestid}``
  answers 202 with no body.
- Errors are ``{"error": {"reason": "MACHINE_CODE", "details": "..."}}``; 409
  ``INSUFFICIENT_FUNDS`` is a refusal like any other 4xx.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from storage.pinning._client import CidKey, HttpBackend, chunked, cid_key, parse_time, pin_name
from storage.pinning.base import PinRef, PinRequest, PinState

__all__ = ["PinningService"]

log = logging.getLogger(__name__)

#: ``maxItems`` of the ``cid`` filter of ``GET /pins``.
CID_FILTER_LIMIT = 10
#: ``maximum`` of ``limit``.
PAGE_LIMIT = 1000
#: ``maxItems`` of ``Pin.origins``.
MAX_ORIGINS = 20
ALL_STATUSES = ",".join(state.value for state in PinState)


class PinningService(HttpBackend):
    """A Pinning Service API provider as a ``PinningBackend``.

    ``PinningService(client, "https://api.example/psa", token=secret, origins=[...])``.
    ``origins`` should be the operator's own IPFS node multiaddrs (where the archive's blocks
    are served from); ``meta`` is sent with every pin (for example an ``app_id`` to tell
    Forage's pins from others on the same account). ``page_limit`` is the ``limit`` asked
    per ``GET /pins`` page (the spec's maximum by default).
    """

    default_name = "pinning-service"

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        token: str,
        name: str | None = None,
        origins: Sequence[str] = (),
        meta: Mapping[str, str] | None = None,
        page_limit: int = PAGE_LIMIT,
    ) -> None:
        if not 1 <= page_limit <= PAGE_LIMIT:
            raise ValueError(f"page_limit must be between 1 and {PAGE_LIMIT}, got {page_limit}")
        if not token:
            raise ValueError("a Pinning Service API backend needs an access token")
        super().__init__(client, base_url, token=token, name=name)
        if len(origins) > MAX_ORIGINS:
            raise ValueError(f"at most {MAX_ORIGINS} origins are allowed, got {len(origins)}")
        for origin in origins:
            if not origin.startswith("/") or "/p2p/" not in origin:
                raise ValueError(f"origin {origin!r} is not a multiaddr ending in /p2p/<peer id>")
        self._origins = list(dict.fromkeys(origins))
        self._meta = dict(meta or {})
        self._page_limit = page_limit

    def _server_message(self, payload: Any, text: str) -> str:
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict) and isinstance(error.get("reason"), str):
            details = error.get("details")
            return f"{error['reason']}: {details}" if details else str(error["reason"])
        return text

    def _pin_status(self, body: Any, method: str, path: str) -> PinRequest:
        """Read a ``PinStatus`` object; a missing required field is a shape error."""
        if not isinstance(body, dict):
            raise self._shape_error(method, path, "PinStatus is not an object")
        pin = body.get("pin")
        request_id = body.get("requestid")
        if not isinstance(request_id, str) or not isinstance(pin, dict):
            raise self._shape_error(method, path, "PinStatus without requestid or pin")
        try:
            state = PinState(str(body.get("status")))
        except ValueError:
            raise self._shape_error(method, path, f"status {body.get('status')!r}") from None
        info = body.get("info")
        details = info.get("status_details") if isinstance(info, dict) else None
        delegates = body.get("delegates")
        name = pin.get("name")
        return PinRequest(
            request_id,
            str(pin.get("cid", "")),
            state,
            name=name if isinstance(name, str) and name else None,
            created=parse_time(body.get("created")),
            delegates=tuple(str(d) for d in delegates) if isinstance(delegates, list) else (),
            details=str(details) if details else None,
        )

    async def pin(
        self,
        cid: str,
        *,
        name: str | None = None,
        car: AsyncIterable[bytes] | None = None,
    ) -> PinRequest:
        """``POST /pins``; the service fetches the DAG from ``origins``, so ``car`` is unread."""
        cid_key(cid)
        body: dict[str, Any] = {"cid": cid}
        if name := pin_name(name):
            body["name"] = name
        if self._origins:
            body["origins"] = self._origins
        if self._meta:
            body["meta"] = self._meta
        async with self._open("POST", "/pins", json_body=body) as response:
            status = self._pin_status(await self._json(response, "POST", "/pins"), "POST", "/pins")
        log.info("%s: pin %s requested as %s", self.name, cid, status.request_id)
        return status

    async def status(self, refs: Sequence[PinRef]) -> dict[str, PinRequest]:
        """List pins by CID, 10 CIDs per query (the spec's limit), every status, all pages.

        A request id not found that way (a listing that skips some) is fetched on its own;
        404 there means the pin is gone.
        """
        wanted: dict[str, PinRef] = {ref.request_id: ref for ref in refs}
        by_key: dict[CidKey, str] = {}
        for ref in refs:
            by_key.setdefault(cid_key(ref.cid), ref.cid)
        found: dict[str, PinRequest] = {}
        for batch in chunked(list(by_key.values()), CID_FILTER_LIMIT):
            await self._list(batch, wanted, found)
        for request_id in wanted.keys() - found.keys():
            path = f"/pins/{quote(request_id, safe='')}"
            async with self._open("GET", path, ok=(404,)) as response:
                body = await self._json(response, "GET", path)
                if response.status_code == 404:
                    continue
            found[request_id] = self._pin_status(body, "GET", path)
        return found

    async def _list(
        self, cids: Sequence[str], wanted: Mapping[str, PinRef], found: dict[str, PinRequest]
    ) -> None:
        """Page through ``GET /pins`` for ``cids``, keeping the wanted request ids."""
        params = {"cid": ",".join(cids), "status": ALL_STATUSES, "limit": str(self._page_limit)}
        while True:
            async with self._open("GET", "/pins", params=params) as response:
                page = await self._json(response, "GET", "/pins")
            results = page.get("results") if isinstance(page, dict) else None
            count = page.get("count") if isinstance(page, dict) else None
            if not isinstance(results, list) or not isinstance(count, int):
                raise self._shape_error("GET", "/pins", "PinResults without count or results")
            oldest: str | None = None
            for item in results:
                status = self._pin_status(item, "GET", "/pins")
                if status.request_id in wanted:
                    found[status.request_id] = status
                created = item.get("created")
                if isinstance(created, str) and (oldest is None or _earlier(created, oldest)):
                    oldest = created
            if count <= len(results) or oldest is None or oldest == params.get("before"):
                return
            params["before"] = oldest

    async def unpin(self, request_id: str) -> None:
        """``DELETE /pins/{requestid}``; an unknown request id counts as done."""
        if not request_id:
            raise ValueError("request_id must not be empty")
        path = f"/pins/{quote(request_id, safe='')}"
        async with self._open("DELETE", path, ok=(404,)) as response:
            await response.aread()
            if response.status_code == 404:
                log.debug("%s: request %s was already gone", self.name, request_id)


def _earlier(left: str, right: str) -> bool:
    """Compare two RFC 3339 timestamps by instant (text order fails across offsets)."""
    a, b = parse_time(left), parse_time(right)
    if a is None or b is None:
        return left < right
    return a < b
