"""The ``pin_check`` job: the batched status check of every backend's pins.

``pin_check`` asks every backend about its unfinished pins (and about pinned ones not
confirmed for ``recheck_interval``) ``batch_size`` pins per status call: the client turns
that into as few requests as its API allows (the Pinning Service API lists up to 10 CIDs
per ``GET /pins``, Kubo's ``pin/ls`` and Cluster's ``GET /pins?cids=`` take many). It then
queues pins for archives that have no row on some backend yet (a backend added to the
configuration), and schedules itself again: ``check_interval`` later while anything is in
flight, else when the oldest confirmation falls due.

A pin the backend reports ``failed`` or no longer holds is marked ``failed`` with the reason
and re-queued as a one-backend ``pin`` job (:func:`forage.pins.kinds._requeue`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from forage.config import Config, PinningConfig
from forage.db.engine import utcnow
from forage.db.models import Archive, ArchiveStatus, Pin, PinStatus
from forage.jobs.queue import Job
from forage.jobs.worker import JobContext
from forage.pins.backends import open_backends
from forage.pins.kinds import _requeue, enqueue_pins, schedule_check
from storage import BackendError, PinRef, PinRequest

__all__ = [
    "BackendCheck",
    "check_pins",
    "pin_check_job",
]

log = logging.getLogger(__name__)

UNFINISHED = (PinStatus.QUEUED, PinStatus.PINNING)
#: The reason recorded when a backend no longer holds a pin it had accepted.
GONE = "the backend no longer holds this pin"


@dataclass(slots=True)
class BackendCheck:
    """What one status check did on one backend.

    ``checked`` pins were asked about in ``batches`` status calls; ``states`` counts the
    states they are in now; ``gone`` were no longer held by the backend (now failed);
    ``requeued`` failed pins were queued again; ``queued`` archives without a pin on this
    backend got a pin job. ``error`` is why the check of this backend stopped early.
    """

    backend: str
    checked: int = 0
    batches: int = 0
    states: dict[str, int] = field(default_factory=dict)
    gone: int = 0
    requeued: int = 0
    queued: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "checked": self.checked,
            "batches": self.batches,
            "states": dict(self.states),
            "gone": self.gone,
            "requeued": self.requeued,
            "queued": self.queued,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class _Due:
    pin_id: int
    archive_id: int
    request_id: str
    cid: str
    status: PinStatus
    pinned_at: datetime | None


def _due(
    session: Session,
    backend: str,
    *,
    after: int,
    limit: int,
    recheck_before: datetime,
) -> list[_Due]:
    """The next ``limit`` pins of ``backend`` (by id, after ``after``) whose state to ask."""
    rows = session.execute(
        sa.select(Pin.id, Pin.archive_id, Pin.request_id, Archive.cid, Pin.status, Pin.pinned_at)
        .join(Archive, Archive.id == Pin.archive_id)
        .where(
            Pin.backend == backend,
            Pin.id > after,
            Pin.request_id.is_not(None),
            Archive.cid.is_not(None),
            sa.or_(
                Pin.status.in_(UNFINISHED),
                sa.and_(
                    Pin.status == PinStatus.PINNED,
                    sa.or_(Pin.checked_at.is_(None), Pin.checked_at < recheck_before),
                ),
            ),
        )
        .order_by(Pin.id)
        .limit(limit)
    ).all()
    return [_Due(*row) for row in rows]


_apply = (
    sa.update(Pin.__table__)
    .where(
        Pin.__table__.c.id == sa.bindparam("b_id"),
        Pin.__table__.c.request_id == sa.bindparam("b_request_id"),
        Pin.__table__.c.status == sa.bindparam("b_old_status"),
    )
    .values(
        status=sa.bindparam("b_status"),
        error=sa.bindparam("b_error"),
        pinned_at=sa.bindparam("b_pinned_at"),
        checked_at=sa.bindparam("b_now"),
        updated_at=sa.bindparam("b_now"),
    )
)


def _apply_statuses(
    session: Session,
    backend: str,
    batch: Sequence[_Due],
    answers: Mapping[str, PinRequest],
    *,
    pinning: PinningConfig,
    now: datetime,
    report: BackendCheck,
) -> None:
    """Write a batch's new states in one statement; re-queue the pins that failed.

    A row changed since it was read (a re-pin recorded a new request meanwhile, another check
    got there first) is left as is, and only rows this call moved to ``failed`` (their
    ``checked_at`` is this check's ``now``) are re-queued.
    """
    params = []
    failed: list[int] = []
    for due in batch:
        answer = answers.get(due.request_id)
        if answer is None:
            status, error = PinStatus.FAILED, GONE
            report.gone += 1
        else:
            status = PinStatus(answer.status.value)
            error = (
                (answer.details or "the backend could not pin it")
                if status == PinStatus.FAILED
                else None
            )
        if status == PinStatus.FAILED:
            failed.append(due.pin_id)
        pinned_at = (due.pinned_at or now) if status == PinStatus.PINNED else None
        report.states[status.value] = report.states.get(status.value, 0) + 1
        params.append(
            {
                "b_id": due.pin_id,
                "b_request_id": due.request_id,
                "b_old_status": due.status,
                "b_status": status,
                "b_error": error,
                "b_pinned_at": pinned_at,
                "b_now": now,
            }
        )
    if params:
        session.execute(_apply, params)
    if failed:
        mine = session.execute(
            sa.select(Pin.archive_id, Pin.backend).where(
                Pin.id.in_(failed), Pin.status == PinStatus.FAILED, Pin.checked_at == now
            )
        ).all()
        report.requeued += _requeue(session, [tuple(row) for row in mine], pinning=pinning, now=now)


def _queue_unpinned(session: Session, backend: str, *, limit: int) -> int:
    """Queue pin jobs for archived archives with no row on ``backend``; return how many."""
    missing = ~sa.exists().where(Pin.archive_id == Archive.id, Pin.backend == backend)
    ids = session.execute(
        sa.select(Archive.id)
        .where(Archive.status == ArchiveStatus.ARCHIVED, missing)
        .order_by(Archive.id)
        .limit(limit)
    ).scalars()
    count = 0
    for archive_id in ids:
        enqueue_pins(session, archive_id)
        count += 1
    return count


def _schedule_next(session: Session, backends: Sequence[str], *, pinning: PinningConfig) -> None:
    """Queue the next check: soon while pins are in flight, else when confirmations fall due."""
    if not backends:
        return
    mine = Pin.backend.in_(backends)
    in_flight = session.execute(
        sa.select(sa.exists().where(mine, Pin.status.in_(UNFINISHED), Pin.request_id.is_not(None)))
    ).scalar_one()
    if in_flight:
        schedule_check(session, delay=pinning.check_interval)
        return
    oldest = session.execute(
        sa.select(sa.func.min(Pin.checked_at)).where(mine, Pin.status == PinStatus.PINNED)
    ).scalar_one_or_none()
    if oldest is None:
        return
    due = (oldest + timedelta(seconds=pinning.recheck_interval) - utcnow()).total_seconds()
    schedule_check(session, delay=max(pinning.check_interval, due))


async def check_pins(
    config: Config,
    sessions: sessionmaker[Session],
    *,
    backend: str | None = None,
) -> list[BackendCheck]:
    """Run the batched status check now (on ``backend``, or on every configured backend).

    A backend that fails is reported (``error``) and the others are still checked; the next
    check is queued either way.
    """

    async def transaction(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            with sessions.begin() as session:
                return fn(session, *args, **kwargs)

        return await asyncio.to_thread(run)

    pinning = config.pinning
    now = utcnow()
    names = [backend] if backend is not None else list(pinning.backend_names)
    reports: list[BackendCheck] = []
    async with open_backends(pinning, names) as clients:
        for name, client in clients.items():
            report = BackendCheck(name)
            reports.append(report)
            after = 0
            recheck_before = now - timedelta(seconds=pinning.recheck_interval)
            while True:
                batch = await transaction(
                    _due, name, after=after, limit=pinning.batch_size, recheck_before=recheck_before
                )
                if not batch:
                    break
                after = batch[-1].pin_id
                refs = [PinRef(due.request_id, due.cid) for due in batch]
                try:
                    answers = await client.status(refs)
                except BackendError as exc:
                    report.error = str(exc)
                    log.error("pin check of %s stopped: %s", name, exc)
                    break
                report.batches += 1
                report.checked += len(batch)
                await transaction(
                    _apply_statuses, name, batch, answers, pinning=pinning, now=now, report=report
                )
            report.queued = await transaction(_queue_unpinned, name, limit=pinning.batch_size)
            log.info(
                "pin check of %s: %d pins in %d batches, now %s; %d gone, %d re-queued, "
                "%d archives queued",
                name,
                report.checked,
                report.batches,
                report.states,
                report.gone,
                report.requeued,
                report.queued,
            )
    await transaction(_schedule_next, list(pinning.backend_names), pinning=pinning)
    return reports


async def pin_check_job(ctx: JobContext, job: Job) -> None:
    """Handler of ``pin_check`` jobs: the batched status check of every backend."""
    await check_pins(ctx.config, ctx.sessionmaker)
