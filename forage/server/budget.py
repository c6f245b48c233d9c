"""Admission control for request bodies: heavy requests share a memory budget.

A lookup of a 15 MB body holds that body, the keys parsed from it, their results and the
reply; sixteen at once took the server past 2 GiB (issue 15). Every request whose body is
larger than :data:`SMALL_BODY` (or of undeclared length) is therefore charged its declared
size, or ``server.max_body_size`` when it declares none, against ``server.request_memory``
for as long as its handler runs (the reply is streamed inside it). A request that does not
fit waits its turn, first come first served, for at most ``server.request_wait`` seconds,
then gets a 503 with ``Retry-After``; a body declared larger than ``server.max_body_size`` is
refused with a 413 before it is read. Small requests are never charged, so browsing and
mirror traffic never queue behind lookups.

When the last charged request ends, the :attr:`MemoryBudget.idle_hooks` run (the lookup
readers' idle SQLite connections are closed: each maps the database file, and the pages a
burst read through every one of them stay in the process's resident memory, 45 MiB after
the benchmark of ``scripts/bench_memory.py``), then the C allocator is asked to hand its free
pages back to the system (glibc ``malloc_trim``): the keys and replies of a burst are freed,
but glibc keeps freed memory in its per-thread arenas, and the process would stay at its peak.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web

from forage.server.auth import json_http_error
from forage.server.state import CONFIG

log = logging.getLogger(__name__)

#: Bodies up to this many bytes are not charged (a form, an import, a small batch).
SMALL_BODY = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or ``None`` where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


_TRIM = _malloc_trim()


def trim_heap() -> None:
    """Hand the C allocator's free memory back to the system (glibc keeps what a burst freed
    in its arenas, and the process would stay at its peak); nothing where there is no
    ``malloc_trim``."""
    if _TRIM is not None:
        _TRIM()


class Overloaded(Exception):
    """The budget stayed full for the whole wait: the caller answers 503."""


class MemoryBudget:
    """Bytes of request bodies in flight, at most ``capacity`` (a weighted semaphore served
    in arrival order, so a large request is not starved by a stream of smaller ones).
    ``idle_hooks`` run whenever the last reservation is given back: they drop what a burst of
    heavy requests left cached."""

    def __init__(self, capacity: int, *, wait: float) -> None:
        self.capacity = capacity
        self.wait = wait
        self.in_use = 0
        self.idle_hooks: list[Callable[[], object]] = []
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, amount: int) -> int:
        """Reserve ``amount`` bytes (at most the whole budget); return what was reserved, to
        be given back to :meth:`release`. :class:`Overloaded` after ``wait`` seconds."""
        amount = min(amount, self.capacity)
        if not self._waiters and self.in_use + amount <= self.capacity:
            self.in_use += amount
            return amount
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (amount, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return amount  # admitted just as the wait ran out
            self._waiters.remove(entry)
            waiter.cancel()
            self._wake()
            raise Overloaded from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(amount)
            else:
                self._waiters.remove(entry)
                waiter.cancel()
                self._wake()
            raise
        return amount

    def release(self, amount: int) -> None:
        """Give back what :meth:`acquire` reserved; once nothing is held, run the idle hooks
        and trim the heap."""
        self.in_use -= amount
        self._wake()
        if self.in_use == 0:
            for hook in self.idle_hooks:
                try:
                    hook()
                except Exception:
                    log.exception("memory budget: idle hook %r failed", hook)
            trim_heap()

    def _wake(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.capacity:
            amount, waiter = self._waiters.popleft()
            self.in_use += amount
            waiter.set_result(None)


BUDGET = web.AppKey("memory_budget", MemoryBudget)


def setup(app: web.Application) -> None:
    """Give ``app`` its budget (from ``server.request_memory`` and ``server.request_wait``)."""
    server = app[CONFIG].server
    app[BUDGET] = MemoryBudget(server.request_memory, wait=server.request_wait)


@web.middleware
async def budget_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run ``handler`` within the budget when the request has a body larger than
    :data:`SMALL_BODY`; 413 for one declared larger than ``server.max_body_size``."""
    declared = request.content_length
    if not request.body_exists or (declared is not None and declared <= SMALL_BODY):
        return await handler(request)
    limit = request.app[CONFIG].server.max_body_size
    if declared is not None and declared > limit:
        raise json_http_error(
            web.HTTPRequestEntityTooLarge,
            f"the body is {declared} bytes; this server takes at most {limit} per request",
            max_size=limit,
            actual_size=declared,
        )
    budget = request.app[BUDGET]
    try:
        held = await budget.acquire(limit if declared is None else declared)
    except Overloaded:
        retry = max(1, math.ceil(budget.wait))
        log.warning("request memory budget full: %s %s refused", request.method, request.path)
        raise json_http_error(
            web.HTTPServiceUnavailable,
            f"the server is busy with other large requests; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        ) from None
    try:
        return await handler(request)
    finally:
        budget.release(held)
