"""Time the migrations and the scheduler's periodic work on a big index.

On a database built by ``bench_build.py`` (``--build N`` builds one first), this script times
``forage db upgrade`` from an earlier revision (the CLI, after an untimed ``forage db
downgrade`` to ``--from-revision``, by default the one before the head), then each periodic
task of the schedule table once (every registry, a pinning backend and a deal source
configured, so that every task exists) and the database work of each job kind those tasks
queue: the reverify sample, the pin check's three queries, the next piece's candidates, the
deal sync's known pieces, the stale answers to render, the worker's claim and reap, and the
lookup's misses of 1,000 keys. Each runs in a transaction rolled back afterwards, so the
database stays as built. Prints JSON: seconds per migration and per task.

    python scripts/bench_tasks.py --sqlite-path /tmp/forage-10m/forage.db
    python scripts/bench_tasks.py --build 1000000 --postgres-url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_build import VERSIONS, build, database_bytes, key_of  # noqa: E402
from forage.config import Config, load_config  # noqa: E402
from forage.db.engine import head_revision, make_engine, make_sessionmaker, utcnow  # noqa: E402
from forage.filecoin.deals import _known  # noqa: E402
from forage.filecoin.pieces import _candidates  # noqa: E402
from forage.index.misses import load_misses  # noqa: E402
from forage.index.reconcile import compare  # noqa: E402
from forage.jobs import queue as jobs  # noqa: E402
from forage.jobs.reverify import sample_archives  # noqa: E402
from forage.jobs.tasks import schedule_table  # noqa: E402
from forage.lookup.answers import stale_versions  # noqa: E402
from forage.pins.check import _due, _queue_unpinned, _schedule_next  # noqa: E402
from indexers import ECOSYSTEMS  # noqa: E402
from indexers.types import Change, InventoryEntry  # noqa: E402

#: The pinning backend and deal source the bench index's pins and deals name.
BACKEND = "kubo"
SOURCE = "lotus"
KEYS = 1000

Work = Callable[[Session, Config], object]


def config_for(url: str, directory: Path) -> Config:
    """Every registry (loopback endpoints: nothing is fetched), a Kubo backend, Lotus."""
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


def job_work(config: Config, packages: int) -> dict[str, Work]:
    """The database work of the jobs the tasks queue, and of the worker that runs them."""
    rng = random.Random(1)
    keys = [key_of(rng.randrange(packages), rng.randrange(VERSIONS)) for _ in range(KEYS)]
    entries = [InventoryEntry(Change(key.name), stamp=1) for key in keys if key.ecosystem == "npm"]
    policy = jobs.RetryPolicy.from_config(config.jobs)
    pinning = config.pinning
    recheck = timedelta(seconds=pinning.recheck_interval)
    return {
        "reverify: sample": lambda s, c: sample_archives(s, c.schedule.reverify_sample),
        "pin_check: due": lambda s, c: _due(
            s, BACKEND, after=0, limit=pinning.batch_size, recheck_before=utcnow() - recheck
        ),
        "pin_check: unpinned": lambda s, c: _queue_unpinned(s, BACKEND, limit=pinning.batch_size),
        "pin_check: next": lambda s, c: _schedule_next(s, [BACKEND], pinning=pinning),
        "build_pieces: candidates": lambda s, c: _candidates(s, 0),
        "sync_deals: known": lambda s, c: _known(s, SOURCE),
        "render_answers: stale": lambda s, c: stale_versions(s, after=0, now=utcnow()),
        "reconcile: compare": lambda s, c: compare(s, "npm", entries),
        "worker: claim": lambda s, c: jobs.claim(s, owner="bench", limit=10, policy=policy),
        "worker: reap": lambda s, c: jobs.reap_expired(s, policy=policy),
        "lookup: misses": lambda s, c: load_misses(s, keys, since=utcnow() - timedelta(days=1)),
    }


def time_work(url: str, config: Config, work: Mapping[str, Work]) -> dict[str, float]:
    """Seconds of each piece of work, each in a transaction rolled back after it."""
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    seconds: dict[str, float] = {}
    try:
        for name, run in work.items():
            with sessions() as session:
                started = time.perf_counter()
                run(session, config)
                session.flush()
                seconds[name] = round(time.perf_counter() - started, 3)
                session.rollback()
            print(f"  {name}: {seconds[name]} s", file=sys.stderr)
    finally:
        engine.dispose()
    return seconds


def forage_db(url: str, *args: str) -> float:
    """Run ``forage db ARGS`` on ``url``; its wall-clock seconds."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "forage", "db", *args],
        check=True,
        cwd=ROOT,
        env={**os.environ, "FORAGE_DATABASE_URL": url},
    )
    return round(time.perf_counter() - started, 2)


def previous_revision() -> str:
    """The revision before the head (migration files are numbered)."""
    head = head_revision() or "0001"
    return f"{int(head) - 1:04d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--sqlite-path", help="the SQLite file of the index")
    target.add_argument("--postgres-url", help="the PostgreSQL database of the index")
    parser.add_argument("--build", type=int, metavar="N", help="build an index of N first")
    parser.add_argument("--from-revision", help="migrate up from here (default: head - 1)")
    args = parser.parse_args()
    url = f"sqlite:///{Path(args.sqlite_path).resolve()}" if args.sqlite_path else args.postgres_url
    report: dict[str, Any] = {}
    if args.build:
        index, seconds = build(url, args.build)
        report["build"] = {"artifacts": index.artifacts, "build_seconds": round(seconds, 1)}
    engine = make_engine(url)
    with engine.connect() as connection:
        packages = connection.execute(sa.text("SELECT max(id) FROM packages")).scalar_one()
    engine.dispose()
    report["packages"] = packages
    report["database_bytes"] = database_bytes(url)
    start = args.from_revision or previous_revision()
    report["migrations"] = {
        "from": start,
        "to": head_revision(),
        "downgrade_seconds": forage_db(url, "downgrade", start),
        "upgrade_seconds": forage_db(url, "upgrade"),
    }
    with tempfile.TemporaryDirectory(prefix="forage-bench-tasks-") as directory:
        config = config_for(url, Path(directory))
        tasks = {task.name: task.run for task in schedule_table(config)}
        report["tasks"] = time_work(url, config, tasks)
        report["jobs"] = time_work(url, config, job_work(config, packages or 1))
    slowest = max([*report["tasks"].items(), *report["jobs"].items()], key=lambda kv: kv[1])
    report["slowest"] = {"name": slowest[0], "seconds": slowest[1]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
