"""Requests with large bodies stay inside ``server.request_memory`` (issue 15, criterion 3).

What is shown, through the real server on SQLite and PostgreSQL: a body declared larger than
``server.max_body_size`` is a JSON 413 naming the limit; while the budget is held, another
large request waits and is answered once it frees (never a 500), or, past
``server.request_wait``, gets a JSON 503 with ``Retry-After``; small requests never wait. A
lookup body's keys are read as a stream (padding members are skipped, a lone surrogate is
still refused, an escaped backslash is not taken for an escape) and a large answer streamed
out is the same JSON. The budget setting is validated when the configuration is read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from forage.config import load_config
from forage.db.engine import make_engine, make_sessionmaker
from forage.errors import ConfigError
from forage.server.api import READER, REPLY_CHUNK
from forage.server.bodies import BodyError, NotKeysObject, TooManyKeys, lookup_keys
from forage.server.budget import BUDGET, SMALL_BODY, MemoryBudget, Overloaded
from tests.forage.test_api import Api, start

JSON = {"Content-Type": "application/json"}
#: A body this size is charged; the budget holds exactly one.
HEAVY = 2 * SMALL_BODY


@pytest.fixture
def sessions(migrated_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def padded(keys: list[str], size: int) -> bytes:
    """``{"keys": keys}`` padded with whitespace to ``size`` bytes."""
    body = json.dumps({"keys": keys}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


async def budgeted(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session], wait: str
) -> AsyncIterator[Api]:
    env = {
        "FORAGE_SERVER_MAX_BODY_SIZE": str(HEAVY + 1024),
        "FORAGE_SERVER_REQUEST_MEMORY": str(HEAVY + 1024),
        "FORAGE_SERVER_REQUEST_WAIT": wait,
    }
    async for api in start(migrated_url, tmp_path, sessions, **env):
        yield api


class HeldBody:
    """A request body sent in two halves: the second only once :meth:`finish` is called, so
    the request holds its share of the budget until then."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.more = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.body[: len(self.body) // 2]
        await self.more.wait()
        yield self.body[len(self.body) // 2 :]

    def finish(self) -> None:
        self.more.set()


async def until(predicate: Any) -> None:
    """Until ``predicate()`` holds (the server runs in this loop; no timing is asserted)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server never reached the expected state")


async def test_a_body_over_the_maximum_is_refused_with_413_before_it_is_read(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    async for api in budgeted(migrated_url, tmp_path, sessions, "30"):
        body = padded(["pkg:pypi/django@5.0"], HEAVY * 2)
        refused = await api.json("POST", "/api/v1/lookup", data=body, headers=JSON, status=413)
        message = refused["error"]["message"]
        assert str(HEAVY * 2) in message and f"at most {HEAVY + 1024}" in message
        assert api.client.server.app[BUDGET].in_use == 0


async def test_a_heavy_request_waits_for_the_budget_and_is_then_answered(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    async for api in budgeted(migrated_url, tmp_path, sessions, "60"):
        budget = api.client.server.app[BUDGET]
        held = HeldBody(padded(["pkg:pypi/django@5.0"], HEAVY))
        first = asyncio.ensure_future(
            api.client.post("/api/v1/lookup", data=held.chunks(), headers=JSON)
        )
        await until(lambda b=budget: b.in_use > 0)
        others = [
            asyncio.ensure_future(
                api.client.post(
                    "/api/v1/lookup", data=padded([f"npm:@scope/pkg:3.0.{i}"], HEAVY), headers=JSON
                )
            )
            for i in range(3)
        ]
        await until(lambda b=budget: len(b._waiters) == 3)
        # Small requests are not charged: answered while the heavy ones wait.
        small = await api.json("POST", "/api/v1/lookup", json={"keys": ["pkg:pypi/django@5.0"]})
        assert small["summary"]["found"] == 1
        assert not any(task.done() for task in others)
        held.finish()
        responses = [await first, *[await task for task in others]]
        assert [response.status for response in responses] == [200, 200, 200, 200]
        found = [(await response.json())["summary"]["found"] for response in responses]
        assert found == [1, 0, 0, 0]
        assert budget.in_use == 0 and not budget._waiters


async def test_after_the_last_heavy_request_the_readers_idle_connections_are_closed(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    # Each SQLite reader connection maps the database file: the pages a burst read through it
    # would stay resident while it idles in the pool.
    async for api in budgeted(migrated_url, tmp_path, sessions, "60"):
        reader = api.client.server.app[READER].kw["bind"]
        if reader is sessions.kw["bind"]:
            pytest.skip("only SQLite readers have an engine of their own")
        small = await api.json("POST", "/api/v1/lookup", json={"keys": ["pkg:pypi/django@5.0"]})
        assert small["summary"]["found"] == 1
        assert reader.pool.checkedin() == 1  # a small lookup leaves its connection pooled
        body = padded(["pkg:pypi/django@5.0"], HEAVY)
        heavy = await api.json("POST", "/api/v1/lookup", data=body, headers=JSON)
        assert heavy["summary"]["found"] == 1
        assert reader.pool.checkedin() == 0
        again = await api.json("POST", "/api/v1/lookup", json={"keys": ["pkg:pypi/django@5.0"]})
        assert again == small


async def test_past_the_wait_a_heavy_request_gets_503_with_retry_after(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    async for api in budgeted(migrated_url, tmp_path, sessions, "0"):
        budget = api.client.server.app[BUDGET]
        held = HeldBody(padded(["pkg:pypi/django@5.0"], HEAVY))
        first = asyncio.ensure_future(
            api.client.post("/api/v1/lookup", data=held.chunks(), headers=JSON)
        )
        await until(lambda b=budget: b.in_use > 0)
        for path in ("/api/v1/lookup", "/packages/lookup", "/api/v1/lookup/lockfile"):
            response = await api.client.post(path, data=padded(["npm:a:1"], HEAVY), headers=JSON)
            assert response.status == 503, await response.text()
            assert response.content_type == "application/json"
            assert int(response.headers["Retry-After"]) >= 1
            error = (await response.json())["error"]
            assert error["status"] == 503 and "busy" in error["message"]
        held.finish()
        assert (await first).status == 200
        assert budget.in_use == 0
        again = await api.client.post(
            "/api/v1/lookup", data=padded(["pkg:pypi/django@5.0"], HEAVY), headers=JSON
        )
        assert again.status == 200


async def test_keys_are_streamed_in_and_a_large_answer_streamed_out(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    async for api in start(migrated_url, tmp_path, sessions):
        await _streamed(api)


async def _streamed(api: Api) -> None:
    # Padding members are skipped, not built; the answer is the same JSON as a small one's.
    keys = ["pkg:pypi/django@5.0?pad=" + "p" * 900 + str(i) for i in range(400)]
    body = json.dumps({"pad": [{}] * 50_000, "keys": keys, "more": {"x": [[[1]]]}})
    answer = await api.json("POST", "/api/v1/lookup", data=body, headers=JSON)
    assert [result["key"] for result in answer["results"]] == keys
    assert answer["summary"]["found"] == 400
    one = await api.json("POST", "/api/v1/lookup", json={"keys": keys[:1]})
    assert one["results"][0] == answer["results"][0]
    response = await api.client.post("/api/v1/lookup", data=body, headers=JSON)
    assert response.headers.get("Transfer-Encoding") == "chunked"  # streamed, not one body
    assert len(await response.read()) > REPLY_CHUNK
    legacy = await api.json("POST", "/packages/lookup", data=body, headers=JSON)
    assert list(legacy) == keys
    nested = await api.json("POST", "/api/v1/lookup", json={"keys": [{"a": [1]}, [2], 3]})
    assert [r["status"] for r in nested["results"]] == ["invalid"] * 3


def test_the_stream_parser_keeps_only_the_keys() -> None:
    assert lookup_keys(b'{"x": [1, {"keys": [9]}], "keys": ["a", 1e999, null]}', limit=5) == [
        "a",
        float("inf"),
        None,
    ]
    assert lookup_keys(b'{"keys": ["\\\\ud800", "\\ud83d\\ude00"]}', limit=5) == [
        "\\ud800",
        "\U0001f600",
    ]
    with pytest.raises(TooManyKeys) as over:
        lookup_keys(b'{"keys": [1, 2, 3, 4]}', limit=3)
    assert over.value.count == 4
    for shape in (b"[1]", b'{"keys": 1}', b'{"k": []}', b'"keys"'):
        with pytest.raises(NotKeysObject):
            lookup_keys(shape, limit=3)
    for broken in (
        b'{"keys": ["\\ud800"]}',
        b'{"keys": ["\\udc00\\ud800"]}',
        b'{"keys": [',
        b"\xff",
    ):
        with pytest.raises(BodyError) as info:
            lookup_keys(broken, limit=3)
        assert not isinstance(info.value, NotKeysObject)


async def test_the_budget_admits_in_arrival_order_and_gives_back_what_a_cancelled_wait_took() -> (
    None
):
    budget = MemoryBudget(100, wait=60)
    assert await budget.acquire(70) == 70
    big = asyncio.ensure_future(budget.acquire(500))  # more than all: waits for all of it
    small = asyncio.ensure_future(budget.acquire(10))  # would fit, but arrived after
    await asyncio.sleep(0)
    assert not big.done() and not small.done()
    budget.release(70)
    assert await big == 100
    assert not small.done()
    budget.release(100)
    assert await small == 10
    waiting = asyncio.ensure_future(budget.acquire(100))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    budget.release(10)
    assert budget.in_use == 0 and not budget._waiters
    hurried = MemoryBudget(100, wait=0)
    await hurried.acquire(100)
    with pytest.raises(Overloaded):
        await hurried.acquire(1)
    assert hurried.in_use == 100 and not hurried._waiters


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        (
            {"FORAGE_SERVER_REQUEST_MEMORY": "1048576"},
            "must be at least server.max_body_size (16777216 bytes)",
        ),
        ({"FORAGE_SERVER_REQUEST_MEMORY": "lots"}, "server.request_memory"),
        ({"FORAGE_SERVER_REQUEST_WAIT": "-1"}, "server.request_wait"),
    ],
)
def test_the_budget_setting_is_validated(
    environ: dict[str, str], words: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"FORAGE_DATA_DIR": str(tmp_path), **environ})
    assert words in str(info.value)
    assert "server.request_memory" in str(info.value) or "request_wait" in str(info.value)


def test_the_budget_defaults_fit_the_largest_body() -> None:
    server = load_config(environ={}).server
    assert server.request_memory >= server.max_body_size
    larger = load_config(
        environ={
            "FORAGE_SERVER_MAX_BODY_SIZE": str(64 * 1024**2),
            "FORAGE_SERVER_REQUEST_MEMORY": str(64 * 1024**2),
        }
    ).server
    assert larger.request_memory == larger.max_body_size == 64 * 1024**2
