"""The job queue's operator side: retry dead jobs, list and count jobs, prune finished ones,
and take back at once the leases of dead worker processes on this host.

These read or rewrite ``jobs`` rows (:class:`~forage.db.models.JobRecord`) outside the life of
a leased job, which is :mod:`forage.jobs.queue`'s. Like the queue's functions they take a
``Session`` and leave committing to the caller; ``now`` may be passed for tests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.engine import utcnow
from forage.db.models import JobRecord, JobState
from forage.errors import JobError, NotFound
from forage.jobs.queue import _jobs, _queued_twin

log = logging.getLogger(__name__)


def retry(session: Session, job_id: int, *, now: datetime | None = None) -> int:
    """Queue a dead job again with fresh attempts; return the id of the job that will run.

    That is ``job_id`` itself, or an already queued job with the same ``dedup_key`` (then
    the dead job stays dead). Raises :class:`~forage.errors.NotFound` for an unknown id and
    :class:`~forage.errors.JobError` for a job that is not dead.
    """
    now = now or utcnow()
    row = session.execute(
        sa.select(_jobs.c.state, _jobs.c.dedup_key).where(_jobs.c.id == job_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"no job {job_id}")
    if row.state != JobState.DEAD:
        raise JobError(f"job {job_id} is {row.state}, not dead; only dead jobs are retried")
    if row.dedup_key is not None:
        twin = _queued_twin(session, row.dedup_key)
        if twin is not None:
            return twin
    session.execute(
        sa.update(_jobs)
        .where(_jobs.c.id == job_id)
        .values(state=JobState.QUEUED, attempts=0, run_after=now, finished_at=None, updated_at=now)
    )
    log.info("job %d queued again by an operator", job_id)
    return job_id


def retry_dead(
    session: Session, *, kind: str | None = None, now: datetime | None = None
) -> list[int]:
    """Retry every dead job (of ``kind``, if given); return the ids queued to run."""
    query = sa.select(_jobs.c.id).where(_jobs.c.state == JobState.DEAD).order_by(_jobs.c.id)
    if kind is not None:
        query = query.where(_jobs.c.kind == kind)
    ids = session.execute(query).scalars().all()
    return sorted({retry(session, job_id, now=now) for job_id in ids})


def list_jobs(
    session: Session,
    *,
    state: JobState | str | None = None,
    kind: str | None = None,
    limit: int = 100,
) -> Sequence[JobRecord]:
    """Jobs, newest first, optionally of one state and kind."""
    query = sa.select(JobRecord).order_by(JobRecord.id.desc()).limit(limit)
    if state is not None:
        query = query.where(JobRecord.state == JobState(state))
    if kind is not None:
        query = query.where(JobRecord.kind == kind)
    return session.execute(query).scalars().all()


def counts(session: Session) -> dict[tuple[str, JobState], int]:
    """How many jobs there are of each (kind, state)."""
    rows = session.execute(
        sa.select(_jobs.c.kind, _jobs.c.state, sa.func.count()).group_by(
            _jobs.c.kind, _jobs.c.state
        )
    )
    return {(kind, JobState(state)): int(n) for kind, state, n in rows}


def has_pending(
    session: Session, *, kinds: Collection[str] | None = None, now: datetime | None = None
) -> bool:
    """Whether any job is ready to run now or running anywhere (its lease may still expire).

    Jobs waiting for a later ``run_after`` do not count: a draining worker leaves them.
    """
    now = now or utcnow()
    condition = sa.or_(
        sa.and_(_jobs.c.state == JobState.QUEUED, _jobs.c.run_after <= now),
        _jobs.c.state == JobState.RUNNING,
    )
    if kinds is not None:
        condition = sa.and_(condition, _jobs.c.kind.in_(sorted(kinds)))
    return session.execute(sa.select(sa.exists().where(condition))).scalar_one()


def prune(session: Session, *, finished_before: datetime) -> int:
    """Delete ``done`` jobs finished before a time; returns how many (dead ones are kept)."""
    result = session.execute(
        sa.delete(_jobs)
        .where(_jobs.c.state == JobState.DONE, _jobs.c.finished_at < finished_before)
        .returning(_jobs.c.id)
    )
    return len(result.all())


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def expire_dead_local_leases(session: Session, *, host: str, now: datetime | None = None) -> int:
    """Expire now the leases held by worker processes of ``host`` that no longer exist.

    Owners are ``host:pid:token`` (:func:`~forage.jobs.worker.worker_owner`). A worker
    SIGKILLed and restarted at once would otherwise leave its jobs idle for a whole lease;
    expiring the lease (rather than queueing the job) makes it claimable by any worker right
    away through :func:`~forage.jobs.queue.claim`'s expired-lease path, so the killed attempt
    still counts toward ``max_attempts`` (a job that kills its worker every time is buried by
    :func:`~forage.jobs.queue.reap_expired`) and a queued twin's ``dedup_key`` is left alone.
    A live pid keeps its leases, even if the id was reused by another process: its jobs then
    wait for the lease as before. Hosts must be named uniquely per pid namespace.
    Returns how many jobs were freed.
    """
    now = now or utcnow()
    rows = session.execute(
        sa.select(_jobs.c.id, _jobs.c.kind, _jobs.c.lease_owner).where(
            _jobs.c.state == JobState.RUNNING,
            _jobs.c.lease_owner.startswith(f"{host}:", autoescape=True),
            _jobs.c.lease_expires_at > now,
        )
    ).all()
    dead: set[str] = set()
    for row in rows:
        owner_host, _, pid_text = row.lease_owner.rpartition(":")[0].rpartition(":")
        pid = int(pid_text) if pid_text.isdigit() else 0
        if owner_host == host and pid > 0 and not _pid_alive(pid):
            dead.add(row.lease_owner)
    if not dead:
        return 0
    freed = session.execute(
        sa.update(_jobs)
        .where(_jobs.c.state == JobState.RUNNING, _jobs.c.lease_owner.in_(sorted(dead)))
        .values(lease_expires_at=now, updated_at=now)
        .returning(_jobs.c.id, _jobs.c.kind, _jobs.c.lease_owner)
    ).all()
    for row in freed:
        log.warning(
            "job %d %s: its worker %s is gone; lease expired for immediate reclaim",
            row.id,
            row.kind,
            row.lease_owner,
        )
    return len(freed)
