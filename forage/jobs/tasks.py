"""The scheduled tasks: the schedule table, what each task enqueues, and the ``watch`` job.

Each task is a row of the schedule table (:func:`schedule_table`): a name, the configuration
key holding its interval in seconds, and a function ``run(session, config)`` that runs in one
transaction. Tasks only *enqueue* durable jobs (:func:`forage.jobs.queue.enqueue` with a
``dedup_key``), or do one small bookkeeping statement; the work itself runs in workers,
where it is leased, retried and survives crashes (STYLE.md house rule 10).

============== ================================ =============================================
task           interval key                     what it does
============== ================================ =============================================
watch:<name>   registries.<name>.interval       queue a ``watch`` job following that feed
reconcile:     schedule.reconcile               queue a ``reconcile`` sweep of that registry's
<name>                                          inventory against the index (resumable)
pin_check      schedule.pin_check               queue the batched pin status check (which
                                                also reschedules itself), with backends
build_pieces   schedule.build_pieces            queue the packing of archives into pieces
sync_deals     schedule.sync_deals              queue a deal sync, with a deal source
drain_archives schedule.drain_archives          queue ``archive`` jobs for artifacts with no
                                                finished archive and no live or dead job
retry_failed   schedule.retry_failed            re-queue dead jobs that used up their attempts
                                                on transient errors (permanent ones stay dead)
reverify       schedule.reverify                queue a ``reverify`` job: read a random sample
                                                of archives back from the blockstore and check
                                                size and digest
stats          schedule.stats                   log one line of index statistics
prune_jobs     schedule.prune_jobs              delete finished jobs older than
                                                ``schedule.keep_done_jobs``
render_answers schedule.render_answers          queue the rendering of lookup answers that
                                                changed or were never rendered
                                                (:mod:`forage.lookup.answers`)
optimize       schedule.optimize                refresh the planner's statistics: ``PRAGMA
                                                optimize`` (SQLite), ``ANALYZE`` (PostgreSQL)
                                                (:mod:`forage.db.statistics`)
============== ================================ =============================================

An interval of 0 disables a task. Adding a task is one row in :data:`TASKS` (or a handler
kind queued by :func:`enqueue_kind`) plus its interval in :class:`forage.config.ScheduleConfig`.

:class:`forage.jobs.scheduler.Scheduler` runs this table while it leads
(:mod:`forage.jobs.leader`); the handler of the ``reverify`` kind is in
:mod:`forage.jobs.reverify`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.config import Config
from forage.db.engine import utcnow
from forage.db.models import Archive, ArchiveStatus, Artifact, JobRecord, JobState
from forage.db.statistics import OPTIMIZE, optimize_task
from forage.errors import ConfigError, PermanentJobError
from forage.jobs import admin
from forage.jobs import queue as jobs

if TYPE_CHECKING:
    from forage.jobs.worker import JobContext

log = logging.getLogger(__name__)

#: Job kinds the scheduled tasks queue (``watch_job`` here, ``reverify_job`` in
#: :mod:`forage.jobs.reverify`).
WATCH = "watch"
REVERIFY = "reverify"
#: The reconcile sweep's kind (its handler is :func:`forage.index.reconcile.reconcile_job`).
RECONCILE = "reconcile"
#: The archive job kind (queued by ingest too, with the same ``dedup_key``).
ARCHIVE = "archive"
#: Kinds of other modules this schedule queues (their handlers keep them going).
PIN_CHECK = "pin_check"
BUILD_PIECES = "build_pieces"
SYNC_DEALS = "sync_deals"
RENDER_ANSWERS = "render_answers"
_LIVE = (JobState.QUEUED, JobState.RUNNING)

TaskFunction = Callable[[Session, Config], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Task:
    """One row of the schedule: run ``run(session, config)`` every ``interval_key`` seconds."""

    name: str
    interval_key: str
    run: TaskFunction

    def interval(self, config: Config) -> float:
        """Seconds between runs (0: disabled), read from the configuration."""
        return interval_of(config, self.interval_key)


def interval_of(config: Config, key: str) -> float:
    """The value of a dotted interval key; a watcher's unset interval is its indexer's own."""
    value: Any = config
    for part in key.split("."):
        if not hasattr(value, part):
            raise ConfigError(key, "no such interval setting")
        value = getattr(value, part)
    if value is None and key.startswith("registries."):
        from indexers import ECOSYSTEMS

        ecosystem = key.split(".")[1]
        return ECOSYSTEMS[ecosystem].default_interval.total_seconds()
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(key, f"is not an interval in seconds: {value!r}")
    return float(value)


# -- what the tasks do -------------------------------------------------------------------------


def _live_job(session: Session, dedup_key: str) -> int | None:
    """A queued or running job with ``dedup_key``, if any."""
    return session.execute(
        sa.select(JobRecord.id)
        .where(JobRecord.dedup_key == dedup_key, JobRecord.state.in_(_LIVE))
        .limit(1)
    ).scalar_one_or_none()


def enqueue_once(
    session: Session, kind: str, payload: Mapping[str, Any], *, dedup_key: str
) -> dict[str, Any]:
    """Queue a job unless one with ``dedup_key`` is already queued or running.

    A run still going (a long feed catch-up) is not doubled by the next tick.
    """
    live = _live_job(session, dedup_key)
    if live is not None:
        return {"skipped": 1, "live_job": live}
    return {"queued": 1, "job_id": jobs.enqueue(session, kind, payload, dedup_key=dedup_key)}


def enqueue_kind(kind: str, payload: Mapping[str, Any] | None = None) -> TaskFunction:
    """A task that makes one ``kind`` job (keyed by the kind) due now.

    For kinds that reschedule themselves (the pin check queues its next run for when
    confirmations fall due): a queued one is moved to now rather than doubled, so the task's
    interval bounds the time between runs; a running one is left alone.
    """

    def run(session: Session, config: Config) -> Mapping[str, Any]:
        running = session.execute(
            sa.select(JobRecord.id)
            .where(JobRecord.dedup_key == kind, JobRecord.state == JobState.RUNNING)
            .limit(1)
        ).scalar_one_or_none()
        if running is not None:
            return {"skipped": 1, "live_job": running}
        return {"due": 1, "job_id": jobs.enqueue(session, kind, payload or {}, dedup_key=kind)}

    run.__name__ = f"enqueue_{kind}"
    run.__doc__ = f"Make a {kind!r} job due now unless one is running."
    return run


def enqueue_watch(ecosystem: str, session: Session, config: Config) -> Mapping[str, Any]:
    """Queue a ``watch`` job for one registry's feed unless one is queued or running."""
    return enqueue_once(session, WATCH, {"ecosystem": ecosystem}, dedup_key=f"{WATCH}:{ecosystem}")


def enqueue_reconcile(ecosystem: str, session: Session, config: Config) -> Mapping[str, Any]:
    """Queue a ``reconcile`` sweep of one registry unless one is queued or running (a sweep
    a kill interrupted resumes where it stopped: :mod:`forage.index.reconcile`)."""
    payload = {"ecosystem": ecosystem}
    return enqueue_once(session, RECONCILE, payload, dedup_key=f"{RECONCILE}:{ecosystem}")


def drain_archives(session: Session, config: Config) -> Mapping[str, Any]:
    """Queue ``archive`` jobs for up to ``schedule.batch`` artifacts that have no finished
    archive (archived or failed) and no archive job queued, running or dead (dead ones are
    ``retry_failed``'s business). This catches artifacts imported without archiving and
    archives left pending by lost jobs."""
    key = sa.literal(f"{ARCHIVE}:", sa.String) + sa.cast(Artifact.id, sa.String)
    finished = (
        sa.select(Archive.id)
        .where(
            Archive.artifact_id == Artifact.id,
            Archive.status.in_([ArchiveStatus.ARCHIVED, ArchiveStatus.FAILED]),
        )
        .exists()
    )
    pending = (
        sa.select(JobRecord.id)
        .where(JobRecord.dedup_key == key, JobRecord.state.in_([*_LIVE, JobState.DEAD]))
        .exists()
    )
    ids = (
        session.execute(
            sa.select(Artifact.id)
            .where(~finished, ~pending)
            .order_by(Artifact.id)
            .limit(config.schedule.batch)
        )
        .scalars()
        .all()
    )
    for artifact_id in ids:
        jobs.enqueue(
            session, ARCHIVE, {"artifact_id": artifact_id}, dedup_key=f"{ARCHIVE}:{artifact_id}"
        )
    return {"queued": len(ids)}


def retry_failed(session: Session, config: Config) -> Mapping[str, Any]:
    """Re-queue (fresh attempts) up to ``schedule.batch`` dead jobs that used up their attempts,
    dead for at least one ``schedule.retry_failed`` period. A permanent error kills a job
    before its attempts run out, so those stay dead for an operator to look at."""
    policy = jobs.RetryPolicy.from_config(config.jobs)
    limit = sa.func.coalesce(JobRecord.max_attempts, policy.max_attempts)
    cutoff = utcnow() - timedelta(seconds=config.schedule.retry_failed)
    ids = (
        session.execute(
            sa.select(JobRecord.id)
            .where(
                JobRecord.state == JobState.DEAD,
                JobRecord.attempts >= limit,
                JobRecord.finished_at <= cutoff,
            )
            .order_by(JobRecord.finished_at, JobRecord.id)
            .limit(config.schedule.batch)
        )
        .scalars()
        .all()
    )
    queued = {admin.retry(session, job_id) for job_id in ids}
    return {"retried": len(ids), "queued": len(queued)}


def enqueue_reverify(session: Session, config: Config) -> Mapping[str, Any]:
    """Queue a ``reverify`` job for ``schedule.reverify_sample`` random archives."""
    payload = {"sample": config.schedule.reverify_sample}
    return enqueue_once(session, REVERIFY, payload, dedup_key=REVERIFY)


def log_stats(session: Session, config: Config) -> Mapping[str, Any]:
    """Count what the index holds (the same numbers ``/metrics`` exports) for the log line."""
    from forage.server.metrics import snapshot

    return snapshot(session).summary()


def prune_jobs(session: Session, config: Config) -> Mapping[str, Any]:
    """Delete done jobs finished more than ``schedule.keep_done_jobs`` seconds ago."""
    cutoff = utcnow() - timedelta(seconds=config.schedule.keep_done_jobs)
    return {"pruned": admin.prune(session, finished_before=cutoff)}


#: The fixed rows of the schedule; watchers are added per configured registry.
TASKS: tuple[Task, ...] = (
    Task("drain_archives", "schedule.drain_archives", drain_archives),
    Task("retry_failed", "schedule.retry_failed", retry_failed),
    Task("reverify", "schedule.reverify", enqueue_reverify),
    Task("stats", "schedule.stats", log_stats),
    Task("prune_jobs", "schedule.prune_jobs", prune_jobs),
    Task(RENDER_ANSWERS, "schedule.render_answers", enqueue_kind(RENDER_ANSWERS)),
    Task(OPTIMIZE, "schedule.optimize", optimize_task),
)


def schedule_table(config: Config) -> tuple[Task, ...]:
    """Every task of this configuration: a watcher and a reconcile sweep per configured
    registry, the pipeline kinds whose services are configured, then :data:`TASKS`."""
    tasks = [
        Task(
            f"{WATCH}:{ecosystem}",
            f"registries.{ecosystem}.interval",
            functools.partial(enqueue_watch, ecosystem),
        )
        for ecosystem in config.configured_registries()
    ]
    tasks += [
        Task(
            f"{RECONCILE}:{ecosystem}",
            "schedule.reconcile",
            functools.partial(enqueue_reconcile, ecosystem),
        )
        for ecosystem in config.configured_registries()
    ]
    if config.pinning.backends:
        tasks.append(Task(PIN_CHECK, "schedule.pin_check", enqueue_kind(PIN_CHECK)))
    tasks.append(Task(BUILD_PIECES, "schedule.build_pieces", enqueue_kind(BUILD_PIECES)))
    if config.filecoin.lotus_url or config.filecoin.deal_service_url:
        tasks.append(Task(SYNC_DEALS, "schedule.sync_deals", enqueue_kind(SYNC_DEALS)))
    return (*tasks, *TASKS)


# -- the handler of the watch jobs queued above --------------------------------------------------


async def watch_job(ctx: JobContext, job: jobs.Job) -> None:
    """Handler of ``watch`` jobs ``{ecosystem}``: follow the feed until caught up (which ends
    a bootstrap walk in progress: :mod:`forage.index.bootstrap`)."""
    from forage.index import bootstrap
    from forage.index.ingest import watch_feed

    ecosystem = str(job.payload["ecosystem"])
    try:
        ctx.config.registry(ecosystem)
    except ConfigError as exc:
        raise PermanentJobError(str(exc)) from exc
    stats = await watch_feed(ctx, ecosystem)
    if await ctx.transaction(bootstrap.finish, ecosystem):
        log.info("feed %s: the bootstrap walk reached the head", ecosystem)
    log.info(
        "feed %s caught up: %d pages, %d changes queued, %d re-scanned",
        ecosystem,
        stats.pages,
        stats.changes,
        stats.rescanned,
        extra={"fields": {"registry": ecosystem, "cursor": stats.cursor}},
    )
