"""Lookup answers rendered ahead of lookups (:mod:`forage.lookup.answers`), SQLite and PostgreSQL.

What is shown: rendering stores the very answer a lookup would compute, so the next lookup
computes nothing; a change retires one answer and only that one is rendered again; the
scheduled ``render_answers`` job does it through a worker; ``forage db render-answers``
reports how many it stored and refuses a bad ``--limit``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from forage.cli import main
from forage.db.engine import make_engine, make_sessionmaker, upgrade, utcnow
from forage.db.models import JobRecord, JobState, Version, VersionAnswer
from forage.jobs import queue as jobs
from forage.jobs.queue import RetryPolicy
from forage.jobs.tasks import schedule_table
from forage.jobs.worker import Worker
from forage.lookup.answers import RENDER_ANSWERS, render_answers_job, render_stale, stale_ids
from forage.lookup.resolve import resolve
from tests.forage.test_api import seed
from tests.forage.test_ingest import context, write_config

KEYS = ["pkg:pypi/django@5.0", "pkg:npm/%40scope/pkg@2.0.0", "npm:left-pad:1.0.0"]
PURLS = {"pkg:pypi/django@5.0", "pkg:npm/%40scope/pkg@2.0.0", "pkg:npm/left-pad@1.0.0"}


@pytest.fixture
def sessions(migrated_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def lookup_once(sessions: sessionmaker[Session]) -> Any:
    with sessions() as session:
        return resolve(session, KEYS, rendered=True)


def stored_purls(sessions: sessionmaker[Session]) -> set[str | None]:
    with sessions() as session:
        query = sa.select(VersionAnswer.purl).where(VersionAnswer.body.is_not(None))
        return set(session.execute(query).scalars())


def answer_rows(session: Session) -> int:
    return session.execute(sa.select(sa.func.count()).select_from(VersionAnswer)).scalar_one()


def versions(session: Session) -> int:
    return session.execute(sa.select(sa.func.count()).select_from(Version)).scalar_one()


def test_versions_from_before_answers_get_a_row_and_are_rendered(database_url: str) -> None:
    """Migration 0004 gives versions indexed before answers existed (0003) a tombstone, so
    the stale scan, which reads only the answers' indexes, finds them."""
    engine = make_engine(database_url)
    try:
        upgrade(engine, "0002")
        # Plain SQL: the models have columns later revisions add.
        with engine.begin() as connection:
            connection.execute(
                sa.text("INSERT INTO packages (ecosystem, name, extra) VALUES ('npm', 'old', '{}')")
            )
            connection.execute(
                sa.text(
                    "INSERT INTO versions (package_id, number)"
                    " SELECT id, '1.0.0' FROM packages WHERE name = 'old'"
                )
            )
        upgrade(engine)
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            assert answer_rows(session) == versions(session) == 1
        assert render_stale(sessions) == 1
        assert stored_purls(sessions) == {"pkg:npm/old@1.0.0"}
    finally:
        engine.dispose()


def test_the_stale_scan_searches_indexes_not_every_row(tmp_path: Path) -> None:
    """SQLite's plan for :func:`stale_ids` (PostgreSQL's planner scans tables this small
    whatever the indexes): a search of each index, never a scan of the table."""
    engine = make_engine(f"sqlite:///{tmp_path / 'plan.db'}")
    try:
        upgrade(engine)
        compiled = stale_ids(after=0, now=utcnow()).compile(engine)
        parameters = tuple(compiled.params[name] for name in compiled.positiontup or ())
        with engine.connect() as connection:
            plan = [
                row[-1]
                for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", parameters)
            ]
    finally:
        engine.dispose()
    searches = [step for step in plan if "version_answers" in step]
    assert len(searches) == 2, plan
    assert any("USING INDEX ix_version_answers_stale" in step for step in searches), plan
    assert any("ix_version_answers_valid_until" in step for step in searches), plan
    assert all(step.startswith("SEARCH") for step in searches), plan


def test_rendered_answers_are_the_ones_a_lookup_computes_and_only_changes_are_redone(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        seed(session)
        # Every version has an answer row from its insert on: a tombstone until rendered.
        assert answer_rows(session) == versions(session) == 3
    computed = lookup_once(sessions)
    assert len(computed.fills) == 3  # nothing stored yet: every answer computed

    assert render_stale(sessions) == 3
    assert stored_purls(sessions) == PURLS
    read = lookup_once(sessions)
    assert read.fills == ()  # every answer read, none computed
    assert [r.to_json_bytes() for r in read.results] == [
        r.to_json_bytes() for r in computed.results
    ]
    assert render_stale(sessions) == 0

    with sessions.begin() as session:  # a change the django answer shows: its trigger fires
        session.execute(sa.update(Version).where(Version.number == "5.0").values(yanked=True))
    counted: list[int] = []
    assert render_stale(sessions, progress=counted.append) == 1
    assert counted == [1]
    (django, *_) = lookup_once(sessions).results
    assert b'"yanked":true' in django.to_json_bytes()


async def test_the_scheduled_job_renders_stale_answers_in_a_worker(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    config = write_config(tmp_path, migrated_url)
    assert any(task.name == RENDER_ANSWERS for task in schedule_table(config))
    assert config.schedule.render_answers == 60 and config.schedule.render_batch == 20_000
    with sessions.begin() as session:
        seed(session)
        jobs.enqueue(session, RENDER_ANSWERS, {}, dedup_key=RENDER_ANSWERS)
    async with context(config) as ctx:
        worker = Worker(
            ctx,
            {RENDER_ANSWERS: render_answers_job},
            concurrency=1,
            policy=RetryPolicy(max_attempts=1, backoff_base=0, backoff_cap=0),
            poll_interval=0.01,
        )
        stats = await worker.run(mode="drain")
    assert (stats.done, stats.dead) == (1, 0)
    assert stored_purls(sessions) == PURLS
    with sessions() as session:
        (state,) = session.execute(sa.select(JobRecord.state)).scalars()
    assert state is JobState.DONE


def test_the_cli_renders_and_reports_and_refuses_a_bad_limit(
    migrated_url: str,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with sessions.begin() as session:
        seed(session)
    monkeypatch.setenv("FORAGE_DATABASE_URL", migrated_url)
    assert main(["db", "render-answers", "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
    assert main(["db", "render-answers"]) == 0
    assert "3 lookup answers rendered" in capsys.readouterr().err
    assert stored_purls(sessions) == PURLS
    assert main(["db", "render-answers"]) == 0
    assert "0 lookup answers rendered" in capsys.readouterr().err
