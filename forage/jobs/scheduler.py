"""The scheduler: the periodic tasks that keep the archive moving, run by one leader at a time.

Each task is a row of the schedule table (:func:`schedule_table`): a name, the configuration
key holding its interval in seconds, and a function ``run(session, config)`` that runs in one
transaction. Tasks only *enqueue* durable jobs (:func:`forage.jobs.queue.enqueue` with a
``dedup_key``), or do one small bookkeeping statement; the work itself runs in workers,
where it is leased, retried and survives crashes (STYLE.md house rule 10).

============== ================================ =============================================
task           interval key                     what it does
============== ================================ =============================================
watch:<name>   registries.<name>.interval       queue a ``watch`` job following that feed
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
============== ================================ =============================================

An interval of 0 disables a task. Adding a task is one row in :data:`TASKS` (or a handler
kind queued by :func:`enqueue_kind`) plus its interval in :class:`forage.config.ScheduleConfig`.

**APScheduler 3** (https://apscheduler.readthedocs.io/en/3.x/) keeps the schedule: a
``BackgroundScheduler`` whose ``SQLAlchemyJobStore`` lives in Forage's own database (table
:data:`JOBSTORE_TABLE`), so next run times survive restarts and a restarted or new leader
neither repeats nor skips a run (late runs are coalesced into one). APScheduler 4 would
coordinate several schedulers itself, but it is a pre-release whose README says not to use
it in production; APScheduler 3's job stores must not be shared by running schedulers, so
Forage elects a leader itself and only the leader runs one.

**Leadership.** On PostgreSQL a scheduler leads while it holds a session-level advisory lock
(``pg_try_advisory_lock(LEADER_LOCK_KEY)``) on a dedicated connection named
``forage-scheduler <owner>``: when that process dies, PostgreSQL ends its session and frees
the lock; a waiting scheduler retries every ``schedule.leader_poll`` seconds and takes over
(https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS). TCP
keepalives on that connection bound how long a vanished host keeps the lock. The leader
checks its connection at the same period and stops scheduling at once when it is gone. On
SQLite (one machine) the lock is an ``flock`` on ``<database>.scheduler.lock``. Were two
schedulers ever to overlap, every task's enqueue is deduplicated, so nothing runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import random
import secrets
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from forage.config import Config
from forage.db.engine import SCHEDULER_TABLE, make_sessionmaker, utcnow
from forage.db.models import Archive, ArchiveStatus, Artifact, JobRecord, JobState
from forage.errors import ConfigError, PermanentJobError
from forage.jobs import queue as jobs
from forage.logs import log_context

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler
    from multiformats import CID

    from forage.jobs.worker import Handler, JobContext
    from storage import Block, BlockSource

log = logging.getLogger(__name__)

#: Job kinds the scheduled tasks queue (their handlers are in this module).
WATCH = "watch"
REVERIFY = "reverify"
#: The archive job kind (queued by ingest too, with the same ``dedup_key``).
ARCHIVE = "archive"
#: Kinds of other modules this schedule queues (their handlers keep them going).
PIN_CHECK = "pin_check"
BUILD_PIECES = "build_pieces"
SYNC_DEALS = "sync_deals"
RENDER_ANSWERS = "render_answers"
#: Go's module hash: not a hash of the archived zip's bytes.
H1 = "h1"
#: Where APScheduler keeps the schedule, in Forage's database.
JOBSTORE_TABLE = SCHEDULER_TABLE
#: The PostgreSQL advisory lock the leader holds: a fixed 64-bit key derived from a name.
LEADER_LOCK_KEY = int.from_bytes(hashlib.sha256(b"forage.scheduler").digest()[:8], signed=True)
#: How long a vanished leader host may keep the lock: keepalive idle + interval * count.
_KEEPALIVES = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}
_FIRE_REF = "forage.jobs.scheduler:fire_task"
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
        from forage.index.registries import INDEXER_CLASSES

        ecosystem = key.split(".")[1]
        return INDEXER_CLASSES[ecosystem].default_interval.total_seconds()
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
    queued = {jobs.retry(session, job_id) for job_id in ids}
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
    return {"pruned": jobs.prune(session, finished_before=cutoff)}


#: The fixed rows of the schedule; watchers are added per configured registry.
TASKS: tuple[Task, ...] = (
    Task("drain_archives", "schedule.drain_archives", drain_archives),
    Task("retry_failed", "schedule.retry_failed", retry_failed),
    Task("reverify", "schedule.reverify", enqueue_reverify),
    Task("stats", "schedule.stats", log_stats),
    Task("prune_jobs", "schedule.prune_jobs", prune_jobs),
    Task(RENDER_ANSWERS, "schedule.render_answers", enqueue_kind(RENDER_ANSWERS)),
)


def schedule_table(config: Config) -> tuple[Task, ...]:
    """Every task of this configuration: one watcher per configured registry, the pipeline
    kinds whose services are configured, then :data:`TASKS`."""
    tasks = [
        Task(
            f"{WATCH}:{ecosystem}",
            f"registries.{ecosystem}.interval",
            functools.partial(enqueue_watch, ecosystem),
        )
        for ecosystem in config.configured_registries()
    ]
    if config.pinning.backends:
        tasks.append(Task(PIN_CHECK, "schedule.pin_check", enqueue_kind(PIN_CHECK)))
    tasks.append(Task(BUILD_PIECES, "schedule.build_pieces", enqueue_kind(BUILD_PIECES)))
    if config.filecoin.lotus_url or config.filecoin.deal_service_url:
        tasks.append(Task(SYNC_DEALS, "schedule.sync_deals", enqueue_kind(SYNC_DEALS)))
    return (*tasks, *TASKS)


# -- the job handlers of the kinds queued above --------------------------------------------------


async def watch_job(ctx: JobContext, job: jobs.Job) -> None:
    """Handler of ``watch`` jobs ``{ecosystem}``: follow the feed until caught up."""
    from forage.index.ingest import watch_feed

    ecosystem = str(job.payload["ecosystem"])
    try:
        ctx.config.registry(ecosystem)
    except ConfigError as exc:
        raise PermanentJobError(str(exc)) from exc
    stats = await watch_feed(ctx, ecosystem)
    log.info(
        "feed %s caught up: %d pages, %d changes queued, %d re-scanned",
        ecosystem,
        stats.pages,
        stats.changes,
        stats.rescanned,
        extra={"fields": {"registry": ecosystem, "cursor": stats.cursor}},
    )


@dataclass(frozen=True, slots=True)
class ArchiveSample:
    """What re-verification needs of one archive row."""

    id: int
    artifact_id: int
    cid: str
    size: int
    algorithm: str | None
    digest: str | None


def sample_archives(
    session: Session, count: int, *, rng: random.Random | None = None
) -> list[ArchiveSample]:
    """Up to ``count`` distinct archived archives picked at random.

    Each pick is an index probe (the first archived id at or after a random id), so the cost
    does not grow with the table, unlike ``ORDER BY random()``.
    """
    rng = rng or random.Random()
    archived = Archive.status == ArchiveStatus.ARCHIVED
    low, high = session.execute(
        sa.select(sa.func.min(Archive.id), sa.func.max(Archive.id)).where(archived)
    ).one()
    if low is None:
        return []
    columns = (
        Archive.id,
        Archive.artifact_id,
        Archive.cid,
        Archive.size,
        Archive.verified_algorithm,
        Archive.verified_digest,
    )
    total = session.execute(sa.select(sa.func.count()).where(archived)).scalar_one()
    if total <= count:
        rows = session.execute(sa.select(*columns).where(archived).order_by(Archive.id)).all()
    else:
        chosen: dict[int, Any] = {}
        for _ in range(count * 3):
            if len(chosen) >= count:
                break
            start = rng.randint(low, high)
            row = session.execute(
                sa.select(*columns)
                .where(archived, Archive.id >= start)
                .order_by(Archive.id)
                .limit(1)
            ).one_or_none()
            if row is not None:
                chosen[row.id] = row
        rows = sorted(chosen.values(), key=lambda row: row.id)
    return [ArchiveSample(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Damage:
    """What re-verification found wrong with an archive: the first ``problem``, and every
    block whose bytes no longer match its CID (to delete before the repair writes them
    again: a blockstore never overwrites a block it has)."""

    problem: str
    corrupt: tuple[CID, ...] = ()


class _Tolerant:
    """A block source that notes missing and corrupt blocks instead of stopping at the first,
    standing in an empty block for them (so a walk still reaches the rest of the DAG)."""

    def __init__(self, source: BlockSource) -> None:
        self.source = source
        self.corrupt: list[CID] = []

    def get(self, cid: CID) -> Block:
        from storage import Block, BlockNotFound, IntegrityError

        try:
            return self.source.get(cid)
        except IntegrityError:
            self.corrupt.append(cid)
        except BlockNotFound:
            pass
        return Block(cid, b"")


def verify_archive(source: BlockSource, archive: ArchiveSample) -> Damage | None:
    """Read an archive's file back from its blocks; return what is wrong, or ``None``.

    Every block is checked against its CID as it is read; the total size must be the
    archive's, and the bytes must hash to the digest verified at archive time (when it is a
    hash of the bytes: Go's ``h1`` covers the unpacked module and was checked on download).
    """
    from indexers import DigestMismatch, DigestVerifier
    from storage import StorageError, read_file, walk_dag

    expected = {archive.algorithm: archive.digest} if archive.algorithm and archive.digest else {}
    expected.pop(H1, None)
    verifier = DigestVerifier(f"archive {archive.id}", expected, size=archive.size)
    try:
        for chunk in read_file(source, archive.cid):
            verifier.update(chunk)
        verifier.finish()
    except (StorageError, DigestMismatch) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    else:
        return None
    tolerant = _Tolerant(source)
    try:
        for _block in walk_dag(tolerant, archive.cid):
            pass
    except StorageError:
        log.debug("archive %d: DAG walk stopped early", archive.id, exc_info=True)
    return Damage(problem, tuple(tolerant.corrupt))


def mark_damaged(session: Session, archive: ArchiveSample, damage: Damage) -> int:
    """Record a failed re-verification and queue the artifact's archive job to repair it.

    The archive becomes ``failed`` with the reason and no CID, as a failed archive job
    leaves it (lookups stop offering the damaged bytes), and the archive job, finding no
    good archive, downloads and verifies the artifact again.
    """
    session.execute(
        sa.update(Archive)
        .where(Archive.id == archive.id, Archive.status == ArchiveStatus.ARCHIVED)
        .values(
            status=ArchiveStatus.FAILED,
            cid=None,
            size=None,
            verified_algorithm=None,
            verified_digest=None,
            error=f"re-verification of {archive.cid} failed: {damage.problem}",
        )
    )
    return jobs.enqueue(
        session,
        ARCHIVE,
        {"artifact_id": archive.artifact_id},
        dedup_key=f"{ARCHIVE}:{archive.artifact_id}",
    )


async def reverify_job(ctx: JobContext, job: jobs.Job) -> None:
    """Handler of ``reverify`` jobs ``{sample}``: check a random sample of archives against
    the blockstore; a damaged one loses its corrupt blocks, is marked failed and queued for
    repair."""
    store = ctx.blockstore
    if store is None:
        raise PermanentJobError("reverify needs a blockstore")
    count = int(job.payload.get("sample", ctx.config.schedule.reverify_sample))
    sample = await ctx.transaction(sample_archives, count)
    damaged = 0
    for archive in sample:
        damage = await asyncio.to_thread(verify_archive, store, archive)
        if damage is None:
            continue
        damaged += 1
        for cid in damage.corrupt:
            await asyncio.to_thread(store.delete, cid)
        repair = await ctx.transaction(mark_damaged, archive, damage)
        log.error(
            "archive %d (%s) failed re-verification: %s; %d corrupt blocks removed, "
            "repair queued as job %d",
            archive.id,
            archive.cid,
            damage.problem,
            len(damage.corrupt),
            repair,
            extra={"fields": {"archive": archive.id, "artifact": archive.artifact_id}},
        )
    log.info(
        "re-verified %d archives: %d damaged",
        len(sample),
        damaged,
        extra={"fields": {"checked": len(sample), "damaged": damaged}},
    )


def scheduled_handlers() -> dict[str, Handler]:
    """The job kinds this module's tasks queue (registered in :mod:`forage.jobs.handlers`)."""
    return {WATCH: watch_job, REVERIFY: reverify_job}


# -- leadership ----------------------------------------------------------------------------------


class Leadership(Protocol):
    """A lock only one scheduler holds at a time (all methods block; call them in a thread)."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this scheduler now leads."""

    def check(self) -> bool:
        """Whether the lock is still held (False once the connection behind it is gone)."""

    def release(self) -> None:
        """Give the lock up (safe when not held)."""


class AdvisoryLock:
    """Leadership as a PostgreSQL session-level advisory lock on a dedicated connection.

    The connection bypasses the pool (closing it really ends the session, so the lock can
    never linger in a pooled connection) and names its owner in ``application_name``.
    """

    def __init__(self, engine: Engine, *, owner: str, key: int = LEADER_LOCK_KEY) -> None:
        options = " ".join(f"-c {name}={value}" for name, value in _KEEPALIVES.items())
        self._engine = sa.create_engine(
            engine.url,
            poolclass=NullPool,
            connect_args={
                "application_name": f"forage-scheduler {owner}"[:63],
                "options": f"-c timezone=UTC {options}",
            },
        )
        self.key = key
        self._connection: Connection | None = None

    def try_acquire(self) -> bool:
        if self._connection is None:
            self._connection = self._engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            )
        try:
            got = self._connection.execute(
                sa.select(sa.func.pg_try_advisory_lock(self.key))
            ).scalar_one()
        except SQLAlchemyError:
            self._drop()
            raise
        return bool(got)

    def check(self) -> bool:
        if self._connection is None:
            return False
        try:
            self._connection.execute(sa.select(1))
        except SQLAlchemyError as exc:
            log.warning("scheduler lock connection failed: %s", exc)
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.execute(sa.select(sa.func.pg_advisory_unlock(self.key)))
        except SQLAlchemyError:
            log.debug("could not unlock the scheduler lock; closing its session", exc_info=True)
        self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except SQLAlchemyError:
                log.debug("closing the scheduler lock connection failed", exc_info=True)
            self._connection = None

    def close(self) -> None:
        self.release()
        self._engine.dispose()


class FileLock:
    """Leadership as an ``flock`` on a file beside the SQLite database (one machine)."""

    def __init__(self, path: Path, *, owner: str) -> None:
        self.path = path
        self.owner = owner
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.owner.encode(), 0)
        self._fd = fd
        return True

    def check(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self.release()


def _lock_file(engine: Engine) -> Path:
    database = engine.url.database
    if not database:
        raise ConfigError("database.url", "the scheduler needs a SQLite database file")
    return Path(database).with_name(Path(database).name + ".scheduler.lock")


def leadership_for(engine: Engine, *, owner: str) -> AdvisoryLock | FileLock:
    """The leader lock for this database: advisory lock on PostgreSQL, file lock on SQLite."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine, owner=owner)
    return FileLock(_lock_file(engine), owner=owner)


def current_leader(engine: Engine) -> str | None:
    """The owner name of the scheduler that leads now, if any (for status and tests)."""
    if engine.dialect.name == "postgresql":
        key = LEADER_LOCK_KEY & 0xFFFFFFFFFFFFFFFF
        with engine.connect() as connection:
            name = connection.execute(
                sa.text(
                    "SELECT a.application_name FROM pg_locks l"
                    " JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                    " AND l.database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                    " AND l.classid::bigint = :high AND l.objid::bigint = :low"
                ),
                {"high": key >> 32, "low": key & 0xFFFFFFFF},
            ).scalar_one_or_none()
        return name.removeprefix("forage-scheduler ") if name else None
    path = _lock_file(engine)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return path.read_text(encoding="utf-8") or "(unknown)"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# -- the scheduler ---------------------------------------------------------------------------------

#: Running schedulers of this process by token: what :func:`fire_task` calls back. Stored
#: APScheduler jobs name their function by reference and their scheduler by token, because a
#: persistent job store can only hold picklable arguments.
_SCHEDULERS: weakref.WeakValueDictionary[str, Scheduler] = weakref.WeakValueDictionary()


def fire_task(token: str, name: str) -> None:
    """What every stored APScheduler job calls: run task ``name`` on the scheduler ``token``."""
    scheduler = _SCHEDULERS.get(token)
    if scheduler is None:
        log.warning("task %s fired for a scheduler that no longer runs here", name)
        return
    scheduler.run_task(name)


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """A task as scheduled: its name, interval and next run time (from the job store)."""

    name: str
    interval: float
    next_run: datetime | None


class Scheduler:
    """Runs the schedule table while it leads; waits for the lock otherwise.

    ``run()`` returns after :meth:`stop`. ``runs``/``failures`` count task runs in this
    process; ``leading`` says whether it leads now.
    """

    def __init__(
        self,
        config: Config,
        engine: Engine,
        *,
        tasks: Sequence[Task] | None = None,
        owner: str | None = None,
        threads: int = 2,
    ) -> None:
        from forage.jobs.worker import worker_owner

        self.config = config
        self.engine = engine
        self.sessionmaker = make_sessionmaker(engine)
        self.tasks = {task.name: task for task in (tasks or schedule_table(config))}
        for task in self.tasks.values():
            task.interval(config)  # a bad key fails now, not at the first tick
        self.owner = owner or worker_owner()
        self.poll = config.schedule.leader_poll
        self.threads = threads
        self.runs: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.leading = False
        self.token = secrets.token_hex(8)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop scheduling (a task running now finishes) and give the lock up."""
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def run(self) -> None:
        """Wait for the leadership, lead until stopped or the lock is lost, and repeat."""
        leadership = leadership_for(self.engine, owner=self.owner)
        waiting = False
        _SCHEDULERS[self.token] = self
        try:
            while not self._stopping.is_set():
                try:
                    acquired = await asyncio.to_thread(leadership.try_acquire)
                except (SQLAlchemyError, OSError) as exc:
                    log.warning("scheduler %s cannot take the leader lock: %s", self.owner, exc)
                    acquired = False
                if not acquired:
                    if not waiting:
                        log.info(
                            "scheduler %s waiting: another scheduler leads (%s)",
                            self.owner,
                            await asyncio.to_thread(self._leader_name),
                        )
                        waiting = True
                    await self._pause(self.poll)
                    continue
                waiting = False
                try:
                    await self._lead(leadership)
                except (SQLAlchemyError, OSError) as exc:
                    log.error("scheduler %s stopped leading: %s", self.owner, exc)
                    await self._pause(self.poll)
                finally:
                    await asyncio.to_thread(leadership.release)
        finally:
            _SCHEDULERS.pop(self.token, None)
            await asyncio.to_thread(leadership.close)
        log.info("scheduler %s stopped: %s", self.owner, dict(self.runs) or "no task ran")

    def _leader_name(self) -> str:
        try:
            return current_leader(self.engine) or "unknown"
        except (SQLAlchemyError, OSError):
            return "unknown"

    async def _lead(self, leadership: Leadership) -> None:
        scheduler = self._apscheduler()
        await asyncio.to_thread(scheduler.start, paused=True)
        try:
            planned = await asyncio.to_thread(self._install, scheduler)
            scheduler.resume()
            self.leading = True
            log.info(
                "scheduler %s leads: %s",
                self.owner,
                ", ".join(f"{p.name} every {p.interval:g}s" for p in planned) or "no tasks",
            )
            while not self._stopping.is_set():
                await self._pause(self.poll)
                if self._stopping.is_set():
                    break
                if not await asyncio.to_thread(leadership.check):
                    log.error("scheduler %s lost the leader lock; stops scheduling", self.owner)
                    break
        finally:
            self.leading = False
            await asyncio.to_thread(scheduler.shutdown, wait=True)

    def _apscheduler(self) -> BackgroundScheduler:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        return BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.engine, tablename=JOBSTORE_TABLE)},
            executors={"default": ThreadPoolExecutor(max_workers=self.threads)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )

    def _install(self, scheduler: BackgroundScheduler) -> list[PlannedTask]:
        """Make the stored schedule match the table: keep each unchanged task's next run time,
        (re)schedule changed or new tasks to run now, drop disabled or unknown ones."""
        from apscheduler.triggers.interval import IntervalTrigger

        wanted = {
            name: interval
            for name, task in self.tasks.items()
            if (interval := task.interval(self.config)) > 0
        }
        for stored in scheduler.get_jobs():
            if stored.id not in wanted:
                scheduler.remove_job(stored.id)
                log.info("scheduler %s dropped task %s", self.owner, stored.id)
        now = datetime.now(UTC)
        planned = []
        for name, interval in wanted.items():
            every = timedelta(seconds=interval)
            stored = scheduler.get_job(name)
            same = (
                stored is not None
                and stored.func_ref == _FIRE_REF
                and isinstance(stored.trigger, IntervalTrigger)
                and stored.trigger.interval == every
            )
            if same:
                stored = scheduler.modify_job(name, args=(self.token, name))
            else:
                stored = scheduler.add_job(
                    fire_task,
                    IntervalTrigger(seconds=interval, timezone=UTC),
                    id=name,
                    name=name,
                    args=(self.token, name),
                    replace_existing=True,
                    next_run_time=now,
                )
            planned.append(PlannedTask(name, interval, stored.next_run_time))
        return planned

    def run_task(self, name: str) -> Mapping[str, Any] | None:
        """Run one task now in its own transaction and log what it did (called by
        :func:`fire_task` in APScheduler's threads; callable directly)."""
        task = self.tasks.get(name)
        if task is None:
            log.warning("scheduler %s has no task %s", self.owner, name)
            return None
        started = time.monotonic()
        with log_context(task=name, scheduler=self.owner):
            try:
                with self.sessionmaker.begin() as session:
                    result = dict(task.run(session, self.config))
            except Exception:
                self.failures[name] += 1
                log.exception("task %s failed", name)
                return None
            self.runs[name] += 1
            log.info(
                "task %s ran in %.0f ms",
                name,
                (time.monotonic() - started) * 1000,
                extra={"fields": result},
            )
        return result


def planned_tasks(config: Config, engine: Engine) -> list[PlannedTask]:
    """The schedule of this configuration with the next run times stored in the database
    (``None`` for a task no leader has scheduled yet)."""
    table = sa.Table(
        JOBSTORE_TABLE,
        sa.MetaData(),
        sa.Column("id", sa.Unicode(191), primary_key=True),
        sa.Column("next_run_time", sa.Float(25)),
    )
    stored: dict[str, float | None] = {}
    if sa.inspect(engine).has_table(JOBSTORE_TABLE):
        with engine.connect() as connection:
            stored = dict(connection.execute(sa.select(table.c.id, table.c.next_run_time)).all())
    planned = []
    for task in schedule_table(config):
        interval = task.interval(config)
        if interval <= 0:
            continue
        timestamp = stored.get(task.name)
        when = datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None
        planned.append(PlannedTask(task.name, interval, when))
    return planned
