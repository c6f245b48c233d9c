"""The durable job queue: ``jobs`` rows (:class:`~forage.db.models.JobRecord`) leased by workers.

Contract for job authors (STYLE.md house rule 10):

- **Payloads carry ids and keys, never objects or bytes** (``{"artifact_id": 42}``,
  ``{"ecosystem": "npm", "name": "lodash"}``): the handler reloads the rows it needs.
- **Handlers are idempotent and safe after a kill.** A job runs *at least once*: a worker
  killed mid-job (SIGKILL, power loss) loses its lease, and once the lease expires another
  worker runs the job again from the start. Check what is already done, write results in one
  transaction, and make a second run a no-op.
- **Enqueue in the cause's transaction** (:func:`enqueue` takes the caller's session), so a job
  exists if and only if the rows that caused it were committed.

Life of a job: ``queued`` (ready once ``run_after`` has passed) -> :func:`claim` makes it
``running`` under a lease (owner and expiry) and counts an attempt -> :func:`complete` makes
it ``done``; :func:`fail` puts it back to ``queued`` with capped exponential backoff and
jitter, or makes it ``dead`` when attempts are used up or the error is permanent
(:class:`~forage.errors.PermanentJobError` and the permanent errors of ``indexers`` and
``storage``). A dead job keeps its last error until an operator
:func:`~forage.jobs.admin.retry`\\ s it. Workers
extend their leases with :func:`heartbeat`; an expired lease makes the job claimable again,
and :func:`reap_expired` buries a job whose lease expired on its last attempt.

Claiming is one statement per kind of ready job (expired leases, then due queued jobs), each
reading its index in order. On PostgreSQL: ``WITH claimable AS MATERIALIZED (SELECT id ...
LIMIT n FOR UPDATE SKIP LOCKED) UPDATE jobs ... FROM claimable ... RETURNING ...``: workers
on many machines never wait for each other nor take the same row
(https://www.postgresql.org/docs/current/sql-select.html#SQL-FOR-UPDATE-SHARE); the CTE
rather than ``WHERE id IN (subquery)``, which the planner may re-run and so lock more than
``n`` rows. On SQLite: ``UPDATE jobs ... WHERE id IN (SELECT id ... LIMIT n) RETURNING ...``,
where the write transaction (``BEGIN IMMEDIATE``) already serializes claimers.

``dedup_key`` is unique among queued jobs: enqueueing the same key again while a job waits
returns that job (moving its ``run_after`` earlier if asked) instead of adding one; a job
already running does not absorb new requests, so a change arriving mid-run is not lost.

:func:`enqueue_many` and :func:`complete_many` are the batch forms of :func:`enqueue` and
:func:`complete`: one statement for many jobs, for callers that queue or finish them by the
hundred (an import's archive jobs, a feed page's imports, a worker's finished jobs).

All functions take a ``Session`` and leave committing to the caller (``with
sessionmaker.begin() as session: ...``); ``now`` may be passed for tests and defaults to the
current UTC time. The operator's side (retry dead jobs, list, count, prune) and
:func:`~forage.jobs.admin.has_pending` are in :mod:`forage.jobs.admin`.
"""

from __future__ import annotations

import functools
import json
import logging
import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from forage.config import JobsConfig
from forage.db.engine import utcnow
from forage.db.models import JobRecord, JobState
from forage.errors import PermanentJobError
from indexers.errors import (
    DownloadRefused,
    FeedError,
    InvalidArchive,
    InvalidDigest,
    InvalidName,
    PackageNotFound,
)
from storage.errors import BackendRejected, InvalidCID

log = logging.getLogger(__name__)

#: Errors that retrying cannot fix: the job is dead at once.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    PermanentJobError,
    DownloadRefused,
    PackageNotFound,
    InvalidName,
    InvalidDigest,
    InvalidArchive,
    FeedError,
    BackendRejected,
    InvalidCID,
)
#: Longest error text kept in ``last_error``.
MAX_ERROR_LENGTH = 4000

_jobs = cast(sa.Table, JobRecord.__table__)


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job as its handler sees it: a value, detached from any session.

    ``attempt`` counts this run (1 on the first); ``max_attempts`` is the effective limit.
    """

    id: int
    kind: str
    payload: Mapping[str, Any]
    attempt: int
    max_attempts: int
    dedup_key: str | None
    lease_owner: str
    lease_expires_at: datetime
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts, backoff and lease length, usually from the ``[jobs]`` configuration."""

    max_attempts: int = 10
    backoff_base: float = 30.0
    backoff_cap: float = 6 * 3600.0
    lease_seconds: float = 30.0

    @classmethod
    def from_config(cls, config: JobsConfig) -> RetryPolicy:
        return cls(
            max_attempts=config.max_attempts,
            backoff_base=config.backoff_base,
            backoff_cap=config.backoff_cap,
            lease_seconds=config.lease_seconds,
        )

    def backoff(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): capped exponential, with the
        upper half jittered so that jobs failing together do not retry together."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


def enqueue(
    session: Session,
    kind: str,
    payload: Mapping[str, Any],
    *,
    dedup_key: str | None = None,
    run_after: datetime | None = None,
    max_attempts: int | None = None,
    now: datetime | None = None,
) -> int:
    """Add a job in the caller's transaction and return its id.

    With ``dedup_key``, a queued job with the same key absorbs the request: its id is
    returned, and its ``run_after`` moves to the earlier of the two.
    """
    if not kind:
        raise ValueError("job kind must not be empty")
    body = _json_body(kind, payload)
    now = now or utcnow()
    values = {
        "kind": kind,
        "payload": body,
        "state": JobState.QUEUED,
        "attempts": 0,
        "max_attempts": max_attempts,
        "run_after": run_after or now,
        "dedup_key": dedup_key,
        "created_at": now,
        "updated_at": now,
    }
    if dedup_key is None:
        return int(
            session.execute(sa.insert(_jobs).values(values).returning(_jobs.c.id)).scalar_one()
        )
    dialect_insert = sqlite.insert if _is_sqlite(session) else postgresql.insert
    statement = (
        dialect_insert(_jobs)
        .values(values)
        .on_conflict_do_nothing(
            index_elements=["dedup_key"], index_where=sa.text("state = 'queued'")
        )
        .returning(_jobs.c.id)
    )
    inserted = session.execute(statement).scalar_one_or_none()
    if inserted is not None:
        return int(inserted)
    twin = session.execute(
        sa.select(_jobs.c.id, _jobs.c.run_after).where(
            _jobs.c.dedup_key == dedup_key, _jobs.c.state == JobState.QUEUED
        )
    ).one()
    if values["run_after"] < twin.run_after:
        session.execute(
            sa.update(_jobs)
            .where(_jobs.c.id == twin.id)
            .values(run_after=values["run_after"], updated_at=now)
        )
    log.debug("job %s %s deduplicated into job %d", kind, dedup_key, twin.id)
    return int(twin.id)


def enqueue_many(
    session: Session,
    kind: str,
    payloads: Mapping[str, Mapping[str, Any]],
    *,
    run_after: datetime | None = None,
    max_attempts: int | None = None,
    now: datetime | None = None,
) -> dict[str, int]:
    """Add one job per ``dedup_key -> payload`` in one statement; return each key's job id.

    The batch form of :func:`enqueue` with a ``dedup_key`` for every job, and the same
    semantics: a queued job with the same key absorbs the request (its ``run_after`` moves
    to the earlier of the two) and its id is returned. One ``INSERT ... ON CONFLICT DO
    UPDATE ... RETURNING`` replaces a statement (or two) per job.
    """
    if not kind:
        raise ValueError("job kind must not be empty")
    if not payloads:
        return {}
    now = now or utcnow()
    when = run_after or now
    rows = [
        {
            "kind": kind,
            "payload": _json_body(kind, payload),
            "state": JobState.QUEUED,
            "attempts": 0,
            "max_attempts": max_attempts,
            "run_after": when,
            "dedup_key": dedup_key,
            "created_at": now,
            "updated_at": now,
        }
        for dedup_key, payload in payloads.items()
    ]
    connection = session.connection()
    result = connection.execute(_enqueue_statement(connection.dialect.name), rows)
    return {key: int(job_id) for key, job_id in result}


@functools.cache
def _enqueue_statement(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (dedup_key) WHERE queued DO UPDATE`` (the earlier
    ``run_after`` wins) ``RETURNING dedup_key, id``, built once per dialect; run with many
    parameter sets, SQLAlchemy sends it as multi-row INSERTs ("insertmanyvalues")."""
    insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(_jobs)
    earlier = insert.excluded.run_after < _jobs.c.run_after
    return insert.on_conflict_do_update(
        index_elements=["dedup_key"],
        index_where=sa.text("state = 'queued'"),
        set_={
            "run_after": sa.case((earlier, insert.excluded.run_after), else_=_jobs.c.run_after),
            "updated_at": sa.case((earlier, insert.excluded.updated_at), else_=_jobs.c.updated_at),
        },
    ).returning(_jobs.c.dedup_key, _jobs.c.id)


def _json_body(kind: str, payload: Mapping[str, Any]) -> Any:
    try:
        return json.loads(json.dumps(dict(payload)))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"job {kind!r}: payload must be JSON-serializable: {exc}") from exc


def _claimable(
    now: datetime, policy: RetryPolicy, kinds: Collection[str] | None
) -> tuple[Any, Any]:
    """The two kinds of claimable job, each matching one index, so that each claim reads
    ``limit`` rows in index order: running under an expired lease with attempts left
    (``state, lease_expires_at``), and queued and due (``state, run_after``; SQLite
    appends the rowid, so that index is already in ``run_after, id`` order). One ``OR``
    of both made the databases gather and sort every due job of every kind, on each claim."""
    limit = sa.func.coalesce(_jobs.c.max_attempts, policy.max_attempts)
    expired = sa.and_(
        _jobs.c.state == JobState.RUNNING,
        _jobs.c.lease_expires_at < now,
        _jobs.c.attempts < limit,
    )
    due = sa.and_(_jobs.c.state == JobState.QUEUED, _jobs.c.run_after <= now)
    if kinds is not None:
        chosen = _jobs.c.kind.in_(sorted(kinds))
        expired, due = sa.and_(expired, chosen), sa.and_(due, chosen)
    return expired, due


def claim(
    session: Session,
    *,
    owner: str,
    limit: int,
    policy: RetryPolicy,
    kinds: Collection[str] | None = None,
    now: datetime | None = None,
) -> list[Job]:
    """Lease up to ``limit`` ready jobs (of ``kinds``, if given) to ``owner``, oldest first.

    Ready means running under an expired lease with attempts left (taken first: their
    worker died), or queued with ``run_after`` passed. Commit right after: the lease counts
    from ``now``.
    """
    if limit < 1 or (kinds is not None and not kinds):
        return []
    now = now or utcnow()
    rows: list[Any] = []
    for eligible in _claimable(now, policy, kinds):
        if len(rows) < limit:
            rows += session.execute(
                _claim_statement(session, eligible, limit - len(rows), owner, policy, now)
            ).all()
    jobs = sorted((_job(row, policy) for row in rows), key=lambda job: job.id)
    for job in jobs:
        log.debug("claimed job %d %s attempt %d for %s", job.id, job.kind, job.attempt, owner)
    return jobs


def _claim_statement(
    session: Session, eligible: Any, limit: int, owner: str, policy: RetryPolicy, now: datetime
) -> Any:
    # Oldest first, in the order of the index the condition uses, so that the scan stops
    # after ``limit`` rows: SQLite's index ends with the rowid; a PostgreSQL index does not,
    # and ordering ties (a batch enqueued at one instant) by id would sort them all.
    sqlite = _is_sqlite(session)
    order = (_jobs.c.run_after, _jobs.c.id) if sqlite else (_jobs.c.run_after,)
    candidates = sa.select(_jobs.c.id).where(eligible).order_by(*order).limit(limit)
    if sqlite:
        # SQLite runs the uncorrelated subquery once, under the writer's lock, so the rows
        # it picks are still eligible; repeating the condition outside would make SQLite
        # scan the condition's index for the UPDATE instead of looking the ids up.
        where: sa.ColumnElement[bool] = _jobs.c.id.in_(candidates.scalar_subquery())
    else:
        # A materialized CTE locks exactly ``limit`` rows once; ``IN (subquery)`` may be
        # rescanned by the planner and claim more than asked.
        locked = (
            candidates.with_for_update(skip_locked=True)
            .cte("claimable")
            .prefix_with("MATERIALIZED")
        )
        where = sa.and_(_jobs.c.id == locked.c.id, eligible)
    return (
        sa.update(_jobs)
        .where(where)
        .values(
            state=JobState.RUNNING,
            attempts=_jobs.c.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=policy.lease_seconds),
            updated_at=now,
        )
        .returning(*_jobs.c)
    )


def _job(row: Any, policy: RetryPolicy) -> Job:
    return Job(
        id=row.id,
        kind=row.kind,
        payload=row.payload,
        attempt=row.attempts,
        max_attempts=row.max_attempts or policy.max_attempts,
        dedup_key=row.dedup_key,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        created_at=row.created_at,
    )


def _held(job_ids: Iterable[int], owner: str) -> Any:
    return sa.and_(
        _jobs.c.id.in_(list(job_ids)),
        _jobs.c.state == JobState.RUNNING,
        _jobs.c.lease_owner == owner,
    )


def heartbeat(
    session: Session,
    job_ids: Collection[int],
    *,
    owner: str,
    policy: RetryPolicy,
    now: datetime | None = None,
) -> set[int]:
    """Extend ``owner``'s leases on ``job_ids``; return the ids it still holds.

    A job missing from the result was reclaimed by another worker after its lease expired:
    the caller should stop working on it.
    """
    if not job_ids:
        return set()
    now = now or utcnow()
    rows = session.execute(
        sa.update(_jobs)
        .where(_held(job_ids, owner))
        .values(lease_expires_at=now + timedelta(seconds=policy.lease_seconds), updated_at=now)
        .returning(_jobs.c.id)
    )
    return {int(job_id) for job_id in rows.scalars()}


def complete(session: Session, job_id: int, *, owner: str, now: datetime | None = None) -> bool:
    """Mark a job ``owner`` holds as done; False if the lease was lost meanwhile."""
    return job_id in complete_many(session, [job_id], owner=owner, now=now)


def complete_many(
    session: Session, job_ids: Collection[int], *, owner: str, now: datetime | None = None
) -> set[int]:
    """Mark the jobs ``owner`` holds among ``job_ids`` as done in one statement; return
    those ids (a job missing from the result had lost its lease meanwhile)."""
    if not job_ids:
        return set()
    now = now or utcnow()
    result = session.execute(
        sa.update(_jobs)
        .where(_held(job_ids, owner))
        .values(
            state=JobState.DONE,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )
        .returning(_jobs.c.id)
    )
    return {int(job_id) for job_id in result.scalars()}


def describe_error(error: BaseException | str) -> str:
    """The text kept in ``last_error``: type and message, bounded in length."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"


def is_permanent(error: BaseException) -> bool:
    """Whether retrying cannot fix ``error`` (see :data:`PERMANENT_ERRORS`)."""
    return isinstance(error, PERMANENT_ERRORS)


def retry_after_of(error: BaseException) -> float | None:
    """The delay a transient error asks for (its ``retry_after`` attribute), if any."""
    value = getattr(error, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def fail(
    session: Session,
    job_id: int,
    *,
    owner: str,
    error: BaseException | str,
    policy: RetryPolicy,
    permanent: bool | None = None,
    retry_after: float | None = None,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> JobState | None:
    """Record a failed attempt and return the job's new state (``None`` if the lease was lost).

    The job is ``dead`` when the error is permanent (``permanent`` defaults to
    :func:`is_permanent` for exceptions) or its attempts are used up; else ``queued`` again
    after the backoff, or after the error's ``retry_after`` when that is longer. If another
    job with the same ``dedup_key`` is already queued, that one will do the work: this one is
    closed as ``done`` with the error and a note.
    """
    now = now or utcnow()
    row = session.execute(
        sa.select(_jobs.c.attempts, _jobs.c.max_attempts, _jobs.c.kind, _jobs.c.dedup_key).where(
            _held([job_id], owner)
        )
    ).one_or_none()
    if row is None:
        return None
    if permanent is None:
        permanent = isinstance(error, BaseException) and is_permanent(error)
    if retry_after is None and isinstance(error, BaseException):
        retry_after = retry_after_of(error)
    text = describe_error(error)
    limit = row.max_attempts or policy.max_attempts
    cleared = {"lease_owner": None, "lease_expires_at": None, "updated_at": now}
    if permanent or row.attempts >= limit:
        reason = "permanent error" if permanent else f"{row.attempts} attempts used"
        log.warning("job %d %s is dead (%s): %s", job_id, row.kind, reason, text)
        session.execute(
            sa.update(_jobs)
            .where(_jobs.c.id == job_id)
            .values(state=JobState.DEAD, last_error=text, finished_at=now, **cleared)
        )
        return JobState.DEAD
    if row.dedup_key is not None:
        twin = _queued_twin(session, row.dedup_key)
        if twin is not None:
            session.execute(
                sa.update(_jobs)
                .where(_jobs.c.id == job_id)
                .values(
                    state=JobState.DONE,
                    last_error=describe_error(f"superseded by queued job {twin}; {text}"),
                    finished_at=now,
                    **cleared,
                )
            )
            return JobState.DONE
    delay = policy.backoff(row.attempts, rng=rng)
    if retry_after is not None:
        delay = max(delay, retry_after)
    log.info(
        "job %d %s failed (attempt %d of %d), retry in %.1f s: %s",
        job_id,
        row.kind,
        row.attempts,
        limit,
        delay,
        text,
    )
    session.execute(
        sa.update(_jobs)
        .where(_jobs.c.id == job_id)
        .values(
            state=JobState.QUEUED,
            last_error=text,
            run_after=now + timedelta(seconds=delay),
            **cleared,
        )
    )
    return JobState.QUEUED


def _queued_twin(session: Session, dedup_key: str) -> int | None:
    return session.execute(
        sa.select(_jobs.c.id).where(
            _jobs.c.dedup_key == dedup_key, _jobs.c.state == JobState.QUEUED
        )
    ).scalar_one_or_none()


def release(
    session: Session, job_ids: Collection[int], *, owner: str, now: datetime | None = None
) -> int:
    """Give jobs back unfinished (a worker shutting down hard): queued, ready now, and the
    interrupted attempt not counted. Returns how many were released."""
    if not job_ids:
        return 0
    now = now or utcnow()
    released = 0
    for job_id in job_ids:
        dedup_key = session.execute(
            sa.select(_jobs.c.dedup_key).where(_held([job_id], owner))
        ).one_or_none()
        if dedup_key is None:
            continue
        if dedup_key[0] is not None and _queued_twin(session, dedup_key[0]) is not None:
            values: dict[str, Any] = {
                "state": JobState.DONE,
                "last_error": "released on shutdown; a queued job with the same key remains",
                "finished_at": now,
            }
        else:
            values = {"state": JobState.QUEUED, "run_after": now, "attempts": _jobs.c.attempts - 1}
        session.execute(
            sa.update(_jobs)
            .where(_jobs.c.id == job_id)
            .values(lease_owner=None, lease_expires_at=None, updated_at=now, **values)
        )
        released += 1
    return released


def reap_expired(session: Session, *, policy: RetryPolicy, now: datetime | None = None) -> int:
    """Bury running jobs whose lease expired on their last attempt (their worker died every
    time); returns how many. Jobs with attempts left are reclaimed by :func:`claim` instead."""
    now = now or utcnow()
    limit = sa.func.coalesce(_jobs.c.max_attempts, policy.max_attempts)
    result = session.execute(
        sa.update(_jobs)
        .where(
            _jobs.c.state == JobState.RUNNING,
            _jobs.c.lease_expires_at < now,
            _jobs.c.attempts >= limit,
        )
        .values(
            state=JobState.DEAD,
            last_error=sa.func.coalesce(_jobs.c.last_error, "")
            + "; lease expired on the last attempt (worker lost)",
            lease_owner=None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )
        .returning(_jobs.c.id, _jobs.c.kind)
    )
    rows = result.all()
    for row in rows:
        log.warning("job %d %s is dead: lease expired on its last attempt", row.id, row.kind)
    return len(rows)


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"
