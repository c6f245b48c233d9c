"""Reconciliation: sweeps of each registry's own listing find what its feed missed.

On SQLite and PostgreSQL against the loopback fakes: npm's replica ``_all_docs`` reveals a
package whose feed entry was lost, one inserted late below the cursor outside the re-scan
window, and one whose revision moved; PyPI's ``list_packages_with_serial`` a project never
seen and one whose serial moved; the Go index re-read before the cursor a version the
watcher never saw. A dry run counts without queueing or recording anything; a sweep stopped
midway resumes without queueing anything twice; the scheduler and ``forage reconcile`` run it.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from forage.db.models import FeedCursor
from forage.index.ingest import IMPORT, import_package, watch_feed
from forage.index.reconcile import RECONCILE, reconcile, reconcile_job, sweep_feed
from forage.jobs.handlers import default_handlers
from forage.jobs.queue import RetryPolicy
from forage.jobs.tasks import schedule_table
from forage.jobs.worker import JobContext, Worker
from indexers.fakeserver import ThreadedServer
from indexers.golang.fake import GoFake
from indexers.golang.history import format_time
from indexers.npm.fake import FakeNpmRegistry
from indexers.pypi.fake import FakePyPI
from tests.forage.index_harness import (
    configure_npm,
    drain_imports,
    forage_on,
    import_jobs,
    packages_of,
    run_cli,
    versions_of,
    write_config,
)


def _sweep_row(ctx: JobContext, ecosystem: str) -> dict[str, object] | None:
    with ctx.sessionmaker() as session:
        row = session.get(FeedCursor, sweep_feed(ecosystem))
        return None if row is None else dict(row.cursor)


async def test_npm_all_docs_finds_lost_late_and_changed_packages(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    async with forage_on(tmp_path, migrated_url, {"npm": registry}) as ctx:
        registry.publish("known", "1.0.0")
        await import_package(ctx, "npm", "known")
        registry.publish("known", "1.1.0")
        registry.lose_feed_entry("known")  # a new revision the feed never announced
        registry.publish("never-seen", "1.0.0")
        registry.lose_feed_entry("never-seen")
        registry.publish("late-pkg", "1.0.0")
        registry.lose_feed_entry("late-pkg")
        registry.jump(10_000)
        await watch_feed(ctx, "npm")  # the watcher starts at the head
        registry.feed_entry("late-pkg", rev=registry.docs["late-pkg"]["_rev"], seq=5)
        stats = await watch_feed(ctx, "npm")  # seq 5 is far below its re-scan window
        assert stats.rescanned == 0 and import_jobs(ctx) == []

        dry = await reconcile(ctx, "npm", dry_run=True)
        assert (dry.checked, dry.missing, dry.changed, dry.queued) == (3, 2, 1, 0)
        assert dry.done and import_jobs(ctx) == [] and _sweep_row(ctx, "npm") is None

        pages: list[int] = []
        done = await reconcile(ctx, "npm", on_page=lambda s: pages.append(s.pages))
        assert (done.missing, done.changed, done.queued, pages) == (2, 1, 3, [1])
        assert {key for key, _ in import_jobs(ctx)} == {
            f"{IMPORT}:npm:{name}" for name in ("known", "never-seen", "late-pkg")
        }
        row = _sweep_row(ctx, "npm")
        assert row is not None and row["running"] is False and row["missing"] == 2
        await drain_imports(ctx)
        assert versions_of(ctx, "npm", "known") == {"1.0.0", "1.1.0"}
        assert packages_of(ctx, "npm") == {"known", "never-seen", "late-pkg"}

        again = await reconcile(ctx, "npm")
        assert (again.checked, again.missing, again.changed, again.queued) == (3, 0, 0, 0)


async def test_pypi_serials_find_a_moved_project_and_one_never_seen(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakePyPI()
    registry.release("alpha", "1.0")
    registry.release("steady", "1.0")
    async with forage_on(tmp_path, migrated_url, {"pypi": registry}) as ctx:
        await import_package(ctx, "pypi", "alpha")
        await import_package(ctx, "pypi", "steady")
        registry.release("alpha", "1.1")
        registry.release("Beta_Project", "0.1")

        dry = await reconcile(ctx, "pypi", dry_run=True)
        assert (dry.checked, dry.missing, dry.changed, dry.queued) == (3, 1, 1, 0)
        assert import_jobs(ctx) == []

        done = await reconcile(ctx, "pypi")
        assert done.queued == 2
        keys = {key for key, _ in import_jobs(ctx)}
        assert keys == {f"{IMPORT}:pypi:alpha", f"{IMPORT}:pypi:beta-project"}
        await drain_imports(ctx)
        assert versions_of(ctx, "pypi", "alpha") == {"1.0", "1.1"}
        assert versions_of(ctx, "pypi", "beta-project") == {"0.1"}


def _ago(**delta: float) -> str:
    return format_time(datetime.now(UTC) - timedelta(**delta))


async def test_go_index_reread_before_the_cursor_finds_unseen_versions(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = GoFake()
    registry.add_version("example.com/known", "v1.0.0", feed_at=_ago(hours=3))
    async with forage_on(tmp_path, migrated_url, {"golang": registry}) as ctx:
        await import_package(ctx, "golang", "example.com/known")
        registry.add_version("example.com/known", "v1.1.0", feed_at=_ago(hours=2))
        registry.add_version("example.com/late", "v0.1.0", feed_at=_ago(hours=1))
        registry.add_version("example.com/ancient", "v1.0.0", feed_at=_ago(days=30))
        await watch_feed(ctx, "golang")  # starts now: the versions above are behind it
        assert import_jobs(ctx) == []

        done = await reconcile(ctx, "golang")
        assert (done.checked, done.missing, done.changed, done.queued) == (3, 1, 1, 2)
        assert {key for key, _ in import_jobs(ctx)} == {
            f"{IMPORT}:golang:example.com/known@v1.1.0",
            f"{IMPORT}:golang:example.com/late@v0.1.0",
        }
        await drain_imports(ctx)
        assert versions_of(ctx, "golang", "example.com/known") == {"v1.0.0", "v1.1.0"}
        assert versions_of(ctx, "golang", "example.com/late") == {"v0.1.0"}


async def test_a_sweep_stopped_midway_resumes_without_repeating(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = GoFake()
    base = datetime.now(UTC) - timedelta(hours=5)
    for i in range(2100):
        stamp = format_time(base + timedelta(milliseconds=i))
        registry.add_feed_line(f"example.com/m{i}", "v1.0.0", stamp)
    async with forage_on(tmp_path, migrated_url, {"golang": registry}) as ctx:
        await watch_feed(ctx, "golang")
        first = await reconcile(ctx, "golang", max_pages=1)
        assert (first.pages, first.queued, first.done) == (1, 2000, False)
        row = _sweep_row(ctx, "golang")
        assert row is not None and row["running"] is True

        rest = await reconcile(ctx, "golang")  # the next run picks the sweep up
        assert rest.done and rest.queued == 100
        counts = Counter(key for key, _ in import_jobs(ctx))
        assert len(counts) == 2100 and set(counts.values()) == {1}
        row = _sweep_row(ctx, "golang")
        assert row is not None and (row["running"], row["missing"]) == (False, 2100)


async def test_the_scheduler_queues_a_sweep_per_registry_and_a_worker_runs_it(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    registry.publish("left-pad", "1.0.0")
    async with forage_on(tmp_path, migrated_url, {"npm": registry}) as ctx:
        tasks = {task.name: task for task in schedule_table(ctx.config)}
        task = tasks[f"{RECONCILE}:npm"]
        assert task.interval(ctx.config) == 86400.0
        assert default_handlers()[RECONCILE] is not None

        first = await ctx.transaction(task.run, ctx.config)
        second = await ctx.transaction(task.run, ctx.config)
        assert first["queued"] == 1 and second["skipped"] == 1
        worker = Worker(
            ctx,
            {RECONCILE: reconcile_job},
            concurrency=1,
            policy=RetryPolicy(max_attempts=1, backoff_base=0, backoff_cap=0),
            poll_interval=0.01,
        )
        await worker.run(mode="drain")
        assert {key for key, _ in import_jobs(ctx)} == {f"{IMPORT}:npm:left-pad"}
        assert dict(_sweep_row(ctx, "npm") or {})["running"] is False

    off = write_config(tmp_path, migrated_url, {}, schedule={"reconcile": 0})
    assert not any(t.name.startswith(RECONCILE) for t in schedule_table(off))


def test_forage_reconcile_reports_counts_and_dry_run_queues_nothing(tmp_path: Path) -> None:
    registry = FakeNpmRegistry()
    registry.publish("left-pad", "1.0.0")
    registry.publish("right-pad", "1.0.0")
    with ThreadedServer(registry.make_app()) as fake:
        configure_npm(tmp_path, fake.url)
        dry = run_cli(tmp_path, "reconcile", "npm", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "page 1: 2 checked, 2 missing, 0 changed" in dry.stderr
        assert "dry run: nothing queued" in dry.stderr
        assert json.loads(dry.stdout)["queued"] == 0
        status = json.loads(run_cli(tmp_path, "status", "--json").stdout)
        assert status["npm"]["imports"]["pending"] == 0

        real = run_cli(tmp_path, "reconcile", "npm")
        assert "2 imports queued" in real.stderr
        assert json.loads(real.stdout)["missing"] == 2
        status = json.loads(run_cli(tmp_path, "status", "--json").stdout)
        assert status["npm"]["imports"]["pending"] == 2

        unset = run_cli(tmp_path, "reconcile", "pypi")
        assert unset.returncode == 2 and "registries.pypi" in unset.stderr
        assert "Traceback" not in unset.stderr
