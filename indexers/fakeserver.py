"""Run a fake upstream (any ``aiohttp.web.Application``) on loopback, and make it misbehave.

Every fake registry in ``forage/fakes/`` is a plain aiohttp app; this module serves one on
``127.0.0.1`` with an OS-chosen port (the aiohttp ``examples/fake_server.py`` pattern) and
provides :func:`fake_app`, which every fake builds its app with (so each accepts request bodies
as large as the real service does, not aiohttp's 1 MiB default), and two middlewares every
fake can install:

- :class:`Faults` -- one-shot faults queued from a test: an HTTP status (5xx, 429, with or
  without ``Retry-After``), a slow answer, a connection reset, a malformed body, a body cut
  short under a full ``Content-Length``, a body dripped a few bytes at a time;
- :class:`RequestLog` -- every request seen (method, path, query, headers), so a test can
  assert what a client sent (``since`` values, ``Accept`` headers).

Usage from an async test::

    faults = Faults()
    app = fake_app(faults.middleware)
    async with serve(app) as fake:          # or: fake = await start_fake(app) ... fake.close()
        faults.fail(503, times=2, retry_after="7")
        response = await client.get(fake.url + "/x")

From synchronous code (a subprocess client such as pip or npm, ``forage demo``) run the app on
its own event loop in a thread: ``with ThreadedServer(app) as fake: ...``.

:func:`blackhole` gives an address whose connections are never answered (the kernel drops the
SYN, as a firewall or a dead route does), to test connect timeouts without leaving loopback.

Nothing here imports pytest, so ``forage demo`` can use the fakes on a machine with no network.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The body a ``malformed`` fault answers with: truncated JSON, also not well-formed XML.
MALFORMED_BODY = b'{"truncated": [1, 2'
#: The largest request body a fake reads. The real services take far more than aiohttp's
#: default of 1 MiB (Kubo's ``dag/import`` and Cluster's ``add`` set no limit; PyPI takes
#: 100 MiB uploads), and a test or the demo pinning a multi-MiB archive must not be refused by
#: the fake alone; the bound only keeps a runaway client from filling memory.
FAKE_MAX_BODY = 4 << 30


def fake_app(*middlewares: Middleware) -> web.Application:
    """An aiohttp app for a fake with ``middlewares`` installed in order, reading request
    bodies up to :data:`FAKE_MAX_BODY`."""
    return web.Application(middlewares=middlewares, client_max_size=FAKE_MAX_BODY)


@dataclass
class RunningServer:
    """A fake listening on loopback; ``url`` has no trailing slash (``http://127.0.0.1:PORT``)."""

    url: str
    port: int
    runner: web.AppRunner

    async def close(self) -> None:
        """Stop listening and run the app's cleanup; safe to call twice."""
        await self.runner.cleanup()


async def start_fake(app: web.Application, *, host: str = "127.0.0.1") -> RunningServer:
    """Serve ``app`` on ``host`` with a free port chosen by the OS and return where it listens."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = int(runner.addresses[0][1])
    log.debug("fake %s listening on %s:%d", app, host, port)
    return RunningServer(url=f"http://{host}:{port}", port=port, runner=runner)


@asynccontextmanager
async def serve(app: web.Application, *, host: str = "127.0.0.1") -> AsyncIterator[RunningServer]:
    """Serve ``app`` for the duration of an ``async with`` block."""
    running = await start_fake(app, host=host)
    try:
        yield running
    finally:
        await running.close()


class ThreadedServer:
    """Serve an app on its own event loop in a daemon thread, for synchronous callers.

    ``with ThreadedServer(app) as fake:`` yields the :class:`RunningServer`; leaving the block
    stops the server and joins the thread. State the fake keeps (packages, faults) may be
    changed from the calling thread between requests.
    """

    def __init__(self, app: web.Application, *, host: str = "127.0.0.1") -> None:
        self._app = app
        self._host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._running: RunningServer | None = None

    def __enter__(self) -> RunningServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_fake(self._app, host=self._host), self._loop
        )
        self._running = future.result(timeout=30)
        return self._running

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._running is not None:
            asyncio.run_coroutine_threadsafe(self._running.close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


FaultKind = Literal["status", "slow", "reset", "malformed", "truncate", "drip"]


@dataclass(frozen=True)
class Fault:
    """One queued misbehaviour; ``path`` is a path prefix it applies to (``None``: any path)."""

    kind: FaultKind
    path: str | None = None
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    chunk: int = 1

    def matches(self, request: web.Request) -> bool:
        return self.path is None or request.path.startswith(self.path)


@dataclass
class Faults:
    """A queue of one-shot faults served, in order, to the requests they match.

    Each call queues ``times`` copies; each matching request consumes one. ``fail`` answers a
    status (``retry_after`` is sent verbatim: seconds or an HTTP date); ``slow`` sleeps
    ``delay`` seconds before answering normally; ``reset`` aborts the TCP connection without a
    response; ``malformed`` answers 200 with :data:`MALFORMED_BODY` under the real response's
    content type; ``truncate`` sends the real status and full ``Content-Length`` but only the
    first half of the body, then closes the connection; ``drip`` sends the real answer
    ``chunk`` bytes every ``delay`` seconds.
    """

    queue: deque[Fault] = field(default_factory=deque)

    def fail(
        self,
        status: int = 503,
        *,
        times: int = 1,
        retry_after: str | None = None,
        path: str | None = None,
    ) -> None:
        self._add(Fault("status", path, status=status, retry_after=retry_after), times)

    def slow(self, delay: float, *, times: int = 1, path: str | None = None) -> None:
        self._add(Fault("slow", path, delay=delay), times)

    def reset(self, *, times: int = 1, path: str | None = None) -> None:
        self._add(Fault("reset", path), times)

    def malformed(self, *, times: int = 1, path: str | None = None) -> None:
        self._add(Fault("malformed", path), times)

    def truncate(self, *, times: int = 1, path: str | None = None) -> None:
        self._add(Fault("truncate", path), times)

    def drip(
        self, delay: float, *, chunk: int = 1, times: int = 1, path: str | None = None
    ) -> None:
        self._add(Fault("drip", path, delay=delay, chunk=chunk), times)

    def clear(self) -> None:
        self.queue.clear()

    @property
    def pending(self) -> int:
        """How many queued faults have not fired yet."""
        return len(self.queue)

    def _add(self, fault: Fault, times: int) -> None:
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        self.queue.extend([fault] * times)

    def _take(self, request: web.Request) -> Fault | None:
        for index, fault in enumerate(self.queue):
            if fault.matches(request):
                del self.queue[index]
                return fault
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self._take(request)
        if fault is None:
            return await handler(request)
        log.debug("fault %s on %s", fault.kind, request.path)
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return web.Response(status=fault.status, text=f"fault {fault.status}", headers=headers)
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return await handler(request)
        if fault.kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        response = await handler(request)
        if fault.kind in ("truncate", "drip") and isinstance(response, web.Response):
            return await _send_badly(request, response, fault)
        return web.Response(
            status=200,
            body=MALFORMED_BODY,
            content_type=response.content_type,
        )


async def _send_badly(
    request: web.Request, response: web.Response, fault: Fault
) -> web.StreamResponse:
    """Send ``response`` cut in half (``truncate``) or dripped slowly (``drip``)."""
    raw = response.body
    body = bytes(raw) if isinstance(raw, bytes | bytearray) else b""
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(body)
    await stream.prepare(request)
    if fault.kind == "truncate":
        await stream.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError
    for start in range(0, len(body), max(1, fault.chunk)):
        await stream.write(body[start : start + max(1, fault.chunk)])
        await asyncio.sleep(fault.delay)
    await stream.write_eof()
    return stream


@contextmanager
def blackhole(host: str = "127.0.0.1") -> Iterator[str]:
    """Yield ``http://host:port`` where connecting hangs: a listener whose accept queue is full.

    The listener never accepts and its one backlog slot is taken by a connection made here, so
    Linux drops every further SYN: a client sees no refusal, no answer, only its own timeout.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind((host, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            with suppress(BlockingIOError):
                filler.connect((host, port))
        yield f"http://{host}:{port}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@dataclass(frozen=True)
class SeenRequest:
    """One request as the fake received it (``path`` decoded, ``raw_path`` as sent)."""

    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class RequestLog:
    """Records every request passing through its middleware (install it first to see faults)."""

    seen: list[SeenRequest] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [request.path for request in self.seen]

    def clear(self) -> None:
        self.seen.clear()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.seen.append(
            SeenRequest(
                method=request.method,
                path=request.path,
                raw_path=request.rel_url.raw_path,
                query=dict(request.query),
                headers={key.lower(): value for key, value in request.headers.items()},
            )
        )
        return await handler(request)


__all__ = [
    "MALFORMED_BODY",
    "Fault",
    "Faults",
    "RequestLog",
    "RunningServer",
    "SeenRequest",
    "ThreadedServer",
    "blackhole",
    "serve",
    "start_fake",
]
