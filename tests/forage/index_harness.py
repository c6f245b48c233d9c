"""A Forage over loopback registry fakes for the bootstrap, selection and reconcile tests.

``forage_on(tmp_path, db_url, {ecosystem: fake}, settings)`` serves each fake, writes a
``forage.toml`` naming them (plus any ``[registries.<name>]`` settings, such as a selection)
and yields a :class:`~forage.jobs.worker.JobContext` on the database.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import JobRecord, Package, Version
from forage.index.ingest import IMPORT, import_job
from forage.jobs.queue import RetryPolicy
from forage.jobs.worker import JobContext, Worker, job_context
from indexers import FakeRegistry
from indexers.fakeserver import serve


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return str(value)


def write_config(
    tmp_path: Path,
    db_url: str,
    tables: Mapping[str, Mapping[str, Any]],
    *,
    schedule: Mapping[str, Any] | None = None,
) -> Config:
    lines = [f'[database]\nurl = "{db_url}"\n', f'[data]\ndir = "{tmp_path / "data"}"\n']
    lines.append("[jobs]\nmax_attempts = 3\nbackoff_base = 0\nbackoff_cap = 0\n")
    if schedule:
        lines.append("[schedule]\n" + "".join(f"{k} = {v}\n" for k, v in schedule.items()))
    for name, table in tables.items():
        body = "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items())
        lines.append(f"[registries.{name}]\n{body}allow_http = true\n")
    path = tmp_path / "forage.toml"
    path.write_text("\n".join(lines))
    return load_config(path, environ={})


@asynccontextmanager
async def forage_on(
    tmp_path: Path,
    db_url: str,
    fakes: Mapping[str, FakeRegistry],
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> AsyncIterator[JobContext]:
    """Serve ``fakes`` and open Forage on them (see the module docstring)."""
    async with AsyncExitStack() as stack:
        tables: dict[str, dict[str, Any]] = {}
        for name, fake in fakes.items():
            running = await stack.enter_async_context(serve(fake.make_app()))
            tables[name] = {**fake.config_endpoints(running.url), **(settings or {}).get(name, {})}
        config = write_config(tmp_path, db_url, tables)
        engine = make_engine(config.database)
        stack.callback(engine.dispose)
        yield await stack.enter_async_context(job_context(config, make_sessionmaker(engine)))


async def drain_imports(ctx: JobContext) -> Any:
    """Run every queued import job with the real handler."""
    worker = Worker(
        ctx,
        {IMPORT: import_job},
        concurrency=4,
        policy=RetryPolicy(max_attempts=3, backoff_base=0, backoff_cap=0),
        poll_interval=0.01,
    )
    return await worker.run(mode="drain")


def import_jobs(ctx: JobContext) -> list[tuple[str, str]]:
    """Every import job ever written: (dedup key, state), oldest first."""
    with ctx.sessionmaker() as session:
        rows = session.execute(
            sa.select(JobRecord.dedup_key, JobRecord.state)
            .where(JobRecord.kind == IMPORT)
            .order_by(JobRecord.id)
        )
        return [(str(key), str(state)) for key, state in rows]


def versions_of(ctx: JobContext, ecosystem: str, name: str) -> set[str]:
    with ctx.sessionmaker() as session:
        return set(
            session.execute(
                sa.select(Version.number)
                .join(Package)
                .where(Package.ecosystem == ecosystem, Package.name == name)
            ).scalars()
        )


def packages_of(ctx: JobContext, ecosystem: str) -> set[str]:
    with ctx.sessionmaker() as session:
        return set(
            session.execute(sa.select(Package.name).where(Package.ecosystem == ecosystem)).scalars()
        )


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``forage -c <tmp_path>/forage.toml ARGS`` as a user would, without ``FORAGE_*``
    variables from the test's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORAGE_")}
    return subprocess.run(
        [sys.executable, "-m", "forage", "-c", str(tmp_path / "forage.toml"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def configure_npm(tmp_path: Path, url: str) -> None:
    """Write the forage.toml that points Forage's npm registry at the fake at ``url``."""
    (tmp_path / "forage.toml").write_text(
        f'[data]\ndir = "{tmp_path / "data"}"\n'
        f'[registries.npm]\nregistry_url = "{url}"\n'
        f'replicate_url = "{url}/registry"\nallow_http = true\n'
    )
