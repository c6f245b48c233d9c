"""Watchers and imports against the loopback npm and PyPI fakes, on SQLite and PostgreSQL.

What is shown: a feed page's changes become import jobs in the transaction that moves the
cursor; imports record every version and artifact with digests exactly once, however often
they run; deleted and yanked releases are flagged; a failing feed stops without moving the
cursor; a bad package retries then parks as dead while the rest of the feed goes on; two
watchers cannot both move one cursor.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.orm import Session

from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import (
    Artifact,
    ArtifactDigest,
    FeedCursor,
    JobRecord,
    JobState,
    Package,
    Version,
)
from forage.index.ingest import (
    ARCHIVE,
    IMPORT,
    CursorConflict,
    RecordStats,
    change_of,
    commit_page,
    enqueue_changes,
    import_job,
    import_package,
    record_package,
    watch_feed,
)
from forage.jobs.queue import RetryPolicy
from forage.jobs.worker import JobContext, Worker, job_context
from indexers import Artifact as FileInfo
from indexers import (
    Change,
    FeedError,
    PackageInfo,
    Page,
    Release,
    UpstreamUnavailable,
)
from indexers.fakeserver import serve
from indexers.golang.fake import GoEndpoints, GoFake
from indexers.npm.fake import FakeNpmRegistry
from indexers.pypi.fake import FakePyPI


def write_config(
    tmp_path: Path,
    url: str,
    *,
    npm: str = "",
    pypi: str = "",
    golang: GoEndpoints | None = None,
    max_connections: int = 10,
) -> Config:
    lines = [f'[database]\nurl = "{url}"\n', f'[data]\ndir = "{tmp_path / "data"}"\n']
    lines.append("[jobs]\nmax_attempts = 3\nbackoff_base = 0\nbackoff_cap = 0\n")
    if npm:
        lines.append(
            f'[registries.npm]\nregistry_url = "{npm}"\nreplicate_url = "{npm}/registry"\n'
            f"allow_http = true\nmax_connections = {max_connections}\n"
        )
    if golang:
        lines.append(
            f'[registries.golang]\nindex_url = "{golang.index_url}"\n'
            f'proxy_url = "{golang.proxy_url}"\nsumdb_url = "{golang.sumdb_url}"\n'
            "allow_http = true\n"
        )
    if pypi:
        lines.append(
            f'[registries.pypi]\nindex_url = "{pypi}/simple"\njson_url = "{pypi}/pypi"\n'
            f'xmlrpc_url = "{pypi}/pypi"\nallow_http = true\n'
        )
    path = tmp_path / "forage.toml"
    path.write_text("\n".join(lines))
    return load_config(path, environ={})


@asynccontextmanager
async def forage_with(
    app: web.Application, tmp_path: Path, url: str, registry: str, **options: Any
) -> AsyncIterator[JobContext]:
    """Serve a fake registry and open Forage on it (database ``url``, registry's table)."""
    async with serve(app) as fake:
        config = write_config(tmp_path, url, **{registry: fake.url}, **options)
        async with context(config) as ctx:
            yield ctx


@asynccontextmanager
async def context(config: Config) -> AsyncIterator[JobContext]:
    engine = make_engine(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            yield ctx
    finally:
        engine.dispose()


async def drain(ctx: JobContext, kinds: tuple[str, ...] = (IMPORT,)) -> Any:
    handlers = {IMPORT: import_job}
    worker = Worker(
        ctx,
        {k: v for k, v in handlers.items() if k in kinds},
        concurrency=4,
        policy=RetryPolicy(max_attempts=3, backoff_base=0, backoff_cap=0),
        poll_interval=0.01,
    )
    return await worker.run(mode="drain")


def rows(ctx: JobContext, fn: Callable[[Any], Any]) -> Any:
    with ctx.sessionmaker() as session:
        return fn(session)


def versions_of(ctx: JobContext, ecosystem: str, name: str) -> dict[str, tuple[bool, bool]]:
    def query(session: Any) -> dict[str, tuple[bool, bool]]:
        result = session.execute(
            sa.select(Version.number, Version.yanked, Version.deleted)
            .join(Package)
            .where(Package.ecosystem == ecosystem, Package.name == name)
        )
        return {row.number: (row.yanked, row.deleted) for row in result}

    return rows(ctx, query)


def job_counts(ctx: JobContext) -> dict[tuple[str, str], int]:
    def query(session: Any) -> dict[tuple[str, str], int]:
        result = session.execute(
            sa.select(JobRecord.kind, JobRecord.state, sa.func.count()).group_by(
                JobRecord.kind, JobRecord.state
            )
        )
        return {(kind, str(state)): n for kind, state, n in result}

    return rows(ctx, query)


async def test_npm_feed_to_rows_with_every_version_and_digest(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    async with forage_with(registry.make_app(), tmp_path, migrated_url, "npm") as ctx:
        await watch_feed(ctx, "npm")  # a new watcher starts at the head: nothing yet
        tarballs = [registry.publish("left-pad", f"1.0.{i}") for i in range(25)]
        registry.publish("@scope/pkg", "2.0.0", deprecated="use other")
        stats = await watch_feed(ctx, "npm")
        assert stats.changes == 2
        assert job_counts(ctx) == {(IMPORT, "queued"): 2}
        await drain(ctx)

        assert len(versions_of(ctx, "npm", "left-pad")) == 25  # all, not the newest 20
        assert set(versions_of(ctx, "npm", "@scope/pkg")) == {"2.0.0"}

        def digests(session: Any) -> dict[str, dict[str, str]]:
            result = session.execute(
                sa.select(Artifact.url, ArtifactDigest.algorithm, ArtifactDigest.value).join(
                    ArtifactDigest
                )
            )
            out: dict[str, dict[str, str]] = {}
            for url, algorithm, value in result:
                out.setdefault(url, {})[algorithm] = value
            return out

        recorded = rows(ctx, digests)
        for tarball in tarballs:
            match = [d for url, d in recorded.items() if url.endswith(tarball.filename)]
            assert match == [{"sha512": tarball.sha512, "sha1": tarball.shasum}]
        assert len(recorded) == 26
        assert job_counts(ctx)[(ARCHIVE, "queued")] == 26
        assert job_counts(ctx)[(IMPORT, "done")] == 2

        # Importing again changes nothing and queues no more archive jobs.
        assert (await import_package(ctx, "npm", "left-pad")).new_artifacts == 0
        assert job_counts(ctx)[(ARCHIVE, "queued")] == 26


async def test_unpublished_and_deprecated_npm_versions_are_flagged(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    registry.publish("gone", "1.0.0")
    registry.publish("gone", "1.1.0")
    async with forage_with(registry.make_app(), tmp_path, migrated_url, "npm") as ctx:
        await import_package(ctx, "npm", "gone")
        assert versions_of(ctx, "npm", "gone") == {
            "1.0.0": (False, False),
            "1.1.0": (False, False),
        }
        registry.unpublish_version("gone", "1.1.0")
        await import_package(ctx, "npm", "gone")
        assert versions_of(ctx, "npm", "gone")["1.1.0"] == (False, True)
        registry.delete("gone")
        assert await import_package(ctx, "npm", "gone") is None
        assert versions_of(ctx, "npm", "gone") == {
            "1.0.0": (False, True),
            "1.1.0": (False, True),
        }

        def package_deleted(session: Any) -> bool:
            return session.execute(sa.select(Package.deleted)).scalar_one()

        assert rows(ctx, package_deleted) is True


async def test_pypi_changelog_imports_every_file_and_yanks(
    migrated_url: str, tmp_path: Path
) -> None:
    pypi = FakePyPI(changelog_cap=3)
    async with forage_with(pypi.make_app(), tmp_path, migrated_url, "pypi") as ctx:
        await watch_feed(ctx, "pypi")
        pypi.release("Sample.Project", "1.0", wheels=("py3-none-any", "cp311-abi3-win32"))
        pypi.release("Sample.Project", "1.1", wheels=("py3-none-any",))
        pypi.yank("Sample.Project", "1.0", reason="broken")
        pypi.release("other", "0.1")
        stats = await watch_feed(ctx, "pypi")
        assert stats.pages >= 3  # the changelog cap forces several pages
        assert stats.changes >= 2
        await drain(ctx)
        assert versions_of(ctx, "pypi", "sample-project") == {
            "1.0": (True, False),
            "1.1": (False, False),
        }

        def files(session: Any) -> int:
            return session.execute(
                sa.select(sa.func.count())
                .select_from(Artifact)
                .join(Version)
                .join(Package)
                .where(Package.name == "sample-project")
            ).scalar_one()

        # 1.0: two wheels + sdist; 1.1: one wheel + sdist; and each wheel's PEP 658 metadata
        assert rows(ctx, files) == 5 + 3


async def test_stale_pypi_page_is_retried_until_fresh(migrated_url: str, tmp_path: Path) -> None:
    pypi = FakePyPI()
    async with forage_with(pypi.make_app(), tmp_path, migrated_url, "pypi") as ctx:
        await watch_feed(ctx, "pypi")
        pypi.release("demo", "1.0")
        pypi.release("demo", "2.0")
        await watch_feed(ctx, "pypi")
        pypi.stale("demo", times=1)  # the first page served is a cached older one
        stats = await drain(ctx)
        assert stats.retried == 1
        assert set(versions_of(ctx, "pypi", "demo")) == {"1.0", "2.0"}


async def test_feed_failures_retry_then_stop_without_moving_the_cursor(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    async with forage_with(registry.make_app(), tmp_path, migrated_url, "npm") as ctx:
        await watch_feed(ctx, "npm")
        registry.publish("a", "1.0.0")
        before = rows(ctx, lambda s: dict(s.get(FeedCursor, "npm").cursor))

        registry.faults.fail(503, times=2, retry_after="7", path="/registry/_changes")
        stats = await watch_feed(ctx, "npm", sleep=sleep)
        assert slept[-2:] == [7.0, 7.0]
        assert stats.changes == 1

        registry.publish("b", "1.0.0")
        registry.faults.fail(503, times=50, path="/registry/_changes")
        moved = rows(ctx, lambda s: dict(s.get(FeedCursor, "npm").cursor))
        assert moved != before
        with pytest.raises(UpstreamUnavailable):
            await watch_feed(ctx, "npm", sleep=sleep)
        assert rows(ctx, lambda s: dict(s.get(FeedCursor, "npm").cursor)) == moved

        registry.faults.clear()
        registry.faults.malformed(times=50, path="/registry/_changes")
        with pytest.raises(FeedError):
            await watch_feed(ctx, "npm", sleep=sleep)
        assert rows(ctx, lambda s: dict(s.get(FeedCursor, "npm").cursor)) == moved
        assert job_counts(ctx) == {(IMPORT, "queued"): 1}  # only "a"


async def test_one_bad_package_is_parked_while_the_feed_moves_on(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    async with forage_with(registry.make_app(), tmp_path, migrated_url, "npm") as ctx:
        await watch_feed(ctx, "npm")
        registry.publish("good", "1.0.0")
        registry.publish("bad", "1.0.0")
        registry.faults.fail(500, times=100, path="/bad")
        await watch_feed(ctx, "npm")
        stats = await drain(ctx)
        assert stats.dead == 1
        assert set(versions_of(ctx, "npm", "good")) == {"1.0.0"}
        assert versions_of(ctx, "npm", "bad") == {}

        def dead(session: Any) -> list[tuple[str, str]]:
            result = session.execute(
                sa.select(JobRecord.payload, JobRecord.last_error).where(
                    JobRecord.state == JobState.DEAD
                )
            )
            return [(p["name"], e) for p, e in result]

        [(name, error)] = rows(ctx, dead)
        assert name == "bad"
        assert "HTTP 500" in error


async def test_two_watchers_cannot_both_move_one_cursor(migrated_url: str, tmp_path: Path) -> None:
    registry = FakeNpmRegistry()
    async with forage_with(registry.make_app(), tmp_path, migrated_url, "npm") as ctx:
        await watch_feed(ctx, "npm")
        version = rows(ctx, lambda s: s.get(FeedCursor, "npm").version)
        page: Page[Any] = Page(changes=(), cursor=None, done=True)
        await ctx.transaction(
            commit_page,
            feed="npm",
            ecosystem="npm",
            expected_version=version,
            page=page,
            cursor={"seq": 10},
        )
        with pytest.raises(CursorConflict):
            await ctx.transaction(
                commit_page,
                feed="npm",
                ecosystem="npm",
                expected_version=version,
                page=page,
                cursor={"seq": 99},
            )
        assert rows(ctx, lambda s: s.get(FeedCursor, "npm").cursor) == {"seq": 10}


async def test_watch_resumes_after_a_partial_run_without_loss_or_duplicates(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    async with forage_with(registry.make_app(), tmp_path, migrated_url, "npm") as ctx:
        await watch_feed(ctx, "npm")
        for i in range(30):
            registry.publish(f"pkg-{i}", "1.0.0")
        first = await watch_feed(ctx, "npm", max_pages=1)  # "killed" after one page
        rest = await watch_feed(ctx, "npm")
        assert first.changes + rest.changes == 30

        def names(session: Any) -> list[str]:
            result = session.execute(sa.select(JobRecord.payload).where(JobRecord.kind == IMPORT))
            return sorted(p["name"] for (p,) in result)

        assert rows(ctx, names) == sorted(f"pkg-{i}" for i in range(30))


async def test_unconfigured_registry_says_what_to_set(migrated_url: str, tmp_path: Path) -> None:
    from forage.errors import ConfigError

    config = write_config(tmp_path, migrated_url)
    async with context(config) as ctx:
        with pytest.raises(ConfigError, match=r"registries\.npm\.registry_url"):
            await watch_feed(ctx, "npm")


async def test_go_index_feed_imports_modules_with_h1_digests(
    migrated_url: str, tmp_path: Path
) -> None:
    async with GoFake() as fake:
        config = write_config(tmp_path, migrated_url, golang=fake.endpoints)
        async with context(config) as ctx:
            await watch_feed(ctx, "golang")
            # Published after the watcher started, which began at the feed's present.
            at = [
                (datetime.now(UTC) + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
                for i in (1, 2, 2)
            ]
            fake.add_version("github.com/BurntSushi/toml", "v1.3.2", feed_at=at[0])
            fake.add_version("github.com/BurntSushi/toml", "v1.4.0", feed_at=at[1])
            fake.add_version("example.com/old", "v2.0.0+incompatible", feed_at=at[2])
            stats = await watch_feed(ctx, "golang")
            assert stats.changes == 3  # one import per module version the index named
            await drain(ctx)
            assert set(versions_of(ctx, "golang", "github.com/BurntSushi/toml")) == {
                "v1.3.2",
                "v1.4.0",
            }
            assert set(versions_of(ctx, "golang", "example.com/old")) == {"v2.0.0+incompatible"}

            def h1(session: Any) -> list[str]:
                return list(
                    session.scalars(
                        sa.select(ArtifactDigest.value).where(ArtifactDigest.algorithm == "h1")
                    )
                )

            digests = rows(ctx, h1)
            assert len(digests) == 3
            assert all(d.startswith("h1:") for d in digests)
            again = await watch_feed(ctx, "golang")  # inclusive "since": nothing new twice
            assert again.changes == 0


async def test_concurrency_per_registry_is_bounded_by_max_connections(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    in_flight = peak = 0

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.05)
            return await handler(request)
        finally:
            in_flight -= 1

    app = registry.make_app()
    app.middlewares.insert(0, count)
    async with forage_with(app, tmp_path, migrated_url, "npm", max_connections=2) as ctx:
        await watch_feed(ctx, "npm")
        for i in range(12):
            registry.publish(f"pkg-{i}", "1.0.0")
        await watch_feed(ctx, "npm")
        peak = 0
        stats = await drain(ctx)  # 4 jobs at once, but only 2 connections to npm
        assert stats.done == 12
        assert peak == 2


def release_of(version: str, *filenames: str) -> Release:
    """A release whose every file has its own sha256 (of its name)."""
    return Release(
        version=version,
        artifacts=tuple(
            FileInfo(
                filename=name,
                url=f"https://files.example/{name}",
                size=len(name),
                digests={"sha256": hashlib.sha256(name.encode()).hexdigest()},
            )
            for name in filenames
        ),
    )


def test_record_package_adds_only_what_is_new_each_file_with_its_own_digest(
    db_session: Session,
) -> None:
    """A re-import that brings a new file to a known release and a new many-file release
    inserts exactly those, each with its own digest and archive job, and refreshes the
    package row."""
    first = PackageInfo("pypi", "demo", "Demo", (release_of("1.0", "demo-1.0.tar.gz"),), serial=3)
    created = record_package(db_session, first)
    assert (created.new_versions, created.new_artifacts) == (1, 1)

    files_11 = ("demo-1.1.tar.gz", "demo-1.1-py3-none-any.whl", "demo-1.1-cp311-win32.whl")
    second = PackageInfo(
        "pypi",
        "demo",
        "DEMO",
        (
            release_of("1.0", "demo-1.0.tar.gz", "demo-1.0-py3-none-any.whl"),
            release_of("1.1", *files_11),
        ),
        serial=9,
        extra={"summary": "a demo"},
    )
    assert record_package(db_session, second) == RecordStats(created.package_id, 1, 4, 0)
    assert record_package(db_session, second) == RecordStats(created.package_id, 0, 0, 0)

    recorded = dict(
        db_session.execute(
            sa.select(Artifact.filename, ArtifactDigest.value)
            .join(ArtifactDigest)
            .where(ArtifactDigest.algorithm == "sha256")
        ).all()
    )
    names = ["demo-1.0.tar.gz", "demo-1.0-py3-none-any.whl", *files_11]
    assert recorded == {name: hashlib.sha256(name.encode()).hexdigest() for name in names}
    archive_payloads = db_session.execute(
        sa.select(JobRecord.payload, JobRecord.dedup_key).where(JobRecord.kind == ARCHIVE)
    ).all()
    artifact_ids = set(db_session.execute(sa.select(Artifact.id)).scalars())
    assert {payload["artifact_id"] for payload, _ in archive_payloads} == artifact_ids
    assert {key for _, key in archive_payloads} == {f"archive:{i}" for i in artifact_ids}
    package = db_session.execute(sa.select(Package)).scalar_one()
    assert (package.display_name, package.last_serial, package.extra) == (
        "DEMO",
        9,
        {"summary": "a demo"},
    )


def test_feed_changes_become_import_jobs_with_their_freshness_hints(db_session: Session) -> None:
    """One job per package (the later hint of a package listed twice wins), and the job's
    payload gives back the change the indexer checks freshness against."""
    changes = [
        Change("left-pad", serial=10, revision="3-aaa"),
        Change("@scope/pkg", serial=11, revision="1-bbb"),
        Change("left-pad", serial=12, revision="4-ccc"),
    ]
    assert enqueue_changes(db_session, "npm", changes) == 3
    payloads = {
        row.dedup_key: row.payload
        for row in db_session.execute(sa.select(JobRecord).where(JobRecord.kind == IMPORT))
        .scalars()
        .all()
    }
    assert payloads == {
        "import:npm:left-pad": {
            "ecosystem": "npm",
            "name": "left-pad",
            "serial": 12,
            "revision": "4-ccc",
        },
        "import:npm:@scope/pkg": {
            "ecosystem": "npm",
            "name": "@scope/pkg",
            "serial": 11,
            "revision": "1-bbb",
        },
    }
    hints = payloads["import:npm:left-pad"]
    assert change_of("left-pad", hints) == changes[2]
    go = change_of("example.com/m", {"ecosystem": "golang", "version": "v1.0.0", "deleted": True})
    assert go == Change("example.com/m", version="v1.0.0", deleted=True)
