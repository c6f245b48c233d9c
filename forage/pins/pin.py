"""The ``pin`` job: request the pins of one archive, and record what the backends answer.

``pin`` ``{"archive_id": A}`` (queued by :func:`~forage.pins.kinds.enqueue_pins` in the
transaction that marks the archive archived) creates a ``pins`` row per configured backend and
asks each backend to pin the archive's CID; ``{"archive_id": A, "backend": B}`` does it for one
backend (a re-pin). Kubo and Cluster receive the archive's blocks as a CARv1 streamed from the
blockstore in constant memory (:func:`~forage.pins.backends.car_stream`); a Pinning Service
fetches them from its ``origins``. The backend's request id is recorded with the state it
reports. A job that runs again (after a kill) requests only rows that have none recorded: a
request is repeated only when the kill fell between the backend's answer and the commit that
records it.

A pin the backend refuses at once (it reports ``failed``) is marked ``failed`` with the
backend's reason and re-queued (:func:`forage.pins.kinds._requeue`). Errors: a backend that
is unavailable (``BackendUnavailable``) leaves the row queued with the error noted and the job
retried by the queue (after the server's ``Retry-After`` when it sent one; on the job's last
attempt the row is marked failed); a refusal (``BackendRejected``: bad token, 4xx) or an
archive whose blocks are gone from the blockstore marks the row failed and the job dead.
Tokens reach the clients only; their messages are scrubbed of them, and so is everything
recorded here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from forage.archive.blocks import open_blockstore
from forage.config import PinningConfig
from forage.db.engine import utcnow
from forage.db.models import Archive, ArchiveStatus, Artifact, Pin, PinStatus
from forage.errors import PermanentJobError
from forage.jobs import queue as jobs
from forage.jobs.queue import Job
from forage.jobs.worker import JobContext
from forage.pins.backends import UPLOADING_TYPES, car_stream, open_backends
from forage.pins.kinds import _requeue, schedule_check
from storage import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    BlockFormatError,
    BlockNotFound,
    BlockSource,
    BlockstoreError,
    InvalidCID,
    PinningBackend,
    PinRequest,
)
from storage import IntegrityError as BlockIntegrityError

__all__ = [
    "pin_archive",
    "pin_job",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Target:
    """One (archive, backend) pin to request, as loaded before the request."""

    pin_id: int
    archive_id: int
    backend: str
    cid: str
    name: str
    request_id: str | None


def _insert_missing_pins(session: Session, archive_id: int, backends: Sequence[str]) -> None:
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    for backend in backends:
        session.execute(
            dialect.insert(Pin.__table__)
            .values(archive_id=archive_id, backend=backend, status=PinStatus.QUEUED)
            .on_conflict_do_nothing(index_elements=["archive_id", "backend"])
        )


def _prepare(
    session: Session, archive_id: int, backends: Sequence[str], *, repin: bool
) -> list[_Target] | None:
    """Make sure each backend has a row for the archive; return the rows to request.

    ``None`` when the archive is gone or not archived. A row is requested when it has no
    request yet; a re-pin (``repin``) also requests a failed one.
    """
    archive = session.execute(
        sa.select(Archive.id, Archive.cid, Archive.status, Artifact.filename)
        .join(Artifact, Artifact.id == Archive.artifact_id)
        .where(Archive.id == archive_id)
    ).one_or_none()
    if archive is None or archive.status != ArchiveStatus.ARCHIVED or archive.cid is None:
        return None
    _insert_missing_pins(session, archive_id, backends)
    rows = session.execute(
        sa.select(Pin.id, Pin.backend, Pin.request_id, Pin.status)
        .where(Pin.archive_id == archive_id, Pin.backend.in_(backends))
        .order_by(Pin.id)
    ).all()
    return [
        _Target(
            pin_id=row.id,
            archive_id=archive_id,
            backend=row.backend,
            cid=archive.cid,
            name=f"{archive_id}-{archive.filename}",
            request_id=row.request_id,
        )
        for row in rows
        if (row.status == PinStatus.QUEUED and row.request_id is None)
        or (repin and row.status == PinStatus.FAILED)
    ]


def _record_result(
    session: Session,
    target: _Target,
    result: PinRequest,
    *,
    pinning: PinningConfig,
    now: datetime,
) -> None:
    """Store what the backend answered to a pin request; re-queue it if it failed."""
    status = PinStatus(result.status.value)
    session.execute(
        sa.update(Pin)
        .where(Pin.id == target.pin_id)
        .values(
            request_id=result.request_id,
            status=status,
            error=(result.details or "the backend could not pin it")
            if status == PinStatus.FAILED
            else None,
            pinned_at=now if status == PinStatus.PINNED else None,
            checked_at=now,
            updated_at=now,
        )
    )
    if status == PinStatus.FAILED:
        _requeue(session, [(target.archive_id, target.backend)], pinning=pinning, now=now)
    delay = pinning.recheck_interval if status == PinStatus.PINNED else pinning.check_interval
    schedule_check(session, delay=delay, now=now)


def _record_error(
    session: Session,
    target: _Target,
    error: str,
    *,
    failed: bool,
    requeue: bool,
    pinning: PinningConfig,
    now: datetime,
) -> None:
    """Note an error on the row; ``failed`` marks it failed (and maybe re-queues it)."""
    values: dict[str, Any] = {"error": error, "updated_at": now}
    if failed:
        values["status"] = PinStatus.FAILED
        values["pinned_at"] = None
    session.execute(sa.update(Pin).where(Pin.id == target.pin_id).values(**values))
    if failed and requeue:
        _requeue(session, [(target.archive_id, target.backend)], pinning=pinning, now=now)


async def pin_archive(
    ctx: JobContext,
    archive_id: int,
    *,
    backend: str | None = None,
    last_attempt: bool = False,
) -> dict[str, PinStatus]:
    """Request the pins of one archive (on ``backend``, or on every configured backend).

    Returns the state each requested backend reported. Each backend is handled on its own; if
    some failed, the first transient error is raised afterwards (so the job is retried and
    only those are asked again), else the first refusal. ``last_attempt`` marks rows whose
    backend is still unavailable as failed.
    """
    pinning = ctx.config.pinning
    if backend is not None and backend not in pinning.backend_names:
        log.warning(
            "archive %d: backend %s is no longer configured; not pinning", archive_id, backend
        )
        return {}
    names = [backend] if backend is not None else list(pinning.backend_names)
    if not names:
        log.debug("archive %d: no pinning backend configured", archive_id)
        return {}
    targets = await ctx.transaction(_prepare, archive_id, names, repin=backend is not None)
    if targets is None:
        log.info("archive %d is gone or not archived; nothing to pin", archive_id)
        return {}
    if not targets:
        return {}
    source = ctx.blockstore or open_blockstore(ctx.config)
    outcome: dict[str, PinStatus] = {}
    transient: list[BaseException] = []
    refused: list[BaseException] = []
    async with open_backends(pinning, [t.backend for t in targets]) as clients:
        for target in targets:
            kind = pinning.backend(target.backend).type
            try:
                status = await _submit(ctx, clients[target.backend], kind, target, source)
            except (BackendUnavailable, BlockstoreError) as exc:
                transient.append(exc)
                await ctx.transaction(
                    _record_error,
                    target,
                    jobs.describe_error(exc),
                    failed=last_attempt,
                    requeue=True,
                    pinning=pinning,
                    now=utcnow(),
                )
                log.warning("archive %d: %s unavailable: %s", archive_id, target.backend, exc)
            except (BackendRejected, InvalidCID, PermanentJobError) as exc:
                refused.append(exc)
                await ctx.transaction(
                    _record_error,
                    target,
                    jobs.describe_error(exc),
                    failed=True,
                    requeue=False,
                    pinning=pinning,
                    now=utcnow(),
                )
                log.error("archive %d: %s cannot pin it: %s", archive_id, target.backend, exc)
            else:
                outcome[target.backend] = status
    if transient or refused:
        raise (transient or refused)[0]
    return outcome


async def _submit(
    ctx: JobContext,
    client: PinningBackend,
    kind: str,
    target: _Target,
    source: BlockSource,
) -> PinStatus:
    """Send one pin request and record the answer; return the state the backend reported."""
    car = car_stream(source, target.cid) if kind in UPLOADING_TYPES else None
    try:
        result = await client.pin(target.cid, name=target.name, car=car)
    except (BlockNotFound, BlockIntegrityError, BlockFormatError) as exc:
        raise PermanentJobError(
            f"archive {target.archive_id} ({target.cid}) cannot be read from the blockstore: "
            f"{exc}; archive it again"
        ) from exc
    pinning = ctx.config.pinning
    await ctx.transaction(_record_result, target, result, pinning=pinning, now=utcnow())
    log.info(
        "archive %d: %s has pin %s as %s (%s)",
        target.archive_id,
        target.backend,
        target.cid,
        result.request_id,
        result.status.value,
    )
    if target.request_id is not None and target.request_id != result.request_id:
        try:
            await client.unpin(target.request_id)
        except BackendError as exc:
            log.warning(
                "%s: could not remove the replaced request %s: %s",
                target.backend,
                target.request_id,
                exc,
            )
    return PinStatus(result.status.value)


async def pin_job(ctx: JobContext, job: Job) -> None:
    """Handler of ``pin`` jobs: ``{"archive_id": A}`` or ``{"archive_id": A, "backend": B}``."""
    archive_id = int(job.payload["archive_id"])
    backend = job.payload.get("backend")
    await pin_archive(
        ctx,
        archive_id,
        backend=str(backend) if backend is not None else None,
        last_attempt=job.attempt >= job.max_attempts,
    )
