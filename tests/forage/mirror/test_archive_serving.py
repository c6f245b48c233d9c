"""Serving archived files fast without serving unverified bytes (issue 16, criterion 5).

- an archive is verified the first time a process serves it; a small one is then served from
  memory, so a copy damaged on disk afterwards still serves the bytes that were verified, and
  a new process (which verifies again) refuses the damaged copy;
- a file over the in-memory limit is read again each time (trusted after its verification),
  with the same bytes, and the memory held is bounded;
- archive CIDs parse the same through the fast path as through :func:`storage.parse_cid`;
- the fallback packument is the canonical JSON of its document, built once for any number
  of clients asking at the same time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from forage.db.models import Archive, Artifact
from forage.mirror.index import IndexArchive, SmallFiles
from indexers.fakeserver import RunningServer, start_fake
from indexers.npm.fake import FakeNpmRegistry, tarball_path
from indexers.npm.mirror import CORGI, CORGI_FIELDS
from storage import InvalidCID, compute_cid, parse_cid
from tests.forage.mirror.conftest import Forage, forage_mirror

SMALL = "/npm/left-pad/-/left-pad-1.1.0.tgz"
LARGE = "/npm/big-blob/-/big-blob-1.0.0.tgz"


@pytest.fixture
def registry() -> FakeNpmRegistry:
    fake = FakeNpmRegistry()
    fake.publish("left-pad", "1.0.0")
    fake.publish("left-pad", "1.1.0", files={"index.js": b"module.exports = 1;\n"})
    # Random bytes do not compress: a tarball over the 256 KiB kept in memory.
    fake.publish("big-blob", "1.0.0", files={"blob.bin": random.Random(3).randbytes(300_000)})
    return fake


@pytest.fixture
async def upstream(registry: FakeNpmRegistry) -> AsyncIterator[RunningServer]:
    running = await start_fake(registry.make_app())
    yield running
    await running.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as shared:
        yield shared


async def archive_everything(forage: Forage) -> None:
    for name in ("left-pad", "big-blob"):
        await forage.ingest("npm", name)
    await forage.archive_all()


def archive_of(forage: Forage, filename: str) -> tuple[int, str]:
    with forage.ctx.sessionmaker() as session:
        row = session.execute(
            sa.select(Archive.artifact_id, Archive.cid)
            .join(Artifact, Artifact.id == Archive.artifact_id)
            .where(Artifact.filename == filename)
        ).one()
    return row.artifact_id, row.cid


def damage(forage: Forage, cid: str) -> None:
    """Overwrite the first bytes of the archive's (only) block where the store keeps it."""
    store = forage.ctx.blockstore
    location = store.locate(parse_cid(cid))  # type: ignore[union-attr]
    fd = os.open(store.pack_path(location.pack), os.O_WRONLY)  # type: ignore[union-attr]
    try:
        os.pwrite(fd, b"rotten", location.offset)
    finally:
        os.close(fd)


def index_archive(forage: Forage) -> IndexArchive:
    archive = forage.mirror.archive
    assert isinstance(archive, IndexArchive)
    return archive


async def test_verified_once_then_served_from_memory_and_refused_damaged_after_restart(
    tmp_path: Path,
    migrated_url: str,
    upstream: RunningServer,
    registry: FakeNpmRegistry,
    client: httpx.AsyncClient,
) -> None:
    original = registry.tarballs[tarball_path("left-pad", "1.1.0")].data
    async with forage_mirror(tmp_path, migrated_url, npm=upstream.url) as forage:
        await archive_everything(forage)
        key = archive_of(forage, "left-pad-1.1.0.tgz")
        archive = index_archive(forage)
        assert key not in archive.verified and archive.small.get(key) is None
        first = await client.get(forage.url + SMALL)
        assert first.status_code == 200 and first.content == original
        assert first.headers["Forage-Source"] == "archive"  # never fetched from the upstream
        assert key in archive.verified and archive.small.get(key) == original
        damage(forage, key[1])
        again = await client.get(forage.url + SMALL)
        # The bytes verified in this process, not the damaged copy on disk.
        assert again.status_code == 200 and again.content == original
    await upstream.close()
    async with forage_mirror(tmp_path, migrated_url, npm=upstream.url) as restarted:
        refused = await client.get(restarted.url + SMALL)
    assert refused.status_code == 502
    assert "failed verification" in refused.json()["error"]
    assert b"rotten" not in refused.content


async def test_a_large_archive_is_read_again_with_the_same_bytes(
    tmp_path: Path,
    db_url: str,
    upstream: RunningServer,
    registry: FakeNpmRegistry,
    client: httpx.AsyncClient,
) -> None:
    original = registry.tarballs[tarball_path("big-blob", "1.0.0")].data
    assert len(original) > SmallFiles().largest
    async with forage_mirror(tmp_path, db_url, npm=upstream.url) as forage:
        await archive_everything(forage)
        await upstream.close()
        key = archive_of(forage, "big-blob-1.0.0.tgz")
        archive = index_archive(forage)
        answers = [await client.get(forage.url + LARGE) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200]
        assert all(a.content == original for a in answers)
        assert all(a.headers["Forage-Verified"] == "sha512,sha1" for a in answers)
        assert key in archive.verified and archive.small.get(key) is None
        assert archive.small.used == 0


def test_small_files_hold_at_most_their_limit_least_recently_served_dropped() -> None:
    small = SmallFiles(limit=10, largest=6)
    small.put((1, "a"), b"aaaa")
    small.put((2, "b"), b"bbbb")
    small.put((3, "big"), b"x" * 7)  # over ``largest``: never kept
    assert small.get((3, "big")) is None and small.used == 8
    assert small.get((1, "a")) == b"aaaa"  # now the most recently served
    small.put((4, "c"), b"cccc")  # 12 bytes: the least recent (2) goes
    assert small.get((2, "b")) is None
    assert small.get((1, "a")) == b"aaaa" and small.get((4, "c")) == b"cccc"
    assert small.used == 8


@pytest.mark.parametrize(
    "text",
    [
        str(compute_cid(b"a raw leaf")),
        str(compute_cid(b"a raw leaf", cid_version=0)),
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",  # dag-pb, CIDv1
    ],
)
def test_archive_cids_parse_as_multiformats_parses_them(text: str) -> None:
    """parse_cid reads base32 CIDv1 text with the standard library: the same CID."""
    from multiformats import CID

    assert parse_cid(text) == CID.decode(text)
    assert str(parse_cid(text)) == text


@pytest.mark.parametrize("text", ["b", "b!!!", "bafy", "bAFYBEIG", "z-not-a-cid"])
def test_a_malformed_archive_cid_is_refused(text: str) -> None:
    with pytest.raises(InvalidCID):
        parse_cid(text)


async def test_the_fallback_packument_is_canonical_json_built_once_for_many_clients(
    tmp_path: Path,
    migrated_url: str,
    upstream: RunningServer,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with forage_mirror(tmp_path, migrated_url, npm=upstream.url) as forage:
        await archive_everything(forage)
        await upstream.close()
        caplog.set_level(logging.DEBUG, logger="indexers.npm.mirror")
        answers = await asyncio.gather(
            *(client.get(forage.url + "/npm/left-pad", headers={"accept": CORGI}) for _ in range(8))
        )
        full = await client.get(forage.url + "/npm/left-pad")
    rendered = [r for r in caplog.records if "fallback packument rendered" in r.getMessage()]
    assert len(rendered) == 2  # one for the 8 abbreviated answers, one for the full one
    assert {a.status_code for a in answers} == {200} and len({a.content for a in answers}) == 1
    corgi = answers[0]
    for answer in (corgi, full):
        assert answer.headers["Forage-Source"] == "archive"
        # Written piece by piece, the body is exactly the JSON of its own document.
        assert answer.content == json.dumps(answer.json()).encode()
    doc, abbreviated = full.json(), corgi.json()
    assert list(doc) == ["_id", "name", "dist-tags", "versions", "time"]
    assert list(abbreviated) == ["name", "modified", "dist-tags", "versions"]
    assert list(doc["versions"]) == list(abbreviated["versions"]) == ["1.0.0", "1.1.0"]
    assert doc["dist-tags"] == abbreviated["dist-tags"] == {"latest": "1.1.0"}
    assert abbreviated["modified"] == doc["time"]["modified"] == max(doc["time"].values())
    for number, version in doc["versions"].items():
        assert version["_id"] == f"left-pad@{number}" and version["version"] == number
        assert version["dist"]["tarball"] == f"{forage.url}/npm/left-pad/-/left-pad-{number}.tgz"
        short = abbreviated["versions"][number]
        assert short == {key: version[key] for key in CORGI_FIELDS if key in version}
    assert doc["versions"]["1.1.0"]["main"] == "index.js"  # from the archived package.json
