"""A full disk under a running Forage (SQLite, database and data on a real small tmpfs).

What is shown: the scheduler survives its job store's write errors, reports itself down,
gives its lock up (a standby takes it), and resumes by itself once space is freed; ``forage
run`` keeps answering lookups (unknown keys say why nothing was queued) and read pages
without a 5xx while ``/healthz`` answers 503 naming what is down, then 200 again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from forage.config import Config, load_config
from forage.db.engine import make_engine, upgrade
from forage.jobs.scheduler import Scheduler
from forage.jobs.tasks import Task
from forage.runtime.run import start
from tests.diskfull import fill, free, small_disk

#: A CID the archive does not hold (the empty raw block's).
CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
NPM_UNREACHED = """
[registries.npm]
registry_url = "http://127.0.0.1:9/"
replicate_url = "http://127.0.0.1:9/registry"
allow_http = true
"""


def config_on(disk: Path, extra: str = "") -> Config:
    path = disk.parent / "forage.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{disk / "forage.db"}"\n\n[data]\ndir = "{disk / "data"}"\n'
        f"\n[schedule]\nleader_poll = 0.2\nstats = 0.3\n{extra}"
    )
    return load_config(path, environ={})


def migrate(config: Config) -> None:
    engine = make_engine(config.database)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


async def until(predicate: Callable[[], Any], *, within: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_the_scheduler_outlives_a_full_disk_and_a_standby_takes_over(
    tmp_path: Path,
) -> None:
    ticks: list[float] = []

    def tick(session: Any, config: Config) -> dict[str, int]:
        ticks.append(time.monotonic())
        return {"ticks": len(ticks)}

    with small_disk(tmp_path / "disk") as disk:
        config = config_on(disk)
        migrate(config)
        engine = make_engine(config.database)
        tasks = [Task("tick", "schedule.stats", tick)]
        first = Scheduler(config, engine, tasks=tasks, owner="first")
        second = Scheduler(config, engine, tasks=tasks, owner="second")
        runs = [asyncio.create_task(first.run())]
        try:
            await until(lambda: first.leading and len(ticks) >= 2, what="the first to lead")
            runs.append(asyncio.create_task(second.run()))
            await asyncio.sleep(0.5)
            assert not second.leading and second.terms == 0

            fill(disk)
            # The leader's job store cannot record the next run: it says so, gives the lock
            # up, and the standby takes it (and on this shared full disk fails in turn).
            await until(lambda: first.health().state == "down", what="the leader to fail")
            assert not first.leading
            assert first.health().error is not None
            await until(lambda: second.terms >= 1, what="the standby to take the lock")

            free(disk)
            freed_at = time.monotonic()
            # Nobody restarts anything: scheduling resumes by itself.
            await until(
                lambda: sum(t > freed_at for t in ticks) >= 2, what="ticks after the disk freed"
            )
            await until(
                lambda: all(s.health().ok for s in (first, second)),
                what="both to report themselves healthy",
            )
            assert first.leading != second.leading
            assert {first.health().state, second.health().state} == {"leading", "standby"}
        finally:
            first.stop()
            second.stop()
            await asyncio.gather(*runs)
            engine.dispose()


async def test_forage_run_on_a_full_disk_answers_reads_and_says_what_is_down(
    tmp_path: Path,
) -> None:
    # The registry is configured (so unknown keys would queue imports) but never reached.
    with small_disk(tmp_path / "disk") as disk:
        config = config_on(disk, NPM_UNREACHED)
        migrate(config)
        async with start(config, port=0) as running:
            assert running.url is not None
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
                assert (await client.get("/healthz")).status_code == 200
                fill(disk)

                health = await client.get("/healthz")
                assert health.status_code == 503
                assert "blockstore" in health.json()["down"]

                lookup = await client.post(
                    "/api/v1/lookup", json={"keys": ["npm:left-pad:1.3.0", "npm:nope:1"]}
                )
                assert lookup.status_code == 200, lookup.text
                results = lookup.json()["results"]
                assert [r["status"] for r in results] == ["not_found", "not_found"]
                assert all("no import could be queued" in r["reason"] for r in results)

                reads = ("/", "/api/v1/stats", "/metrics", "/packages/npm/left-pad", f"/ipfs/{CID}")
                for path in reads:
                    response = await client.get(path)
                    assert response.status_code < 500, (path, response.text[:300])

                # The scheduler, whose job store is on the full disk, is named once it fails.
                await until_async(client, lambda body: "scheduler" in body.get("down", []))

                free(disk)
                await until_async(client, lambda body: body["status"] == "ok", within=60)
                assert running.scheduler is not None and running.scheduler.health().ok
            running.stop()


async def until_async(
    client: httpx.AsyncClient, predicate: Callable[[dict[str, Any]], bool], within: float = 30
) -> None:
    deadline = time.monotonic() + within
    while True:
        body = (await client.get("/healthz")).json()
        if predicate(body):
            return
        assert time.monotonic() < deadline, f"healthz never matched: {body}"
        await asyncio.sleep(0.1)
