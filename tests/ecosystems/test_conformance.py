"""The contract every registered ecosystem keeps, checked against its own loopback fake.

Parametrized over :data:`indexers.ECOSYSTEMS`: an ecosystem gets these tests by being
registered. Each runs the ecosystem's real parts (its indexer, its mirror routes, its lockfile
format, its name rules) through Forage's shared machinery (import, archive, mirror, keys),
with the fake standing in for the registry:

- the feed pages from a cursor, and a cursor saved and restored (a restart) resumes where it
  stopped, without repeating what was read;
- a package maps to releases whose files carry digests the published bytes satisfy;
- archiving verifies the download (the CID is ``ipfs add``'s) and refuses bytes that differ
  from the registry's digests;
- the mirror lists the release and serves its file, from the upstream and, once the upstream
  is gone, from the archive;
- the ecosystem's lockfile names its releases, read by file name and by content alone;
- keys normalize to the registry's canonical names in both spellings and refuse bad names;
- the fake's round trip: the bytes it publishes are the bytes it serves, and tampering
  changes the bytes but not the published digests.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from forage.archive.records import unarchived_ids
from forage.archive.runner import archive_many
from forage.db.models import Archive, ArchiveStatus, Artifact, ArtifactDigest
from forage.errors import InvalidKey
from forage.lookup.keys import parse_key, registered_name
from indexers import (
    ECOSYSTEMS,
    FILE_CHECKS,
    DigestMismatch,
    DigestVerifier,
    Ecosystem,
    FakeRegistry,
    Indexer,
    InvalidArchive,
    PackageInfo,
    read_lockfile,
)
from indexers.digests import HASHERS
from indexers.fakeserver import RunningServer, start_fake
from indexers.lockfiles import purl_key
from storage import compute_cid
from tests.forage.mirror.conftest import Forage, forage_mirror

pytestmark = pytest.mark.parametrize("ecosystem", list(ECOSYSTEMS.values()), ids=list(ECOSYSTEMS))


@pytest.fixture
def db_url(tmp_path: Path, _sqlite_template: Path) -> str:
    path = tmp_path / "forage.db"
    path.write_bytes(_sqlite_template.read_bytes())
    return f"sqlite:///{path}"


def _names(fake: FakeRegistry) -> tuple[str, str, str]:
    """Three distinct canonical package names the registry accepts."""
    first = fake.NAME_EXAMPLES[0][1]
    return first, f"{first}-two", f"{first}-three"


async def _serve(fake: FakeRegistry) -> RunningServer:
    return await start_fake(fake.make_app())


def _indexer(ecosystem: Ecosystem, fake: FakeRegistry, url: str) -> Indexer[Any]:
    return ecosystem.build_indexer(httpx.AsyncClient(), fake.config_endpoints(url))


async def _drain(indexer: Indexer[Any], cursor: Any) -> tuple[list[str], Any]:
    """Read pages until the feed says it is caught up; return the names and the last cursor."""
    names: list[str] = []
    for _ in range(100):
        page = await indexer.changes(cursor)
        names += [change.name for change in page.changes]
        if page.done or page.cursor == cursor:
            return names, page.cursor
        cursor = page.cursor
    raise AssertionError("the feed never caught up")


def _verify(info: PackageInfo, version: str, filename: str, data: bytes) -> list[str]:
    """Check ``data`` against the digests the mapping gave the file; return what was checked."""
    release = next(r for r in info.releases if r.version == version)
    artifact = next(a for a in release.artifacts if a.filename == filename)
    hashed = {k: v for k, v in artifact.digests.items() if k in HASHERS}
    check = DigestVerifier(artifact.url, hashed, size=artifact.size)
    check.update(data)
    check.finish()
    whole = {k: v for k, v in artifact.digests.items() if k in FILE_CHECKS}
    for algorithm, expected in whole.items():
        FILE_CHECKS[algorithm](io.BytesIO(data), expected, artifact.url)
    assert hashed or whole, f"{filename} has no digest Forage can check"
    return sorted([*hashed, *whole])


@pytest.fixture
def fake(ecosystem: Ecosystem) -> FakeRegistry:
    return ecosystem.fake()


@pytest.fixture
async def upstream(fake: FakeRegistry) -> AsyncIterator[RunningServer]:
    running = await _serve(fake)
    yield running
    await running.close()


async def test_feed_pages_from_a_cursor_and_resumes_after_a_restart(
    ecosystem: Ecosystem, fake: FakeRegistry, upstream: RunningServer
) -> None:
    first, second, third = _names(fake)
    version = fake.SAMPLE_VERSIONS[0]
    indexer = _indexer(ecosystem, fake, upstream.url)
    start = await indexer.start_cursor()
    fake.publish_release(first, version)
    fake.publish_release(second, version)
    names, cursor = await _drain(indexer, start)
    assert {first, second} <= set(names)

    saved = json.loads(json.dumps(indexer.cursor_to_dict(cursor)))
    await indexer.client.aclose()
    fake.publish_release(third, version)
    restarted = _indexer(ecosystem, fake, upstream.url)
    resumed = restarted.cursor_from_dict(saved)
    assert resumed == cursor
    later, _ = await _drain(restarted, resumed)
    await restarted.client.aclose()
    assert third in later
    assert first not in later and second not in later


async def test_a_package_maps_to_files_its_published_bytes_satisfy(
    ecosystem: Ecosystem, fake: FakeRegistry, upstream: RunningServer
) -> None:
    name = _names(fake)[0]
    old, new = fake.SAMPLE_VERSIONS
    fake.publish_release(name, old)
    fake.publish_release(name, new)
    indexer = _indexer(ecosystem, fake, upstream.url)
    info = await indexer.package(name)
    await indexer.client.aclose()
    assert (info.ecosystem, info.name) == (ecosystem.name, name)
    assert {old, new} <= {release.version for release in info.releases}
    for version in (old, new):
        filename, data = fake.release_file(name, version)
        assert _verify(info, version, filename, data)
    filename, data = fake.release_file(name, new)
    with pytest.raises((DigestMismatch, InvalidArchive)):
        middle = len(data) // 2
        _verify(info, new, filename, data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :])


async def _archive(forage: Forage, ecosystem: str, name: str) -> list[Any]:
    await forage.ingest(ecosystem, name)
    with forage.ctx.sessionmaker() as session:
        ids = unarchived_ids(session)
    return await archive_many(forage.ctx, ids, concurrency=2)


async def test_archiving_verifies_the_download_and_refuses_a_mismatch(
    ecosystem: Ecosystem, fake: FakeRegistry, upstream: RunningServer, tmp_path: Path, db_url: str
) -> None:
    good, bad = _names(fake)[:2]
    version = fake.SAMPLE_VERSIONS[0]
    fake.publish_release(good, version)
    fake.publish_release(bad, version)
    fake.tamper_release(bad, version)
    endpoints = {ecosystem.name: fake.config_endpoints(upstream.url)}
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
        outcomes = await _archive(forage, ecosystem.name, good)
        assert outcomes and all(o.status is ArchiveStatus.ARCHIVED for o in outcomes)
        _, data = fake.release_file(good, version)
        assert str(compute_cid(data)) in forage.archived_cids()

        refused = await _archive(forage, ecosystem.name, bad)
        assert refused and all(o.status is ArchiveStatus.FAILED for o in refused)
        with forage.ctx.sessionmaker() as session:
            errors = session.execute(
                sa.select(Archive.error).where(Archive.status == ArchiveStatus.FAILED)
            ).scalars()
            assert all(("mismatch" in e) or ("InvalidArchive" in e) for e in errors if e)


async def test_the_mirror_lists_and_serves_a_release_upstream_or_not(
    ecosystem: Ecosystem, fake: FakeRegistry, upstream: RunningServer, tmp_path: Path, db_url: str
) -> None:
    name = _names(fake)[0]
    version = fake.SAMPLE_VERSIONS[0]
    fake.publish_release(name, version)
    filename, data = fake.release_file(name, version)
    endpoints = {ecosystem.name: fake.config_endpoints(upstream.url)}
    routes = ecosystem.mirror()
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
        await _archive(forage, ecosystem.name, name)
        with forage.ctx.sessionmaker() as session:
            digests = dict(
                session.execute(
                    sa.select(ArtifactDigest.algorithm, ArtifactDigest.value)
                    .join(Artifact, Artifact.id == ArtifactDigest.artifact_id)
                    .where(Artifact.filename == filename)
                ).all()
            )
        listing = forage.url + routes.listing_path(name)
        download = forage.url + routes.file_path(name, version, filename, digests)
        async with httpx.AsyncClient() as client:
            for source in ("upstream", "archive"):
                if source == "archive":
                    await upstream.close()
                page = await client.get(listing)
                assert page.status_code == 200, (source, page.text[:300])
                assert version in page.text
                served = await client.get(download)
                assert served.status_code == 200, (source, served.text[:300])
                assert served.content == data
                assert served.headers["Forage-Source"] == source


def test_the_lockfile_names_its_releases_by_name_and_by_content(
    ecosystem: Ecosystem, fake: FakeRegistry
) -> None:
    first, second, _ = _names(fake)
    version = fake.SAMPLE_VERSIONS[0]
    fake.publish_release(first, version)
    fake.publish_release(second, version)
    filename, data = fake.lockfile([(first, version), (second, version)])
    expected = [purl_key(ecosystem.name, n, version) for n in (first, second)]
    for given in (filename, ""):
        entries = read_lockfile(data, filename=given)
        assert [e.key for e in entries if e.key] == expected, given
        assert [e.problem for e in entries if e.problem] == []
    assert filename in {name for fmt in ecosystem.lockfiles for name in fmt.filenames}


def test_keys_normalize_to_the_registry_names_and_refuse_bad_ones(
    ecosystem: Ecosystem, fake: FakeRegistry
) -> None:
    version = fake.SAMPLE_VERSIONS[0]
    for raw, canonical in fake.NAME_EXAMPLES:
        for platform in (ecosystem.name, *ecosystem.aliases, ecosystem.name.upper()):
            key = parse_key(f"{platform}:{raw}:{version}", normalize=registered_name)
            assert (key.ecosystem, key.name, key.version) == (ecosystem.name, canonical, version)
        purl = parse_key(key.purl(), normalize=registered_name)
        assert purl == key
        assert ecosystem.normalize_name(canonical) == canonical
    for bad in fake.INVALID_NAMES:
        with pytest.raises(InvalidKey):
            parse_key(f"{ecosystem.name}:{bad}:{version}", normalize=registered_name)


async def test_the_fake_serves_what_it_published_and_tampers_only_the_bytes(
    ecosystem: Ecosystem, fake: FakeRegistry, upstream: RunningServer
) -> None:
    name = _names(fake)[0]
    version = fake.SAMPLE_VERSIONS[0]
    fake.publish_release(name, version)
    filename, data = fake.release_file(name, version)
    indexer = _indexer(ecosystem, fake, upstream.url)
    before = await indexer.package(name)
    url = next(
        a.url
        for r in before.releases
        if r.version == version
        for a in r.artifacts
        if a.filename == filename
    )
    served = await indexer.client.get(url)
    assert served.content == data
    fake.tamper_release(name, version)
    after = await indexer.package(name)
    tampered = await indexer.client.get(url)
    await indexer.client.aclose()
    assert tampered.status_code == 200 and tampered.content != data
    assert [r.artifacts for r in after.releases] == [r.artifacts for r in before.releases]
