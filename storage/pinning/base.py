"""The pinning contract: one ``PinningBackend`` Protocol and the values it speaks.

Three implementations fit it: Kubo's RPC (``storage.pinning.kubo``), the IPFS Cluster REST
API (``storage.pinning.cluster``) and any IPFS Pinning Service API provider
(``storage.pinning.service``). The status vocabulary is the Pinning Service API's
(https://ipfs.github.io/pinning-services-api-spec/, ``Status``: queued, pinning, pinned,
failed); each backend maps its own states onto it.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = ["PinRef", "PinRequest", "PinState", "PinningBackend"]


class PinState(enum.StrEnum):
    """Where a pin request stands, in the Pinning Service API's words."""

    QUEUED = "queued"
    PINNING = "pinning"
    PINNED = "pinned"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PinRef:
    """What a caller stores to ask about a pin later: the backend's request id and the CID.

    Kubo and Cluster use the CID as the request id; a Pinning Service issues an opaque
    ``requestid``. Batch status needs the CID too, because the Pinning Service API lists pins
    by CID, not by request id.
    """

    request_id: str
    cid: str


@dataclass(frozen=True, slots=True)
class PinRequest:
    """One pin request as a backend reports it.

    ``details`` is the backend's explanation for ``queued``/``pinning``/``failed``
    (``info.status_details``, a Cluster peer's error, Kubo's pin error) or ``None``.
    ``delegates`` are the multiaddrs a Pinning Service wants the data sent to (empty
    elsewhere). ``created`` is the service's timestamp, when it gives one.
    """

    request_id: str
    cid: str
    status: PinState
    name: str | None = None
    created: datetime | None = None
    delegates: tuple[str, ...] = ()
    details: str | None = None

    @property
    def ref(self) -> PinRef:
        return PinRef(self.request_id, self.cid)


@runtime_checkable
class PinningBackend(Protocol):
    """A place that keeps DAGs pinned: pin, ask the status of many, unpin.

    Contract for implementations:

    - ``name`` names the configured backend in errors and logs (never a secret).
    - ``pin(cid, name=, car=)`` asks the backend to keep ``cid`` (recursively) and returns the
      request as the backend now sees it (``pinned`` at once for Kubo, usually ``queued`` for a
      Pinning Service or Cluster). ``car`` is the DAG's blocks as a CARv1 byte stream, read
      once: a backend that can receive blocks (Kubo, Cluster) uploads them; a Pinning Service
      cannot, ignores it and fetches by CID from its configured ``origins``. Pinning a CID
      again is harmless. A pin the backend accepted but could not complete is returned with
      status ``failed`` and ``details``, not raised.
    - ``status(refs)`` answers for many pins with as few requests as the API allows. The result
      maps ``request_id`` to the current ``PinRequest``; a request the backend no longer holds
      (unpinned, garbage-collected, never made) is absent from it.
    - ``unpin(request_id)`` removes the pin; removing one that is already gone succeeds.

    Every method raises ``InvalidCID`` for a malformed CID before any request,
    ``BackendUnavailable`` (``retry_after`` set from ``Retry-After`` when sent) for refused or
    reset connections, timeouts, 5xx and 429, and ``BackendRejected`` for any other refusal
    (401, 403, 4xx) with the server's message. Tokens never appear in messages, logs or reprs.
    """

    @property
    def name(self) -> str: ...

    async def pin(
        self,
        cid: str,
        *,
        name: str | None = None,
        car: AsyncIterable[bytes] | None = None,
    ) -> PinRequest: ...

    async def status(self, refs: Sequence[PinRef]) -> dict[str, PinRequest]: ...

    async def unpin(self, request_id: str) -> None: ...
