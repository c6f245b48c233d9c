"""Lookups end, against the loopback npm, PyPI and Go fakes, on SQLite and PostgreSQL.

What is shown: a key whose package the registry does not have is ``queued`` once; the
import records the registry's answer, and later lookups answer ``not_found`` with that
answer and when it was checked, queueing nothing inside ``server.backfill_recheck`` and one
import after it (through the HTTP API too, its reply as the OpenAPI document says); a
version a known package does not list is a miss of its own; a Go pseudo-version of an
indexed module, which the proxy serves but never lists, is found after one on-demand import,
and one it does not serve is recorded as a miss, never as a version.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from forage.archive.blocks import open_blockstore
from forage.config import Config
from forage.db.engine import utcnow
from forage.db.models import JobRecord, LookupMiss, Package, Version
from forage.index.ingest import IMPORT, import_package
from forage.jobs.worker import JobContext
from forage.lookup.backfill import BackfillPolicy
from forage.lookup.batch import lookup
from forage.lookup.views import KeyResult, KeyStatus
from forage.server.app import make_app
from indexers.fakeserver import serve
from indexers.golang.fake import GoEndpoints, GoFake
from indexers.npm.fake import FakeNpmRegistry
from indexers.pypi.fake import FakePyPI
from tests.forage.test_ingest import context, drain, write_config
from tests.forage.test_openapi import Checker

RECHECK = timedelta(seconds=3600)  # server.backfill_recheck's default


def ask(ctx: JobContext, key: str) -> KeyResult:
    """Look ``key`` up as the API does (backfill included)."""
    policy = BackfillPolicy.from_config(ctx.config, limited=False)
    sessions = ctx.sessionmaker
    (result,) = lookup(sessions, sessions, [key], policy=policy)
    return result


def age_misses(ctx: JobContext, by: timedelta) -> None:
    """Let ``by`` pass for the recorded misses: they were checked that much earlier."""
    with ctx.sessionmaker.begin() as session:
        for miss in session.scalars(sa.select(LookupMiss)):
            miss.checked_at -= by


def import_jobs(ctx: JobContext) -> list[Any]:
    with ctx.sessionmaker() as session:
        return session.execute(
            sa.select(JobRecord.id, JobRecord.payload, JobRecord.state)
            .where(JobRecord.kind == IMPORT)
            .order_by(JobRecord.id)
        ).all()


def misses(ctx: JobContext) -> list[tuple[str, str, str]]:
    with ctx.sessionmaker() as session:
        rows = session.execute(
            sa.select(LookupMiss.ecosystem, LookupMiss.name, LookupMiss.version).order_by(
                LookupMiss.id
            )
        ).all()
        return [tuple(row) for row in rows]


@asynccontextmanager
async def forage(tmp_path: Path, url: str, fake: Any, registry: str) -> AsyncIterator[JobContext]:
    """Serve ``fake`` and open Forage with its registry configured."""
    async with serve(fake.make_app()) as running:
        if registry == "golang":
            config = write_config(tmp_path, url, golang=GoEndpoints.at(running.url))
        else:
            config = write_config(tmp_path, url, **{registry: running.url})
        async with context(config) as ctx:
            yield ctx


async def test_an_unknown_npm_package_is_queued_once_then_not_found_until_the_recheck(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    registry.publish("left-pad", "1.3.0")
    async with forage(tmp_path, migrated_url, registry, "npm") as ctx:
        first = ask(ctx, "pkg:npm/no-such-package@1.0.0")
        assert first.status is KeyStatus.QUEUED and first.job_id is not None
        stats = await drain(ctx)
        assert (stats.done, stats.dead) == (1, 0)  # a 404 ends the import; nothing retries
        before = utcnow()

        second = ask(ctx, "npm:no-such-package:1.0.0")
        assert second.status is KeyStatus.NOT_FOUND
        assert second.answer is not None
        assert second.answer.startswith("HTTP 404 Not Found from http://127.0.0.1:")
        assert second.answer.endswith('/no-such-package: {"error": "Not found"}')
        assert second.checked_at is not None
        assert timedelta(0) <= before - second.checked_at < timedelta(seconds=30)
        body = second.to_json()
        assert body["checked_at"].endswith("Z") and body["answer"] == second.answer
        assert "the registry has no no-such-package" in body["reason"]
        # Another version of the same package: the package's answer covers it.
        assert ask(ctx, "npm:no-such-package:2.0.0").answer == second.answer
        # Within the window nothing is queued, however often it is asked.
        age_misses(ctx, RECHECK - timedelta(minutes=1))
        assert ask(ctx, "npm:no-such-package:1.0.0").status is KeyStatus.NOT_FOUND
        assert len(import_jobs(ctx)) == 1
        assert misses(ctx) == [("npm", "no-such-package", "")]

        # After the window one new import asks again.
        age_misses(ctx, timedelta(minutes=2))
        again = ask(ctx, "npm:no-such-package:1.0.0")
        assert again.status is KeyStatus.QUEUED and again.job_id != first.job_id
        assert ask(ctx, "npm:no-such-package:3.0.0").job_id == again.job_id
        assert len(import_jobs(ctx)) == 2

        # Once the registry has it, the next import records it and the miss is gone.
        registry.publish("no-such-package", "1.0.0")
        await drain(ctx)
        assert ask(ctx, "npm:no-such-package:1.0.0").status is KeyStatus.FOUND
        assert misses(ctx) == []


async def test_pypi_misses_a_package_and_a_version_it_does_not_list(
    migrated_url: str, tmp_path: Path
) -> None:
    pypi = FakePyPI()
    pypi.publish_release("sample", "1.0")
    async with forage(tmp_path, migrated_url, pypi, "pypi") as ctx:
        assert ask(ctx, "pypi:absent-project:1.0").status is KeyStatus.QUEUED
        assert ask(ctx, "pkg:pypi/sample@9.9").status is KeyStatus.QUEUED
        await drain(ctx)
        absent = ask(ctx, "pkg:pypi/absent-project@1.0")
        assert absent.status is KeyStatus.NOT_FOUND
        assert absent.answer is not None and "HTTP 404" in absent.answer
        assert absent.answer.endswith("/simple/absent-project/: 404 Not Found")  # PEP 691
        version = ask(ctx, "pypi:sample:9.9")
        assert version.status is KeyStatus.NOT_FOUND
        assert version.answer == "pypi: sample lists 1 versions, not 9.9"
        assert version.checked_at is not None
        assert "the registry has no version 9.9 of sample" in (version.reason or "")
        assert ask(ctx, "pypi:sample:1.0").status is KeyStatus.FOUND
        assert sorted(misses(ctx)) == [("pypi", "absent-project", ""), ("pypi", "sample", "9.9")]
        assert len(import_jobs(ctx)) == 2


async def test_a_go_pseudo_version_is_resolved_on_demand(migrated_url: str, tmp_path: Path) -> None:
    go = GoFake()
    module = "example.com/mod"
    go.add_version(module, "v1.0.0")
    pseudo = "v1.0.1-0.20240102030405-0123456789ab"
    go.add_version(module, pseudo, in_feed=False)  # served, never listed in @v/list
    bogus = "v1.0.1-0.20990101000000-ffffffffffff"
    async with forage(tmp_path, migrated_url, go, "golang") as ctx:
        await import_package(ctx, "golang", module)  # indexed as a watcher would
        with ctx.sessionmaker() as session:
            numbers = session.scalars(
                sa.select(Version.number).join(Package).where(Package.name == module)
            ).all()
        assert numbers == ["v1.0.0"]

        first = ask(ctx, f"pkg:golang/{module}@{pseudo}")
        assert first.status is KeyStatus.QUEUED
        assert ask(ctx, f"go:{module}:{pseudo}").job_id == first.job_id  # deduplicated
        assert ask(ctx, f"go:{module}:{bogus}").status is KeyStatus.QUEUED
        payloads = [job.payload for job in import_jobs(ctx)]
        assert [(p["version"], p["lookup"]) for p in payloads] == [(pseudo, True), (bogus, True)]
        await drain(ctx)

        found = ask(ctx, f"go:{module}:{pseudo}")
        assert found.status is KeyStatus.FOUND
        assert [a.filename for a in found.artifacts] == [f"mod@{pseudo}.zip"]
        missed = ask(ctx, f"go:{module}:{bogus}")
        assert missed.status is KeyStatus.NOT_FOUND
        assert missed.answer == f"golang: {module} does not serve version {bogus}"
        with ctx.sessionmaker() as session:
            assert session.scalar(sa.select(Version.id).where(Version.number == bogus)) is None
        assert ask(ctx, f"go:{module}:{bogus}").status is KeyStatus.NOT_FOUND
        assert len(import_jobs(ctx)) == 2
        assert misses(ctx) == [("golang", module, bogus)]


async def test_the_api_answers_a_miss_as_the_document_says(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    checker = Checker()
    async with forage(tmp_path, migrated_url, registry, "npm") as ctx:
        config: Config = ctx.config
        app = make_app(config, sessionmaker=ctx.sessionmaker, blockstore=open_blockstore(config))
        async with TestClient(TestServer(app)) as client:

            async def post(keys: list[str]) -> list[dict[str, Any]]:
                response = await client.post("/api/v1/lookup", json={"keys": keys})
                body = json.loads(await response.read())
                checker.check("POST", "/api/v1/lookup", response.status, body)
                return list(body["results"])

            [queued] = await post(["npm:ghost:1.0.0"])
            assert queued["status"] == "queued"
            await drain(ctx)
            [missed, again] = await post(["npm:ghost:1.0.0", "pkg:npm/ghost@1.0.0"])
        assert missed["status"] == again["status"] == "not_found"
        assert missed["answer"].startswith("HTTP 404 Not Found from ")
        assert missed["checked_at"] == again["checked_at"]
        assert len(import_jobs(ctx)) == 1
