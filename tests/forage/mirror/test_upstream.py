"""The upstream client's deadlines and failure classes, single flight and the metadata cache.

Each failure a registry can inflict is produced for real on loopback (a closed port, a full
accept queue, a server that stalls, drips, cuts a body short or resets) and must end as an
``UpstreamFailed`` of the right ``kind`` within its deadline, never as a hang.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web

from indexers.download import HostPolicy
from indexers.errors import UpstreamFailed
from indexers.fakeserver import Faults, RequestLog, RunningServer, blackhole, serve
from indexers.mirror.upstream import (
    ARRIVED,
    Deadline,
    MetadataCache,
    SingleFlight,
    Upstream,
    classify,
)

BODY = bytes(range(256)) * 40  # 10 KiB
DEADLINE = Deadline(connect=0.5, first_byte=0.5, total=2.0, min_rate=4000, grace=0.3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def log() -> RequestLog:
    return RequestLog()


@pytest.fixture
async def server(faults: Faults, log: RequestLog) -> AsyncIterator[RunningServer]:
    async def body(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/octet-stream")

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404, text="not found")

    async def away(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://10.0.0.1/elsewhere")

    app = web.Application(middlewares=[log.middleware, faults.middleware])
    app.router.add_get("/file", body)
    app.router.add_get("/gone", gone)
    app.router.add_get("/away", away)
    async with serve(app) as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as shared:
        yield shared


def upstream(
    client: httpx.AsyncClient, *, down_seconds: float = 0, clock: Clock | None = None
) -> Upstream:
    policy = HostPolicy.of(["127.0.0.1"], max_size=1 << 20, allow_http=True)
    extra = {"clock": clock} if clock else {}
    return Upstream(client, deadline=DEADLINE, policy=policy, down_seconds=down_seconds, **extra)


async def failure(coroutine: object) -> tuple[UpstreamFailed, float]:
    start = time.monotonic()
    with pytest.raises(UpstreamFailed) as caught:
        await coroutine  # type: ignore[misc]
    return caught.value, time.monotonic() - start


async def test_a_whole_body_is_returned(server: RunningServer, client: httpx.AsyncClient) -> None:
    answer = await upstream(client).fetch(server.url + "/file", max_size=1 << 20)
    assert (answer.status, answer.body) == (200, BODY)


async def test_refused_connection(client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error, elapsed = await failure(upstream(client).fetch(f"http://127.0.0.1:{port}/x", max_size=9))
    assert error.kind == "refused"
    assert elapsed < 0.5


async def test_blackholed_host_times_out_at_the_connect_deadline(
    client: httpx.AsyncClient,
) -> None:
    with blackhole() as url:
        error, elapsed = await failure(upstream(client).fetch(url + "/x", max_size=9))
    assert error.kind == "timeout"
    assert "connect" in error.reason
    assert 0.4 < elapsed < 1.5


async def test_no_first_byte_times_out(
    server: RunningServer, client: httpx.AsyncClient, faults: Faults
) -> None:
    faults.slow(1.2)
    error, elapsed = await failure(upstream(client).fetch(server.url + "/file", max_size=1 << 20))
    assert error.kind == "timeout"
    assert elapsed < 1.5


async def test_slow_drip_is_cut_by_the_rate_floor(
    server: RunningServer, client: httpx.AsyncClient, faults: Faults
) -> None:
    # 100 bytes every 0.1 s is 1,000 B/s: never a stall, far below the 4,000 B/s floor.
    faults.drip(0.1, chunk=100)
    error, elapsed = await failure(upstream(client).fetch(server.url + "/file", max_size=1 << 20))
    assert error.kind == "slow"
    assert elapsed < 1.5  # the whole drip would take 10 s


async def test_reset_connection(
    server: RunningServer, client: httpx.AsyncClient, faults: Faults
) -> None:
    faults.reset()
    error, _ = await failure(upstream(client).fetch(server.url + "/file", max_size=1 << 20))
    assert error.kind in ("reset", "truncated")


async def test_truncated_body(
    server: RunningServer, client: httpx.AsyncClient, faults: Faults
) -> None:
    faults.truncate()
    error, _ = await failure(upstream(client).fetch(server.url + "/file", max_size=1 << 20))
    assert error.kind == "truncated"


async def test_5xx_fails_and_marks_the_upstream_down_for_a_while(
    server: RunningServer, client: httpx.AsyncClient, faults: Faults, log: RequestLog
) -> None:
    clock = Clock()
    mirror = upstream(client, down_seconds=10, clock=clock)
    faults.fail(503)
    error, _ = await failure(mirror.fetch(server.url + "/file", max_size=1 << 20))
    assert (error.kind, error.reason) == ("status", "HTTP 503")
    # Within the window the upstream is not asked at all.
    error, elapsed = await failure(mirror.fetch(server.url + "/file", max_size=1 << 20))
    assert error.kind == "down"
    assert elapsed < 0.1
    assert len(log.seen) == 1
    clock.now += 10.5
    answer = await mirror.fetch(server.url + "/file", max_size=1 << 20)
    assert answer.body == BODY
    assert len(log.seen) == 2


async def test_404_is_an_answer_not_a_failure(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    mirror = upstream(client, down_seconds=10)
    answer = await mirror.fetch(server.url + "/gone", max_size=1 << 20)
    assert answer.absent
    assert mirror.down() is None


async def test_redirect_to_a_host_not_allowed_is_refused(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    error, _ = await failure(upstream(client).fetch(server.url + "/away", max_size=1 << 20))
    assert error.kind == "host"
    assert "10.0.0.1" in error.reason


async def test_document_over_the_size_cap(server: RunningServer, client: httpx.AsyncClient) -> None:
    error, _ = await failure(upstream(client).fetch(server.url + "/file", max_size=100))
    assert error.kind == "too_large"


def test_classify_names_dns_tls_and_reset_causes() -> None:
    def wrapped(cause: BaseException) -> httpx.ConnectError:
        error = httpx.ConnectError("failed")
        error.__cause__ = cause
        return error

    assert classify(wrapped(socket.gaierror(-2, "Name or service not known")))[0] == "dns"
    assert classify(wrapped(ssl.SSLError(1, "certificate verify failed")))[0] == "tls"
    assert classify(wrapped(ConnectionResetError()))[0] == "reset"
    assert classify(httpx.ReadError("boom"))[0] == "reset"


async def test_single_flight_runs_one_call_for_concurrent_callers() -> None:
    flight: SingleFlight[int] = SingleFlight()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return 42

    results = await asyncio.gather(*(flight.run("k", work) for _ in range(20)))
    assert results == [42] * 20
    assert calls == 1
    assert len(flight) == 0
    assert await flight.run("k", work) == 42  # a later call starts a new flight
    assert calls == 2


async def test_single_flight_survives_a_cancelled_waiter() -> None:
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "done"

    first = asyncio.ensure_future(flight.run("k", work))
    second = asyncio.ensure_future(flight.run("k", work))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == "done"
    assert first.cancelled()


async def test_single_flight_shares_a_failure() -> None:
    flight: SingleFlight[str] = SingleFlight()

    async def work() -> str:
        await asyncio.sleep(0.01)
        raise UpstreamFailed("u", "status", "HTTP 502")

    results = await asyncio.gather(
        *(flight.run("k", work) for _ in range(3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [UpstreamFailed] * 3
    assert flight.started == 1


async def test_single_flight_counts_a_request_from_its_arrival() -> None:
    """A request that arrived before the call for its key finished shares its outcome, even
    if it asks after the call ended; one that arrived later, or runs outside any request,
    starts a new call; outcomes are kept a bounded time."""
    clock = Clock()
    flight: SingleFlight[str] = SingleFlight(keep_seconds=5, max_kept=2, clock=clock)
    calls: list[str] = []

    def work(value: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            calls.append(value)
            return value

        return run

    async def arriving_at(when: float, key: str, value: str) -> str:
        ARRIVED.set(when)
        return await flight.run(key, work(value))

    async def outside(key: str, value: str) -> str:
        ARRIVED.set(None)
        return await flight.run(key, work(value))

    arrived = clock.now
    assert await asyncio.create_task(arriving_at(arrived, "k", "a")) == "a"
    await asyncio.sleep(0)  # the call's done callback has run: it is over
    clock.now += 1
    assert await asyncio.create_task(arriving_at(arrived, "k", "b")) == "a"
    assert await asyncio.create_task(arriving_at(clock.now, "k", "c")) == "c"
    assert await asyncio.create_task(outside("k", "d")) == "d"
    await asyncio.sleep(0)
    clock.now += 6  # past keep_seconds: even an early arrival starts afresh
    assert await asyncio.create_task(arriving_at(arrived, "k", "e")) == "e"
    assert calls == ["a", "c", "d", "e"]
    assert flight.started == len(calls)


def test_metadata_cache_ttls_and_bound() -> None:
    clock = Clock()
    cache: MetadataCache[str] = MetadataCache(ttl=60, negative_ttl=2, max_entries=2, clock=clock)
    cache.put("a", "doc")
    cache.put("missing", "404", negative=True)
    clock.now += 3
    assert cache.fresh("a") is not None
    assert cache.fresh("missing") is None  # a 404 is not remembered for long
    assert cache.stale("missing") is not None
    clock.now += 60
    assert cache.fresh("a") is None
    cache.put("b", "x")  # over the bound: the least recently used entry goes
    assert len(cache) == 2
    assert cache.stale("missing") is None
