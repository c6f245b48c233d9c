"""The scheduler's periodic work and the lookups read the big tables through indexes.

At ten million artifacts a statement that reads a whole table costs seconds to minutes, and
the scheduler runs its tasks every few minutes. What is shown, on both stores: every
statement of every task of the schedule table, of the database side of each job kind those
tasks queue (the reverify sample, the pin check, the next piece's candidates, the deal sync,
the answers to render, a reconcile sweep's comparison, a feed page's import queueing), of
the worker's claim and reap, and of batch lookups (by key: computed and stored answers,
misses; by digest) is captured as it runs on an index built by ``scripts/bench_build.py``
(with jobs and misses added), then explained. On SQLite no ``EXPLAIN QUERY PLAN`` step may
``SCAN`` a big table (a full index scan included); on PostgreSQL, with statistics from
``ANALYZE`` and the planner left free, no plan node may be a ``Seq Scan`` of one. The few
statements that read every row on purpose are listed in :data:`WHOLE_TABLE`, and the test
checks they still do (so the list shrinks when one is fixed).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker, utcnow
from forage.db.models import JobRecord, JobState, LookupMiss
from forage.db.statistics import refresh
from forage.filecoin.deals import _known
from forage.filecoin.pieces import _candidates
from forage.index.ingest import _load_cursor, enqueue_changes
from forage.index.misses import load_misses
from forage.index.reconcile import compare
from forage.jobs import queue as jobs
from forage.jobs.reverify import sample_archives
from forage.jobs.tasks import schedule_table
from forage.lookup.answers import stale_versions
from forage.lookup.batch import lookup
from forage.lookup.digests import lookup_digests
from forage.lookup.keys import Key
from forage.lookup.normalize import canonical_purl
from forage.lookup.query import _stored_answers
from forage.pins.check import _due, _queue_unpinned, _schedule_next
from indexers import ECOSYSTEMS
from indexers.types import Change, InventoryEntry

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
#: Artifacts of the index explained: enough rows for the planners to weigh indexes.
ARTIFACTS = 20_000
#: Tables that grow with the index (pieces and deals hold a row per thousand archives).
BIG = frozenset(
    {
        "packages",
        "versions",
        "artifacts",
        "artifact_digests",
        "archives",
        "pins",
        "piece_members",
        "version_answers",
        "jobs",
        "lookup_misses",
    }
)
#: Work that still reads whole tables, and why (timed at scale by scripts/bench_tasks.py).
WHOLE_TABLE = {
    "stats": "counts every file, archive, pin and job (the log line and /metrics)",
    "drain_archives": "artifacts without an archive row (imported with archive=False) are"
    " found by walking every artifact: no index holds an anti-join",
    "pin_check job: next": "'any pin in flight?' and 'oldest confirmation?' read every pin:"
    " an index on (backend, status, checked_at) served them, but SQLite's sampled statistics"
    " then chose it for the due pins too, sorting all of a backend's pins each batch",
}
BACKEND = "kubo"
#: Keys of a lookup and versions of an answer rendering chunk: the share of this index that a
#: thousand keys or a chunk of a thousand are of ten million artifacts (for a large share of
#: a small table, a planner rightly reads the table whole).
LOOKUP_KEYS = 3

Work = Callable[[Session, Config], object]


def bench_key(i: int, v: int) -> Key:
    """``bench_build.key_of``: package ``i``'s version ``v`` (npm, PyPI or Go by i % 10)."""
    ecosystem = (["npm"] * 5 + ["pypi"] * 3 + ["golang"] * 2)[i % 10]
    if ecosystem == "golang":
        return Key(ecosystem, f"example.com/bench/m{i}", f"v1.0.{v}")
    return Key(ecosystem, f"bench-{ecosystem}-{i}", f"1.0.{v}")


@pytest.fixture(scope="module")
def index_url(
    store: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An index of :data:`ARTIFACTS` built by the benchmark builder, plus jobs in every state
    and lookup misses, with fresh planner statistics."""
    server = None
    if store == "sqlite":
        path = tmp_path_factory.mktemp("plans") / "forage.db"
        url, target = f"sqlite:///{path}", ["--sqlite-path", str(path)]
    else:
        server = request.getfixturevalue("postgres_server")
        name = server.create_database()
        url, target = server.url(name), ["--postgres-url", server.url(name)]
    subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_build.py"), "--artifacts", str(ARTIFACTS), *target],
        check=True,
        capture_output=True,
    )
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            _add_jobs_and_misses(connection)
        with engine.begin() as connection:
            refresh(connection)
            connection.exec_driver_sql("ANALYZE jobs")
            connection.exec_driver_sql("ANALYZE lookup_misses")
        yield url
    finally:
        engine.dispose()
        if server is not None:
            server.drop_database(name)


def _add_jobs_and_misses(connection: sa.Connection) -> None:
    """Jobs as a busy installation keeps them (mostly done, some queued, running and dead)
    and misses of unknown packages."""
    now = utcnow()
    # Done jobs of the last hour (older ones were pruned), dead ones of the last month.
    states = [JobState.DONE] * 16 + [JobState.QUEUED] * 2 + [JobState.DEAD, JobState.RUNNING]
    ages = {JobState.DONE: timedelta(minutes=1), JobState.DEAD: timedelta(days=1)}
    rows = []
    for n in range(ARTIFACTS):
        state = states[n % len(states)]
        rows.append(
            {
                "kind": "archive" if n % 2 else "import",
                "payload": {"artifact_id": n},
                "state": state,
                "attempts": 1,
                "run_after": now - timedelta(minutes=n % 50),
                "dedup_key": f"archive:{n}" if n % 2 else f"import:npm:p{n}",
                "finished_at": now - ages[state] * (n % 30) if state in ages else None,
                "lease_owner": "w" if state == JobState.RUNNING else None,
                "lease_expires_at": now if state == JobState.RUNNING else None,
            }
        )
    connection.execute(sa.insert(JobRecord), rows)
    misses = [
        {"ecosystem": "npm", "name": f"gone-{n}", "version": "", "answer": "HTTP 404"}
        for n in range(ARTIFACTS // 2)
    ]
    connection.execute(sa.insert(LookupMiss), misses)


def config_for(url: str, directory: Path) -> Config:
    """Every registry (loopback endpoints, never contacted), a Kubo backend, Lotus: so that
    the schedule table holds every task."""
    lines = [f'[database]\nurl = "{url}"\n[data]\ndir = "{directory}"\n']
    for name, plugin in ECOSYSTEMS.items():
        endpoints = plugin.fake().config_endpoints("http://127.0.0.1:9")
        table = "".join(f'{key} = "{value}"\n' for key, value in endpoints.items())
        lines.append(f"[registries.{name}]\n{table}allow_http = true\n")
    lines.append(f'[pinning.backends.{BACKEND}]\ntype = "kubo"\nurl = "http://127.0.0.1:9"\n')
    lines.append('[filecoin]\nallow_http = true\nlotus_url = "http://127.0.0.1:9/rpc/v1"\n')
    path = directory / "forage.toml"
    path.write_text("".join(lines))
    return load_config(path, environ={})


def periodic_work(config: Config, engine: Engine) -> dict[str, Work]:
    """Every task of the schedule table, then the database side of the jobs they queue."""
    keys = [bench_key(i * 97, i % 5) for i in range(LOOKUP_KEYS)] + [Key("npm", "gone-3", "1.0")]
    entries = [InventoryEntry(Change(key.name), stamp=1) for key in keys if key.ecosystem == "npm"]
    policy = jobs.RetryPolicy.from_config(config.jobs)
    pinning = config.pinning
    recheck = timedelta(seconds=pinning.recheck_interval)
    read = make_sessionmaker(engine)
    purls = [canonical_purl(key) for key in keys]
    digests = [f"sha256:{n:064x}" for n in range(LOOKUP_KEYS)]
    work: dict[str, Work] = {task.name: task.run for task in schedule_table(config)}
    work |= {
        "reverify job": lambda s, c: sample_archives(s, c.schedule.reverify_sample),
        "pin_check job: due": lambda s, c: _due(
            s, BACKEND, after=0, limit=pinning.batch_size, recheck_before=utcnow() - recheck
        ),
        "pin_check job: unpinned": lambda s, c: _queue_unpinned(
            s, BACKEND, limit=pinning.batch_size
        ),
        "pin_check job: next": lambda s, c: _schedule_next(s, [BACKEND], pinning=pinning),
        "build_pieces job": lambda s, c: _candidates(s, 0),
        "sync_deals job": lambda s, c: _known(s, "lotus"),
        "render_answers job": lambda s, c: stale_versions(
            s, after=0, now=utcnow(), limit=LOOKUP_KEYS
        ),
        "reconcile job": lambda s, c: compare(s, "npm", entries),
        "watch job": lambda s, c: (
            _load_cursor(s, "npm"),
            enqueue_changes(s, "npm", [Change(f"bench-npm-{n}") for n in range(0, 500, 10)]),
        ),
        "worker: claim": lambda s, c: jobs.claim(s, owner="plans", limit=10, policy=policy),
        "worker: reap": lambda s, c: jobs.reap_expired(s, policy=policy),
        "lookup: keys": lambda s, c: lookup(read, None, purls, policy=None),
        "lookup: stored answers": lambda s, c: s.execute(_stored_answers(s, purls, utcnow())).all(),
        "lookup: misses": lambda s, c: load_misses(s, keys, since=utcnow() - timedelta(days=1)),
        "lookup: digests": lambda s, c: lookup_digests(s, digests),
    }
    return work


def captured_statements(url: str, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Each work's statements (SQL text -> parameters), run in a transaction rolled back."""
    engine = make_engine(url)
    seen: list[tuple[str, Any]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def capture(_c: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        if not many and re.match(r"\s*(SELECT|WITH|UPDATE|DELETE|INSERT)", sql, re.I):
            seen.append((sql, params))

    config = config_for(url, tmp_path)
    sessions = make_sessionmaker(engine)
    found: dict[str, dict[str, Any]] = {}
    try:
        for name, run in periodic_work(config, engine).items():
            seen.clear()
            with sessions() as session:
                run(session, config)
                session.flush()
                session.rollback()
            found[name] = dict(seen)
    finally:
        engine.dispose()
    return found


def whole_table_reads(connection: sa.Connection, sql: str, params: Any) -> set[str]:
    """The big tables a statement's plan reads whole: ``SCAN <table>`` steps on SQLite,
    ``Seq Scan`` nodes on PostgreSQL."""
    if connection.dialect.name == "sqlite":
        rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).all()
        steps = [re.match(r"SCAN (\w+)", row[-1]) for row in rows]
        return {step[1] for step in steps if step and step[1] in BIG}
    plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", params).scalar()
    nodes = _nodes(plan if isinstance(plan, list) else json.loads(str(plan)))
    return {
        node["Relation Name"]
        for node in nodes
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in BIG
    }


def _nodes(plan: Any) -> Iterator[dict[str, Any]]:
    if isinstance(plan, list):
        for item in plan:
            yield from _nodes(item)
    elif isinstance(plan, dict):
        yield plan
        for key in ("Plan", "Plans"):
            if key in plan:
                yield from _nodes(plan[key])


@pytest.fixture(scope="module")
def plans(
    index_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, set[str]]]:
    """Per work, per statement: the big tables its plan reads whole."""
    found = captured_statements(index_url, tmp_path_factory.mktemp("config"))
    engine = make_engine(index_url)
    try:
        with engine.connect() as connection:
            return {
                name: {
                    sql: whole_table_reads(connection, sql, params) for sql, params in run.items()
                }
                for name, run in found.items()
            }
    finally:
        engine.dispose()


def test_every_periodic_task_and_job_and_lookup_ran_statements(
    plans: dict[str, dict[str, set[str]]],
) -> None:
    tasks = {"drain_archives", "retry_failed", "reverify", "prune_jobs", "render_answers"}
    tasks |= {"pin_check", "build_pieces", "sync_deals", "optimize", "stats"}
    tasks |= {f"watch:{name}" for name in ECOSYSTEMS} | {f"reconcile:{name}" for name in ECOSYSTEMS}
    assert tasks <= set(plans)
    silent = [name for name, statements in plans.items() if not statements]
    assert set(silent) <= {"optimize"}  # on PostgreSQL, ANALYZE alone


def test_no_periodic_statement_reads_a_big_table_whole(
    plans: dict[str, dict[str, set[str]]],
) -> None:
    scans = {
        (name, sql.split("\n")[0][:120], ",".join(sorted(tables)))
        for name, statements in plans.items()
        if name not in WHOLE_TABLE
        for sql, tables in statements.items()
        if tables
    }
    assert not scans, "\n".join(map(str, sorted(scans)))


def test_the_work_that_counts_every_row_still_does(
    plans: dict[str, dict[str, set[str]]],
) -> None:
    """When one of :data:`WHOLE_TABLE` stops reading whole tables, take it off the list."""
    for name in WHOLE_TABLE:
        assert any(plans[name].values()), name
