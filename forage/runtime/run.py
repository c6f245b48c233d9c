"""One process running the whole system: HTTP server, workers and scheduler (``forage run``).

:func:`start` opens the database (the embedded SQLite store is created and migrated on first
use), the shared job resources (:func:`forage.jobs.worker.job_context`: registry clients,
blockstore), then starts what was asked for, each as a task on one event loop:

- the HTTP server (the application ``forage serve`` builds) on ``server.host``/``port``;
- a :class:`~forage.jobs.worker.Worker` running every job kind Forage knows;
- the :class:`~forage.jobs.scheduler.Scheduler`, which leads if no other scheduler does.

The same parts run alone as ``forage serve``, ``forage worker`` and ``forage scheduler``; on
PostgreSQL any number of them may run on many machines.

Shutdown (:meth:`Running.stop`, the first SIGINT or SIGTERM): the scheduler stops scheduling
and gives its lock up, the worker stops claiming and finishes the jobs in hand, then the
HTTP server closes its connections and the database is released. A part that cannot work
(a full disk) keeps retrying and the HTTP server's ``/healthz`` names it meanwhile. A second signal
(:meth:`Running.abort`) interrupts the jobs in hand and gives their leases back at once. If a
part fails, the others are stopped the same way and the process exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from forage.config import Config
from forage.jobs.queue import RetryPolicy
from forage.jobs.scheduler import Scheduler
from forage.jobs.worker import Handler, JobContext, Worker, install_signal_handlers, job_context
from forage.server.ops import PARTS

log = logging.getLogger(__name__)

#: Seconds the HTTP server gives open requests to finish on shutdown.
HTTP_SHUTDOWN_TIMEOUT = 10.0


@dataclass(slots=True)
class Running:
    """The parts of a running Forage process and the handle to stop it.

    ``url`` is where the HTTP server listens (``None`` without one).
    """

    config: Config
    engine: Engine
    sessionmaker: sessionmaker[Session]
    context: JobContext
    worker: Worker | None = None
    scheduler: Scheduler | None = None
    app: web.Application | None = None
    url: str | None = None
    tasks: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Stop gracefully: no new scheduling or claiming; jobs in hand finish."""
        if not self.stopping.is_set():
            log.info("forage stopping")
        self.stopping.set()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.worker is not None:
            self.worker.stop()

    def abort(self) -> None:
        """Stop now: interrupt the jobs in hand and give their leases back."""
        self.stop()
        if self.worker is not None:
            self.worker.abort()

    def spawn(self, name: str, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.tasks[name] = asyncio.create_task(coroutine, name=f"forage-{name}")

    async def wait(self) -> int:
        """Wait until stopped (0) or until a part ends on its own (1, the others stopped)."""
        stop_wait = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait(
                {stop_wait, *self.tasks.values()}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop_wait.cancel()
        failed = [name for name, task in self.tasks.items() if task.done()]
        if self.stopping.is_set() and not failed:
            return 0
        for name in failed:
            task = self.tasks[name]
            error = None if task.cancelled() else task.exception()
            log.error("forage %s ended unexpectedly: %r; stopping the rest", name, error)
        self.stop()
        return 1


def build_http_app(
    config: Config, *, sessionmaker: sessionmaker[Session], context: JobContext
) -> web.Application:
    """The HTTP application ``forage serve`` runs, over this process's database and
    blockstore."""
    from forage.archive.blocks import open_blockstore
    from forage.server.app import make_app

    blockstore = context.blockstore or open_blockstore(config)
    return make_app(config, sessionmaker=sessionmaker, blockstore=blockstore)


async def _serve_http(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    return runner, f"http://{shown}:{bound_port}"


@asynccontextmanager
async def start(
    config: Config,
    *,
    http: bool = True,
    workers: bool = True,
    scheduler: bool = True,
    host: str | None = None,
    port: int | None = None,
    concurrency: int | None = None,
    handlers: Mapping[str, Handler] | None = None,
) -> AsyncIterator[Running]:
    """Open the database and start the chosen parts; stop and close them on exit.

    ``port=0`` picks a free port (see ``Running.url``). ``handlers`` replaces the job kinds
    of :func:`forage.jobs.handlers.default_handlers`.
    """
    from forage.db.engine import make_sessionmaker, open_database
    from forage.jobs.handlers import default_handlers

    engine = await asyncio.to_thread(open_database, config.database)
    runner: web.AppRunner | None = None
    try:
        factory = make_sessionmaker(engine)
        async with job_context(config, factory) as context:
            running = Running(config, engine, factory, context)
            try:
                if http:
                    running.app = build_http_app(config, sessionmaker=factory, context=context)
                    runner, running.url = await _serve_http(
                        running.app,
                        host or config.server.host,
                        config.server.port if port is None else port,
                    )
                    log.info("forage serving on %s", running.url)
                if workers:
                    running.worker = Worker(
                        context,
                        handlers if handlers is not None else default_handlers(),
                        concurrency=concurrency or config.worker.concurrency,
                        policy=RetryPolicy.from_config(config.jobs),
                        poll_interval=config.jobs.poll_interval,
                    )
                    running.spawn("worker", running.worker.run())
                if scheduler:
                    running.scheduler = Scheduler(config, engine, owner=context.owner)
                    running.spawn("scheduler", running.scheduler.run())
                if running.app is not None:
                    running.app[PARTS].extend(p for p in (running.worker, running.scheduler) if p)
                yield running
            finally:
                running.stop()
                await _finish(running)
                if runner is not None:
                    await runner.cleanup()
    finally:
        engine.dispose()


async def _finish(running: Running) -> None:
    """Wait for the parts to end after ``stop``; a second signal aborts the worker."""
    results = await asyncio.gather(*running.tasks.values(), return_exceptions=True)
    for name, result in zip(running.tasks, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.error("forage %s failed: %r", name, result, exc_info=result)


async def run_forage(
    config: Config,
    *,
    http: bool = True,
    workers: bool = True,
    scheduler: bool = True,
    host: str | None = None,
    port: int | None = None,
    concurrency: int | None = None,
    on_ready: Callable[[Running], None] | None = None,
) -> int:
    """Run until SIGINT/SIGTERM (``forage run``, ``forage scheduler``); the exit code."""
    async with start(
        config,
        http=http,
        workers=workers,
        scheduler=scheduler,
        host=host,
        port=port,
        concurrency=concurrency,
    ) as running:
        remove = install_signal_handlers(running.stop, running.abort)
        try:
            if on_ready is not None:
                on_ready(running)
            return await running.wait()
        finally:
            remove()
