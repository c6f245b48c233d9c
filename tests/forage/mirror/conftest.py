"""A Forage with the mirror routes, over loopback fakes of npm, PyPI and the Go proxy.

``forage_mirror(tmp_path, db_url, npm=..., pypi=..., golang=...)`` writes a configuration
naming the fakes (plus ``[mirror]`` settings with short deadlines), opens the database, the
blockstore and a job context, and serves an application holding only the mirror routes. The
test then imports packages from the fakes (:func:`forage.index.ingest.import_package`), archives
them with the real archive job (:func:`~forage.archive.runner.archive_many`), and stops or breaks
the fakes to watch the mirror fall back.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web

import forage.mirror
from forage.archive.blocks import open_blockstore
from forage.archive.records import unarchived_ids
from forage.archive.runner import archive_many
from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import Archive, ArchiveStatus
from forage.index.ingest import import_package
from forage.jobs.worker import JobContext, job_context
from forage.server.app import error_middleware
from forage.server.state import BLOCKSTORE, CONFIG, SESSIONMAKER
from indexers.fakeserver import serve
from indexers.golang.fake import GoEndpoints
from indexers.mirror.registry import MirrorContext

#: Mirror settings for tests: short deadlines, no "down" window unless a test asks for one.
FAST = {
    "connect_timeout": 1.0,
    "first_byte_timeout": 1.0,
    "deadline": 3.0,
    "min_rate": 2000,
    "rate_grace": 0.5,
    "down_seconds": 0,
    "metadata_ttl": 0,
    "negative_ttl": 0,
    "spool_memory": 4096,
}


@pytest.fixture
def db_url(tmp_path: Path, _sqlite_template: Path) -> str:
    """A fresh SQLite database at the head revision."""
    path = tmp_path / "forage.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def mirror_config(
    tmp_path: Path,
    db_url: str,
    *,
    npm: str | None = None,
    pypi: str | None = None,
    golang: GoEndpoints | None = None,
    registries: Mapping[str, Mapping[str, str]] | None = None,
    mirror: dict[str, Any] | None = None,
) -> Config:
    """A configuration naming the given fakes (any may be absent: archive only):
    ``registries`` maps any ecosystem to its endpoints; ``npm``, ``pypi`` and ``golang`` are
    shorthands for those three fakes' URLs."""
    lines = [f'[database]\nurl = "{db_url}"\n', f'[data]\ndir = "{tmp_path / "data"}"\n']
    settings = {**FAST, **(mirror or {})}
    lines.append("[mirror]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()))
    tables = dict(registries or {})
    if npm:
        tables["npm"] = {"registry_url": npm, "replicate_url": f"{npm}/registry"}
    if pypi:
        tables["pypi"] = {
            "index_url": f"{pypi}/simple",
            "json_url": f"{pypi}/pypi",
            "xmlrpc_url": f"{pypi}/pypi",
        }
    if golang:
        tables["golang"] = {
            "index_url": golang.index_url,
            "proxy_url": golang.proxy_url,
            "sumdb_url": golang.sumdb_url,
        }
    for name, endpoints in tables.items():
        body = "".join(f"{key} = {_toml(url)}\n" for key, url in endpoints.items())
        lines.append(f"[registries.{name}]\n{body}allow_http = true\n")
    path = tmp_path / "forage.toml"
    path.write_text("\n".join(lines))
    return load_config(path, environ={})


@dataclass
class Forage:
    """A running mirror: ``url`` is its origin, ``ctx`` a job context on the same database."""

    config: Config
    ctx: JobContext
    url: str
    app: web.Application

    @property
    def mirror(self) -> MirrorContext:
        return self.app[forage.mirror.MIRROR]

    async def ingest(self, ecosystem: str, name: str, **hints: Any) -> None:
        """Import a package from its (fake) registry into the index."""
        await import_package(self.ctx, ecosystem, name, hints=hints or None)

    async def archive_all(self) -> int:
        """Archive every artifact not archived yet with the real archive job."""
        with self.ctx.sessionmaker() as session:
            ids = unarchived_ids(session)
        outcomes = await archive_many(self.ctx, ids, concurrency=4)
        failed = [o for o in outcomes if o.status is not ArchiveStatus.ARCHIVED]
        assert not failed, failed
        return len(outcomes)

    def archived_cids(self) -> list[str]:
        with self.ctx.sessionmaker() as session:
            return list(session.execute(sa.select(Archive.cid).order_by(Archive.id)).scalars())


def mirror_app(config: Config, ctx: JobContext) -> web.Application:
    """An application with the shared keys and only the mirror's routes."""
    app = web.Application(middlewares=[error_middleware])
    app[CONFIG] = config
    app[SESSIONMAKER] = ctx.sessionmaker
    app[BLOCKSTORE] = open_blockstore(config)
    forage.mirror.setup(app)
    return app


@asynccontextmanager
async def forage_mirror(
    tmp_path: Path,
    db_url: str,
    *,
    npm: str | None = None,
    pypi: str | None = None,
    golang: GoEndpoints | None = None,
    registries: Mapping[str, Mapping[str, str]] | None = None,
    mirror: dict[str, Any] | None = None,
) -> AsyncIterator[Forage]:
    """Serve the mirror over the named fakes; see the module docstring."""
    config = mirror_config(
        tmp_path, db_url, npm=npm, pypi=pypi, golang=golang, registries=registries, mirror=mirror
    )
    engine = make_engine(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            app = mirror_app(config, ctx)
            async with serve(app) as running:
                yield Forage(config, ctx, running.url, app)
    finally:
        engine.dispose()
