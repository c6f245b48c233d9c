"""The mirror's upstream client: deadline-bounded requests, failure classes, single flight, cache.

Every upstream request runs under a :class:`Deadline` (https://www.python-httpx.org/advanced/
timeouts/ for the connect/read split): a connect timeout (a blackholed host whose SYNs vanish
never refuses, it only hangs), a first-byte timeout that also bounds any stall, a floor on the
transfer rate once a grace period has passed (a body dripped a byte at a time never stalls
long enough to trip a read timeout), and for metadata a total deadline. Redirects are followed
here, each hop checked against the registry's download hosts
(:class:`indexers.download.HostPolicy`), so an upstream document cannot point Forage at an
internal address.

Failures become :class:`~indexers.errors.UpstreamFailed` with a ``kind`` (refused, reset,
timeout, slow, dns, tls, status, truncated, too_large, host, down); the caller then answers
from the archive. 404 and 410 are answers, not failures: the registry says the thing is gone.
After a connection-level failure or a 5xx the upstream counts as down for ``down_seconds``:
requests in that window go straight to the archive instead of each waiting out the deadline.

:class:`SingleFlight` makes concurrent identical requests share one upstream fetch (each
waiter gets the same result; a waiter that disconnects does not cancel it for the others),
counting as concurrent every request that arrived before the shared call finished.
:class:`MetadataCache` keeps upstream documents for a TTL, 404s for a much shorter one, in a
bounded LRU.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urljoin

import httpx
from aiohttp import web

from indexers.base import redact
from indexers.download import DownloadRefused, HostPolicy
from indexers.errors import UpstreamFailed

if TYPE_CHECKING:
    from indexers.mirror.registry import MirrorSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_REDIRECTS = 5
#: Answers that say "not here" and are passed on, not treated as failures.
ABSENT = frozenset({404, 410})
#: Failure kinds after which the upstream is considered down for a while.
DOWN_KINDS = frozenset({"refused", "reset", "timeout", "slow", "dns", "tls", "status"})


@dataclass(frozen=True, slots=True)
class Deadline:
    """How long an upstream may take; see the module docstring (seconds, bytes/s)."""

    connect: float = 3.0
    first_byte: float = 10.0
    total: float = 30.0
    min_rate: int = 20_000
    grace: float = 3.0

    @classmethod
    def from_config(cls, mirror: MirrorSettings) -> Deadline:
        return cls(
            connect=mirror.connect_timeout,
            first_byte=mirror.first_byte_timeout,
            total=mirror.deadline,
            min_rate=mirror.min_rate,
            grace=mirror.rate_grace,
        )

    def timeout(self) -> httpx.Timeout:
        """The httpx timeouts: connect, and first byte for every read, write and pool wait."""
        return httpx.Timeout(
            self.first_byte, connect=self.connect, pool=self.connect + self.first_byte
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream answer: status, a few headers, and the body (empty when it was streamed)."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes = b""

    @property
    def absent(self) -> bool:
        """The registry says it does not have this (404 or 410)."""
        return self.status in ABSENT


def classify(exc: BaseException) -> tuple[str, str]:
    """Name an httpx transport failure by its root cause: ``(kind, reason)``."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "timeout", "connect timeout (no answer to the connection attempt)"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout", f"no data within the first-byte timeout ({type(exc).__name__})"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "refused", "connection refused"
        if isinstance(cause, socket.gaierror):
            return "dns", f"name resolution failed: {cause}"
        if isinstance(cause, ssl.SSLError):
            return "tls", f"TLS failure: {cause}"
        if isinstance(cause, ConnectionResetError | BrokenPipeError):
            return "reset", "connection reset"
        cause = cause.__cause__ or cause.__context__
    text = str(exc)
    if isinstance(exc, httpx.RemoteProtocolError):
        if "incomplete" in text or "complete message body" in text:
            return "truncated", f"body cut short: {text}"
        return "reset", f"connection closed: {text}"
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "reset", f"connection lost: {text or type(exc).__name__}"
    return "transport", f"{type(exc).__name__}: {text}"


class Upstream:
    """One registry's upstream: ``fetch`` whole documents, ``download`` files into a sink.

    ``client`` is the caller's shared ``httpx.AsyncClient`` (its own timeouts are overridden
    per request by ``deadline``); ``policy`` lists the hosts requests and redirects may reach.
    ``clock`` is injectable for tests of the down window.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        deadline: Deadline,
        policy: HostPolicy,
        down_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.deadline = deadline
        self.policy = policy
        self.down_seconds = down_seconds
        self._clock = clock
        self._down_until = 0.0
        self._down_reason = ""
        self._failing: UpstreamFailed | None = None
        #: Requests sent upstream (redirect hops included), for logs and tests.
        self.requests = 0

    def sibling(self) -> Upstream:
        """Another upstream on the same client, deadline, hosts and clock, with a down window
        of its own (a second service of the same registry, such as Go's checksum database)."""
        return Upstream(
            self.client,
            deadline=self.deadline,
            policy=self.policy,
            down_seconds=self.down_seconds,
            clock=self._clock,
        )

    def down(self) -> str | None:
        """Why the upstream is being skipped right now, or ``None`` if it may be asked."""
        if self._clock() < self._down_until:
            return self._down_reason
        return None

    def failing(self) -> UpstreamFailed | None:
        """The connection-level failure or 5xx the last request ended in (``None``: it was
        answered), so a caller with something to go on need not wait to see it again."""
        return self._failing

    def _failed(self, url: str, kind: str, reason: str) -> UpstreamFailed:
        error = UpstreamFailed(redact(url), kind, reason)
        if kind in DOWN_KINDS:
            self._failing = error
            if self.down_seconds > 0:
                self._down_until = self._clock() + self.down_seconds
                self._down_reason = f"{kind}: {reason}"
        log.warning("upstream %s failed: %s: %s", redact(url), kind, reason)
        return error

    async def fetch(
        self, url: str, *, headers: Mapping[str, str] | None = None, max_size: int
    ) -> Answer:
        """GET a document whole, within the total deadline; 200/404/410 answer, else raise."""
        chunks: list[bytes] = []
        size = 0

        def collect(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > max_size:
                raise UpstreamFailed(redact(url), "too_large", f"document over {max_size} bytes")
            chunks.append(chunk)

        try:
            async with asyncio.timeout(self.deadline.total):
                answer = await self.download(url, collect, headers=headers)
        except TimeoutError as exc:
            raise self._failed(url, "timeout", f"over the {self.deadline.total}s deadline") from exc
        return Answer(answer.url, answer.status, answer.headers, b"".join(chunks))

    async def download(
        self,
        url: str,
        sink: Callable[[bytes], Any],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """GET ``url`` and feed the body to ``sink`` chunk by chunk, under the rate floor.

        Returns the final answer (body empty). A 404/410 is returned without reading its body;
        anything but 200 otherwise raises ``UpstreamFailed`` (``status``).
        """
        reason = self.down()
        if reason is not None:
            raise UpstreamFailed(redact(url), "down", f"skipped after a recent failure ({reason})")
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                self.policy.check(httpx.URL(current))
            except DownloadRefused as exc:
                raise UpstreamFailed(redact(current), "host", str(exc)) from exc
            request = self.client.build_request(
                "GET", current, headers=dict(headers or {}), timeout=self.deadline.timeout()
            )
            self.requests += 1
            try:
                response = await self.client.send(request, stream=True, follow_redirects=False)
            except httpx.HTTPError as exc:
                raise self._failed(current, *classify(exc)) from exc
            try:
                if response.is_redirect:
                    current = urljoin(current, response.headers.get("location", ""))
                    continue
                answer = Answer(
                    current,
                    response.status_code,
                    {k.lower(): v for k, v in response.headers.items()},
                )
                if response.status_code != 200 and not answer.absent:
                    raise self._failed(current, "status", f"HTTP {response.status_code}")
                self._failing = None
                if answer.absent:
                    return answer
                await self._read(response, sink, current)
                return answer
            finally:
                await response.aclose()
        raise UpstreamFailed(redact(url), "status", f"more than {MAX_REDIRECTS} redirects")

    async def _read(self, response: httpx.Response, sink: Callable[[bytes], Any], url: str) -> None:
        """Pull the body, bounding each wait by the stall timeout and the rate floor."""
        deadline = self.deadline
        start = self._clock()
        received = 0
        declared = response.headers.get("content-length")
        chunks = response.aiter_bytes().__aiter__()
        while True:
            wait = deadline.first_byte
            by_rate = False
            if deadline.min_rate:
                due = start + deadline.grace + received / deadline.min_rate - self._clock()
                if due < wait:
                    wait, by_rate = max(due, 0.0), True
            try:
                async with asyncio.timeout(wait):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                if by_rate:
                    raise self._failed(
                        url,
                        "slow",
                        f"{received} bytes in {self._clock() - start:.1f}s, "
                        f"below the {deadline.min_rate} B/s floor",
                    ) from exc
                raise self._failed(url, "timeout", f"stalled after {received} bytes") from exc
            except httpx.HTTPError as exc:
                raise self._failed(url, *classify(exc)) from exc
            received += len(chunk)
            sink(chunk)
        plain = response.headers.get("content-encoding") is None
        if plain and declared and declared.isdigit() and int(declared) != received:
            raise self._failed(url, "truncated", f"{received} of {declared} bytes")


#: When the request being answered reached the server (``time.monotonic()``), set by
#: :func:`arrival_middleware`; ``None`` outside a request.
ARRIVED: ContextVar[float | None] = ContextVar("forage_request_arrived", default=None)


@web.middleware
async def arrival_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Note when each request arrived, for :class:`SingleFlight`."""
    token = ARRIVED.set(time.monotonic())
    try:
        return await handler(request)
    finally:
        ARRIVED.reset(token)


class SingleFlight(Generic[T]):
    """Run one task per key at a time; concurrent callers with that key share its result.

    Concurrent means overlapping in time, not "still running when the caller got this far": a
    request that arrived (:data:`ARRIVED`) before a call for its key *finished* shares that
    call's outcome even if it reaches :meth:`run` a moment later (a burst against a fast
    upstream: the first fetch can end while the rest of the burst is still reading the index).
    A request that arrived after the call finished starts a new one, so sequential requests see
    the upstream as it is now. Finished outcomes are kept ``keep_seconds`` at most, and at most
    ``max_kept`` of them.
    """

    def __init__(
        self,
        *,
        keep_seconds: float = 5.0,
        max_kept: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tasks: dict[Hashable, asyncio.Task[T]] = {}
        self._finished: OrderedDict[Hashable, tuple[float, asyncio.Task[T]]] = OrderedDict()
        self._keep_seconds = keep_seconds
        self._max_kept = max_kept
        self._clock = clock
        #: How many calls started a task (the others joined one).
        self.started = 0

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        """Return ``await factory()``, joining the call for ``key`` that was running when the
        current request arrived, if there is one."""
        self._prune()
        task = self._tasks.get(key)
        if task is None:
            arrived = ARRIVED.get()
            finished = self._finished.get(key)
            if finished is not None and arrived is not None and arrived <= finished[0]:
                return finished[1].result()
            self.started += 1
            task = asyncio.ensure_future(factory())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _prune(self) -> None:
        horizon = self._clock() - self._keep_seconds
        while self._finished:
            oldest = next(iter(self._finished.values()))
            if oldest[0] >= horizon and len(self._finished) <= self._max_kept:
                return
            self._finished.popitem(last=False)

    def _forget(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if task.cancelled():
            return
        task.exception()  # retrieved, so a failure nobody awaited is not reported
        self._finished.pop(key, None)
        self._finished[key] = (self._clock(), task)


@dataclass(frozen=True, slots=True)
class Cached(Generic[T]):
    """A cached value and when it was stored (monotonic seconds)."""

    value: T
    stored: float
    negative: bool = False


class MetadataCache(Generic[T]):
    """A bounded LRU of upstream answers; fresh for ``ttl`` seconds (``negative_ttl`` for 404s).

    ``fresh`` returns only entries still within their TTL; ``stale`` returns any entry, for a
    caller that must decide what an old answer is still good for.
    """

    def __init__(
        self,
        *,
        ttl: float,
        negative_ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, Cached[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Hashable, value: T, *, negative: bool = False) -> None:
        self._entries[key] = Cached(value, self._clock(), negative)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def stale(self, key: Hashable) -> Cached[T] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def fresh(self, key: Hashable) -> Cached[T] | None:
        entry = self.stale(key)
        if entry is None:
            return None
        ttl = self.negative_ttl if entry.negative else self.ttl
        return entry if self._clock() - entry.stored < ttl else None

    def drop(self, key: Hashable) -> None:
        self._entries.pop(key, None)


__all__ = [
    "ABSENT",
    "ARRIVED",
    "Answer",
    "Cached",
    "Deadline",
    "MetadataCache",
    "SingleFlight",
    "Upstream",
    "arrival_middleware",
    "classify",
]
