"""Pin in a Kubo node through its RPC API (``/api/v0``).

Reference: https://docs.ipfs.tech/reference/kubo/rpc/ and the command sources in
github.com/ipfs/kubo ``core/commands/dag/import.go`` and ``core/commands/pin/pin.go``.

Wire facts this client relies on:

- Every command is ``POST /api/v0/<cmd>``; positional arguments are repeated ``arg=`` query
  parameters, flags are query parameters. Other methods get 405.
- A command error is HTTP 500 (400 for a bad argument) with the go-ipfs-cmds body
  ``{"Message": "...", "Code": n, "Type": "error"}``; ``Code`` 2 (internal) and 3 (rate
  limited) are transient, the rest are refusals. A 5xx without that body came from something
  in front of Kubo and is transient.
- ``dag/import`` takes a multipart CAR, pins the header's roots (``pin-roots``, default true)
  and streams one ``{"Root": {"Cid": {"/": cid}, "PinErrorMsg": ""}}`` per root; a root that
  could not be pinned carries its error there, with HTTP 200.
- ``pin/ls`` with arguments fails as a whole (``path '<arg>' is not pinned``) when any one of
  them is not pinned; without arguments and with ``stream=true`` it streams one
  ``{"Cid", "Type", "Name"}`` per pin.
- ``pin/add`` of an already pinned CID re-walks its whole DAG, so a pin made by
  ``dag/import`` is confirmed with ``pin/ls``, which only reads the pin index.
- ``pin/rm`` of a CID that is not pinned fails with ``not pinned or pinned indirectly``.

Kubo pins synchronously, so the request id is the CID and a pin is ``pinned`` or absent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from storage.errors import BackendRejected
from storage.pinning._client import (
    CidKey,
    HttpBackend,
    chunked,
    cid_key,
    error_payload,
    multipart_upload,
    pin_name,
)
from storage.pinning.base import PinRef, PinRequest, PinState

__all__ = ["KuboPinning"]

log = logging.getLogger(__name__)

API = "/api/v0"
#: go-ipfs-cmds error codes that mean "try again later" (ErrImplementation, ErrRateLimited).
TRANSIENT_CODES = frozenset({2, 3})


class KuboPinning(HttpBackend):
    """Kubo RPC as a ``PinningBackend``.

    ``KuboPinning(client, "http://127.0.0.1:5001")``; pass ``token`` when the node's
    ``API.Authorizations`` requires one (sent as ``Authorization: Bearer``). ``status_batch``
    caps the CIDs per ``pin/ls`` request, keeping URLs short.
    """

    default_name = "kubo"

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        token: str | None = None,
        name: str | None = None,
        status_batch: int = 100,
    ) -> None:
        super().__init__(client, base_url, token=token, name=name)
        if status_batch < 1:
            raise ValueError(f"status_batch must be >= 1, got {status_batch}")
        self._status_batch = status_batch

    def _server_message(self, payload: Any, text: str) -> str:
        if isinstance(payload, dict) and isinstance(payload.get("Message"), str):
            return str(payload["Message"])
        return text

    def _transient(self, status: int, payload: Any) -> bool:
        if _is_command_error(payload):
            return payload.get("Code") in TRANSIENT_CODES
        return super()._transient(status, payload)

    async def _command(
        self,
        command: str,
        params: Sequence[tuple[str, str]],
        *,
        refusal_ok: bool = False,
    ) -> tuple[Any, _Refusal | None]:
        """Run a command; return (result, None), or (None, refusal) when Kubo refused it.

        With ``refusal_ok`` false a refusal is raised as ``BackendRejected`` like any error;
        callers that expect one (not pinned, missing blocks) pass true and read its message.
        """
        path = f"{API}/{command}"
        async with self._open("POST", path, params=params, ok=(400, 500)) as response:
            if response.status_code >= 400:
                await response.aread()
                error = self._error("POST", path, response)
                payload = error_payload(response)
                if refusal_ok and _is_command_error(payload) and isinstance(error, BackendRejected):
                    return None, _Refusal(self._scrub(str(payload.get("Message", ""))), error)
                raise error
            return await self._json(response, "POST", path), None

    async def pin(
        self,
        cid: str,
        *,
        name: str | None = None,
        car: AsyncIterable[bytes] | None = None,
    ) -> PinRequest:
        """Import ``car`` with its roots pinned and confirm, or ``pin/add`` when there is none.

        When ``car`` does not list ``cid`` among its roots, its blocks are still imported and
        ``cid`` is then pinned with ``pin/add`` from them. ``dag/import`` takes no pin name, so
        ``name`` only reaches Kubo on the ``pin/add`` path.
        """
        key = cid_key(cid)
        name = pin_name(name)
        if car is not None:
            roots = await self._dag_import(car)
            if key in roots:
                pin_error = roots[key]
                if pin_error:
                    log.info("%s: import of %s did not pin: %s", self.name, cid, pin_error)
                    return PinRequest(cid, cid, PinState.FAILED, name=name, details=pin_error)
                try:
                    pinned = key in await self._pinned_among([cid])
                except _NotPinned:
                    pinned = False
                if pinned:
                    return PinRequest(cid, cid, PinState.PINNED, name=name)
                log.info("%s: %s imported but not pinned; pinning it", self.name, cid)
        return await self._pin_add(cid, name)

    async def _dag_import(self, car: AsyncIterable[bytes]) -> dict[CidKey, str]:
        """Stream ``car`` to ``dag/import``; map each root to its pin error ("" when pinned)."""
        path = f"{API}/dag/import"
        body, headers = multipart_upload(car, filename="archive.car")
        roots: dict[CidKey, str] = {}
        params = [("pin-roots", "true"), ("stats", "false")]
        async with self._open(
            "POST", path, params=params, content=body, headers=headers
        ) as response:
            async for event in self._ndjson(response, "POST", path):
                root = event.get("Root") if isinstance(event, dict) else None
                if not isinstance(root, dict):
                    continue
                link = root.get("Cid")
                text = link.get("/") if isinstance(link, dict) else None
                if not isinstance(text, str):
                    raise self._shape_error("POST", path, f"root without a CID: {root!r}")
                roots[cid_key(text)] = str(root.get("PinErrorMsg") or "")
        return roots

    async def _pin_add(self, cid: str, name: str | None) -> PinRequest:
        params = [("arg", cid), ("recursive", "true")]
        if name:
            params.append(("name", name))
        result, refusal = await self._command("pin/add", params, refusal_ok=True)
        if refusal is not None:
            log.info("%s: pin/add %s failed: %s", self.name, cid, refusal.message)
            return PinRequest(cid, cid, PinState.FAILED, name=name, details=refusal.message)
        pins = result.get("Pins") if isinstance(result, dict) else None
        if not isinstance(pins, list) or cid_key(cid) not in {cid_key(str(p)) for p in pins}:
            raise self._shape_error("POST", f"{API}/pin/add", f"Pins={pins!r}")
        return PinRequest(cid, cid, PinState.PINNED, name=name)

    async def status(self, refs: Sequence[PinRef]) -> dict[str, PinRequest]:
        """Ask ``pin/ls`` about many CIDs per request; one stream of all pins if any is missing.

        Kubo fails a keyed ``pin/ls`` outright when one CID is not pinned, so the first such
        failure switches to a single streamed listing of every recursive pin, filtered here,
        which answers for all the CIDs left: at most one extra request per call.
        """
        by_key: dict[CidKey, list[PinRef]] = {}
        for ref in refs:
            by_key.setdefault(cid_key(ref.cid), []).append(ref)
        cids = [group[0].cid for group in by_key.values()]
        pinned: set[CidKey] = set()
        for batch in chunked(cids, self._status_batch):
            try:
                pinned |= await self._pinned_among(batch)
            except _NotPinned:
                pinned = await self._pinned_in_listing(set(by_key))
                break
        return {
            ref.request_id: PinRequest(ref.request_id, ref.cid, PinState.PINNED)
            for key in pinned
            for ref in by_key[key]
        }

    async def _pinned_among(self, cids: Iterable[str]) -> set[CidKey]:
        """Keys of ``cids`` pinned recursively; ``_NotPinned`` when Kubo says one is not."""
        params = [("arg", cid) for cid in cids]
        params.append(("type", "recursive"))
        result, refusal = await self._command("pin/ls", params, refusal_ok=True)
        if refusal is not None:
            if "is not pinned" in refusal.message:
                raise _NotPinned(refusal.message)
            raise refusal.error
        keys = result.get("Keys") if isinstance(result, dict) else None
        if not isinstance(keys, dict):
            raise self._shape_error("POST", f"{API}/pin/ls", "no Keys object")
        return {
            cid_key(text)
            for text, info in keys.items()
            if isinstance(info, dict) and info.get("Type") == "recursive"
        }

    async def _pinned_in_listing(self, wanted: set[CidKey]) -> set[CidKey]:
        """Stream every recursive pin and keep the wanted ones (constant memory)."""
        path = f"{API}/pin/ls"
        found: set[CidKey] = set()
        params = [("type", "recursive"), ("stream", "true")]
        async with self._open("POST", path, params=params) as response:
            async for item in self._ndjson(response, "POST", path):
                text = item.get("Cid") if isinstance(item, dict) else None
                if isinstance(text, str) and (key := cid_key(text)) in wanted:
                    found.add(key)
        return found

    async def unpin(self, request_id: str) -> None:
        """``pin/rm``; a CID that is not pinned counts as done."""
        cid_key(request_id)
        params = [("arg", request_id), ("recursive", "true")]
        _, refusal = await self._command("pin/rm", params, refusal_ok=True)
        if refusal is None:
            return
        if "not pinned" not in refusal.message:
            raise refusal.error
        log.debug("%s: %s was not pinned", self.name, request_id)


def _is_command_error(payload: Any) -> bool:
    """Whether a body is go-ipfs-cmds' error value (``"Type": "error"``)."""
    return isinstance(payload, dict) and payload.get("Type") == "error"


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A command Kubo refused: its own message, and the error to raise if unexpected."""

    message: str
    error: BackendRejected


class _NotPinned(Exception):
    """Internal: a keyed ``pin/ls`` named a CID that is not pinned."""
