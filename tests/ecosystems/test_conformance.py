"""The contract every registered ecosystem keeps, checked against its own loopback fake.

Parametrized over :data:`indexers.ECOSYSTEMS`: an ecosystem gets these tests by being
registered. Each runs the ecosystem's real parts (its indexer, its mirror routes, its lockfile
format, its name rules) through Forage's shared machinery (import, archive, mirror, keys),
with the fake standing in for the registry:

- the feed pages from a cursor, and a cursor saved and restored (a restart) resumes where it
  stopped, without repeating what was read;
- the page that reaches the head reports the registry's head, where the cursor then stands;
- a package maps to releases whose files carry digests the published bytes satisfy;
- archiving verifies the download (the CID is ``ipfs add``'s) and refuses bytes that differ
  from the registry's digests;
- the mirror lists the release and serves its file, from the upstream and, once the upstream
  is gone, from the archive;
- a release the registry withdraws its own way is recorded as removed (when, and how in the
  registry's words), shown by lookups, left out of listings with or without the upstream,
  and still served from the archive to an exact request;
- the ecosystem's lockfile names its releases, read by file name and by content alone;
- keys normalize to the registry's canonical names in both spellings and refuse bad names;
- the fake's round trip: the bytes it publishes are the bytes it serves, and tampering
  changes the bytes but not the published digests;
- a bootstrap from ``origin`` walks what was published before the watcher started, and a
  reconcile sweep of the registry's own listing finds what the index lacks (SQLite and
  PostgreSQL).
"""

from __future__ import annotations

import hashlib
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


async def test_the_page_that_reaches_the_head_reports_the_registrys_head(
    ecosystem: Ecosystem, fake: FakeRegistry, upstream: RunningServer
) -> None:
    first, second, _ = _names(fake)
    version = fake.SAMPLE_VERSIONS[0]
    indexer = _indexer(ecosystem, fake, upstream.url)
    cursor = await indexer.start_cursor()
    fake.publish_release(first, version)
    fake.publish_release(second, version)
    for _ in range(100):
        page = await indexer.changes(cursor)
        if page.done:
            break
        cursor = page.cursor
    await indexer.client.aclose()
    assert page.done
    assert page.head is not None
    assert page.head == fake.feed_head()
    assert indexer.cursor_position(indexer.cursor_to_dict(page.cursor)) == page.head


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
            # Bad bytes may be right later: tried again on the long backoff, counted.
            assert all(o.retryable for o in refused)
            counts = session.execute(
                sa.select(Archive.mismatches).where(Archive.status == ArchiveStatus.FAILED)
            ).scalars()
            assert set(counts) == {1}


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
                # An archived file never changes: served from the archive either way.
                assert served.headers["Forage-Source"] == "archive"


async def test_what_the_mirror_passes_through_is_archived_and_served_in_an_outage(
    ecosystem: Ecosystem, fake: FakeRegistry, upstream: RunningServer, tmp_path: Path, db_url: str
) -> None:
    """Nothing primed: a listing and a file fetched through the mirror once are archived in
    that pass (the archive job's CID and row, the package indexed), and served with the
    same bytes once the upstream is gone."""
    name = _names(fake)[0]
    version = fake.SAMPLE_VERSIONS[0]
    fake.publish_release(name, version)
    filename, data = fake.release_file(name, version)
    digests = {a: hashlib.new(a, data).hexdigest() for a in ("sha256", "sha1", "sha512")}
    endpoints = {ecosystem.name: fake.config_endpoints(upstream.url)}
    routes = ecosystem.mirror()
    listing = routes.listing_path(name)
    download = routes.file_path(name, version, filename, digests)
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
        assert forage.archived_cids() == []
        async with httpx.AsyncClient() as client:
            page = await client.get(forage.url + listing)
            assert page.status_code == 200, page.text[:300]
            served = await client.get(forage.url + download)
            assert served.status_code == 200, served.text[:300]
            assert served.content == data
            assert served.headers["Forage-Source"] == "upstream"
            await forage.mirror.registries[ecosystem.name].settle()
            with forage.ctx.sessionmaker() as session:
                row = session.execute(
                    sa.select(Archive, Artifact.filename)
                    .join(Artifact, Artifact.id == Archive.artifact_id)
                    .where(Archive.status == ArchiveStatus.ARCHIVED)
                ).one()
            archive, archived_name = row
            assert archived_name == filename
            assert archive.cid == str(compute_cid(data))
            assert archive.size == len(data)
            assert archive.verified_algorithm in HASHERS or archive.verified_algorithm == "h1"
            if archive.verified_algorithm in HASHERS:
                hasher = HASHERS[archive.verified_algorithm][0]()
                hasher.update(data)
                assert archive.verified_digest == hasher.hexdigest()

            await upstream.close()
            page = await client.get(forage.url + listing)
            assert page.status_code == 200, page.text[:300]
            assert page.headers["Forage-Source"] == "archive"
            assert version in page.text
            served = await client.get(forage.url + download)
            assert served.status_code == 200, served.text[:300]
            assert served.content == data
            assert served.headers["Forage-Source"] == "archive"


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


async def test_bootstrap_from_origin_archives_what_was_published_before_the_watcher(
    ecosystem: Ecosystem, fake: FakeRegistry, migrated_url: str, tmp_path: Path
) -> None:
    """A watcher starts at the feed's head; ``--from origin`` walks the history before it."""
    from forage.index import bootstrap
    from forage.index.ingest import watch_feed
    from tests.forage.index_harness import drain_imports, forage_on, import_jobs, versions_of

    first, second = _names(fake)[:2]
    old, new = fake.SAMPLE_VERSIONS
    fake.publish_release(first, old)
    fake.publish_release(second, new)
    async with forage_on(tmp_path, migrated_url, {ecosystem.name: fake}) as ctx:
        stats = await watch_feed(ctx, ecosystem.name)
        assert stats.changes == 0  # the head is past everything published so far
        walk = await bootstrap.start(ctx, ecosystem.name, "origin")
        assert not walk.resumed
        walked = await watch_feed(ctx, ecosystem.name)
        assert walked.changes == 2  # queued by the walk itself, not by a re-scan window
        assert len(import_jobs(ctx)) >= 2
        await drain_imports(ctx)
        assert versions_of(ctx, ecosystem.name, first) == {old}
        assert versions_of(ctx, ecosystem.name, second) == {new}
        assert await ctx.transaction(bootstrap.finish, ecosystem.name)


async def test_a_withdrawn_release_is_recorded_and_kept_out_of_listings(
    ecosystem: Ecosystem,
    fake: FakeRegistry,
    upstream: RunningServer,
    tmp_path: Path,
    migrated_url: str,
) -> None:
    """The registry withdraws a release its own way; the next import records when and how,
    a lookup says so, listings leave it out with or without the upstream, and an exact
    request for its file is still answered from the archive."""
    from forage.db.models import Version
    from forage.lookup.batch import lookup

    name = _names(fake)[0]
    kept, withdrawn = fake.SAMPLE_VERSIONS
    fake.publish_release(name, kept)
    fake.publish_release(name, withdrawn)
    filename, data = fake.release_file(name, withdrawn)
    endpoints = {ecosystem.name: fake.config_endpoints(upstream.url)}
    routes = ecosystem.mirror()
    async with forage_mirror(tmp_path, migrated_url, registries=endpoints) as forage:
        await _archive(forage, ecosystem.name, name)
        fake.withdraw_release(name, withdrawn)
        await _archive(forage, ecosystem.name, name)
        with forage.ctx.sessionmaker() as session:
            rows = {
                row.number: row
                for row in session.execute(
                    sa.select(Version).where(Version.number.in_([kept, withdrawn]))
                ).scalars()
            }
            digests = dict(
                session.execute(
                    sa.select(ArtifactDigest.algorithm, ArtifactDigest.value)
                    .join(Artifact, Artifact.id == ArtifactDigest.artifact_id)
                    .where(Artifact.filename == filename)
                ).all()
            )
            archived = session.execute(
                sa.select(Archive.status).join(Artifact).where(Artifact.filename == filename)
            ).scalar_one()
        assert rows[kept].removed_at is None and rows[kept].removal is None
        assert rows[withdrawn].removed_at is not None
        assert (rows[withdrawn].removal or "").startswith(f"{ecosystem.name}: ")
        assert archived is ArchiveStatus.ARCHIVED  # the archive is kept
        key = f"pkg:{ecosystem.name}/{name}@{withdrawn}"
        (answer,) = lookup(forage.ctx.sessionmaker, None, [key], policy=None)
        found = answer.to_json()
        assert found["status"] == "found" and found["removal"] == rows[withdrawn].removal
        assert found["removed_at"] is not None
        assert all(a["removed_at"] is not None for a in found["artifacts"])
        listing = forage.url + routes.listing_path(name)
        download = forage.url + routes.file_path(name, withdrawn, filename, digests)
        async with httpx.AsyncClient() as client:
            for source in ("upstream", "archive"):
                if source == "archive":
                    await upstream.close()
                page = await client.get(listing)
                assert page.status_code == 200, (source, page.text[:300])
                assert page.headers["Forage-Source"] == source
                assert kept in page.text
                assert filename not in page.text and f"{withdrawn}\n" not in page.text
            served = await client.get(download)
            assert served.status_code == 200, served.text[:300]
            assert served.content == data
            assert served.headers["Forage-Source"] == "archive-removed"


async def test_reconcile_finds_what_the_index_lacks_from_the_registrys_own_listing(
    ecosystem: Ecosystem, fake: FakeRegistry, migrated_url: str, tmp_path: Path
) -> None:
    """Every registry's inventory names what it holds, so a sweep finds packages never
    imported (whatever the feed said) and, once imported, finds nothing more."""
    from forage.index.ingest import watch_feed
    from forage.index.reconcile import reconcile
    from tests.forage.index_harness import drain_imports, forage_on, versions_of

    first, second = _names(fake)[:2]
    old, new = fake.SAMPLE_VERSIONS
    fake.publish_release(first, old)
    fake.publish_release(second, new)
    async with forage_on(tmp_path, migrated_url, {ecosystem.name: fake}) as ctx:
        await watch_feed(ctx, ecosystem.name)  # starts at the head
        dry = await reconcile(ctx, ecosystem.name, dry_run=True)
        assert (dry.missing, dry.changed, dry.queued) == (2, 0, 0)
        done = await reconcile(ctx, ecosystem.name)
        assert done.done and done.queued == 2
        await drain_imports(ctx)
        assert versions_of(ctx, ecosystem.name, first) == {old}
        assert versions_of(ctx, ecosystem.name, second) == {new}
        again = await reconcile(ctx, ecosystem.name)
        assert (again.checked, again.missing, again.changed) == (2, 0, 0)
