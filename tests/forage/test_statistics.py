"""Planner statistics kept fresh (:mod:`forage.db.statistics`), SQLite and PostgreSQL.

What is shown: on SQLite, statistics taken while answers had no purl (a plain ``ANALYZE``
right after a bulk load) make the stored-answers read scan ``version_answers``; the
scheduler's ``optimize`` task brings the purl index back, also for a connection opened
before it ran; refreshing at that wrong moment leaves no distorted row; a large
``render_answers`` run and ``forage db render-answers`` refresh after themselves. On
PostgreSQL the task, the job and ``forage db optimize`` run ``ANALYZE`` of the tables
whose distribution changes (``pg_stat_user_tables.analyze_count``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from forage.cli import main
from forage.db import statistics
from forage.db.engine import make_engine, make_sessionmaker, utcnow
from forage.db.models import Package, Version
from forage.jobs import queue as jobs
from forage.jobs.queue import RetryPolicy
from forage.jobs.scheduler import Scheduler
from forage.jobs.tasks import schedule_table
from forage.jobs.worker import Worker
from forage.lookup.answers import RENDER_ANSWERS, render_answers_job, render_stale
from forage.lookup.query import _stored_answers
from forage.lookup.sessions import read_only_sessionmaker
from tests.forage.test_ingest import context, write_config

#: Versions indexed: above the bulk threshold, enough for the planner to prefer a scan when
#: the statistics say a purl matches them all.
COUNT = statistics.BULK + 200


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    engine = make_engine(migrated_url)
    try:
        yield engine
    finally:
        engine.dispose()


def bulk_load(engine: Engine) -> None:
    """COUNT npm packages of one version each, inserted in bulk: the triggers give each
    version an answer row without a purl, as after any bulk load."""
    packages = [
        {"id": i, "ecosystem": "npm", "name": f"p{i}", "extra": {}} for i in range(1, COUNT + 1)
    ]
    versions = [{"id": i, "package_id": i, "number": "1.0.0"} for i in range(1, COUNT + 1)]
    with engine.begin() as connection:
        connection.execute(sa.insert(Package), packages)
        connection.execute(sa.insert(Version), versions)


def purl_stat(connection: sa.Connection) -> str | None:
    return connection.execute(
        sa.text("SELECT stat FROM sqlite_stat1 WHERE idx = :idx"), {"idx": statistics.PURL_INDEX}
    ).scalar_one_or_none()


def rows_per_purl(connection: sa.Connection) -> int | None:
    stat = purl_stat(connection)
    return None if stat is None else int(stat.split()[1])


def answer_stats(connection: sa.Connection) -> list[tuple[str, str, str]]:
    rows = connection.execute(
        sa.text("SELECT tbl, idx, stat FROM sqlite_stat1 WHERE tbl = 'version_answers'")
    ).all()
    return [(str(row[0]), str(row[1]), str(row[2])) for row in rows]


def analyze_wrongly(engine: Engine) -> list[tuple[str, str, str]]:
    """A plain ``ANALYZE`` while no answer has a purl; returns the rows it wrote."""
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")
        return answer_stats(connection)


def stored_answers_plan(connection: sa.Connection, now: datetime) -> str:
    """The stored-answers read of three keys, run (as a lookup runs it: a real read notices
    a schema change, an ``EXPLAIN`` does not) then explained (``EXPLAIN QUERY PLAN``, freshly
    prepared), one line per step."""
    purls = [f"pkg:npm/p{i}@1.0.0" for i in (1, 2, 3)]
    with Session(bind=connection) as session:
        statement = _stored_answers(session, purls, now)
        compiled = statement.compile(bind=connection)
    values = [compiled.params[name] for name in compiled.positiontup or ()]
    params = tuple(v.isoformat(" ") if isinstance(v, datetime) else v for v in values)
    with connection.begin():
        connection.execute(statement).all()
        sql = f"EXPLAIN QUERY PLAN {compiled.string} -- {time.monotonic_ns()}"
        rows = connection.exec_driver_sql(sql, params).all()
    return "\n".join(row[-1] for row in rows)


def analyze_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        rows = connection.execute(
            sa.text(
                "SELECT relname, analyze_count FROM pg_stat_user_tables WHERE relname IN :names"
            ).bindparams(sa.bindparam("names", expanding=True)),
            {"names": list(statistics.TABLES)},
        ).all()
    return {name: int(count) for name, count in rows}


def analyzed_since(engine: Engine, before: dict[str, int]) -> set[str]:
    """The tables whose manual ``ANALYZE`` count grew (the statistics collector may lag)."""
    grown: set[str] = set()
    for _ in range(50):
        after = analyze_counts(engine)
        grown = {name for name in statistics.TABLES if after.get(name, 0) > before.get(name, 0)}
        if grown == set(statistics.TABLES):
            break
        time.sleep(0.1)
    return grown


def test_the_task_is_scheduled_hourly(tmp_path: Path, migrated_url: str) -> None:
    config = write_config(tmp_path, migrated_url)
    assert config.schedule.optimize == 3600
    [task] = [task for task in schedule_table(config) if task.name == statistics.OPTIMIZE]
    assert task.interval_key == "schedule.optimize" and task.interval(config) == 3600


def test_the_optimize_task_brings_the_purl_index_back(
    store: str, tmp_path: Path, engine: Engine
) -> None:
    if store != "sqlite":
        pytest.skip("sqlite_stat1 and EXPLAIN QUERY PLAN are SQLite's")
    bulk_load(engine)
    stale = analyze_wrongly(engine)
    purl_row = next(stat for _t, idx, stat in stale if idx == statistics.PURL_INDEX)
    assert int(purl_row.split()[1]) == COUNT  # every NULL purl counted as one value
    assert render_stale(make_sessionmaker(engine)) == COUNT  # the purls arrive, no refresh
    with engine.begin() as connection:  # plant the stale rows, as the wrong moment left them
        connection.exec_driver_sql("DELETE FROM sqlite_stat1 WHERE tbl = 'version_answers'")
        for row in stale:
            connection.exec_driver_sql("INSERT INTO sqlite_stat1 VALUES (?, ?, ?)", row)
    _reader, read_engine = read_only_sessionmaker(make_sessionmaker(engine))
    assert read_engine is not None
    try:
        with read_engine.connect() as lookup:  # a server's pooled reader, open throughout
            before = stored_answers_plan(lookup, utcnow())
            assert "SCAN version_answers" in before and statistics.PURL_INDEX not in before
            config = write_config(tmp_path, engine.url.render_as_string(hide_password=False))
            result = Scheduler(config, engine).run_task(statistics.OPTIMIZE)
            assert result == {"analyzed": len(statistics.TABLES), "dropped": "none"}
            after = stored_answers_plan(lookup, utcnow())
        assert f"SEARCH version_answers USING INDEX {statistics.PURL_INDEX}" in after
        assert "SCAN version_answers" not in after
        with engine.connect() as connection:
            assert rows_per_purl(connection) == 1  # sampled: the row count is approximate
    finally:
        read_engine.dispose()


def test_refreshing_before_the_purls_leaves_no_distorted_row(store: str, engine: Engine) -> None:
    """The benchmark's moment: right after a bulk load, before any answer is rendered."""
    if store != "sqlite":
        pytest.skip("sqlite_stat1 is SQLite's")
    bulk_load(engine)
    with engine.begin() as connection:
        refreshed = statistics.refresh(connection)
    assert refreshed.dropped == (statistics.PURL_INDEX,)
    with engine.connect() as connection:
        assert purl_stat(connection) is None
        assert {idx for _t, idx, _s in answer_stats(connection)} >= {"ix_version_answers_stale"}
    with engine.connect() as connection:
        plan = stored_answers_plan(connection, utcnow())
    assert f"USING INDEX {statistics.PURL_INDEX}" in plan


def test_the_optimize_task_analyzes_on_postgresql(
    store: str, tmp_path: Path, engine: Engine
) -> None:
    if store != "postgresql":
        pytest.skip("pg_stat_user_tables is PostgreSQL's")
    bulk_load(engine)
    before = analyze_counts(engine)
    config = write_config(tmp_path, engine.url.render_as_string(hide_password=False))
    result = Scheduler(config, engine).run_task(statistics.OPTIMIZE)
    assert result == {"analyzed": len(statistics.TABLES), "dropped": "none"}
    assert analyzed_since(engine, before) == set(statistics.TABLES)


async def test_a_large_render_answers_run_refreshes_the_statistics(
    store: str, tmp_path: Path, engine: Engine
) -> None:
    bulk_load(engine)
    if store == "sqlite":
        analyze_wrongly(engine)
    else:
        before = analyze_counts(engine)
    config = write_config(tmp_path, engine.url.render_as_string(hide_password=False))
    with make_sessionmaker(engine).begin() as session:
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
    if store == "sqlite":
        with engine.connect() as connection:
            assert rows_per_purl(connection) == 1  # sampled: the row count is approximate
    else:
        assert analyzed_since(engine, before) == set(statistics.TABLES)


def test_the_cli_renders_then_refreshes_and_optimizes(
    store: str,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bulk_load(engine)
    if store == "sqlite":
        analyze_wrongly(engine)
    monkeypatch.setenv("FORAGE_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    before = analyze_counts(engine) if store == "postgresql" else {}
    assert main(["db", "render-answers"]) == 0
    assert f"{COUNT} lookup answers rendered" in capsys.readouterr().err
    if store == "sqlite":
        with engine.connect() as connection:
            assert rows_per_purl(connection) == 1  # sampled: the row count is approximate
    else:
        assert analyzed_since(engine, before) == set(statistics.TABLES)
        before = analyze_counts(engine)
    assert main(["db", "optimize"]) == 0
    err = capsys.readouterr().err
    assert f"statistics of {len(statistics.TABLES)} tables refreshed" in err
    assert "distorted" not in err
    if store == "postgresql":
        assert analyzed_since(engine, before) == set(statistics.TABLES)
