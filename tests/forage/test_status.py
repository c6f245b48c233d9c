"""Status that tells the truth, against the loopback fakes, on SQLite and PostgreSQL.

What is shown: a watcher run to its feed's head reports the registry's own head and a lag of
0 seconds that stays 0 however far the clock moves, for every registered ecosystem alike; a
run that stopped short of the head lags by the time since it was last there, growing with
the clock; packages, versions and files known, archived, pending, failed and removed are
the same in ``forage status`` (text and JSON), ``/api/v1/stats`` and ``/metrics``; and on
SQLite every count reads through indexes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from forage.archive.runner import archive_many
from forage.cli import main
from forage.config import Config
from forage.db.engine import make_engine, make_sessionmaker, utcnow
from forage.db.models import ArchiveStatus, Artifact, Package, Version
from forage.index.ingest import import_package, watch_feed
from forage.index.status import feed_lag, registry_status
from forage.jobs.worker import JobContext, job_context
from indexers import ECOSYSTEMS
from indexers.fakeserver import serve
from indexers.npm.fake import FakeNpmRegistry
from indexers.pypi.fake import FakePyPI
from tests.forage.mirror.conftest import mirror_config
from tests.forage.test_ops import client_for, samples


@asynccontextmanager
async def opened(config: Config) -> AsyncIterator[JobContext]:
    engine = make_engine(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            yield ctx
    finally:
        engine.dispose()


def status_at(ctx: JobContext, now: datetime) -> dict[str, Any]:
    with ctx.sessionmaker() as session:
        return registry_status(session, now=now)


@pytest.mark.parametrize("ecosystem", list(ECOSYSTEMS))
async def test_a_watcher_at_the_head_reports_it_with_lag_zero_whatever_the_clock(
    ecosystem: str, migrated_url: str, tmp_path: Path
) -> None:
    fake = ECOSYSTEMS[ecosystem].fake()
    name = fake.NAME_EXAMPLES[0][1]
    async with serve(fake.make_app()) as upstream:
        endpoints = {ecosystem: fake.config_endpoints(upstream.url)}
        config = mirror_config(tmp_path, migrated_url, registries=endpoints)
        async with opened(config) as ctx:
            await watch_feed(ctx, ecosystem)
            for version in fake.SAMPLE_VERSIONS:
                fake.publish_release(name, version)
            stats = await watch_feed(ctx, ecosystem)
            assert stats.changes >= 1
            now = utcnow()
            for later in (timedelta(0), timedelta(hours=1), timedelta(days=30)):
                feed = status_at(ctx, now + later)[ecosystem].feed
                assert feed is not None
                assert feed.at_head
                assert feed.lag_seconds == 0
            assert feed.head is not None
            assert feed.head == fake.feed_head()
            assert feed.position == feed.head
            assert feed.caught_up_at is not None and feed.caught_up_at <= utcnow()
        async with client_for(config) as client:
            metrics = samples(await (await client.get("/metrics")).text())
    labels = (("registry", ecosystem),)
    assert metrics[("forage_feed_lag_seconds", labels)] == 0
    # Seqs and serials as they are, timestamps as Unix time: a number either way.
    head = metrics[("forage_feed_head", labels)]
    assert head > 0 and metrics[("forage_feed_cursor", labels)] == head


async def test_a_watcher_short_of_the_head_lags_from_when_it_was_last_there(
    migrated_url: str, tmp_path: Path
) -> None:
    fake = FakePyPI()
    async with serve(fake.make_app()) as upstream:
        endpoints = {"pypi": fake.config_endpoints(upstream.url)}
        config = mirror_config(tmp_path, migrated_url, registries=endpoints)
        async with opened(config) as ctx:
            await watch_feed(ctx, "pypi")
            caught_up = status_at(ctx, utcnow())["pypi"].feed.caught_up_at
            fake.publish_release("late", "1.0")
            # The changelog's page of rows is not the head yet: that takes an empty page.
            stats = await watch_feed(ctx, "pypi", max_pages=1)
            assert stats.pages == 1 and stats.changes == 1
            now = utcnow()
            feed = status_at(ctx, now)["pypi"].feed
            hour_later = status_at(ctx, now + timedelta(hours=1))["pypi"].feed
            assert not feed.at_head
            assert feed.caught_up_at == caught_up
            # The journal dates the cursor's row (the fake's clock is in 2024), but the
            # watcher was at the head since, so the lag runs from then.
            assert feed.position_at == datetime.fromtimestamp(fake.journal[-1][2], UTC)
            assert feed.lag_seconds == (now - caught_up).total_seconds()
            assert hour_later.lag_seconds == feed.lag_seconds + 3600
            assert feed.position == fake.serial and feed.head == fake.serial

            await watch_feed(ctx, "pypi")
            assert status_at(ctx, now + timedelta(hours=1))["pypi"].feed.lag_seconds == 0


def test_the_lag_is_measured_from_the_later_of_the_two_dates() -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    old, recent = now - timedelta(days=400), now - timedelta(minutes=5)
    assert feed_lag(at_head=True, caught_up_at=old, position_at=old, now=now) == 0
    assert feed_lag(at_head=False, caught_up_at=old, position_at=recent, now=now) == 300
    assert feed_lag(at_head=False, caught_up_at=recent, position_at=old, now=now) == 300
    assert feed_lag(at_head=False, caught_up_at=None, position_at=old, now=now) == 400 * 86400
    assert feed_lag(at_head=False, caught_up_at=None, position_at=None, now=now) is None


async def _artifact_ids(ctx: JobContext, *names: str) -> list[int]:
    with ctx.sessionmaker() as session:
        return list(
            session.execute(
                sa.select(Artifact.id)
                .join(Version, Version.id == Artifact.version_id)
                .join(Package, Package.id == Version.package_id)
                .where(Package.name.in_(names))
                .order_by(Artifact.id)
            ).scalars()
        )


async def test_status_api_and_metrics_report_the_same_counts(
    migrated_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npm, pypi = FakeNpmRegistry(), FakePyPI()
    async with serve(npm.make_app()) as npm_up, serve(pypi.make_app()) as pypi_up:
        endpoints = {
            "npm": npm.config_endpoints(npm_up.url),
            "pypi": pypi.config_endpoints(pypi_up.url),
        }
        config = mirror_config(tmp_path, migrated_url, registries=endpoints)
        async with opened(config) as ctx:
            for ecosystem in endpoints:
                await watch_feed(ctx, ecosystem)
            for name, version in [
                ("a", "1.0.0"),
                ("a", "1.1.0"),
                ("b", "1.0.0"),
                ("c", "1.0.0"),
                ("d", "1.0.0"),
                ("d", "2.0.0"),
            ]:
                npm.publish_release(name, version)
            npm.tamper_release("c", "1.0.0")
            # A wheel, its PEP 658 metadata file and an sdist, never archived.
            pypi.publish_release("wheel-and-sdist", "1.0")
            for ecosystem in endpoints:
                await watch_feed(ctx, ecosystem)
            for name in "abcd":
                await import_package(ctx, "npm", name, archive=False)
            await import_package(ctx, "pypi", "wheel-and-sdist", archive=False)
            outcomes = await archive_many(
                ctx, await _artifact_ids(ctx, "a", "b", "c"), concurrency=2
            )
            assert [o.status for o in outcomes].count(ArchiveStatus.FAILED) == 1
            # a@1.0.0 (archived) and d@1.0.0 (never archived) leave the registry.
            npm.unpublish_version("a", "1.0.0")
            npm.unpublish_version("d", "1.0.0")
            await import_package(ctx, "npm", "a", archive=False)
            await import_package(ctx, "npm", "d", archive=False)
            await watch_feed(ctx, "npm")
            report = status_at(ctx, utcnow())

        expected = {
            "npm": {
                "packages": {"known": 4, "removed": 0},
                "versions": {"known": 6, "removed": 2},
                "files": {"known": 6, "archived": 3, "pending": 1, "failed": 1, "removed": 2},
            },
            "pypi": {
                "packages": {"known": 1, "removed": 0},
                "versions": {"known": 1, "removed": 0},
                "files": {"known": 3, "archived": 0, "pending": 3, "failed": 0, "removed": 0},
            },
        }
        for ecosystem, counts in expected.items():
            row = report[ecosystem]
            assert (row.packages, row.versions, row.files) == tuple(counts.values()), ecosystem
            assert row.feed is not None and row.feed.lag_seconds == 0

        assert main(["-c", str(tmp_path / "forage.toml"), "status", "--json"]) == 0
        cli = json.loads(capsys.readouterr().out)
        assert main(["-c", str(tmp_path / "forage.toml"), "status"]) == 0
        text = capsys.readouterr().out
        async with client_for(config) as client:
            response = await client.get("/api/v1/stats")
            assert response.status == 200
            api = (await response.json())["registries"]
            metrics = samples(await (await client.get("/metrics")).text())

    for ecosystem, counts in expected.items():
        assert cli[ecosystem]["configured"] is True
        assert {k: v for k, v in cli[ecosystem].items() if k != "configured"} == api[ecosystem]
        assert {table: api[ecosystem][table] for table in counts} == counts
        assert api[ecosystem]["lag_seconds"] == 0 and api[ecosystem]["at_head"] is True
        for table, figures in counts.items():
            for state, n in figures.items():
                labels = (("registry", ecosystem), ("state", state))
                assert metrics[(f"forage_registry_{table}", labels)] == n, (table, state)
        assert metrics[("forage_feed_lag_seconds", (("registry", ecosystem),))] == 0
        assert metrics[("forage_feed_at_head", (("registry", ecosystem),))] == 1
    assert metrics[("forage_feed_head", (("registry", "npm"),))] == npm.feed_head()
    assert metrics[("forage_feed_cursor", (("registry", "pypi"),))] == pypi.feed_head()
    assert "  files     6 known, 3 archived, 1 pending, 1 failed, 2 removed" in text
    head = npm.feed_head()
    assert f"  feed      cursor at seq {head}, head seq {head}, lag 0 s (at head)" in text
    assert "golang (not configured)\n  feed      not watched yet" in text


def test_every_count_reads_through_indexes_on_sqlite(
    tmp_path: Path, _sqlite_template: Path
) -> None:
    path = tmp_path / "forage.db"
    path.write_bytes(_sqlite_template.read_bytes())
    engine = make_engine(f"sqlite:///{path}")
    statements: list[tuple[str, Any]] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    try:
        with make_sessionmaker(engine)() as session:
            registry_status(session)
        counts = [s for s in statements if "count(" in s[0] and "jobs" not in s[0]]
        assert len(counts) == 3 * len(ECOSYSTEMS)
        with engine.connect() as connection:
            for statement, parameters in counts:
                plan = [
                    row[3]
                    for row in connection.exec_driver_sql(
                        f"EXPLAIN QUERY PLAN {statement}", parameters
                    )
                ]
                # Each step probes an index (no table scan), and nothing is sorted.
                assert all(step.startswith("SEARCH") for step in plan), (statement, plan)
                assert not any("TEMP B-TREE" in step for step in plan), plan
    finally:
        engine.dispose()
