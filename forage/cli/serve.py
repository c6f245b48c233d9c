"""``forage serve``: run the HTTP server (API, gateway, web pages, mirror) until stopped.

Opens the configured database (the embedded SQLite store is created or migrated on first
use) and blockstore, builds the one application (:func:`forage.server.app.make_app`), and
listens on ``server.host``/``server.port`` (``--host``/``--port`` override them; port 0 picks
a free one, printed on stderr). SIGINT or SIGTERM stops it cleanly: the listener closes,
requests in flight finish (up to ``SHUTDOWN_TIMEOUT`` seconds), the application's cleanup
contexts run, then the database engine is disposed; the exit status is 0.
Shutdown order: https://docs.aiohttp.org/en/stable/web_advanced.html#graceful-shutdown
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from typing import TYPE_CHECKING, Any

from forage.cli import load_cli_config

if TYPE_CHECKING:
    import asyncio

#: Seconds requests in flight get to finish once a stop signal arrives.
SHUTDOWN_TIMEOUT = 10.0


def register(subparsers: Any) -> None:
    """Add ``serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP server",
        description="Serve the lookup API, the trustless gateway, the web pages and the "
        "package mirror until SIGINT or SIGTERM.",
    )
    parser.add_argument("--host", help="address to listen on (default: server.host)")
    parser.add_argument(
        "--port", type=int, help="port to listen on, 0 for any free one (default: server.port)"
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    config = load_cli_config(args)
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        print(f"forage: --port must be in 0..65535, got {port}", file=sys.stderr)
        return 2
    return asyncio.run(serve(config, host=host, port=port))


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


async def run_app(app: Any, *, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve ``app`` on ``host``:``port`` until ``stop`` is set, then shut down cleanly."""
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    settle_heap()
    try:
        await web.TCPSite(runner, host, port).start()
        urls = ", ".join(_url(address) for address in runner.addresses)
        print(f"forage: serving on {urls}", file=sys.stderr, flush=True)
        await stop.wait()
        print("forage: stopping", file=sys.stderr, flush=True)
    finally:
        await runner.cleanup()


async def serve(config: Any, *, host: str, port: int) -> int:
    """Open the database and blockstore, serve until SIGINT/SIGTERM, close everything."""
    import asyncio

    from forage.archive.blocks import open_blockstore
    from forage.db.engine import make_sessionmaker, open_database
    from forage.server.app import make_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    engine = open_database(config.database)
    try:
        app = make_app(
            config, sessionmaker=make_sessionmaker(engine), blockstore=open_blockstore(config)
        )
        await run_app(app, host=host, port=port, stop=stop)
    finally:
        engine.dispose()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print("forage: stopped", file=sys.stderr, flush=True)
    return 0
