"""Pull-through archiving and local serving (issue 16, criteria 1 and 2), against the npm fake.

- a tarball fetched through the mirror with nothing primed is archived in that pass, with the
  archive job's CID and row, and then served from the archive without asking the upstream;
- a pull-through that cannot write (a broken blockstore) never fails the client's answer;
- an archive the scheduled ``reverify`` finds damaged stops being served at once, although
  this process verified it before: the upstream's verified bytes are served and archived
  again in the same pass;
- the last good packument is kept on disk and served in an outage, without the versions the
  archive lacks or the registry removed;
- the archives remembered as verified are bounded (the least recently served forgotten).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from forage.archive.blocks import blockstore_path
from forage.db.models import Archive, ArchiveStatus, Artifact
from forage.jobs import queue
from forage.jobs.reverify import reverify_job
from forage.mirror.index import Verified
from indexers.fakeserver import RunningServer, start_fake
from indexers.npm.fake import FakeNpmRegistry, tarball_path
from storage import compute_cid, parse_cid
from tests.forage.mirror.conftest import Forage, forage_mirror

TARBALL = "/npm/left-pad/-/left-pad-1.1.0.tgz"


@pytest.fixture
def registry() -> FakeNpmRegistry:
    fake = FakeNpmRegistry()
    fake.publish("left-pad", "1.0.0")
    fake.publish("left-pad", "1.1.0")
    return fake


@pytest.fixture
async def upstream(registry: FakeNpmRegistry) -> AsyncIterator[RunningServer]:
    running = await start_fake(registry.make_app())
    yield running
    await running.close()


@pytest.fixture
async def forage(tmp_path: Path, db_url: str, upstream: RunningServer) -> AsyncIterator[Forage]:
    async with forage_mirror(tmp_path, db_url, npm=upstream.url) as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as shared:
        yield shared


def archive_row(forage: Forage) -> Archive | None:
    with forage.ctx.sessionmaker() as session:
        row = session.execute(
            sa.select(Archive)
            .join(Artifact, Artifact.id == Archive.artifact_id)
            .where(Artifact.filename == "left-pad-1.1.0.tgz")
        ).scalar_one_or_none()
        if row is not None:
            session.expunge(row)
        return row


async def fetch(forage: Forage, client: httpx.AsyncClient) -> httpx.Response:
    response = await client.get(forage.url + TARBALL)
    await forage.mirror.registries["npm"].settle()
    return response


async def test_a_fetched_tarball_is_archived_then_served_locally(
    forage: Forage, registry: FakeNpmRegistry, client: httpx.AsyncClient
) -> None:
    data = registry.tarballs[tarball_path("left-pad", "1.1.0")].data
    first = await fetch(forage, client)
    assert first.content == data
    assert first.headers["Forage-Source"] == "upstream"
    row = archive_row(forage)
    assert row is not None and row.status == ArchiveStatus.ARCHIVED
    assert row.cid == str(compute_cid(data))
    assert (row.size, row.verified_algorithm) == (len(data), "sha512")

    registry.requests.clear()
    again = await fetch(forage, client)
    assert again.content == data
    assert again.headers["Forage-Source"] == "archive"
    assert again.headers["Forage-Verified"] == "sha512,sha1"
    assert tarball_path("left-pad", "1.1.0") not in registry.requests.paths()
    after = archive_row(forage)
    assert after is not None and (after.id, after.archived_at) == (row.id, row.archived_at)


async def test_a_pull_through_that_cannot_write_still_answers(
    forage: Forage,
    registry: FakeNpmRegistry,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    staging = blockstore_path(forage.config) / "staging"
    shutil.rmtree(staging)
    staging.write_bytes(b"not a directory")  # every block write fails, even as root
    with caplog.at_level(logging.ERROR):
        response = await fetch(forage, client)
    assert response.status_code == 200
    assert response.content == registry.tarballs[tarball_path("left-pad", "1.1.0")].data
    assert response.headers["Forage-Source"] == "upstream"
    assert "pull-through archive of" in caplog.text
    row = archive_row(forage)
    assert row is None or row.status != ArchiveStatus.ARCHIVED


async def test_an_archive_reverify_finds_damaged_is_no_longer_served(
    forage: Forage, registry: FakeNpmRegistry, client: httpx.AsyncClient
) -> None:
    data = registry.tarballs[tarball_path("left-pad", "1.1.0")].data
    await fetch(forage, client)
    assert (await fetch(forage, client)).headers["Forage-Source"] == "archive"  # verified once
    row = archive_row(forage)
    assert row is not None and row.cid is not None
    store = forage.ctx.blockstore
    assert store is not None
    location = store.locate(parse_cid(row.cid))  # type: ignore[attr-defined]
    fd = os.open(store.pack_path(location.pack), os.O_WRONLY)  # type: ignore[attr-defined]
    try:
        os.pwrite(fd, b"rotten", location.offset)  # the block's first bytes, in its pack
    finally:
        os.close(fd)

    now = datetime.now(UTC)
    job = queue.Job(1, "reverify", {"sample": 10}, 1, 1, None, "test", now + timedelta(1), now)
    await reverify_job(forage.ctx, job)
    assert archive_row(forage).status == ArchiveStatus.FAILED  # type: ignore[union-attr]

    registry.requests.clear()
    repaired = await fetch(forage, client)
    assert repaired.content == data
    assert repaired.headers["Forage-Source"] == "upstream"
    assert tarball_path("left-pad", "1.1.0") in registry.requests.paths()
    again = archive_row(forage)
    assert again is not None and again.status == ArchiveStatus.ARCHIVED
    assert again.cid == row.cid
    served = await fetch(forage, client)
    assert (served.content, served.headers["Forage-Source"]) == (data, "archive")


async def test_the_last_good_packument_is_served_filtered_when_the_upstream_fails(
    forage: Forage, registry: FakeNpmRegistry, upstream: RunningServer, client: httpx.AsyncClient
) -> None:
    listing = await client.get(f"{forage.url}/npm/left-pad")
    assert set(listing.json()["versions"]) == {"1.0.0", "1.1.0"}
    for version in ("1.0.0", "1.1.0"):
        response = await client.get(f"{forage.url}/npm/left-pad/-/left-pad-{version}.tgz")
        assert response.status_code == 200
    await forage.mirror.registries["npm"].settle()
    assert len(list((forage.config.data.dir / "mirror-documents" / "npm").iterdir())) == 1
    registry.unpublish_version("left-pad", "1.0.0")  # archived, then removed upstream
    await forage.ingest("npm", "left-pad")
    registry.publish("left-pad", "1.2.0")  # never fetched, so never archived

    await upstream.close()
    served = await client.get(f"{forage.url}/npm/left-pad")
    assert served.headers["Forage-Source"] == "archive"
    doc = served.json()
    assert set(doc["versions"]) == {"1.1.0"}
    assert doc["dist-tags"] == {"latest": "1.1.0"}
    assert doc["description"] == "left-pad fixture package"  # the upstream's own document
    assert doc["readme"] == "# left-pad\n"
    tarball = doc["versions"]["1.1.0"]["dist"]["tarball"]
    assert tarball == f"{forage.url}/npm/left-pad/-/left-pad-1.1.0.tgz"
    data = registry.tarballs[tarball_path("left-pad", "1.1.0")].data
    assert (await client.get(tarball)).content == data


def test_the_archives_remembered_as_verified_are_bounded() -> None:
    verified = Verified(limit=2)
    verified.add((1, "bafy-a"))
    verified.add((2, "bafy-b"))
    assert (1, "bafy-a") in verified  # served again: now the most recent
    verified.add((3, "bafy-c"))
    assert len(verified) == 2
    assert (2, "bafy-b") not in verified  # forgotten: verified again when next served
    assert (1, "bafy-a") in verified and (3, "bafy-c") in verified
