"""Archive jobs against loopback fakes, on SQLite and PostgreSQL.

What is shown: an artifact is downloaded once, checked against every digest the index holds
(npm sha512 and sha1, PyPI sha256 and size, Go ``h1:``), stored as the blocks of the CID
``ipfs add --cid-version=1`` gives it and recorded once; wrong bytes, a cut body, an
oversized file, a foreign host or redirect, a full disk and a cancelled job leave no block,
staging directory or spool file behind, and end as a failed row with the reason, retryable
or not as the cause deserves; a second run is a no-op.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from forage.archive.blocks import open_packed
from forage.archive.job import archive_artifact, archive_job
from forage.archive.records import (
    artifact_ids_for_key,
    count_unarchived,
    record_archived,
    record_archived_many,
    record_failed,
    unarchived_ids,
)
from forage.archive.runner import archive_many
from forage.archive.targets import ArchiveResult
from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker, upgrade
from forage.db.models import Archive, ArchiveStatus, Artifact, JobRecord, JobState
from forage.errors import InvalidKey, NotFound, RetryLater
from forage.fakes.files import FakeFileServer
from forage.index.ingest import ARCHIVE, record_package
from forage.jobs.queue import RetryPolicy
from forage.jobs.worker import JobContext, Worker, job_context
from indexers import Artifact as ArtifactInfo
from indexers import PackageInfo, Release
from indexers.fakeserver import RunningServer, serve
from indexers.golang.fake import GoFake
from storage import compute_cid, read_file, walk_dag
from tests.factories import make_archive, make_artifact, make_version

EMPTY_FILE_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


# -- helpers shared with the CLI and crash tests ---------------------------------------------


def write_config(
    tmp_path: Path,
    url: str,
    host: str,
    *,
    max_download_size: int | None = None,
    download_hosts: tuple[str, ...] | None = None,
) -> Path:
    """A forage.toml whose npm, PyPI and Go registries all live at ``host`` (a fake)."""
    extra = "allow_http = true\n"
    if max_download_size is not None:
        extra += f"max_download_size = {max_download_size}\n"
    if download_hosts is not None:
        extra += f"download_hosts = {json.dumps(list(download_hosts))}\n"
    text = (
        f'[database]\nurl = "{url}"\n\n[data]\ndir = "{tmp_path / "data"}"\n\n'
        "[jobs]\nmax_attempts = 3\nbackoff_base = 0\nbackoff_cap = 0\n\n"
        f'[registries.npm]\nregistry_url = "{host}"\nreplicate_url = "{host}/registry"\n{extra}\n'
        f'[registries.pypi]\nindex_url = "{host}/simple"\njson_url = "{host}/pypi"\n'
        f'xmlrpc_url = "{host}/pypi"\n{extra}\n'
        f'[registries.golang]\nindex_url = "{host}/index"\nproxy_url = "{host}/proxy"\n'
        f'sumdb_url = "{host}/sumdb"\n{extra}'
    )
    path = tmp_path / "forage.toml"
    path.write_text(text)
    return path


def npm_artifact(url: str, data: bytes, filename: str) -> ArtifactInfo:
    """An npm tarball as the npm indexer maps it: sha512 (SRI) and sha1, no size."""
    digests = {
        "sha512": hashlib.sha512(data).hexdigest(),
        "sha1": hashlib.sha1(data).hexdigest(),  # noqa: S324 - npm's legacy shasum
    }
    return ArtifactInfo(filename=filename, url=url, size=None, digests=digests, kind="tarball")


def pypi_artifact(url: str, data: bytes, filename: str) -> ArtifactInfo:
    """A PyPI file as the PyPI indexer maps it: sha256 and size."""
    digests = {"sha256": hashlib.sha256(data).hexdigest()}
    return ArtifactInfo(filename=filename, url=url, size=len(data), digests=digests, kind="sdist")


def package(ecosystem: str, name: str, artifacts: dict[str, ArtifactInfo]) -> PackageInfo:
    """One package whose versions each carry one artifact."""
    releases = tuple(Release(version=v, artifacts=(a,)) for v, a in artifacts.items())
    return PackageInfo(ecosystem=ecosystem, name=name, display_name=name, releases=releases)


def record(url: str, info: PackageInfo) -> list[int]:
    """Record ``info`` as the importer does (queueing archive jobs); return artifact ids."""
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine).begin() as session:
            record_package(session, info)
            ids = session.execute(
                sa.select(Artifact.id).where(Artifact.filename.in_(_filenames(info)))
            ).scalars()
            return sorted(ids)
    finally:
        engine.dispose()


def _filenames(info: PackageInfo) -> list[str]:
    return [a.filename for r in info.releases for a in r.artifacts]


def blob(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(size)


def leftovers(data_dir: Path) -> list[str]:
    """Files in the blockstore's staging area and the spool directory."""
    found = []
    for sub in ("blocks/staging", "spool"):
        directory = data_dir / sub
        if directory.exists():
            found += [f"{sub}/{name}" for name in os.listdir(directory)]
    return found


def stored_blocks(data_dir: Path) -> list[str]:
    """Every block the blockstore holds, whichever its layout (packed or flatfs)."""
    store = open_packed(data_dir / "blocks", durable=False)
    try:
        return sorted(str(cid) for cid in store.iterate())
    finally:
        store.close()


@asynccontextmanager
async def forage(config: Config) -> AsyncIterator[JobContext]:
    engine = make_engine(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            yield ctx
    finally:
        engine.dispose()


@asynccontextmanager
async def fake_host(
    tmp_path: Path, url: str, host: FakeFileServer | None = None, **options: Any
) -> AsyncIterator[tuple[FakeFileServer, RunningServer, JobContext]]:
    """Serve a fake file host and open Forage with every registry on it."""
    host = host or FakeFileServer()
    async with serve(host.make_app()) as running:
        config = load_config(write_config(tmp_path, url, running.url, **options), environ={})
        async with forage(config) as ctx:
            yield host, running, ctx


def archive_row(ctx: JobContext, artifact_id: int) -> Archive | None:
    with ctx.sessionmaker() as session:
        return session.scalars(sa.select(Archive).where(Archive.artifact_id == artifact_id)).first()


def archive_jobs(ctx: JobContext) -> list[JobRecord]:
    with ctx.sessionmaker() as session:
        return list(session.scalars(sa.select(JobRecord).where(JobRecord.kind == ARCHIVE)))


async def drain(ctx: JobContext) -> Any:
    worker = Worker(
        ctx,
        {ARCHIVE: archive_job},
        concurrency=4,
        policy=RetryPolicy(max_attempts=3, backoff_base=0, backoff_cap=0),
        poll_interval=0.01,
    )
    return await worker.run(mode="drain")


def assert_stored(ctx: JobContext, cid: str, data: bytes) -> None:
    """The blockstore holds exactly the file's DAG, and it reads back as ``data``."""
    assert ctx.blockstore is not None
    assert b"".join(read_file(ctx.blockstore, cid)) == data
    assert str(compute_cid(b"".join(read_file(ctx.blockstore, cid)))) == cid


# -- the pass ----------------------------------------------------------------------------------


async def test_npm_and_pypi_artifacts_are_verified_stored_and_recorded_once(
    migrated_url: str, tmp_path: Path
) -> None:
    small, large = blob(5000, 1), blob(1_300_000, 2)  # one chunk; five chunks and a root
    async with fake_host(tmp_path, migrated_url) as (host, fake, ctx):
        [npm_id] = record(
            migrated_url,
            package(
                "npm",
                "left-pad",
                {"1.0.0": npm_artifact(fake.url + host.add("a.tgz", small), small, "a.tgz")},
            ),
        )
        [pypi_id] = record(
            migrated_url,
            package(
                "pypi",
                "sample",
                {"1.0": pypi_artifact(fake.url + host.add("s.tar.gz", large), large, "s.tar.gz")},
            ),
        )
        stats = await drain(ctx)
        assert (stats.done, stats.dead, stats.retried) == (2, 0, 0)

        npm_row = archive_row(ctx, npm_id)
        assert npm_row is not None and npm_row.status == ArchiveStatus.ARCHIVED
        assert npm_row.cid == str(compute_cid(small)) and npm_row.size == len(small)
        # The strongest digest the registry published is the one recorded as verified.
        assert (npm_row.verified_algorithm, npm_row.verified_digest) == (
            "sha512",
            hashlib.sha512(small).hexdigest(),
        )
        assert npm_row.cid.startswith("bafkrei")  # a single chunk is one raw leaf
        pypi_row = archive_row(ctx, pypi_id)
        assert pypi_row is not None and pypi_row.cid == str(compute_cid(large))
        assert pypi_row.cid.startswith("bafybei")  # several chunks: a dag-pb root
        assert pypi_row.verified_algorithm == "sha256"
        assert_stored(ctx, npm_row.cid, small)
        assert_stored(ctx, pypi_row.cid, large)
        assert ctx.blockstore is not None
        dag = {str(b.cid) for b in walk_dag(ctx.blockstore, pypi_row.cid)}
        assert len(stored_blocks(tmp_path / "data")) == 1 + len(dag) == 1 + 5 + 1
        assert {j.state for j in archive_jobs(ctx)} == {JobState.DONE}
        assert leftovers(tmp_path / "data") == []

        # Running again downloads nothing and changes nothing.
        requests = len(host.requests.seen)
        again = await archive_artifact(ctx, npm_id)
        assert again.skipped and again.cid == npm_row.cid
        assert len(host.requests.seen) == requests
        with ctx.sessionmaker() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Archive)) == 2


async def test_the_empty_file_has_the_kubo_empty_cid(migrated_url: str, tmp_path: Path) -> None:
    async with fake_host(tmp_path, migrated_url) as (host, fake, ctx):
        url = fake.url + host.add("empty.tgz", b"")
        [artifact_id] = record(
            migrated_url, package("npm", "e", {"1.0.0": npm_artifact(url, b"", "e.tgz")})
        )
        outcome = await archive_artifact(ctx, artifact_id)
        assert (outcome.status, outcome.cid, outcome.size) == ("archived", EMPTY_FILE_CID, 0)


async def test_an_artifact_without_digests_is_archived_with_forages_own_sha256(
    migrated_url: str, tmp_path: Path
) -> None:
    """Nothing upstream vouches for the bytes: the archive records their sha256 at the first
    download, which the mirror then holds every later copy to."""
    data = blob(100, 3)
    async with fake_host(tmp_path, migrated_url) as (host, fake, ctx):
        info = ArtifactInfo("m.zip", fake.url + host.add("m.zip", data), None, {})
        [artifact_id] = record(migrated_url, package("golang", "example.com/m", {"v1.0.0": info}))
        await archive_artifact(ctx, artifact_id)
        row = archive_row(ctx, artifact_id)
        assert row is not None and row.status == ArchiveStatus.ARCHIVED
        expected = hashlib.sha256(data).hexdigest()
        assert (row.verified_algorithm, row.verified_digest) == ("sha256", expected)


async def test_go_module_zips_are_checked_against_their_h1(
    migrated_url: str, tmp_path: Path
) -> None:
    """The real Go fake's proxy serves the zips; the sumdb's h1: is what the index holds.
    A tampered zip fails (to be tried again on the long backoff); neither leaves a spool
    file."""
    go = GoFake()
    good = go.add_version("example.com/good", "v1.0.0", files={"a.go": "package a\n"})
    bad = go.add_version("example.com/bad", "v1.0.0", files={"b.go": "package b\n"})
    go.tamper("example.com/bad", "v1.0.0", {"b.go": b"package evil\n"})
    async with serve(go.app()) as running:
        config = load_config(write_config(tmp_path, migrated_url, running.url), environ={})
        proxy = running.url + "/proxy"
        ids = []
        for version in (good, bad):
            url = f"{proxy}/{version.path}/@v/{version.version}.zip"
            filename = f"{version.path.rsplit('/', 1)[-1]}-v1.0.0.zip"
            info = ArtifactInfo(filename, url, None, {"h1": version.h1})
            ids += record(migrated_url, package("golang", version.path, {"v1.0.0": info}))
        async with forage(config) as ctx:
            ok = await archive_artifact(ctx, ids[0])
            assert ok.cid == str(compute_cid(good.zip))
            row = archive_row(ctx, ids[0])
            assert row is not None and (row.verified_algorithm, row.verified_digest) == (
                "h1",
                good.h1,
            )
            with pytest.raises(RetryLater, match="h1 mismatch"):
                await archive_artifact(ctx, ids[1])
            failed = archive_row(ctx, ids[1])
            assert failed is not None and failed.status == ArchiveStatus.FAILED
            assert failed.cid is None and "h1 mismatch" in (failed.error or "")
        assert leftovers(tmp_path / "data") == []
        assert len(stored_blocks(tmp_path / "data")) == 1  # only the good zip's leaf


async def test_wrong_bytes_for_the_right_url_store_nothing_and_wait_the_long_backoff(
    migrated_url: str, tmp_path: Path
) -> None:
    data = blob(700_000, 4)
    async with fake_host(tmp_path, migrated_url) as (host, fake, ctx):
        url = fake.url + host.add("x.tgz", data)
        [artifact_id] = record(
            migrated_url, package("npm", "x", {"1.0.0": npm_artifact(url, data, "x.tgz")})
        )
        host.corrupt("x.tgz")
        stats = await drain(ctx)
        assert (stats.done, stats.dead, stats.retried) == (0, 0, 1)  # not before an hour
        row = archive_row(ctx, artifact_id)
        assert row is not None and row.status == ArchiveStatus.FAILED
        assert row.cid is None and row.size is None and row.verified_digest is None
        assert "DigestMismatch" in (row.error or "") and "sha512 mismatch" in (row.error or "")
        [job] = archive_jobs(ctx)
        assert job.state == JobState.QUEUED and "sha512 mismatch" in (job.last_error or "")
        assert job.run_after - job.updated_at >= timedelta(seconds=3600)  # jobs.mismatch_backoff
        assert stored_blocks(tmp_path / "data") == []
        assert leftovers(tmp_path / "data") == []


async def test_a_cut_body_and_a_503_are_retried_and_then_archived(
    migrated_url: str, tmp_path: Path
) -> None:
    data = blob(2_500_000, 5)
    async with fake_host(tmp_path, migrated_url) as (host, fake, ctx):
        url = fake.url + host.add("cut.tar.gz", data)
        info = package("pypi", "cut", {"1.0": pypi_artifact(url, data, "cut.tar.gz")})
        [artifact_id] = record(migrated_url, info)
        host.truncate("cut.tar.gz")
        with pytest.raises(Exception, match=r"cut short|incomplete|peer closed") as error:
            await archive_artifact(ctx, artifact_id)
        assert type(error.value).__name__ == "DownloadUnavailable"
        row = archive_row(ctx, artifact_id)
        assert row is not None and row.status == ArchiveStatus.FAILED and row.cid is None
        assert stored_blocks(tmp_path / "data") == [] and leftovers(tmp_path / "data") == []

        host.faults.fail(503, path="/files/cut.tar.gz")
        stats = await drain(ctx)  # attempt 1 meets the 503, attempt 2 succeeds
        assert (stats.retried, stats.done, stats.dead) == (1, 1, 0)
        row = archive_row(ctx, artifact_id)
        assert row is not None and row.status == ArchiveStatus.ARCHIVED and row.error is None
        assert row.cid == str(compute_cid(data))


async def test_a_declared_size_over_the_cap_is_refused_before_any_request(
    migrated_url: str, tmp_path: Path
) -> None:
    data = blob(3000, 6)
    async with fake_host(tmp_path, migrated_url, max_download_size=2048) as (host, fake, ctx):
        url = fake.url + host.add("big.tar.gz", data)
        [indexed] = record(
            migrated_url, package("pypi", "big", {"1.0": pypi_artifact(url, data, "big.tar.gz")})
        )
        url2 = fake.url + host.add("big.tgz", data)
        [unsized] = record(
            migrated_url, package("npm", "big", {"1.0.0": npm_artifact(url2, data, "big.tgz")})
        )
        with pytest.raises(Exception, match="size 3000 exceeds cap 2048"):
            await archive_artifact(ctx, indexed)
        assert host.requests.paths() == []  # the index's size was enough to refuse
        with pytest.raises(Exception, match="Content-Length 3000 exceeds cap 2048"):
            await archive_artifact(ctx, unsized)
        for artifact_id in (indexed, unsized):
            row = archive_row(ctx, artifact_id)
            assert row is not None and row.status == ArchiveStatus.FAILED
            assert "DownloadRefused" in (row.error or "")
        assert stored_blocks(tmp_path / "data") == []


async def test_only_the_registrys_hosts_are_fetched_redirects_included(
    migrated_url: str, tmp_path: Path
) -> None:
    """A hostile packument points at another host, or a redirect does: neither is contacted."""
    data = blob(100, 7)
    elsewhere = FakeFileServer()
    elsewhere.add("secret", data)
    async with (
        serve(elsewhere.make_app()) as internal,
        fake_host(tmp_path, migrated_url) as (
            host,
            fake,
            ctx,
        ),
    ):
        host.redirect("hop.tgz", internal.url + "/files/secret")
        direct, hop = (
            npm_artifact(internal.url + "/files/secret", data, "d.tgz"),
            npm_artifact(fake.url + "/files/hop.tgz", data, "h.tgz"),
        )
        ids = record(migrated_url, package("npm", "hostile", {"1.0.0": direct, "1.0.1": hop}))
        outcomes = await archive_many(ctx, ids, concurrency=2)
        assert [o.status for o in outcomes] == ["failed", "failed"]
        assert all("is not a configured download host" in (o.error or "") for o in outcomes)
        assert not any(o.retryable for o in outcomes)
        assert elsewhere.requests.seen == []
        assert host.requests.paths() == ["/files/hop.tgz"]


async def test_download_hosts_default_to_the_registry_endpoints(
    migrated_url: str, tmp_path: Path
) -> None:
    """With download_hosts set explicitly, only those hosts are allowed: the registry's own
    endpoint host is then refused too."""
    data = blob(100, 8)
    async with fake_host(tmp_path, migrated_url, download_hosts=("files.example",)) as (
        host,
        fake,
        ctx,
    ):
        assert ctx.config.registry("npm").download_hosts == ("files.example",)
        url = fake.url + host.add("a.tgz", data)
        [artifact_id] = record(
            migrated_url, package("npm", "a", {"1.0.0": npm_artifact(url, data, "a.tgz")})
        )
        with pytest.raises(Exception, match="not a configured download host"):
            await archive_artifact(ctx, artifact_id)
    config = load_config(write_config(tmp_path, migrated_url, "http://127.0.0.1:9"), environ={})
    assert config.registry("npm").download_hosts == ("127.0.0.1:9",)


async def test_a_cancelled_archive_leaves_no_staging_and_no_row(
    migrated_url: str, tmp_path: Path
) -> None:
    """A worker shutting down hard cancels its jobs mid-download: the blocks staged so far go
    away with the staging directory, and the artifact stays unarchived."""
    data = blob(4 * 1024 * 1024, 9)
    async with fake_host(tmp_path, migrated_url, FakeFileServer(rate=4e6)) as (host, fake, ctx):
        url = fake.url + host.add("slow.tgz", data)
        [artifact_id] = record(
            migrated_url, package("npm", "slow", {"1.0.0": npm_artifact(url, data, "slow.tgz")})
        )
        received = 0
        halfway = asyncio.Event()

        def on_bytes(n: int) -> None:
            nonlocal received
            received += n
            if received > 1_600_000:
                halfway.set()

        task = asyncio.create_task(archive_artifact(ctx, artifact_id, on_bytes=on_bytes))
        await asyncio.wait_for(halfway.wait(), 10)
        staging = tmp_path / "data" / "blocks" / "staging"
        assert any(staging.iterdir())  # blocks were being staged
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert archive_row(ctx, artifact_id) is None
        assert stored_blocks(tmp_path / "data") == []
        assert leftovers(tmp_path / "data") == []


async def test_memory_stays_flat_for_a_large_artifact(migrated_url: str, tmp_path: Path) -> None:
    """16 MiB pass through download, digests, CID and blocks with a few MiB allocated at most
    (two 1 MiB segments, one chunk, the client's buffers)."""
    data = blob(16 * 1024 * 1024, 10)
    async with fake_host(tmp_path, migrated_url) as (host, fake, ctx):
        url = fake.url + host.add("big.tgz", data)
        [artifact_id] = record(
            migrated_url, package("npm", "big", {"1.0.0": npm_artifact(url, data, "big.tgz")})
        )
        tracemalloc.start()
        try:
            outcome = await archive_artifact(ctx, artifact_id)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert outcome.size == len(data)
        assert peak < 8 * 1024 * 1024, peak


# -- rows and keys -----------------------------------------------------------------------------


def test_recording_is_idempotent_and_never_downgrades(db_session: Any) -> None:
    artifact = make_artifact(db_session)
    result = ArchiveResult(
        cid=str(compute_cid(b"x")), size=1, verified_algorithm="sha256", verified_digest="ab" * 32
    )
    record_failed(db_session, artifact.id, "DownloadUnavailable: timeout")
    first = record_archived(db_session, artifact.id, result)
    assert first is not None  # this call archived it: follow-up work is queued once
    assert record_archived(db_session, artifact.id, result) is None
    record_failed(db_session, artifact.id, "late failure of a concurrent attempt")
    [row] = db_session.scalars(sa.select(Archive).where(Archive.artifact_id == artifact.id))
    assert (row.id, row.status, row.cid, row.error) == (first, "archived", result.cid, None)


def test_a_group_of_results_is_recorded_in_one_go_with_one_pin_job_each(db_session: Any) -> None:
    """record_archived_many (concurrent archives sharing a transaction): a new artifact, a
    failed one and an archived one; the last keeps its row and gets no id, a repeated
    artifact gets its id once, and one pin job is queued per archive that moved."""
    fresh, failed, done = (make_artifact(db_session) for _ in range(3))
    record_failed(db_session, failed.id, "DownloadUnavailable: reset")
    earlier = make_archive(db_session, artifact=done)
    result = ArchiveResult(
        cid=str(compute_cid(b"y")), size=1, verified_algorithm="sha512", verified_digest="cd" * 64
    )
    ids = record_archived_many(
        db_session, [(fresh.id, result), (failed.id, result), (done.id, result), (fresh.id, result)]
    )
    assert ids[0] is not None and ids[1] is not None and ids[2:] == [None, None]
    rows = {
        row.artifact_id: row
        for row in db_session.scalars(
            sa.select(Archive).where(Archive.artifact_id.in_([fresh.id, failed.id, done.id]))
        )
    }
    assert (rows[fresh.id].id, rows[fresh.id].status, rows[fresh.id].cid) == (
        ids[0],
        "archived",
        result.cid,
    )
    assert (rows[failed.id].id, rows[failed.id].error, rows[failed.id].size) == (ids[1], None, 1)
    assert (rows[done.id].id, rows[done.id].cid) == (earlier.id, earlier.cid)
    pins = db_session.scalars(sa.select(JobRecord.payload).where(JobRecord.kind == "pin")).all()
    assert sorted(payload["archive_id"] for payload in pins) == sorted(ids[:2])


def test_pending_artifacts_are_those_without_an_archived_row(db_session: Any) -> None:
    done = make_archive(db_session).artifact
    failed = make_archive(db_session, status=ArchiveStatus.FAILED).artifact
    never = make_artifact(db_session)
    ids = set(unarchived_ids(db_session, limit=10_000))
    assert {failed.id, never.id} <= ids and done.id not in ids
    before = count_unarchived(db_session)
    assert count_unarchived(db_session, exclude=[never.id]) == before - 1
    assert never.id not in unarchived_ids(db_session, limit=10_000, exclude=[never.id])


def test_keys_name_artifacts_in_either_spelling(db_session: Any) -> None:
    artifact = make_artifact(db_session)
    name, number = artifact.version.package.name, artifact.version.number
    other = make_artifact(
        db_session, version=make_version(db_session, package=artifact.version.package)
    )
    assert artifact_ids_for_key(db_session, f"pkg:npm/{name}@{number}") == [artifact.id]
    assert artifact_ids_for_key(db_session, f"Npm:{name}:{number}") == [artifact.id]
    assert artifact_ids_for_key(db_session, f"pkg:npm/{name}") == [artifact.id, other.id]
    with pytest.raises(NotFound, match="no artifact in the index"):
        artifact_ids_for_key(db_session, f"pkg:npm/{name}@9.9.9")
    with pytest.raises(InvalidKey, match="no registry 'nuget'"):
        artifact_ids_for_key(db_session, "pkg:nuget/Newtonsoft.Json@13.0.1")
    with pytest.raises(InvalidKey, match="unknown platform"):
        artifact_ids_for_key(db_session, "nope:thing:1")


# -- a full disk -------------------------------------------------------------------------------

FULL_DISK = textwrap.dedent(
    """
    import asyncio, hashlib, json, os, random, sys
    import sqlalchemy as sa
    from forage.archive.job import archive_job
    from forage.config import load_config
    from forage.db.engine import make_engine, make_sessionmaker
    from forage.fakes.files import FakeFileServer
    from indexers.fakeserver import ThreadedServer
    from forage.index.ingest import ARCHIVE
    from forage.jobs.queue import RetryPolicy
    from forage.db.models import Archive, JobRecord
    from forage.jobs.worker import Worker, job_context
    from tests.forage.test_archive import package, pypi_artifact, record, write_config

    tmp, url = sys.argv[1], sys.argv[2]
    data = random.Random(11).randbytes(3 * 1024 * 1024)
    host = FakeFileServer()
    with ThreadedServer(host.make_app()) as fake:
        from pathlib import Path
        config = load_config(write_config(Path(tmp), url, fake.url), environ={})
        info = package("pypi", "full", {"1.0": pypi_artifact(
            fake.url + host.add("full.tar.gz", data), data, "full.tar.gz")})
        [artifact_id] = record(url, info)

        async def main():
            engine = make_engine(config.database)
            async with job_context(config, make_sessionmaker(engine)) as ctx:
                worker = Worker(ctx, {ARCHIVE: archive_job}, concurrency=1,
                                policy=RetryPolicy(backoff_base=60, backoff_cap=60))
                await worker.run(mode="once")
            with make_sessionmaker(engine)() as session:
                row = session.scalars(sa.select(Archive)).one()
                job = session.scalars(sa.select(JobRecord)).one()
                report = {"status": row.status, "error": row.error, "cid": row.cid,
                          "job": job.state, "last_error": job.last_error}
            engine.dispose()
            return report

        report = asyncio.run(main())
    data_dir = Path(tmp) / "data"
    report["staging"] = os.listdir(data_dir / "blocks" / "staging")
    report["blocks"] = [str(p) for p in (data_dir / "blocks").rglob("*.data")]
    report["blocks"] += [str(p) for p in (data_dir / "blocks").rglob("*.pack")]
    print(json.dumps(report))
    """
)


def test_a_full_disk_leaves_nothing_behind_and_the_job_retryable(tmp_path: Path) -> None:
    """The data directory is a real 1 MiB tmpfs (private mount namespace); a 3 MiB artifact
    fills it while staging: BlockstoreFull, a failed row, the job queued again, no block
    and no staging directory left."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the full-disk check needs root and unshare under CI")
        pytest.skip("needs root and unshare to mount a small tmpfs")
    url = f"sqlite:///{tmp_path / 'forage.db'}"  # the disk check is about the blockstore
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    mount = f"mount -t tmpfs -o size=1m tmpfs {data_dir}"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [
            *("unshare", "--mount", "sh", "-c", f'{mount} && exec "$0" -c "$1" "$2" "$3"'),
            *(sys.executable, FULL_DISK, str(tmp_path), url),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    if done.returncode and "mount" in done.stderr and not os.environ.get("CI"):
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == "failed" and report["cid"] is None
    assert "BlockstoreFull" in report["error"] and "no space left" in report["error"]
    assert report["job"] == "queued" and "BlockstoreFull" in report["last_error"]
    assert report["staging"] == [] and report["blocks"] == []


def test_no_pin_job_without_a_pinning_backend(db_session: Any) -> None:
    # With no backend configured the archive queues no pin job (half the queue's work on a
    # plain install); the pin check picks such archives up once a backend is added.
    artifact = make_artifact(db_session)
    result = ArchiveResult(
        cid=str(compute_cid(b"z")), size=1, verified_algorithm="sha256", verified_digest="ef" * 32
    )
    archive_id = record_archived(db_session, artifact.id, result, pin=False)
    assert archive_id is not None
    pins = db_session.scalars(sa.select(JobRecord.payload).where(JobRecord.kind == "pin")).all()
    assert archive_id not in [payload["archive_id"] for payload in pins]
