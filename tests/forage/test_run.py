"""``forage run``: HTTP server, worker and scheduler in one process, stopped by a signal.

What is shown: a real ``forage run`` process on the embedded defaults (SQLite and blockstore
under ``data.dir``, created on first use) serves ``/healthz``, its scheduler queues a job
that its own worker runs, and SIGTERM or SIGINT stops it cleanly with exit status 0 and
the scheduler's lock given up; in process, :func:`forage.runtime.run.start` composes the same parts
and a scheduler-only process serves no HTTP.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from forage.config import load_config
from forage.db.engine import make_engine
from forage.db.models import JobRecord, JobState
from forage.jobs.leader import current_leader
from forage.jobs.tasks import REVERIFY
from forage.runtime.run import start

SCHEDULE = (
    "[schedule]\nleader_poll = 0.2\nreverify = 0.5\ndrain_archives = 0\nretry_failed = 0\n"
    "stats = 0\nprune_jobs = 0\nbuild_pieces = 0\n"
)


def wait_for(predicate: Any, *, timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def reverify_done(url: str) -> bool:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return bool(
                connection.execute(
                    sa.select(sa.func.count()).where(
                        JobRecord.kind == REVERIFY, JobRecord.state == JobState.DONE
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)]
)
def test_forage_run_serves_schedules_works_and_stops_on_a_signal(
    tmp_path: Path, signum: int
) -> None:
    # Only the schedule is configured: the database and blockstore are the embedded defaults.
    (tmp_path / "forage.toml").write_text(SCHEDULE)
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "forage", "run", "--port", "0"],
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if not k.startswith("FORAGE_")},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        found = wait_for(
            lambda: re.search(r"serving (http://127\.0\.0\.1:\d+)", log.read_text()),
            what="the server to listen",
        )
        url = found.group(1)
        health = httpx.get(url + "/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        database = tmp_path / "forage-data" / "forage.db"
        assert database.exists() and (tmp_path / "forage-data" / "blocks").is_dir()
        # The scheduler queued a re-verification, and this process's worker ran it.
        wait_for(lambda: reverify_done(f"sqlite:///{database}"), what="a scheduled job to run")

        process.send_signal(signum)
        assert process.wait(timeout=30) == 0
        text = log.read_text()
        assert f"received {signal.Signals(signum).name}" in text
        assert "forage stopping" in text and "stopped:" in text  # the scheduler's last line
        assert re.search(r"worker \S+ finished", text)
        assert "Traceback" not in text
        engine = make_engine(f"sqlite:///{database}")
        try:
            assert current_leader(engine) is None  # the lock went with the process
        finally:
            engine.dispose()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_start_composes_the_parts_asked_for(migrated_url: str, tmp_path: Path) -> None:
    path = tmp_path / "forage.toml"
    path.write_text(
        f'[database]\nurl = "{migrated_url}"\n[data]\ndir = "{tmp_path / "data"}"\n{SCHEDULE}'
    )
    config = load_config(path, environ={})
    async with start(config, http=False, port=0) as running:
        assert running.url is None and running.app is None
        assert running.worker is not None and running.scheduler is not None
        await asyncio.wait_for(_until(lambda: reverify_done(migrated_url)), timeout=30)
        assert running.scheduler.leading
        running.stop()
        assert await asyncio.wait_for(running.wait(), timeout=30) == 0
    assert running.tasks["worker"].done() and running.tasks["scheduler"].done()

    async with start(config, workers=False, scheduler=False, port=0) as running:
        assert running.worker is None and running.scheduler is None
        assert running.url is not None
        async with httpx.AsyncClient() as client:
            assert (await client.get(running.url + "/healthz")).status_code == 200


async def _until(predicate: Any) -> None:
    while True:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.05)
