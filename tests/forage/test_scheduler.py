"""The scheduler: its table, what each task queues, re-verification, leadership, persistence.

What is shown: intervals come from the configuration (0 disables a task, a watcher without
an interval gets its registry's own); each task queues deduplicated durable jobs and never
doubles a live one; drain finds exactly the artifacts with no finished archive and no job;
retry revives dead jobs that ran out of attempts but not permanent failures; re-verification
finds a corrupt block, removes it, and the queued archive job restores the archive; the
schedule persists in the database across restarts; one scheduler leads, a second waits and
takes over when the first is killed (two processes, on SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from forage.archive.job import archive_job
from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker, upgrade, utcnow
from forage.db.models import Archive, ArchiveStatus, JobRecord, JobState
from forage.errors import ConfigError
from forage.filecoin import pieces
from forage.index.ingest import ARCHIVE
from forage.jobs import queue as jobs
from forage.jobs.leader import current_leader
from forage.jobs.queue import RetryPolicy
from forage.jobs.reverify import ArchiveSample, reverify_job, sample_archives, verify_archive
from forage.jobs.scheduler import JOBSTORE_TABLE, Scheduler, planned_tasks
from forage.jobs.tasks import (
    BUILD_PIECES,
    PIN_CHECK,
    REVERIFY,
    SYNC_DEALS,
    WATCH,
    Task,
    drain_archives,
    enqueue_kind,
    enqueue_once,
    prune_jobs,
    retry_failed,
    schedule_table,
)
from forage.jobs.worker import Worker
from forage.pins import kinds as pins
from storage import (
    FilesystemBlockstore,
    PackedBlockstore,
    compute_cid,
    import_file,
    read_file,
    walk_dag,
)
from tests.factories import make_archive, make_artifact
from tests.forage.test_archive import blob, fake_host, npm_artifact, package, record


def config_file(tmp_path: Path, url: str, schedule: str = "", extra: str = "") -> Path:
    path = tmp_path / "forage.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n\n[data]\ndir = "{tmp_path / "data"}"\n\n'
        f"[schedule]\nleader_poll = 0.2\n{schedule}\n{extra}"
    )
    return path


def config_for(tmp_path: Path, url: str, schedule: str = "", extra: str = "") -> Config:
    return load_config(config_file(tmp_path, url, schedule, extra), environ={})


def wait_for(predicate: Callable[[], Any], *, timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


# -- the table ---------------------------------------------------------------------------------


def test_intervals_come_from_the_configuration(tmp_path: Path) -> None:
    npm = (
        '[registries.npm]\nregistry_url = "https://npm.invalid"\n'
        'replicate_url = "https://replicate.invalid"\n'
        '[registries.pypi]\nindex_url = "https://p.invalid/simple"\n'
        'json_url = "https://p.invalid/pypi"\nxmlrpc_url = "https://p.invalid/pypi"\n'
        "interval = 42\n"
    )
    config = config_for(tmp_path, "sqlite:///x.db", "stats = 7\nreverify = 0", npm)
    table = {task.name: task.interval(config) for task in schedule_table(config)}
    # npm has no interval set: its indexer's own (one minute); PyPI's is configured.
    assert table["watch:npm"] == 60.0
    assert table["watch:pypi"] == 42.0
    assert "watch:golang" not in table  # not configured, not watched
    assert table["stats"] == 7.0
    assert table["drain_archives"] == config.schedule.drain_archives == 300.0
    # A disabled task stays in the table but is never planned.
    engine = make_engine(config.database)
    try:
        planned = {p.name: p for p in planned_tasks(config, engine)}
    finally:
        engine.dispose()
    assert "reverify" not in planned and planned["stats"].interval == 7.0
    assert planned["stats"].next_run is None  # no leader has scheduled it yet


def test_a_task_naming_an_unknown_setting_is_refused(tmp_path: Path) -> None:
    config = config_for(tmp_path, f"sqlite:///{tmp_path / 'f.db'}")
    engine = make_engine(config.database)
    try:
        with pytest.raises(ConfigError, match=r"schedule\.nope"):
            Scheduler(config, engine, tasks=[Task("x", "schedule.nope", prune_jobs)])
    finally:
        engine.dispose()


# -- what the tasks queue ---------------------------------------------------------------------


def keyed(session: Any, key: str) -> list[JobRecord]:
    return list(session.scalars(sa.select(JobRecord).where(JobRecord.dedup_key == key)))


def test_a_live_job_is_never_doubled(db_session: Any) -> None:
    first = enqueue_once(db_session, WATCH, {"ecosystem": "npm"}, dedup_key="watch:npm")
    assert first["queued"] == 1
    # Queued: the next tick absorbs into it.
    again = enqueue_once(db_session, WATCH, {"ecosystem": "npm"}, dedup_key="watch:npm")
    assert again == {"skipped": 1, "live_job": first["job_id"]}
    # Running (a long catch-up): still not doubled, unlike a plain enqueue.
    [job] = jobs.claim(db_session, owner="w", limit=1, policy=RetryPolicy(), kinds=[WATCH])
    assert enqueue_once(db_session, WATCH, {}, dedup_key="watch:npm")["skipped"] == 1
    # Finished: the next tick queues the next run.
    jobs.complete(db_session, job.id, owner="w")
    assert enqueue_once(db_session, WATCH, {}, dedup_key="watch:npm")["queued"] == 1
    assert [j.state for j in keyed(db_session, "watch:npm")] == [JobState.DONE, JobState.QUEUED]


def test_a_self_rescheduled_kind_is_made_due_not_doubled(db_session: Any, tmp_path: Path) -> None:
    config = config_for(tmp_path, "sqlite:///unused.db")
    later = utcnow() + timedelta(days=1)
    # The pin check queued its own next run for tomorrow; the scheduler's tick moves it to now.
    waiting = jobs.enqueue(db_session, PIN_CHECK, {}, dedup_key=PIN_CHECK, run_after=later)
    assert enqueue_kind(PIN_CHECK)(db_session, config) == {"due": 1, "job_id": waiting}
    [row] = keyed(db_session, PIN_CHECK)
    db_session.refresh(row)
    assert row.run_after <= utcnow()
    # While it runs, the tick leaves it alone.
    jobs.claim(db_session, owner="w", limit=1, policy=RetryPolicy(), kinds=[PIN_CHECK])
    assert enqueue_kind(PIN_CHECK)(db_session, config)["skipped"] == 1
    assert len(keyed(db_session, PIN_CHECK)) == 1


def test_pipeline_kinds_are_scheduled_when_their_services_are_configured(tmp_path: Path) -> None:
    bare = config_for(tmp_path, "sqlite:///x.db")
    assert {t.name for t in schedule_table(bare)} & {PIN_CHECK, SYNC_DEALS} == set()
    assert BUILD_PIECES in {t.name for t in schedule_table(bare)}
    extra = (
        '[pinning.backends.home]\ntype = "kubo"\nurl = "http://127.0.0.1:5001"\n'
        '[filecoin]\nlotus_url = "https://lotus.invalid/rpc/v1"\n'
    )
    full = config_for(tmp_path, "sqlite:///x.db", "sync_deals = 120", extra)
    table = {t.name: t.interval(full) for t in schedule_table(full)}
    assert table[PIN_CHECK] == 3600.0 and table[SYNC_DEALS] == 120.0
    # The kinds are those the pipeline's own modules register.
    assert (PIN_CHECK, BUILD_PIECES) == (pins.PIN_CHECK, pieces.BUILD_PIECES)


def test_drain_queues_only_artifacts_with_nothing_finished_or_in_flight(
    db_session: Any, tmp_path: Path
) -> None:
    config = config_for(tmp_path, "sqlite:///unused.db")
    never = make_artifact(db_session)
    archived = make_archive(db_session).artifact
    failed = make_archive(db_session, status=ArchiveStatus.FAILED).artifact
    left_pending = make_archive(db_session, status=ArchiveStatus.PENDING).artifact
    queued = make_artifact(db_session)
    jobs.enqueue(db_session, ARCHIVE, {"artifact_id": queued.id}, dedup_key=f"archive:{queued.id}")
    dead = make_artifact(db_session)
    dead_id = jobs.enqueue(
        db_session, ARCHIVE, {"artifact_id": dead.id}, dedup_key=f"archive:{dead.id}"
    )
    db_session.execute(sa.update(JobRecord).where(JobRecord.id == dead_id).values(state="dead"))
    before = {j.id for j in db_session.scalars(sa.select(JobRecord))}

    assert drain_archives(db_session, config) == {"queued": 2}
    new = [j for j in db_session.scalars(sa.select(JobRecord)) if j.id not in before]
    assert sorted(j.payload["artifact_id"] for j in new) == sorted([never.id, left_pending.id])
    assert {j.kind for j in new} == {ARCHIVE}
    assert {archived.id, failed.id}.isdisjoint(j.payload["artifact_id"] for j in new)
    # A second drain finds them queued: nothing more.
    assert drain_archives(db_session, config) == {"queued": 0}


def test_drain_is_bounded_by_the_batch_size(db_session: Any, tmp_path: Path) -> None:
    config = config_for(tmp_path, "sqlite:///unused.db", "batch = 2")
    for _ in range(3):
        make_artifact(db_session)
    assert drain_archives(db_session, config) == {"queued": 2}


def test_retry_revives_jobs_that_ran_out_of_attempts_not_permanent_failures(
    db_session: Any, tmp_path: Path
) -> None:
    config = config_for(tmp_path, "sqlite:///unused.db", "retry_failed = 60")
    policy = RetryPolicy(max_attempts=2, backoff_base=0, backoff_cap=0)
    long_ago = utcnow() - timedelta(hours=1)

    def dead_job(kind: str, *, permanent: bool, when: Any) -> int:
        job_id = jobs.enqueue(db_session, kind, {}, max_attempts=2)
        for _ in range(1 if permanent else 2):
            [job] = jobs.claim(db_session, owner="w", limit=1, policy=policy, kinds=[kind])
            error = ValueError("boom")
            jobs.fail(
                db_session, job.id, owner="w", error=error, policy=policy, permanent=permanent
            )
        db_session.execute(
            sa.update(JobRecord).where(JobRecord.id == job_id).values(finished_at=when)
        )
        return job_id

    exhausted = dead_job("a", permanent=False, when=long_ago)
    permanent = dead_job("b", permanent=True, when=long_ago)
    just_now = dead_job("c", permanent=False, when=utcnow())
    states = {j.id: j.state for j in db_session.scalars(sa.select(JobRecord))}
    assert states == {exhausted: JobState.DEAD, permanent: JobState.DEAD, just_now: JobState.DEAD}

    assert retry_failed(db_session, config) == {"retried": 1, "queued": 1}
    db_session.expire_all()
    rows = {j.id: j for j in db_session.scalars(sa.select(JobRecord))}
    assert (rows[exhausted].state, rows[exhausted].attempts) == (JobState.QUEUED, 0)
    assert rows[permanent].state == JobState.DEAD  # an operator's decision
    assert rows[just_now].state == JobState.DEAD  # waits one retry period first


def test_prune_deletes_only_old_finished_jobs(db_session: Any, tmp_path: Path) -> None:
    config = config_for(tmp_path, "sqlite:///unused.db", "keep_done_jobs = 3600")
    old, recent, waiting = (jobs.enqueue(db_session, "k", {}) for _ in range(3))
    claimed = jobs.claim(db_session, owner="w", limit=2, policy=RetryPolicy(), kinds=["k"])
    for job in claimed:
        jobs.complete(db_session, job.id, owner="w")
    db_session.execute(
        sa.update(JobRecord)
        .where(JobRecord.id == old)
        .values(finished_at=utcnow() - timedelta(hours=2))
    )
    assert prune_jobs(db_session, config) == {"pruned": 1}
    assert set(db_session.scalars(sa.select(JobRecord.id))) == {recent, waiting}


# -- re-verification ----------------------------------------------------------------------------


def test_sampling_picks_distinct_archived_archives(db_session: Any) -> None:
    archived = {make_archive(db_session).id for _ in range(6)}
    make_archive(db_session, status=ArchiveStatus.FAILED)
    picked = sample_archives(db_session, 4)
    ids = [a.id for a in picked]
    assert len(ids) == len(set(ids)) and 1 <= len(ids) <= 4
    assert set(ids) <= archived
    # Asking for at least as many as exist returns them all.
    assert {a.id for a in sample_archives(db_session, 100)} >= archived


def test_verify_reports_a_wrong_digest_and_a_missing_block(tmp_path: Path) -> None:
    store = FilesystemBlockstore(tmp_path / "blocks", durable=False)
    data = blob(700_000, 3)  # three chunks under a dag-pb root
    cid = str(import_file(data, sink=store).cid)
    good = ArchiveSample(1, 1, cid, len(data), "sha256", hashlib.sha256(data).hexdigest())
    assert verify_archive(store, good) is None
    wrong = ArchiveSample(1, 1, cid, len(data), "sha256", "0" * 64)
    damage = verify_archive(store, wrong)
    assert damage is not None and "DigestMismatch" in damage.problem and damage.corrupt == ()
    short = ArchiveSample(1, 1, cid, len(data) + 1, None, None)
    damage = verify_archive(store, short)
    assert damage is not None and "size" in damage.problem


async def test_a_corrupt_block_is_found_removed_and_the_archive_restored(
    migrated_url: str, tmp_path: Path
) -> None:
    data = blob(600_000, 4)  # three leaves and a root
    async with fake_host(tmp_path, migrated_url) as (host, fake, ctx):
        [artifact_id] = record(
            migrated_url,
            package(
                "npm", "pad", {"1.0.0": npm_artifact(fake.url + host.add("p.tgz", data), data, "p")}
            ),
        )
        handlers = {ARCHIVE: archive_job, REVERIFY: reverify_job}
        worker = Worker(
            ctx,
            handlers,
            concurrency=2,
            policy=RetryPolicy(max_attempts=3, backoff_base=0, backoff_cap=0),
            poll_interval=0.01,
        )
        await worker.run(mode="drain")
        cid = str(compute_cid(data))
        # Flip a byte in one stored leaf (bit rot, a bad disk), in its pack.
        store = ctx.blockstore
        assert isinstance(store, PackedBlockstore)
        leaf = next(b.cid for b in walk_dag(store, cid) if len(b.data) == 256 * 1024)
        location = store.locate(leaf)
        assert location is not None
        fd = os.open(store.pack_path(location.pack), os.O_RDWR)
        try:
            spoiled = os.pread(fd, 1, location.offset + 100)[0] ^ 0xFF
            os.pwrite(fd, bytes([spoiled]), location.offset + 100)
        finally:
            os.close(fd)

        with ctx.sessionmaker.begin() as session:
            jobs.enqueue(session, REVERIFY, {"sample": 10}, dedup_key=REVERIFY)
        downloads = len(host.requests.seen)
        worker = Worker(
            ctx,
            handlers,
            concurrency=1,
            policy=RetryPolicy(max_attempts=3, backoff_base=0, backoff_cap=0),
            poll_interval=0.01,
        )
        stats = await worker.run(mode="drain")
        # reverify, then the repair it queued.
        assert (stats.done, stats.dead) == (2, 0)
        assert len(host.requests.seen) == downloads + 1
        with ctx.sessionmaker() as session:
            row = session.scalars(
                sa.select(Archive).where(Archive.artifact_id == artifact_id)
            ).one()
            repairs = keyed(session, f"archive:{artifact_id}")
        assert (row.status, row.cid, row.error) == (ArchiveStatus.ARCHIVED, cid, None)
        assert len(repairs) == 2 and all(j.state == JobState.DONE for j in repairs)
        assert ctx.blockstore is not None
        assert b"".join(read_file(ctx.blockstore, cid)) == data


# -- the scheduler in one process ---------------------------------------------------------------


def stored_schedule(engine: Any) -> dict[str, float]:
    table = sa.table(JOBSTORE_TABLE, sa.column("id"), sa.column("next_run_time"))
    with engine.connect() as connection:
        return dict(connection.execute(sa.select(table.c.id, table.c.next_run_time)).all())


async def until(predicate: Callable[[], Any], *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_one_leads_another_waits_then_takes_over(migrated_url: str, tmp_path: Path) -> None:
    config = config_for(
        tmp_path,
        migrated_url,
        "stats = 0.2\ndrain_archives = 0\nretry_failed = 0\nreverify = 0\nprune_jobs = 0",
    )
    engine = make_engine(config.database)
    try:
        first = Scheduler(config, engine, owner="first")
        second = Scheduler(config, engine, owner="second")
        first_run = asyncio.create_task(first.run())
        await until(lambda: first.runs["stats"] >= 2)
        second_run = asyncio.create_task(second.run())
        await asyncio.sleep(1.0)
        assert first.leading and not second.leading
        assert second.runs["stats"] == 0  # it never fired while the first led
        assert await asyncio.to_thread(current_leader, engine) == "first"

        first.stop()
        await first_run
        await until(lambda: second.runs["stats"] >= 1)
        assert second.leading
        assert await asyncio.to_thread(current_leader, engine) == "second"
        second.stop()
        await second_run
        assert await asyncio.to_thread(current_leader, engine) is None
    finally:
        engine.dispose()


async def test_the_schedule_survives_a_restart(migrated_url: str, tmp_path: Path) -> None:
    schedule = (
        "drain_archives = 3600\nretry_failed = 0\nreverify = 0\nstats = 0\nprune_jobs = 0\n"
        "build_pieces = 0\nrender_answers = 0\noptimize = 0"
    )
    config = config_for(tmp_path, migrated_url, schedule)
    engine = make_engine(config.database)
    try:
        scheduler = Scheduler(config, engine)
        running = asyncio.create_task(scheduler.run())
        await until(lambda: scheduler.runs["drain_archives"] == 1)
        scheduler.stop()
        await running
        stored = stored_schedule(engine)
        assert list(stored) == ["drain_archives"]
        # The next run is one interval after the first.
        assert 3590 < stored["drain_archives"] - time.time() <= 3600

        # A restart keeps that time: nothing runs again now.
        again = Scheduler(config, engine)
        running = asyncio.create_task(again.run())
        await until(lambda: again.leading)
        await asyncio.sleep(0.5)
        assert again.runs["drain_archives"] == 0
        assert stored_schedule(engine) == stored
        again.stop()
        await running

        # A changed interval reschedules the task (it runs at once); a removed one is dropped.
        changed = config_for(
            tmp_path, migrated_url, schedule.replace("= 3600", "= 1800").replace("stats = 0", "")
        )
        third = Scheduler(changed, engine)
        running = asyncio.create_task(third.run())
        await until(lambda: third.runs["drain_archives"] == 1 and third.runs["stats"] == 1)
        third.stop()
        await running
        stored = stored_schedule(engine)
        assert set(stored) == {"drain_archives", "stats"}
        assert 1790 < stored["drain_archives"] - time.time() <= 1800
    finally:
        engine.dispose()


async def test_a_failing_task_is_logged_and_the_others_go_on(
    migrated_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_for(tmp_path, migrated_url)

    def broken(session: Any, config: Config) -> dict[str, int]:
        raise RuntimeError("task exploded")

    engine = make_engine(config.database)
    try:
        tasks = [
            Task("broken", "schedule.stats", broken),
            Task("prune", "schedule.stats", prune_jobs),
        ]
        scheduler = Scheduler(config, engine, tasks=tasks)
        assert scheduler.run_task("broken") is None
        assert scheduler.run_task("prune") == {"pruned": 0}
        assert (scheduler.failures["broken"], scheduler.runs["prune"]) == (1, 1)
        assert "task broken failed" in caplog.text and "task exploded" in caplog.text
    finally:
        engine.dispose()


# -- leadership across processes ------------------------------------------------------------------


def start_scheduler(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "forage", "--log-format", "logfmt", "scheduler"],
            env={**os.environ, "FORAGE_CONFIG": str(config)},
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


def leader_pid(engine: Any) -> int | None:
    """The leader's pid; None while nobody leads, or while a new leader (holding the lock)
    has not yet written its ``host:pid:token`` name, which ``current_leader`` reports as
    ``(unknown)``."""
    owner = current_leader(engine)
    parts = owner.split(":") if owner else []
    return int(parts[1]) if len(parts) == 3 else None


def test_a_second_scheduler_takes_over_when_the_leader_is_killed(
    migrated_url: str, tmp_path: Path
) -> None:
    config = config_file(
        tmp_path,
        migrated_url,
        "stats = 0.3\ndrain_archives = 0\nretry_failed = 0\nreverify = 0\nprune_jobs = 0",
    )
    engine = make_engine(migrated_url)
    logs = tmp_path / "a.log", tmp_path / "b.log"
    first = start_scheduler(config, logs[0])
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: leader_pid(engine) == first.pid, what="the first scheduler to lead")
        wait_for(lambda: 'msg="task stats ran' in logs[0].read_text(), what="a first run")
        second = start_scheduler(config, logs[1])
        wait_for(lambda: "waiting: another scheduler leads" in logs[1].read_text(), what="wait")
        time.sleep(1.0)
        assert leader_pid(engine) == first.pid
        assert "task stats ran" not in logs[1].read_text()  # the follower fires nothing

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        wait_for(lambda: leader_pid(engine) == second.pid, what="the second to take over")
        wait_for(lambda: "task stats ran" in logs[1].read_text(), what="the new leader to fire")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
        assert leader_pid(engine) is None
        text = logs[1].read_text()
        assert "leads:" in text and "stats every 0.3s" in text
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        engine.dispose()


def test_scheduler_run_runs_one_task_now(tmp_path: Path) -> None:
    """``forage scheduler --run TASK`` runs one task at once, whoever leads."""
    url = f"sqlite:///{tmp_path / 'forage.db'}"
    config = config_file(tmp_path, url)
    engine = make_engine(url)
    upgrade(engine)
    try:
        with make_sessionmaker(engine).begin() as session:
            make_artifact(session)
    finally:
        engine.dispose()
    result = subprocess.run(
        [sys.executable, "-m", "forage", "-c", str(config), "scheduler", "--run", "drain_archives"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "forage: drain_archives: queued 1" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "forage", "-c", str(config), "scheduler", "--run", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        bad.returncode == 2 and "no task 'nope'; known: build_pieces, drain_archives" in bad.stderr
    )
