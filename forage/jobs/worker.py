"""The worker: an asyncio loop that claims jobs from the queue and runs their handlers.

A handler is ``async def handler(ctx: JobContext, job: Job) -> None`` registered under its
job kind (the real mapping is :func:`forage.jobs.handlers.default_handlers`). It returns to
complete the job, or raises: :mod:`forage.jobs.queue` decides between retry and dead. The contract
for handlers (ids in payloads, idempotent, safe after a kill) is in :mod:`forage.jobs.queue`.

The loop keeps at most ``concurrency`` jobs in hand, claims more as they finish, and extends
their leases every third of a lease (a job reclaimed elsewhere after a lost lease is
cancelled here), so leases can be short and a dead worker's jobs come back within one. At
start-up, and every :data:`DEAD_WORKER_CHECK` seconds while it claims, it also expires at once
the leases of this host's workers whose process is gone
(:func:`~forage.jobs.admin.expire_dead_local_leases`), so a killed worker's jobs are running
again within seconds whether or not it is restarted. Database calls run in threads
(``asyncio.to_thread``), one transaction each.

A worker that cannot claim (a full disk, the database gone) keeps trying every poll and
reports itself down meanwhile (:meth:`Worker.health`, shown by ``/healthz``).

Stopping: :meth:`Worker.stop` (first SIGTERM or SIGINT) stops claiming and lets the jobs in
hand finish; :meth:`Worker.abort` (a second signal) cancels them and gives their leases back
at once. Modes: ``forever`` (until stopped), ``once`` (one batch), ``drain`` (until no job is
ready and none runs anywhere; jobs scheduled for later are left).

Shared resources live in :class:`JobContext`, built once per worker by :func:`job_context`:
the config, the sessionmaker, one ``httpx.AsyncClient`` per configured registry
(:func:`registry_client`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx
from httpx_aiohttp import HttpxAiohttpClient
from sqlalchemy.orm import Session, sessionmaker

from forage import __version__
from forage.archive.blocks import open_blockstore
from forage.config import Config
from forage.db.engine import is_sqlite
from forage.db.models import JobState
from forage.errors import ConfigError
from forage.jobs import admin
from forage.jobs import queue as jobs
from forage.jobs.health import PartHealth, Trouble
from forage.jobs.queue import Job, RetryPolicy
from storage.blockstore import Blockstore

log = logging.getLogger(__name__)

T = TypeVar("T")
Mode = Literal["forever", "once", "drain"]
USER_AGENT = f"forage/{__version__}"
#: Seconds between a worker's looks for jobs still leased to dead workers of its host.
DEAD_WORKER_CHECK = 2.0


@dataclass(slots=True)
class JobContext:
    """What every handler gets besides its job: configuration and shared resources.

    ``http`` maps an ecosystem (``npm``, ``pypi``, ``golang``) to that registry's shared
    client; ``blockstore`` is the configured blockstore
    (:func:`~forage.archive.blocks.open_blockstore`).
    On SQLite, the transactions of one context run one at a time (a function given to
    :meth:`transaction` must not wait for another one).
    """

    config: Config
    sessionmaker: sessionmaker[Session]
    owner: str
    http: Mapping[str, httpx.AsyncClient] = field(default_factory=dict)
    blockstore: Blockstore | None = None
    _writer: threading.Lock | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bind = self.sessionmaker.kw.get("bind")
        if bind is not None and is_sqlite(bind):
            # SQLite has one writer. Threads of this process queue on a lock and hand the
            # database over at once; left to SQLite, a waiting writer polls with sleeps of up
            # to 100 ms (its busy handler) while the lock sits free.
            self._writer = threading.Lock()

    async def transaction(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(session, *args, **kwargs)`` in one committed transaction, in a thread."""
        return await asyncio.to_thread(self._run, fn, args, kwargs)

    def _run(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        if self._writer is None:
            with self.sessionmaker.begin() as session:
                return fn(session, *args, **kwargs)
        with self._writer, self.sessionmaker.begin() as session:
            return fn(session, *args, **kwargs)


Handler = Callable[[JobContext, Job], Awaitable[None]]


def worker_owner() -> str:
    """A lease owner name unique to this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(slots=True)
class WorkerStats:
    """What one run of a worker did."""

    claimed: int = 0
    done: int = 0
    retried: int = 0
    dead: int = 0
    lost: int = 0
    released: int = 0


@dataclass(slots=True)
class _InHand:
    job: Job
    task: asyncio.Task[None]
    finishing: bool = False
    lost: bool = False


class Worker:
    """Runs jobs of the kinds in ``handlers`` with up to ``concurrency`` at once.

    ``poll_interval`` is how long an idle worker waits before looking for work again.
    """

    def __init__(
        self,
        context: JobContext,
        handlers: Mapping[str, Handler],
        *,
        concurrency: int,
        policy: RetryPolicy,
        poll_interval: float = 1.0,
    ) -> None:
        if concurrency < 1:
            raise ConfigError("worker.concurrency", f"must be >= 1, got {concurrency}")
        self.context = context
        self.handlers = dict(handlers)
        self.concurrency = concurrency
        self.policy = policy
        self.poll_interval = poll_interval
        self.stats = WorkerStats()
        self._in_hand: dict[int, _InHand] = {}
        self._stopping = asyncio.Event()
        self._aborting = False
        self._finished: list[tuple[int, asyncio.Future[bool]]] = []
        self._completer: asyncio.Task[None] | None = None
        self.trouble = Trouble("worker", context.owner)
        self._dead_checked = time.monotonic()  # the start-up recovery just looked

    def health(self) -> PartHealth:
        """``running``, or ``down`` while it cannot claim jobs (it keeps trying)."""
        return self.trouble.health("running")

    @property
    def owner(self) -> str:
        return self.context.owner

    def stop(self) -> None:
        """Stop claiming; jobs in hand run to their end."""
        if not self._stopping.is_set():
            log.info(
                "worker %s stopping: finishing %d job(s) in hand", self.owner, len(self._in_hand)
            )
        self._stopping.set()

    def abort(self) -> None:
        """Stop now: cancel the jobs in hand and give their leases back."""
        self._aborting = True
        self._stopping.set()
        for entry in list(self._in_hand.values()):
            entry.task.cancel()

    async def _db(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await self.context.transaction(fn, *args, **kwargs)

    async def run(self, *, mode: Mode = "forever") -> WorkerStats:
        """Claim and run jobs until ``mode`` says to end; return the counts."""
        kinds = sorted(self.handlers)
        log.info(
            "worker %s started: mode %s, concurrency %d, kinds %s",
            self.owner,
            mode,
            self.concurrency,
            ", ".join(kinds) or "(none)",
        )
        await self._recover_local_leases(mode)
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                free = self.concurrency - len(self._in_hand)
                claimed: list[Job] = []
                if free > 0:
                    try:
                        claimed = await self._claim(kinds, free)
                    except Exception as exc:
                        if mode != "forever":
                            raise
                        self.trouble.failed(exc, "claim jobs")
                    else:
                        self.trouble.recovered()
                for job in claimed:
                    self._start(job)
                if mode == "once":
                    break
                idle = mode == "drain" and not claimed and not self._in_hand
                if idle and not await self._db(admin.has_pending, kinds=kinds):
                    break
                full = len(self._in_hand) >= self.concurrency
                if claimed and not full:
                    continue
                waiters = {stop_wait, *(e.task for e in self._in_hand.values())}
                await asyncio.wait(
                    waiters,
                    timeout=None if full else self.poll_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            tasks = [entry.task for entry in self._in_hand.values()]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            heartbeat.cancel()
            stop_wait.cancel()
            await asyncio.gather(heartbeat, stop_wait, return_exceptions=True)
            if self._completer is not None:
                await asyncio.gather(self._completer, return_exceptions=True)
        log.info("worker %s finished: %s", self.owner, self.stats)
        return self.stats

    async def _recover_local_leases(self, mode: Mode) -> None:
        """Free at once the jobs of this host's dead workers (a SIGKILLed worker restarted
        right away would otherwise find its jobs idle until their leases ran out)."""
        try:
            freed = await self._db(admin.expire_dead_local_leases, host=socket.gethostname())
        except Exception as exc:
            if mode != "forever":
                raise
            self.trouble.failed(exc, "take back the jobs of dead workers")
            return
        if freed:
            log.info(
                "worker %s took back %d job(s) of dead workers on this host", self.owner, freed
            )

    async def _claim(self, kinds: list[str], limit: int) -> list[Job]:
        now = time.monotonic()
        look_for_dead = now - self._dead_checked >= DEAD_WORKER_CHECK
        host = socket.gethostname()

        def claim(session: Session) -> list[Job]:
            if look_for_dead:
                admin.expire_dead_local_leases(session, host=host)
            jobs.reap_expired(session, policy=self.policy)
            return jobs.claim(
                session, owner=self.owner, limit=limit, policy=self.policy, kinds=kinds
            )

        claimed = await self._db(claim)
        if look_for_dead:
            self._dead_checked = now
        self.stats.claimed += len(claimed)
        return claimed

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
        self._in_hand[job.id] = _InHand(job, task)

    async def _run_job(self, job: Job) -> None:
        entry_handler = self.handlers[job.kind]
        try:
            log.debug("job %d %s started (attempt %d)", job.id, job.kind, job.attempt)
            try:
                await entry_handler(self.context, job)
            except asyncio.CancelledError:
                await self._cancelled(job)
                return
            except Exception as exc:
                log.debug("job %d %s raised", job.id, job.kind, exc_info=True)
                self._in_hand[job.id].finishing = True
                state = await self._db(
                    jobs.fail, job.id, owner=self.owner, error=exc, policy=self.policy
                )
                self._count(job, state)
                return
            self._in_hand[job.id].finishing = True
            if await self._complete(job.id):
                self.stats.done += 1
                log.debug("job %d %s done", job.id, job.kind)
            else:
                self.stats.lost += 1
                log.warning("job %d %s finished after its lease was lost", job.id, job.kind)
        except Exception:
            # The job row is untouched; its lease expires and another worker runs it again.
            log.exception("worker %s could not record the end of job %d", self.owner, job.id)
        finally:
            self._in_hand.pop(job.id, None)

    async def _complete(self, job_id: int) -> bool:
        """Mark a job done; False if its lease was lost.

        Group commit: jobs that finish while a completion transaction runs share the next
        one, so a busy worker spends one transaction on many jobs rather than one each.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finished.append((job_id, future))
        if self._completer is None or self._completer.done():
            self._completer = asyncio.create_task(self._complete_batches())
        return await future

    async def _complete_batches(self) -> None:
        while self._finished:
            batch, self._finished = self._finished, []
            try:
                held = await self._db(
                    jobs.complete_many, [job_id for job_id, _ in batch], owner=self.owner
                )
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for job_id, future in batch:
                    if not future.done():
                        future.set_result(job_id in held)

    def _count(self, job: Job, state: JobState | None) -> None:
        if state is None:
            self.stats.lost += 1
            log.warning("job %d %s failed after its lease was lost", job.id, job.kind)
        elif state == JobState.DEAD:
            self.stats.dead += 1
        elif state == JobState.QUEUED:
            self.stats.retried += 1
        else:
            self.stats.done += 1

    async def _cancelled(self, job: Job) -> None:
        entry = self._in_hand.get(job.id)
        if entry is not None and entry.lost:
            self.stats.lost += 1
            log.warning("job %d %s cancelled: its lease was taken over", job.id, job.kind)
            return
        released = await self._db(jobs.release, [job.id], owner=self.owner)
        self.stats.released += released
        log.info("job %d %s interrupted and released", job.id, job.kind)

    async def _heartbeat_loop(self) -> None:
        interval = self.policy.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            ids = [i for i, e in self._in_hand.items() if not e.finishing]
            if not ids:
                continue
            try:
                held = await self._db(jobs.heartbeat, ids, owner=self.owner, policy=self.policy)
            except Exception:
                log.exception("worker %s heartbeat failed", self.owner)
                continue
            for job_id in ids:
                entry = self._in_hand.get(job_id)
                if job_id not in held and entry is not None and not entry.finishing:
                    entry.lost = True
                    entry.task.cancel()


def registry_client(*, max_connections: int) -> httpx.AsyncClient:
    """One registry's shared client: the httpx API over aiohttp's connection pool.

    httpcore's pool costs about 2 ms of CPU per request and grows with the number of
    connections (each request scans every connection's state), a third of an import's CPU;
    aiohttp's pool (through ``httpx-aiohttp``) costs about a quarter of that. Proxies named
    in the environment apply as with plain httpx.
    """
    return HttpxAiohttpClient(
        headers={"User-Agent": USER_AGENT},
        limits=httpx.Limits(max_connections=max_connections),
        timeout=httpx.Timeout(60.0, connect=15.0),
        follow_redirects=False,
    )


@asynccontextmanager
async def job_context(
    config: Config, sessionmaker: sessionmaker[Session], *, owner: str | None = None
) -> AsyncIterator[JobContext]:
    """Build the shared resources handlers use, and close them afterwards."""
    clients: dict[str, httpx.AsyncClient] = {}
    try:
        for ecosystem in config.configured_registries():
            registry = config.registry(ecosystem)
            clients[ecosystem] = registry_client(max_connections=registry.max_connections)
        yield JobContext(
            config=config,
            sessionmaker=sessionmaker,
            owner=owner or worker_owner(),
            http=clients,
            blockstore=open_blockstore(config),
        )
    finally:
        for client in clients.values():
            await client.aclose()


def load_handlers(spec: str) -> Mapping[str, Handler]:
    """Call ``module:function`` and return the handler mapping it builds (operator hook)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError("--handlers", f"expected MODULE:FUNCTION, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("--handlers", f"cannot load {spec!r}: {exc}") from exc
    handlers = factory()
    if not isinstance(handlers, Mapping) or not all(callable(h) for h in handlers.values()):
        raise ConfigError("--handlers", f"{spec} did not return a mapping of kind -> handler")
    return handlers


def install_signal_handlers(
    stop: Callable[[], None], abort: Callable[[], None]
) -> Callable[[], None]:
    """First SIGTERM/SIGINT calls ``stop`` (finish what is in hand), a second ``abort``
    (interrupt it); returns a function removing the handlers. Used by every long-running
    command (``worker``, ``run``, ``demo``)."""
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        log.warning("received %s", signal.Signals(signum).name)
        if received == 1:
            stop()
        else:
            abort()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    def remove() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    return remove


async def run_worker(
    config: Config,
    handlers: Mapping[str, Handler],
    *,
    concurrency: int | None = None,
    mode: Mode = "forever",
    kinds: Collection[str] | None = None,
    handle_signals: bool = False,
) -> WorkerStats:
    """Open the database and shared resources, then run a :class:`Worker` (``forage worker``).

    ``kinds`` restricts the worker to some of the kinds in ``handlers``.
    """
    from forage.db.engine import make_sessionmaker, open_database

    if kinds is not None:
        unknown = sorted(set(kinds) - set(handlers))
        if unknown:
            raise ConfigError(
                "--kind",
                f"no handler for {', '.join(unknown)}; known: {', '.join(sorted(handlers))}",
            )
        handlers = {kind: handlers[kind] for kind in kinds}
    # At the head revision: SQLite is migrated on first use, PostgreSQL must be upgraded.
    engine = await asyncio.to_thread(open_database, config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as context:
            worker = Worker(
                context,
                handlers,
                concurrency=concurrency or config.worker.concurrency,
                policy=RetryPolicy.from_config(config.jobs),
                poll_interval=config.jobs.poll_interval,
            )
            remove = install_signal_handlers(worker.stop, worker.abort) if handle_signals else None
            try:
                return await worker.run(mode=mode)
            finally:
                if remove is not None:
                    remove()
    finally:
        engine.dispose()
