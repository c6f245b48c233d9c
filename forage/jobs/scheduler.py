"""The scheduler: the periodic tasks that keep the archive moving, run by one leader at a time.

The tasks are the rows of the schedule table (:func:`forage.jobs.tasks.schedule_table`, in
:mod:`forage.jobs.tasks` with what each task does); the ``reverify`` job is in
:mod:`forage.jobs.reverify`, and the leader lock in :mod:`forage.jobs.leader`. This module
runs the table: :class:`Scheduler`.

**APScheduler 3** (https://apscheduler.readthedocs.io/en/3.x/) keeps the schedule: a
``BackgroundScheduler`` whose ``SQLAlchemyJobStore`` lives in Forage's own database (table
:data:`JOBSTORE_TABLE`), so next run times survive restarts and a restarted or new leader
neither repeats nor skips a run (late runs are coalesced into one). APScheduler 4 would
coordinate several schedulers itself, but it is a pre-release whose README says not to use
it in production; APScheduler 3's job stores must not be shared by running schedulers, so
Forage elects a leader itself and only the leader runs one.

**No silent stop.** APScheduler 3 lets a job store's write error (a full disk) end its
scheduling thread while the process lives on; :class:`_GuardedScheduler` turns that into a
failure the leader acts on. A leader that cannot schedule, or a standby that cannot even
ask for the lock, reports itself down (:mod:`forage.jobs.health`, so ``/healthz`` answers 503
naming the scheduler), gives the lock up, waits :data:`FAILED_BACKOFF` polls (a healthy
standby takes over meanwhile) and tries again, until it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from forage.config import Config
from forage.db.engine import SCHEDULER_TABLE, make_sessionmaker
from forage.jobs.health import PartHealth, Trouble
from forage.jobs.leader import Leadership, current_leader, leadership_for
from forage.jobs.reverify import reverify_job
from forage.jobs.tasks import REVERIFY, WATCH, Task, schedule_table, watch_job
from forage.logs import log_context

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from forage.jobs.worker import Handler

log = logging.getLogger(__name__)

#: Where APScheduler keeps the schedule, in Forage's database.
JOBSTORE_TABLE = SCHEDULER_TABLE
#: Polls a scheduler that failed waits before it asks for the lock again, so that a standby
#: that can still schedule is first to take over.
FAILED_BACKOFF = 3
#: How stored APScheduler jobs name :func:`fire_task` (``module:function``).
_FIRE_REF = "forage.jobs.scheduler:fire_task"

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


class SchedulingFailed(RuntimeError):
    """APScheduler's loop could not keep the schedule (its job store refused a write)."""


@functools.cache
def _guarded_scheduler_class() -> type[BackgroundScheduler]:
    from apscheduler.schedulers.background import BackgroundScheduler

    class _GuardedScheduler(BackgroundScheduler):
        """A ``BackgroundScheduler`` whose loop survives its job store's errors: the first one
        is kept in ``failure`` (the leader then stops it and gives the lock up) instead of
        ending the thread unnoticed."""

        failure: BaseException | None = None

        def _process_jobs(self) -> float | None:
            try:
                return super()._process_jobs()  # type: ignore[no-any-return]
            except Exception as exc:
                self.failure = self.failure or exc
                return None  # sleep until shut down

    return _GuardedScheduler


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """A task as scheduled: its name, interval and next run time (from the job store)."""

    name: str
    interval: float
    next_run: datetime | None


class Scheduler:
    """Runs the schedule table while it leads; waits for the lock otherwise.

    ``run()`` returns after :meth:`stop`. ``runs``/``failures`` count task runs in this
    process; ``leading`` says whether it leads now, ``terms`` how often it took the lock.
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
        self.terms = 0
        self.trouble = Trouble("scheduler", self.owner)
        self.token = secrets.token_hex(8)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop scheduling (a task running now finishes) and give the lock up."""
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def health(self) -> PartHealth:
        """``leading`` or ``standby``; ``down`` while it can neither schedule nor wait."""
        return self.trouble.health("leading" if self.leading else "standby")

    async def run(self) -> None:
        """Wait for the leadership, lead until stopped or the lock is lost, and repeat;
        after any failure, give the lock up, back off and try again."""
        leadership = leadership_for(self.engine, owner=self.owner)
        waiting = False
        _SCHEDULERS[self.token] = self
        try:
            while not self._stopping.is_set():
                try:
                    acquired = await asyncio.to_thread(leadership.try_acquire)
                except Exception as exc:
                    self.trouble.failed(exc, "take the leader lock")
                    await self._pause(self.poll * FAILED_BACKOFF)
                    continue
                if not acquired:
                    self.trouble.recovered()
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
                self.terms += 1
                failed = False
                try:
                    await self._lead(leadership)
                except Exception as exc:
                    self.trouble.failed(exc, "schedule")
                    failed = True
                finally:
                    await asyncio.to_thread(self._release, leadership)
                if failed:
                    await self._pause(self.poll * FAILED_BACKOFF)
        finally:
            _SCHEDULERS.pop(self.token, None)
            await asyncio.to_thread(self._release, leadership, close=True)
        log.info("scheduler %s stopped: %s", self.owner, dict(self.runs) or "no task ran")

    def _release(self, leadership: Leadership, *, close: bool = False) -> None:
        try:
            leadership.close() if close else leadership.release()
        except Exception as exc:
            log.warning("scheduler %s could not release the leader lock: %s", self.owner, exc)

    def _leader_name(self) -> str:
        try:
            return current_leader(self.engine) or "unknown"
        except Exception:
            return "unknown"

    async def _lead(self, leadership: Leadership) -> None:
        """Run APScheduler while this scheduler holds the lock; raise if it cannot schedule."""
        scheduler = self._apscheduler()
        await asyncio.to_thread(scheduler.start, paused=True)
        try:
            planned = await asyncio.to_thread(self._install, scheduler)
            scheduler.resume()
            self.leading = True
            self.trouble.recovered()
            log.info(
                "scheduler %s leads: %s",
                self.owner,
                ", ".join(f"{p.name} every {p.interval:g}s" for p in planned) or "no tasks",
            )
            while not self._stopping.is_set():
                await self._pause(self.poll)
                if self._stopping.is_set():
                    break
                if scheduler.failure is not None:
                    raise SchedulingFailed(
                        f"{type(scheduler.failure).__name__}: {scheduler.failure}"
                    ) from scheduler.failure
                if not await asyncio.to_thread(leadership.check):
                    log.error("scheduler %s lost the leader lock; stops scheduling", self.owner)
                    break
        finally:
            self.leading = False
            await asyncio.to_thread(scheduler.shutdown, wait=True)

    def _apscheduler(self) -> Any:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        return _guarded_scheduler_class()(
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


# -- the job handlers of the scheduled kinds -------------------------------------------------------


def scheduled_handlers() -> dict[str, Handler]:
    """The job kinds the scheduled tasks queue (registered in :mod:`forage.jobs.handlers`)."""
    return {WATCH: watch_job, REVERIFY: reverify_job}
