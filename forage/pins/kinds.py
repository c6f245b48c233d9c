"""Pin job kinds, queueing them, and re-queueing the pins that failed.

Archives are pinned on the configured pinning backends (:mod:`forage.pins.backends`), and their
pin rows kept true, by two job kinds:

- ``pin`` ``{"archive_id": A}`` (queued by :func:`enqueue_pins` in the transaction that marks
  the archive archived) creates a ``pins`` row per configured backend and asks each backend to
  pin the archive's CID; ``{"archive_id": A, "backend": B}`` does it for one backend (a
  re-pin). See :mod:`forage.pins.pin`.
- ``pin_check`` (queued by :func:`schedule_check`) asks every backend about its unfinished
  pins, queues pins for archives that have no row on some backend yet, and schedules itself
  again. See :mod:`forage.pins.check`.

A pin that fails (the backend reports ``failed``, no longer holds it, or refused it at once)
is marked ``failed`` with the backend's reason and re-queued as a one-backend ``pin`` job, at
most ``max_repins`` times, ``check_interval * 2**(n-1)`` seconds after its n-th failure
(:func:`_requeue`). The count is the number of such jobs in the queue's history (their
``dedup_key`` is ``pin:<archive>:<backend>``), so pruning finished jobs starts it again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.config import PinningConfig
from forage.db.engine import utcnow
from forage.db.models import JobRecord
from forage.jobs import queue as jobs

__all__ = [
    "PIN",
    "PIN_CHECK",
    "enqueue_pins",
    "schedule_check",
]

log = logging.getLogger(__name__)

PIN = "pin"
PIN_CHECK = "pin_check"


def _pin_key(archive_id: int, backend: str | None = None) -> str:
    return f"pin:{archive_id}" if backend is None else f"pin:{archive_id}:{backend}"


def enqueue_pins(session: Session, archive_id: int, *, now: datetime | None = None) -> int:
    """Queue the pinning of a freshly archived archive on every configured backend.

    Call it in the transaction that marks the archive ``archived``; it needs no configuration
    (the job reads the backends when it runs). Returns the job's id.
    """
    return jobs.enqueue(
        session, PIN, {"archive_id": archive_id}, dedup_key=_pin_key(archive_id), now=now
    )


def schedule_check(session: Session, *, delay: float = 0.0, now: datetime | None = None) -> int:
    """Queue the batched status check ``delay`` seconds from now (or sooner, if one is
    already queued for earlier: there is only ever one waiting)."""
    now = now or utcnow()
    return jobs.enqueue(
        session,
        PIN_CHECK,
        {},
        dedup_key=PIN_CHECK,
        run_after=now + timedelta(seconds=delay),
        now=now,
    )


def _requeue(
    session: Session,
    failures: Iterable[tuple[int, str]],
    *,
    pinning: PinningConfig,
    now: datetime,
) -> int:
    """Queue a re-pin for each failed (archive, backend) with re-pins left; return how many."""
    keys = {
        _pin_key(archive_id, backend): (archive_id, backend) for archive_id, backend in failures
    }
    if not keys or pinning.max_repins == 0:
        return 0
    counts: dict[str, int] = dict(
        session.execute(
            sa.select(JobRecord.dedup_key, sa.func.count())
            .where(JobRecord.kind == PIN, JobRecord.dedup_key.in_(sorted(keys)))
            .group_by(JobRecord.dedup_key)
        ).all()
    )
    queued = 0
    for key, (archive_id, backend) in keys.items():
        done = counts.get(key, 0)
        if done >= pinning.max_repins:
            log.warning(
                "pin of archive %d on %s failed after %d re-pins; giving up",
                archive_id,
                backend,
                done,
            )
            continue
        delay = pinning.check_interval * 2**done
        jobs.enqueue(
            session,
            PIN,
            {"archive_id": archive_id, "backend": backend},
            dedup_key=key,
            run_after=now + timedelta(seconds=delay),
            now=now,
        )
        log.info(
            "pin of archive %d on %s re-queued (%d of %d) in %.0f s",
            archive_id,
            backend,
            done + 1,
            pinning.max_repins,
            delay,
        )
        queued += 1
    return queued
