"""The worker runs jobs with bounded concurrency, records outcomes, keeps leases alive, stops
gracefully, and, across processes, runs every job exactly once even when a worker is killed.

In-process tests drive :class:`forage.jobs.worker.Worker` directly on both stores; the process
tests run ``forage worker`` subprocesses with the handlers of ``tests/forage/job_handlers.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from forage.config import Config, load_config
from forage.db.engine import (
    current_revision,
    head_revision,
    make_engine,
    make_sessionmaker,
    upgrade,
)
from forage.db.models import JobRecord, JobState
from forage.errors import ConfigError, PermanentJobError
from forage.jobs import queue as jobs
from forage.jobs.queue import Job, RetryPolicy
from forage.jobs.worker import JobContext, Worker, job_context, load_handlers, run_worker
from tests.forage import job_handlers

ROOT = Path(__file__).resolve().parents[2]


def config_for(url: str, **env: str) -> Config:
    return load_config(environ={"FORAGE_DATABASE_URL": url, **env})


def enqueue_many(url: str, kind: str, payloads: list[dict[str, Any]]) -> list[int]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine).begin() as session:
            return [jobs.enqueue(session, kind, payload) for payload in payloads]
    finally:
        engine.dispose()


def job_rows(url: str) -> dict[int, JobRecord]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            return {r.id: r for r in session.scalars(sa.select(JobRecord))}
    finally:
        engine.dispose()


def runs(url: str) -> list[tuple[int, int, int, str]]:
    """(job_id, attempt, pid, event) rows written by the test handlers."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    job_handlers.job_runs.c.job_id,
                    job_handlers.job_runs.c.attempt,
                    job_handlers.job_runs.c.pid,
                    job_handlers.job_runs.c.event,
                ).order_by(job_handlers.job_runs.c.id)
            )
            return [tuple(r) for r in rows]  # type: ignore[misc]
    finally:
        engine.dispose()


@pytest.fixture
def worker_url(migrated_url: str) -> str:
    """A migrated database with the test handlers' ``job_runs`` table."""
    engine = make_engine(migrated_url)
    try:
        job_handlers.metadata.create_all(engine)
    finally:
        engine.dispose()
    return migrated_url


@asynccontextmanager
async def running_worker(
    url: str,
    handlers: dict[str, Callable[..., Any]],
    *,
    concurrency: int = 2,
    lease: float = 30.0,
) -> AsyncIterator[Worker]:
    config = config_for(url)
    engine = make_engine(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as context:
            yield Worker(
                context,
                handlers,
                concurrency=concurrency,
                policy=RetryPolicy(max_attempts=3, backoff_base=60, lease_seconds=lease),
                poll_interval=0.02,
            )
    finally:
        engine.dispose()


async def test_drain_runs_every_job_once_within_concurrency(worker_url: str) -> None:
    ids = enqueue_many(worker_url, "count", [{"n": n} for n in range(12)])
    seen: list[int] = []
    active = 0
    peak = 0

    async def count(ctx: JobContext, job: Job) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        seen.append(job.id)
        active -= 1

    async with running_worker(worker_url, {"count": count}, concurrency=3) as worker:
        stats = await worker.run(mode="drain")
    assert sorted(seen) == ids
    assert peak == 3
    assert (stats.claimed, stats.done, stats.retried, stats.dead) == (12, 12, 0, 0)
    assert {r.state for r in job_rows(worker_url).values()} == {JobState.DONE}


async def test_failures_are_retried_or_buried(worker_url: str) -> None:
    transient, permanent, unknown = (
        enqueue_many(worker_url, "flaky", [{}])[0],
        enqueue_many(worker_url, "broken", [{}])[0],
        enqueue_many(worker_url, "nobody-handles-this", [{}])[0],
    )

    async def flaky(ctx: JobContext, job: Job) -> None:
        raise ConnectionResetError("upstream reset")

    async def broken(ctx: JobContext, job: Job) -> None:
        raise PermanentJobError("artifact is gone for good")

    async with running_worker(worker_url, {"flaky": flaky, "broken": broken}) as worker:
        stats = await worker.run(mode="drain")
    rows = job_rows(worker_url)
    assert (stats.retried, stats.dead) == (1, 1)
    assert rows[transient].state is JobState.QUEUED
    assert rows[transient].last_error == "ConnectionResetError: upstream reset"
    assert rows[transient].run_after > rows[transient].updated_at  # backing off
    assert rows[permanent].state is JobState.DEAD
    assert rows[permanent].last_error == "PermanentJobError: artifact is gone for good"
    # A kind this worker has no handler for is left for a worker that has one.
    assert rows[unknown].state is JobState.QUEUED and rows[unknown].attempts == 0


async def test_once_runs_a_single_batch(worker_url: str) -> None:
    enqueue_many(worker_url, "noop", [{}] * 5)

    async def noop(ctx: JobContext, job: Job) -> None:
        return None

    async with running_worker(worker_url, {"noop": noop}, concurrency=2) as worker:
        stats = await worker.run(mode="once")
    assert stats.done == 2
    states = sorted(r.state for r in job_rows(worker_url).values())
    assert states == [JobState.DONE] * 2 + [JobState.QUEUED] * 3


async def test_stop_finishes_the_jobs_in_hand(worker_url: str) -> None:
    first, *rest = enqueue_many(worker_url, "gate", [{}] * 3)
    started = asyncio.Event()
    release = asyncio.Event()

    async def gate(ctx: JobContext, job: Job) -> None:
        started.set()
        await release.wait()

    async with running_worker(worker_url, {"gate": gate}, concurrency=1) as worker:
        task = asyncio.create_task(worker.run(mode="forever"))
        await asyncio.wait_for(started.wait(), 10)
        worker.stop()
        await asyncio.sleep(0.1)
        assert not task.done()  # still waiting for the job in hand
        release.set()
        stats = await asyncio.wait_for(task, 10)
    rows = job_rows(worker_url)
    assert stats.done == 1 and rows[first].state is JobState.DONE
    assert [rows[i].state for i in rest] == [JobState.QUEUED, JobState.QUEUED]


async def test_abort_gives_jobs_back(worker_url: str) -> None:
    (job_id,) = enqueue_many(worker_url, "gate", [{}])
    started = asyncio.Event()

    async def gate(ctx: JobContext, job: Job) -> None:
        started.set()
        await asyncio.sleep(3600)

    async with running_worker(worker_url, {"gate": gate}) as worker:
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 10)
        worker.abort()
        stats = await asyncio.wait_for(task, 10)
    row = job_rows(worker_url)[job_id]
    assert stats.released == 1
    assert (row.state, row.attempts, row.lease_owner) == (JobState.QUEUED, 0, None)


async def test_heartbeat_keeps_a_long_job_leased(worker_url: str) -> None:
    # The job outlives its 0.3 s lease three times over; heartbeats keep it ours.
    (job_id,) = enqueue_many(worker_url, "long", [{}])
    stolen: list[Job] = []

    async def long(ctx: JobContext, job: Job) -> None:
        for _ in range(5):
            await asyncio.sleep(0.2)
            stolen.extend(
                await ctx.transaction(
                    jobs.claim,
                    owner="thief",
                    limit=1,
                    policy=RetryPolicy(lease_seconds=0.3),
                )
            )

    async with running_worker(worker_url, {"long": long}, lease=0.3) as worker:
        stats = await worker.run(mode="drain")
    assert stolen == []
    assert stats.done == 1 and stats.lost == 0
    assert job_rows(worker_url)[job_id].attempts == 1


async def test_lost_lease_cancels_the_job_here(worker_url: str) -> None:
    # Another worker took the job over (as after a long pause): the heartbeat notices and
    # this worker stops working on it, leaving the row to its new owner.
    (job_id,) = enqueue_many(worker_url, "long", [{}])
    cancelled = asyncio.Event()

    async def long(ctx: JobContext, job: Job) -> None:
        def take_over(session: Any) -> None:
            session.execute(
                sa.update(JobRecord).where(JobRecord.id == job.id).values(lease_owner="other")
            )

        await ctx.transaction(take_over)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with running_worker(worker_url, {"long": long}, lease=0.3) as worker:
        stats = await asyncio.wait_for(worker.run(mode="once"), 10)
    assert cancelled.is_set()
    assert stats.lost == 1 and stats.done == 0
    row = job_rows(worker_url)[job_id]
    assert (row.state, row.lease_owner) == (JobState.RUNNING, "other")


async def test_job_context_has_a_client_per_configured_registry(worker_url: str) -> None:
    config = config_for(
        worker_url,
        FORAGE_REGISTRIES_NPM_REGISTRY_URL="https://registry.example.test/",
        FORAGE_REGISTRIES_NPM_REPLICATE_URL="https://replicate.example.test/",
    )
    engine = make_engine(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine), owner="me") as ctx:
            assert set(ctx.http) == {"npm"}
            client = ctx.http["npm"]
            assert ctx.owner == "me"
            assert await ctx.transaction(lambda s: s.scalar(sa.select(sa.literal(41) + 1))) == 42
        assert client.is_closed
    finally:
        engine.dispose()


async def test_jobs_finishing_together_are_completed_together(worker_url: str) -> None:
    """Completions are group-committed: a lease lost in the batch spoils only its own job."""
    ids = enqueue_many(worker_url, "gate", [{"n": n} for n in range(6)])
    gate = asyncio.Event()
    arrived = 0

    async def wait_at_gate(ctx: JobContext, job: Job) -> None:
        nonlocal arrived
        arrived += 1
        if job.payload["n"] == 0:

            def take_over(session: Any) -> None:
                session.execute(
                    sa.update(JobRecord).where(JobRecord.id == job.id).values(lease_owner="other")
                )

            await ctx.transaction(take_over)
        if arrived == 6:
            gate.set()
        await gate.wait()

    async with running_worker(worker_url, {"gate": wait_at_gate}, concurrency=6) as worker:
        stats = await asyncio.wait_for(worker.run(mode="once"), 30)
    assert (stats.done, stats.lost) == (5, 1)
    rows = job_rows(worker_url)
    assert [rows[i].state for i in ids[1:]] == [JobState.DONE] * 5
    assert (rows[ids[0]].state, rows[ids[0]].lease_owner) == (JobState.RUNNING, "other")


async def test_sqlite_writers_of_one_context_queue_instead_of_failing(tmp_path: Path) -> None:
    """With no busy timeout at all, SQLite refuses a second writer at once ("database is
    locked"); the context's writers take turns, so 24 overlapping transactions all commit."""
    config = config_for(f"sqlite:///{tmp_path / 'forage.db'}", FORAGE_DATABASE_BUSY_TIMEOUT="0")
    engine = make_engine(config.database)
    try:
        upgrade(engine)
        async with job_context(config, make_sessionmaker(engine)) as ctx:

            def write(session: Any, n: int) -> int:
                job_id = jobs.enqueue(session, "slow", {"n": n})
                time.sleep(0.005)  # hold the write lock while the others arrive
                return job_id

            ids = await asyncio.gather(*(ctx.transaction(write, n) for n in range(24)))
    finally:
        engine.dispose()
    assert len(set(ids)) == 24
    assert sorted(r.payload["n"] for r in job_rows(config.database.url).values()) == list(range(24))


async def test_worker_refuses_an_unmigrated_shared_database(database_url: str, store: str) -> None:
    # The embedded SQLite store is migrated on first use; PostgreSQL is the operator's call.
    config = config_for(database_url)
    if store == "sqlite":
        stats = await run_worker(config, {}, mode="drain")
        assert stats.claimed == 0
        engine = make_engine(database_url)
        try:
            assert current_revision(engine) == head_revision()
        finally:
            engine.dispose()
    else:
        with pytest.raises(ConfigError, match="run 'forage db upgrade'"):
            await run_worker(config, {}, mode="drain")


def test_load_handlers_rejects_bad_specs() -> None:
    assert set(load_handlers("tests.forage.job_handlers:handlers")) == {
        "record",
        "slow",
        "hang_first",
    }
    with pytest.raises(ConfigError, match="MODULE:FUNCTION"):
        load_handlers("tests.forage.job_handlers")
    with pytest.raises(ConfigError, match="cannot load"):
        load_handlers("tests.forage.job_handlers:nope")
    with pytest.raises(ConfigError, match="did not return a mapping"):
        load_handlers("os:getcwd")


def test_default_handlers_is_a_mapping() -> None:
    from forage.jobs.handlers import default_handlers

    handlers = default_handlers()
    assert all(callable(h) for h in handlers.values())


# --- worker processes -------------------------------------------------------------------


def start_worker(url: str, *args: str, lease: float = 30.0) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FORAGE_DATABASE_URL": url,
        "FORAGE_JOBS_POLL_INTERVAL": "0.05",
        "FORAGE_JOBS_LEASE_SECONDS": str(lease),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forage",
            "worker",
            "--handlers",
            "tests.forage.job_handlers:handlers",
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s", pytrace=False)
        time.sleep(0.05)


def finish(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"worker did not exit: {err.decode(errors='replace')[-2000:]}")
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return process.returncode


@pytest.mark.slow
def test_four_processes_run_500_jobs_exactly_once(worker_url: str) -> None:
    ids = enqueue_many(worker_url, "record", [{"sleep": 0.005}] * 500)
    workers = [start_worker(worker_url, "--drain", "--concurrency", "4") for _ in range(4)]
    for process in workers:
        finish(process, timeout=180)
    executions = runs(worker_url)
    assert len(executions) == 500
    assert sorted(job_id for job_id, *_ in executions) == ids
    rows = job_rows(worker_url)
    assert {(r.state, r.attempts) for r in rows.values()} == {(JobState.DONE, 1)}
    assert len({pid for _, _, pid, _ in executions}) >= 2


def test_killed_worker_loses_its_lease_and_the_job_runs_elsewhere(worker_url: str) -> None:
    (job_id,) = enqueue_many(worker_url, "hang_first", [{}])
    first = start_worker(worker_url, "--concurrency", "1", lease=1.0)
    try:
        wait_for(lambda: runs(worker_url))
        assert job_rows(worker_url)[job_id].state is JobState.RUNNING
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    second = start_worker(worker_url, "--drain", lease=1.0)
    finish(second)
    executions = runs(worker_url)
    assert [(e[0], e[1], e[3]) for e in executions] == [
        (job_id, 1, "start"),
        (job_id, 2, "finish"),
    ]
    assert executions[0][2] == first.pid and executions[1][2] == second.pid
    row = job_rows(worker_url)[job_id]
    assert (row.state, row.attempts) == (JobState.DONE, 2)


def test_sigterm_finishes_the_job_in_hand_then_exits_zero(worker_url: str) -> None:
    first, *rest = enqueue_many(worker_url, "slow", [{"sleep": 1.0}] * 3)
    process = start_worker(worker_url, "--concurrency", "1")
    wait_for(lambda: runs(worker_url))
    process.send_signal(signal.SIGTERM)
    finish(process, timeout=30)
    assert [(e[0], e[3]) for e in runs(worker_url)] == [(first, "start"), (first, "finish")]
    rows = job_rows(worker_url)
    assert rows[first].state is JobState.DONE
    assert [(rows[i].state, rows[i].attempts) for i in rest] == [(JobState.QUEUED, 0)] * 2


def test_a_worker_restarted_after_sigkill_takes_the_jobs_back_at_once(worker_url: str) -> None:
    # With a two-minute lease, the job would sit idle for 120 s after the kill; a worker
    # starting on the same host sees the owner's pid is gone and runs the job straight away.
    (job_id,) = enqueue_many(worker_url, "hang_first", [{}])
    first = start_worker(worker_url, "--concurrency", "1", lease=120.0)
    try:
        wait_for(lambda: runs(worker_url))
        assert job_rows(worker_url)[job_id].state is JobState.RUNNING
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    started = time.monotonic()
    second = start_worker(worker_url, "--drain", lease=120.0)
    finish(second, timeout=60)
    assert time.monotonic() - started < 60
    executions = runs(worker_url)
    assert [(e[0], e[1], e[3]) for e in executions] == [
        (job_id, 1, "start"),
        (job_id, 2, "finish"),
    ]
    assert executions[1][2] == second.pid
    row = job_rows(worker_url)[job_id]
    assert (row.state, row.attempts) == (JobState.DONE, 2)


def test_a_running_worker_takes_a_killed_workers_jobs_without_a_restart(worker_url: str) -> None:
    # Nobody restarts the killed worker: a worker already running on the same host notices
    # at its next look (every DEAD_WORKER_CHECK seconds) that the owner's pid is gone, long
    # before the two-minute lease would have run out.
    (job_id,) = enqueue_many(worker_url, "hang_first", [{}])
    first = start_worker(worker_url, "--concurrency", "1", lease=120.0)
    try:
        wait_for(lambda: runs(worker_url))
        survivor = start_worker(worker_url, "--drain", lease=120.0)
        assert survivor.stderr is not None
        while b" started: mode drain" not in (line := survivor.stderr.readline()):
            assert line, "the survivor exited before it started"
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    finish(survivor, timeout=60)
    executions = runs(worker_url)
    assert [(e[0], e[1], e[3], e[2]) for e in executions] == [
        (job_id, 1, "start", first.pid),
        (job_id, 2, "finish", survivor.pid),
    ]
