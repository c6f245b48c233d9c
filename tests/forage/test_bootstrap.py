"""Bootstrap: ``forage watch ECO --from origin|TIME|SERIAL`` walks a registry's history.

Against the loopback fakes, on SQLite and PostgreSQL: a bootstrap killed midway (a crash
after a committed page, a feed that fails mid-walk) resumes where it stood and queues each
package exactly once; asking again for the same position resumes, a different one starts
over; positions a feed cannot take are refused with a usage error. The per-ecosystem
contract (bootstrap from origin archives what was published before the watcher existed) is
in ``tests/ecosystems/test_conformance.py``.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from forage.db.models import FeedCursor
from forage.index import bootstrap
from forage.index.ingest import IMPORT, WatchStats, watch_feed
from forage.index.status import registry_status
from indexers import InvalidPosition, UpstreamUnavailable
from indexers.fakeserver import ThreadedServer
from indexers.golang.fake import GoFake
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
)

PROJECTS = [f"proj-{i}" for i in range(7)]


class Crash(Exception):
    """A kill right after a page was committed."""


def _history() -> FakePyPI:
    registry = FakePyPI(changelog_cap=3)
    for name in PROJECTS:
        registry.release(name, "1.0", wheels=())  # create + new release + sdist: 3 rows
    return registry


async def test_a_killed_bootstrap_resumes_without_loss_or_duplicate_jobs(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = _history()
    async with forage_on(tmp_path, migrated_url, {"pypi": registry}) as ctx:
        await watch_feed(ctx, "pypi")  # a new watcher starts at the head: nothing
        assert import_jobs(ctx) == []

        walk = await bootstrap.start(ctx, "pypi", "origin")
        assert (walk.resumed, walk.cursor) == (False, {"serial": 0})

        def crash_on_third(stats: WatchStats) -> None:
            if stats.pages == 3:
                raise Crash

        with pytest.raises(Crash):
            await watch_feed(ctx, "pypi", on_page=crash_on_third)
        first = {key for key, _ in import_jobs(ctx)}
        assert first == {f"{IMPORT}:pypi:{n}" for n in PROJECTS[:3]}
        await drain_imports(ctx)  # those imports finish: a repeat would write new jobs

        registry.faults.fail(500, times=5, path="/pypi")  # the feed dies mid-walk
        with pytest.raises(UpstreamUnavailable):
            await watch_feed(ctx, "pypi", sleep=_no_sleep)

        again = await bootstrap.start(ctx, "pypi", "origin")  # the operator asks again
        assert again.resumed and again.cursor == {"serial": registry.start_serial + 9}
        await watch_feed(ctx, "pypi")
        await drain_imports(ctx)

        counts = Counter(key for key, _ in import_jobs(ctx))
        assert counts == Counter({f"{IMPORT}:pypi:{name}": 1 for name in PROJECTS})
        assert packages_of(ctx, "pypi") == set(PROJECTS)
        assert versions_of(ctx, "pypi", "proj-6") == {"1.0"}

        assert await ctx.transaction(bootstrap.finish, "pypi")
        assert not await ctx.transaction(bootstrap.finish, "pypi")


async def _no_sleep(_seconds: float) -> None:
    return None


async def test_a_different_position_starts_over_and_moves_the_cursor_version(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    for name in ("a-pkg", "b-pkg", "c-pkg"):
        registry.publish(name, "1.0.0")
    async with forage_on(tmp_path, migrated_url, {"npm": registry}) as ctx:
        await watch_feed(ctx, "npm")
        with ctx.sessionmaker() as session:
            before = session.get(FeedCursor, "npm")
            assert before is not None
            head, version = dict(before.cursor), before.version
        assert head == {"seq": registry.seq}

        walk = await bootstrap.start(ctx, "npm", str(registry.start_seq + 1))
        assert walk.cursor == {"seq": registry.start_seq + 1} and not walk.resumed
        stats = await watch_feed(ctx, "npm")
        assert stats.changes == 2  # b-pkg and c-pkg: seqs after 1001

        moved = await bootstrap.start(ctx, "npm", "origin")
        assert moved.cursor == {"seq": 0} and not moved.resumed
        with ctx.sessionmaker() as session:
            row = session.get(FeedCursor, "npm")
            marker = session.get(FeedCursor, bootstrap.marker_feed("npm"))
            assert row is not None and row.version > version
            assert marker is not None and marker.cursor["from"] == "origin"
            # Walking history again: no longer at the head, the lag unknown until a page lands.
            status = registry_status(session)["npm"]
            assert status.feed is not None and not status.feed.at_head
            assert status.feed.lag_seconds is None
        await watch_feed(ctx, "npm")
        assert {key for key, _ in import_jobs(ctx)} == {
            f"{IMPORT}:npm:{name}" for name in ("a-pkg", "b-pkg", "c-pkg")
        }


async def test_positions_each_feed_cannot_take_are_refused(
    migrated_url: str, tmp_path: Path
) -> None:
    fakes = {"npm": FakeNpmRegistry(), "pypi": FakePyPI(), "golang": GoFake()}
    async with forage_on(tmp_path, migrated_url, fakes) as ctx:
        for ecosystem, position in [
            ("npm", "2024-01-01T00:00:00Z"),
            ("pypi", "2024-01-01"),
            ("golang", "12345"),
            ("npm", "yesterday"),
            ("golang", "2024-01-01"),
        ]:
            with pytest.raises(InvalidPosition) as caught:
                await bootstrap.start(ctx, ecosystem, position)
            assert caught.value.ecosystem == ecosystem
        with ctx.sessionmaker() as session:
            assert session.execute(sa.select(sa.func.count()).select_from(FeedCursor)).scalar() == 0
        walk = await bootstrap.start(ctx, "golang", "2024-03-01T12:00:00Z")
        assert walk.cursor["since"].startswith("2024-03-01T12:00:00")


async def test_pypi_starts_from_a_time_at_the_journal_s_first_entry_since(
    migrated_url: str, tmp_path: Path
) -> None:
    """A time becomes the serial just before the changelog's first row at or after it."""
    pypi = FakePyPI()
    pypi.release("old-proj", "1.0")
    first_new = pypi.serial + 1
    pypi.release("new-proj", "1.0")
    moment = datetime.fromtimestamp(pypi.journal[-1][2], UTC).isoformat()
    async with forage_on(tmp_path, migrated_url, {"pypi": pypi}) as ctx:
        walk = await bootstrap.start(ctx, "pypi", moment)
        # The fake's clock ticks per write: only new-proj's rows are at or after that time.
        newest = [row for row in pypi.journal if row[2] >= pypi.journal[-1][2]]
        assert walk.cursor == {"serial": newest[0][4] - 1}
        assert walk.cursor["serial"] >= first_new - 1
        await watch_feed(ctx, "pypi")
        assert {key for key, _ in import_jobs(ctx)} == {f"{IMPORT}:pypi:new-proj"}
        future = await bootstrap.start(ctx, "pypi", "2999-01-01T00:00:00Z")
        assert future.cursor == {"serial": pypi.serial}


def test_forage_watch_from_origin_on_the_command_line(tmp_path: Path) -> None:
    registry = FakeNpmRegistry()
    registry.publish("left-pad", "1.0.0")
    registry.publish("right-pad", "1.0.0")
    with ThreadedServer(registry.make_app()) as fake:
        configure_npm(tmp_path, fake.url)
        plain = run_cli(tmp_path, "watch", "npm", "--once")
        assert "caught up; 0 changes queued" in plain.stderr, plain.stderr

        walked = run_cli(tmp_path, "watch", "npm", "--once", "--from", "origin")
        assert walked.returncode == 0, walked.stderr
        assert "starting a bootstrap from origin" in walked.stderr
        assert "bootstrap complete" in walked.stderr
        assert "caught up; 2 changes queued" in walked.stderr

        bad = run_cli(tmp_path, "watch", "npm", "--once", "--from", "2024-01-01T00:00:00Z")
        assert bad.returncode == 2
        assert "ordered by seq" in bad.stderr and "Traceback" not in bad.stderr
