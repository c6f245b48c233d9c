"""``forage serve``: run the HTTP server (API, gateway, web pages, mirror) until stopped.

Opens the configured database (the embedded SQLite store is created or migrated on first
use) and blockstore, builds the one application (:func:`forage.server.app.make_app`), and
listens on ``server.host``/``server.port`` (``--host``/``--port`` override them; port 0 picks
a free one, printed on stderr). SIGINT or SIGTERM stops it cleanly: the listener closes,
requests in flight finish (up to ``SHUTDOWN_TIMEOUT`` seconds), the application's cleanup
contexts run, then the database engine is disposed; the exit status is 0.
Shutdown order: https://docs.aiohttp.org/en/stable/web_advanced.html#graceful-shutdown

With ``--processes N`` (``server.processes``) above 1, this process binds the socket and
supervises N server processes forked onto it (:mod:`forage.server.processes`), each opening
the database and blockstore itself. ``/metrics`` then uses prometheus_client's multiprocess
mode: every process records into files of one temporary directory, and a scrape answered by
any of them reports the sum over all of them (dead ones included, so counters never go back).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from forage.cli import load_cli_config

if TYPE_CHECKING:
    import asyncio

    from forage.config import Config
    from forage.server.processes import ServerProcess


#: Seconds requests in flight get to finish once a stop signal arrives.
SHUTDOWN_TIMEOUT = 10.0
#: What the parent of several server processes gives them to stop, beyond SHUTDOWN_TIMEOUT
#: (the application's cleanup, the database engine's disposal), before it kills them.
STOP_MARGIN = 5.0
#: The variable that puts prometheus_client in multiprocess mode (read when it is imported).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The most server processes ``--processes`` accepts (``server.processes`` has the same bound).
MAX_PROCESSES = 1024

DESCRIPTION = """\
Serve the lookup API, the trustless gateway, the web pages and the package mirror until
SIGINT or SIGTERM.

One process answers lookups on one CPU core. With --processes N (server.processes) this
process binds the listening socket and runs N server processes that accept on it, each
with its own database connections; 0 or 'auto' is one per CPU core this process may use.
It restarts a process that dies (waiting longer each time one keeps dying), passes SIGINT
and SIGTERM on to all of them and exits 0 once they all stopped cleanly, or 1 with the
reason if they cannot start. /metrics reports the sum over all processes; /healthz names
the process that answered (pid). Each process has its own request memory budget
(server.request_memory); the backfill rate and burst are shared out between them. On
PostgreSQL, mind the connections: each process opens its own pool."""


def processes_value(text: str) -> int:
    """``--processes``: a count, with 0 or ``auto`` for one per CPU core."""
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(
            f"must be a number of processes from 0 to {MAX_PROCESSES}, or 'auto', got {text!r}"
        )
    return value


def register(subparsers: Any) -> None:
    """Add ``serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP server",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="address to listen on (default: server.host)")
    parser.add_argument(
        "--port", type=int, help="port to listen on, 0 for any free one (default: server.port)"
    )
    parser.add_argument(
        "--processes",
        type=processes_value,
        metavar="N",
        help="server processes accepting on the socket; 0 or 'auto': one per CPU core "
        "(default: server.processes, 1)",
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from forage.server.processes import usable_cpus

    config = load_cli_config(args)
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        print(f"forage: --port must be in 0..65535, got {port}", file=sys.stderr)
        return 2
    wanted = config.server.processes if args.processes is None else args.processes
    count = wanted or usable_cpus()
    if count == 1:
        return asyncio.run(serve(config, host=host, port=port))
    return serve_processes(config, args, host=host, port=port, count=count)


#: Allocations between young-generation collections while serving (CPython's default: 700).
GC_THRESHOLD = 10_000


def settle_heap() -> None:
    """Tune the collector for serving, once start-up is done: what start-up built (modules,
    the application) lives as long as the process, so it is frozen out of every collection,
    and young collections come every ``GC_THRESHOLD`` allocations. A 1,000-key lookup makes
    tens of thousands of short-lived objects; with the defaults, collections cost a third
    of its time and its p99 tripled (``scripts/bench_lookup.py``).
    https://docs.python.org/3/library/gc.html#gc.freeze"""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, older, oldest)


def _url(address: Any) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _announce(addresses: list[Any]) -> None:
    urls = ", ".join(_url(address) for address in addresses)
    print(f"forage: serving on {urls}", file=sys.stderr, flush=True)


async def run_app(
    app: Any,
    *,
    sites: Callable[[Any], list[Any]],
    stop: asyncio.Event,
    listening: Callable[[list[Any]], object],
    stopping: Callable[[], object],
) -> None:
    """Serve ``app`` on the sites ``sites(runner)`` makes until ``stop`` is set, then shut
    down cleanly; ``listening(addresses)`` once they all accept connections, ``stopping()``
    when ``stop`` is set."""
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    settle_heap()
    try:
        for site in sites(runner):
            await site.start()
        listening(runner.addresses)
        await stop.wait()
        stopping()
    finally:
        await runner.cleanup()


async def serve(config: Any, *, host: str, port: int) -> int:
    """Open the database and blockstore, serve until SIGINT/SIGTERM, close everything."""
    from aiohttp import web

    def stopping() -> None:
        print("forage: stopping", file=sys.stderr, flush=True)

    await _serve(
        config,
        lambda runner: [web.TCPSite(runner, host, port)],
        listening=_announce,
        stopping=stopping,
    )
    print("forage: stopped", file=sys.stderr, flush=True)
    return 0


async def _serve(
    config: Any,
    sites: Callable[[Any], list[Any]],
    *,
    listening: Callable[[list[Any]], object],
    stopping: Callable[[], object],
    process: ServerProcess | None = None,
) -> None:
    import asyncio

    from forage.archive.blocks import open_blockstore
    from forage.db.engine import make_sessionmaker, open_database
    from forage.server.app import make_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if process is not None:
        process.on_parent_exit(loop, stop.set)
    engine = open_database(config.database)
    try:
        app = make_app(
            config, sessionmaker=make_sessionmaker(engine), blockstore=open_blockstore(config)
        )
        await run_app(app, sites=sites, stop=stop, listening=listening, stopping=stopping)
    finally:
        engine.dispose()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def share_config(config: Config, count: int) -> Config:
    """The configuration each of ``count`` server processes runs with: the backfill rate and
    burst shared out, so the server as a whole queues no more imports than configured."""
    import dataclasses

    server = config.server
    burst = max(server.backfill_burst // count, min(server.backfill_burst, 1))
    shared = dataclasses.replace(
        server, backfill_rate=server.backfill_rate / count, backfill_burst=burst
    )
    return dataclasses.replace(config, server=shared)


def serve_processes(
    config: Config, args: argparse.Namespace, *, host: str, port: int, count: int
) -> int:
    """Bind ``host``:``port``, run ``count`` server processes on it until SIGINT/SIGTERM."""
    import logging
    import tempfile

    # SIGTERM while starting interrupts like SIGINT, so the directory below is removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="forage-metrics-") as metrics:
        # Before prometheus_client is first imported, here or in a child.
        os.environ[METRICS_DIR_ENV] = metrics
        from forage.archive.blocks import open_blockstore
        from forage.db.engine import open_database
        from forage.server.app import ROUTE_MODULES
        from forage.server.processes import bind, supervise
        from storage import PackedBlockstore

        # One clear failure here rather than one per process, and the SQLite store migrated
        # once; the engine and the blockstore (a bucket's client, a locator's connections)
        # are closed before any fork.
        open_database(config.database).dispose()
        store = open_blockstore(config)
        if isinstance(store, PackedBlockstore):
            store.close()
        for name in ROUTE_MODULES:  # imported once, shared by the forks
            importlib.import_module(name)

        sockets = bind(host, port)
        try:
            shared = share_config(config, count)
            logging.getLogger(__name__).info("starting %d server processes", count)
            supervise(
                sockets,
                count,
                lambda process: _serve_process(shared, args, process),
                on_serving=lambda: _announce([sock.getsockname() for sock in sockets]),
                on_stopping=lambda: print("forage: stopping", file=sys.stderr, flush=True),
                stop_timeout=SHUTDOWN_TIMEOUT + STOP_MARGIN,
            )
        finally:
            for sock in sockets:
                sock.close()
    print("forage: stopped", file=sys.stderr, flush=True)
    return 0


def _serve_process(config: Config, args: argparse.Namespace, process: ServerProcess) -> int:
    """One forked server process: the application on the inherited sockets until SIGTERM
    (or its parent's exit); a failure is one line, as the CLI would print it."""
    import asyncio
    import logging

    from aiohttp import web

    from forage.cli.failures import explain

    def sites(runner: Any) -> list[Any]:
        return [web.SockSite(runner, sock) for sock in process.sockets]

    def listening(_addresses: list[Any]) -> None:
        process.ready()

    try:
        asyncio.run(
            _serve(config, sites, listening=listening, stopping=lambda: None, process=process)
        )
    except Exception as exc:
        failure = explain(exc, args)
        if failure is None:
            logging.getLogger(__name__).exception("server process %d failed", os.getpid())
            return 1
        print(f"forage: {failure.message}", file=sys.stderr, flush=True)
        return failure.exit_code
    return 0
