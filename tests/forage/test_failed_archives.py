"""Bad bytes are retried, and failed archives are listed, on SQLite and PostgreSQL.

What is shown, with the loopback npm registry serving a tampered tarball (a CDN handing out
wrong bytes for the right URL): the archive row is ``failed`` with the digest mismatch as its
reason and the job waits ``jobs.mismatch_backoff`` seconds, then twice that; when the
registry serves the right bytes again the next try archives it and the count is cleared;
after ``jobs.mismatch_attempts`` failed verifications the job is dead. Failed archives are
listed with their reasons by ``forage archive --failed`` (text and JSON), by
``GET /api/v1/archives/failed`` (paged, as the OpenAPI document says, 400 for bad numbers)
and by the ``/failed`` page linked from the home page, where bad bytes stand out.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from forage.archive.blocks import open_blockstore
from forage.archive.job import archive_job
from forage.cli import main
from forage.db.engine import utcnow
from forage.db.models import Archive, ArchiveStatus, Artifact, JobRecord, JobState
from forage.index.ingest import ARCHIVE, import_package
from forage.jobs.queue import RetryPolicy
from forage.jobs.worker import JobContext, Worker
from forage.server.app import make_app
from indexers.fakeserver import serve
from indexers.npm.fake import FakeNpmRegistry, tarball_path
from storage import compute_cid
from tests.forage.test_ingest import context, write_config
from tests.forage.test_openapi import Checker

HOUR = timedelta(seconds=3600)  # jobs.mismatch_backoff's default


@asynccontextmanager
async def npm_forage(
    tmp_path: Path, url: str, registry: FakeNpmRegistry, *, mismatch_attempts: int = 3
) -> AsyncIterator[JobContext]:
    """Forage on the npm fake, with ``jobs.mismatch_attempts`` as given."""
    async with serve(registry.make_app()) as running:
        config = write_config(tmp_path, url, npm=running.url)
        jobs = dataclasses.replace(config.jobs, mismatch_attempts=mismatch_attempts)
        async with context(dataclasses.replace(config, jobs=jobs)) as ctx:
            yield ctx


async def archive_due(ctx: JobContext) -> Any:
    """Run the archive jobs that are due (no backoff of the queue's own: only the bad bytes')."""
    worker = Worker(
        ctx,
        {ARCHIVE: archive_job},
        concurrency=2,
        policy=RetryPolicy(max_attempts=10, backoff_base=0, backoff_cap=0),
        poll_interval=0.01,
    )
    return await worker.run(mode="drain")


def the_job(ctx: JobContext, artifact_id: int) -> JobRecord:
    with ctx.sessionmaker() as session:
        return session.scalars(
            sa.select(JobRecord).where(JobRecord.dedup_key == f"{ARCHIVE}:{artifact_id}")
        ).one()


def the_archive(ctx: JobContext, artifact_id: int) -> Archive:
    with ctx.sessionmaker() as session:
        return session.scalars(sa.select(Archive).where(Archive.artifact_id == artifact_id)).one()


def time_passes(ctx: JobContext) -> None:
    """The backoff is over: every queued job is due now."""
    with ctx.sessionmaker.begin() as session:
        session.execute(
            sa.update(JobRecord)
            .where(JobRecord.state == JobState.QUEUED)
            .values(run_after=utcnow() - timedelta(seconds=1))
        )


async def publish_and_import(ctx: JobContext, registry: FakeNpmRegistry, name: str) -> int:
    """Publish ``name`` 1.0.0, import it (queueing its archive job); its artifact id."""
    registry.publish_release(name, "1.0.0")
    await import_package(ctx, "npm", name)
    with ctx.sessionmaker() as session:
        return session.scalars(
            sa.select(Artifact.id).where(Artifact.filename == f"{name}-1.0.0.tgz")
        ).one()


async def test_a_tampered_download_waits_the_long_backoff_and_is_archived_once_right(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    async with npm_forage(tmp_path, migrated_url, registry) as ctx:
        artifact_id = await publish_and_import(ctx, registry, "cdn-victim")
        _, published = registry.release_file("cdn-victim", "1.0.0")
        registry.tamper_release("cdn-victim", "1.0.0")

        stats = await archive_due(ctx)
        assert (stats.done, stats.dead, stats.retried) == (0, 0, 1)
        row = the_archive(ctx, artifact_id)
        assert (row.status, row.cid, row.mismatches) == (ArchiveStatus.FAILED, None, 1)
        assert (row.error or "").startswith("DigestMismatch: ") and "sha512 mismatch" in row.error
        job = the_job(ctx, artifact_id)
        assert job.state == JobState.QUEUED and job.run_after - job.updated_at == HOUR
        assert "verification failed 1 of 3 times" in (job.last_error or "")
        assert (await archive_due(ctx)).done == 0  # not due before the hour has passed

        time_passes(ctx)
        await archive_due(ctx)  # the CDN still serves wrong bytes: twice as long now
        job = the_job(ctx, artifact_id)
        assert job.state == JobState.QUEUED and job.run_after - job.updated_at == 2 * HOUR
        assert the_archive(ctx, artifact_id).mismatches == 2

        registry.tamper("cdn-victim", "1.0.0", published)  # the right bytes again
        time_passes(ctx)
        assert (await archive_due(ctx)).done == 1
        row = the_archive(ctx, artifact_id)
        assert row.status == ArchiveStatus.ARCHIVED and row.cid == str(compute_cid(published))
        assert (row.error, row.mismatches) == (None, 0)
        assert the_job(ctx, artifact_id).state == JobState.DONE


async def test_bad_bytes_kill_the_job_after_the_bounded_attempts(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakeNpmRegistry()
    async with npm_forage(tmp_path, migrated_url, registry, mismatch_attempts=2) as ctx:
        artifact_id = await publish_and_import(ctx, registry, "always-wrong")
        registry.tamper_release("always-wrong", "1.0.0")
        await archive_due(ctx)
        time_passes(ctx)
        stats = await archive_due(ctx)
        assert (stats.dead, stats.retried) == (1, 0)
        job = the_job(ctx, artifact_id)
        assert job.state == JobState.DEAD and job.attempts == 2
        assert "verification failed 2 of 2 times" in (job.last_error or "")
        row = the_archive(ctx, artifact_id)
        assert (row.status, row.mismatches) == (ArchiveStatus.FAILED, 2)
        assert "sha512 mismatch" in (row.error or "")
        time_passes(ctx)
        assert (await archive_due(ctx)).done == 0  # dead: nothing runs again by itself


async def test_failed_archives_are_listed_by_the_cli_the_api_and_a_page(
    migrated_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = FakeNpmRegistry()
    async with npm_forage(tmp_path, migrated_url, registry) as ctx:
        wrong = await publish_and_import(ctx, registry, "wrong-bytes")
        gone = await publish_and_import(ctx, registry, "gone-file")
        registry.tamper_release("wrong-bytes", "1.0.0")
        registry.faults.fail(404, path=tarball_path("gone-file", "1.0.0"), times=5)
        await archive_due(ctx)

        # The CLI, as text and as JSON.
        config = str(tmp_path / "forage.toml")
        assert main(["-q", "-c", config, "archive", "--failed"]) == 0
        out, err = capsys.readouterr()
        lines = {line.split(": ", 1)[0]: line for line in out.splitlines()}
        mismatch = lines["pkg:npm/wrong-bytes@1.0.0 wrong-bytes-1.0.0.tgz"]
        assert "BAD BYTES (verification failed 1/3) DigestMismatch:" in mismatch
        assert "[next try " in mismatch
        refused = lines["pkg:npm/gone-file@1.0.0 gone-file-1.0.0.tgz"]
        assert "DownloadRefused:" in refused and "HTTP 404" in refused
        assert "BAD BYTES" not in refused and refused.endswith("[dead]")
        assert "2 failed archive(s), 2 shown" in err
        assert main(["-q", "-c", config, "archive", "--failed", "--json", "--limit", "1"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert (listed["total"], listed["pages"], len(listed["archives"])) == (2, 2, 1)
        assert main(["-q", "-c", config, "archive", "--failed", "--limit", "0"]) == 2
        assert main(["-q", "-c", config, "archive", "--failed", "--pending"]) == 2

        # The API, as the OpenAPI document says.
        app = make_app(
            ctx.config, sessionmaker=ctx.sessionmaker, blockstore=open_blockstore(ctx.config)
        )
        checker = Checker()
        async with TestClient(TestServer(app)) as client:

            async def get(path: str, status: int = 200) -> Any:
                response = await client.get(path)
                assert response.status == status
                body = json.loads(await response.read())
                checker.check("GET", path, status, body)
                return body

            body = await get("/api/v1/archives/failed")
            assert body["total"] == 2 and body["pages"] == 1
            by_id = {entry["artifact_id"]: entry for entry in body["archives"]}
            assert by_id[wrong]["bad_bytes"] is True
            assert by_id[wrong]["error_type"] == "DigestMismatch"
            assert by_id[wrong]["mismatches"] == 1
            assert by_id[wrong]["job"]["state"] == "queued"
            assert by_id[wrong]["job"]["next_attempt_at"] > by_id[wrong]["failed_at"]
            assert by_id[gone]["bad_bytes"] is False and by_id[gone]["job"]["state"] == "dead"
            assert by_id[gone]["job"]["next_attempt_at"] is None
            second = await get("/api/v1/archives/failed?page=2&per_page=1")
            assert [e["artifact_id"] for e in second["archives"]] == [
                e["artifact_id"] for e in body["archives"]
            ][1:]
            for bad in ("page=0", "per_page=501", "page=x", "page=" + "9" * 5000):
                message = (await get(f"/api/v1/archives/failed?{bad}", 400))["error"]["message"]
                assert "must be a whole number" in message

            # The page, linked from the home page and from every page's navigation.
            home = await (await client.get("/")).text()
            assert 'href="/failed"' in home and "Failed archives and their reasons" in home
            response = await client.get("/failed")
            page = await response.text()
            assert response.status == 200
            assert page.count('class="failure bad-bytes"') == 1
            assert page.count('class="failure"') == 1
            assert "bad bytes 1/3" in page and "DownloadRefused" in page
            assert "wrong-bytes-1.0.0.tgz" in page and "retry " in page and ">dead<" in page
            assert (await client.get("/failed?page=zero")).status == 400
            assert (await client.get("/failed?page=3")).status == 404
