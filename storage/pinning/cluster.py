"""Pin through an IPFS Cluster's REST API (default port 9094).

Reference: https://ipfscluster.io/documentation/reference/api/ and the sources in
github.com/ipfs-cluster/ipfs-cluster ``api/rest/restapi.go``, ``api/types.go``,
``api/add.go`` and ``adder/adderutils/adderutils.go``.

Wire facts this client relies on:

- ``POST /pins/{cid}`` takes the pin options as query parameters (``name``,
  ``replication-min``, ``replication-max``, ``origins`` comma-separated, ``meta-<key>``) and
  answers 200 with the ``Pin`` object; the cluster's IPFS peers then fetch the DAG.
- ``POST /add?format=car`` takes one multipart CAR with a single root, writes its blocks to
  the allocated peers and pins the root with the same options. With ``stream-channels=false``
  it answers a JSON array of ``{"name","cid","bytes","size","allocations"}`` and a failure is
  a 500 with ``{"code","message"}``; with the default streaming output a failure only goes
  into the ``X-Stream-Error`` HTTP trailer, which httpx does not expose.
- ``GET /pins?cids=a,b&local=false`` streams one ``GlobalPinInfo`` per line (NDJSON) for the
  CIDs asked, an untracked CID reporting ``unpinned`` on every peer; 204 when there is
  nothing. ``GET /pins/{cid}`` answers one ``GlobalPinInfo``.
- ``DELETE /pins/{cid}`` answers the removed ``Pin``, or 404
  ``pin is not part of the pinset``.
- Errors are ``{"code": <status>, "message": "..."}``.

**Which way to pin.** When the caller holds the blocks (Forage always does after an archive
job) ``pin`` uploads them with ``/add?format=car``: the cluster then has the data in one
request and nothing depends on Forage's node being reachable from the cluster's peers or
announced on the DHT, which ``POST /pins/{cid}`` needs. Without a CAR, ``POST /pins/{cid}``
with ``origins`` is used, and the peers fetch over bitswap.

Statuses are folded across peers as Cluster's own Pinning Service endpoint does
(``api/pinsvcapi/pinsvcapi.go`` ``trackerStatusToSvcStatus``): any error is ``failed``, then
any ``pin_queued`` is ``queued``, then any ``pinning`` is ``pinning``, then any ``pinned`` is
``pinned``; a CID with none of these (``unpinned``, ``remote`` only) is not held.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Sequence
from typing import Any

import httpx

from storage.pinning._client import (
    CidKey,
    HttpBackend,
    chunked,
    cid_key,
    multipart_upload,
    parse_time,
    pin_name,
)
from storage.pinning.base import PinRef, PinRequest, PinState

__all__ = ["ClusterPinning"]

log = logging.getLogger(__name__)

#: Tracker statuses in Cluster's ``TrackerStatusError`` mask (plus the composite name).
ERROR_STATUSES = frozenset({"cluster_error", "pin_error", "unpin_error", "error"})


class ClusterPinning(HttpBackend):
    """IPFS Cluster REST API as a ``PinningBackend``.

    ``ClusterPinning(client, "http://127.0.0.1:9094", token=jwt)``. ``replication_min`` and
    ``replication_max`` default to the cluster's configuration; ``origins`` (multiaddrs
    ending in ``/p2p/<peer id>``) are hints for pins made without a CAR. ``status_batch``
    caps the CIDs per ``GET /pins?cids=`` request.
    """

    default_name = "cluster"

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        token: str | None = None,
        name: str | None = None,
        replication_min: int | None = None,
        replication_max: int | None = None,
        origins: Sequence[str] = (),
        status_batch: int = 100,
    ) -> None:
        super().__init__(client, base_url, token=token, name=name)
        if status_batch < 1:
            raise ValueError(f"status_batch must be >= 1, got {status_batch}")
        for origin in origins:
            if not origin.startswith("/") or "/p2p/" not in origin:
                raise ValueError(f"origin {origin!r} is not a multiaddr ending in /p2p/<peer id>")
        self._replication = (replication_min, replication_max)
        self._origins = tuple(origins)
        self._status_batch = status_batch

    def _server_message(self, payload: Any, text: str) -> str:
        if isinstance(payload, dict) and isinstance(payload.get("message"), str):
            return str(payload["message"])
        return text

    def _pin_options(self, name: str | None) -> list[tuple[str, str]]:
        params = [("mode", "recursive")]
        if name:
            params.append(("name", name))
        minimum, maximum = self._replication
        if minimum is not None:
            params.append(("replication-min", str(minimum)))
        if maximum is not None:
            params.append(("replication-max", str(maximum)))
        return params

    async def pin(
        self,
        cid: str,
        *,
        name: str | None = None,
        car: AsyncIterable[bytes] | None = None,
    ) -> PinRequest:
        """Upload ``car`` with ``/add?format=car``, or ``POST /pins/{cid}`` without one.

        The request is ``queued``: the cluster's peers pin asynchronously; ask ``status``.
        """
        key = cid_key(cid)
        name = pin_name(name)
        params = self._pin_options(name)
        if car is None:
            if self._origins:
                params.append(("origins", ",".join(self._origins)))
            path = f"/pins/{cid}"
            async with self._open("POST", path, params=params) as response:
                body = await self._json(response, "POST", path)
            created = parse_time(body.get("timestamp")) if isinstance(body, dict) else None
            return PinRequest(cid, cid, PinState.QUEUED, name=name, created=created)
        params += [("format", "car"), ("stream-channels", "false"), ("local", "false")]
        content, headers = multipart_upload(car, filename=f"{cid}.car")
        async with self._open(
            "POST", "/add", params=params, content=content, headers=headers
        ) as response:
            added = await self._json(response, "POST", "/add")
        roots = [item.get("cid") for item in added or () if isinstance(item, dict)]
        if not any(isinstance(root, str) and cid_key(root) == key for root in roots):
            raise self._shape_error("POST", "/add", f"CAR root {roots!r} is not {cid}")
        return PinRequest(cid, cid, PinState.QUEUED, name=name)

    async def status(self, refs: Sequence[PinRef]) -> dict[str, PinRequest]:
        """Stream ``GET /pins?cids=`` for many CIDs per request; ``GET /pins/{cid}`` for gaps.

        A CID the stream did not mention (a cluster too old for ``cids``, a stream cut short)
        is asked about on its own.
        """
        by_key: dict[CidKey, list[PinRef]] = {}
        for ref in refs:
            by_key.setdefault(cid_key(ref.cid), []).append(ref)
        cids = [group[0].cid for group in by_key.values()]
        infos: dict[CidKey, dict[str, Any]] = {}
        for batch in chunked(cids, self._status_batch):
            params = [("cids", ",".join(batch)), ("local", "false")]
            async with self._open("GET", "/pins", params=params) as response:
                if response.status_code == 204:
                    continue
                async for info in self._ndjson(response, "GET", "/pins"):
                    text = info.get("cid") if isinstance(info, dict) else None
                    if isinstance(text, str) and (key := cid_key(text)) in by_key:
                        infos[key] = info
        for key, group in by_key.items():
            if key not in infos:
                path = f"/pins/{group[0].cid}"
                async with self._open("GET", path) as response:
                    info = await self._json(response, "GET", path)
                if isinstance(info, dict):
                    infos[key] = info
        result: dict[str, PinRequest] = {}
        for key, info in infos.items():
            state, details = _fold(info)
            if state is None:
                continue
            for ref in by_key[key]:
                result[ref.request_id] = PinRequest(
                    ref.request_id,
                    ref.cid,
                    state,
                    name=info.get("name") or None,
                    created=parse_time(info.get("created")),
                    details=details,
                )
        return result

    async def unpin(self, request_id: str) -> None:
        """``DELETE /pins/{cid}``; a CID the cluster does not track counts as done."""
        cid_key(request_id)
        path = f"/pins/{request_id}"
        async with self._open("DELETE", path, ok=(404,)) as response:
            await response.aread()
            if response.status_code == 404:
                log.debug("%s: %s was not in the pinset", self.name, request_id)


def _fold(info: dict[str, Any]) -> tuple[PinState | None, str | None]:
    """Fold a ``GlobalPinInfo``'s per-peer statuses into one state and an error, if any."""
    peers = info.get("peer_map")
    if not isinstance(peers, dict):
        return None, None
    statuses = {str(peer.get("status")) for peer in peers.values() if isinstance(peer, dict)}
    if statuses & ERROR_STATUSES:
        errors = sorted(
            str(peer["error"])
            for peer in peers.values()
            if isinstance(peer, dict) and peer.get("error")
        )
        return PinState.FAILED, "; ".join(errors) or None
    for status, state in (
        ("pin_queued", PinState.QUEUED),
        ("queued", PinState.QUEUED),
        ("pinning", PinState.PINNING),
        ("pinned", PinState.PINNED),
    ):
        if status in statuses:
            return state, None
    return None, None
