"""The Composer indexer against a loopback fake of Packagist.

``tests/data/composer/p2-minified.json`` is a p2 document in Packagist's minified shape (the
second and third entries carry only what differs, the third removing ``dist`` and
``funding`` with ``"__unset"``); the expected expansion below is written out by hand from
Composer's ``MetadataMinifier::expand``, not computed by Forage.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from indexers.composer.fake import FakePackagist
from indexers.composer.indexer import FEED_EPOCH, ComposerCursor, ComposerIndexer
from indexers.composer.lockfiles import read_composer_lock
from indexers.composer.metadata import expand, minify, p2_versions, stability, validate_name
from indexers.errors import FeedError, InvalidName, LockfileError, PackageNotFound
from indexers.fakeserver import RunningServer, serve
from indexers.lockfiles import read_lockfile

DATA = Path(__file__).parent.parent / "data" / "composer"


@pytest.fixture
def fake() -> FakePackagist:
    return FakePackagist()


@pytest.fixture
async def upstream(fake: FakePackagist) -> AsyncIterator[RunningServer]:
    async with serve(fake.make_app()) as running:
        yield running


@pytest.fixture
async def indexer(upstream: RunningServer) -> AsyncIterator[ComposerIndexer]:
    async with httpx.AsyncClient() as client:
        yield ComposerIndexer(client, repo_url=upstream.url, api_url=upstream.url, page_size=2)


def test_minified_entries_inherit_from_the_previous_one_and_unset_removes_keys() -> None:
    doc = json.loads((DATA / "p2-minified.json").read_text())
    entries = p2_versions(doc, "acme/recorded", "p2")
    assert [e["version"] for e in entries] == ["2.1.0", "2.0.0", "1.9.0-beta1"]
    first, second, third = entries
    assert second["description"] == first["description"]  # inherited
    assert second["autoload"] == {"psr-4": {"Acme\\Recorded\\": "src/"}}
    assert second["require"] == {"php": ">=8.0"}  # replaced whole, not merged
    assert second["funding"] == first["funding"]
    assert second["dist"]["shasum"] == "0123456789abcdef0123456789abcdef01234567"
    assert "dist" not in third and "funding" not in third
    assert third["require"] == {"php": ">=8.0"} and third["time"] == "2023-06-01T00:00:00+00:00"
    assert expand(minify(entries)) == entries


def test_stability_and_names_follow_composer() -> None:
    assert [stability(v) for v in ("1.0.0", "v2.1", "1.0.0-beta1", "2.0.0-RC2", "1.0.0-p1")] == [
        "stable",
        "stable",
        "beta",
        "RC",
        "stable",
    ]
    assert [stability(v) for v in ("dev-main", "2.x-dev", "1.0.0-alpha")] == ["dev", "dev", "alpha"]
    assert validate_name("Acme/Left_Pad") == "acme/left_pad"
    for bad in ("acme", "acme/", "/x", "acme/x/y", "acme/x--", "acme/-x", "ac me/x", "a\x00/b"):
        with pytest.raises(InvalidName):
            validate_name(bad)


async def test_a_package_maps_tagged_releases_with_their_shasum_and_branches(
    fake: FakePackagist, indexer: ComposerIndexer
) -> None:
    forge = fake.publish("acme/pad", "1.0.0")
    hosted = fake.publish("acme/pad", "1.1.0", shasum=True)
    dev = fake.branch("acme/pad", "dev-main")
    fake.abandon("acme/pad", "acme/other")
    info = await indexer.package("acme/pad")
    releases = {r.version: r for r in info.releases}
    assert set(releases) == {"1.0.0", "1.1.0", "dev-main"}
    (branch,) = releases["dev-main"].artifacts  # archived only if selection asks for it
    assert branch.digests == {} and branch.filename.endswith(".zip")
    (unsigned,) = releases["1.0.0"].artifacts
    assert unsigned.digests == {} and unsigned.url.endswith(forge.path)
    (signed,) = releases["1.1.0"].artifacts
    assert signed.digests == {"sha1": hosted.sha1}
    assert signed.filename == "acme-pad-1.1.0.zip" and signed.kind == "zip"
    assert info.extra["references"] == {
        "1.0.0": forge.reference,
        "1.1.0": hosted.reference,
        "dev-main": dev.reference,
    }
    assert (info.status, info.status_reason) == ("deprecated", "abandoned, use acme/other")
    fake.delete("acme/pad")
    with pytest.raises(PackageNotFound):
        await indexer.package("acme/pad")


async def test_the_feed_reports_updates_branches_and_deletes_from_an_inclusive_since(
    fake: FakePackagist, indexer: ComposerIndexer
) -> None:
    start = await indexer.start_cursor()
    assert start == ComposerCursor(fake.now())
    fake.publish("acme/one", "1.0.0")
    fake.publish("acme/two", "1.0.0")
    fake.branch("acme/one", "dev-main")
    page = await indexer.changes(start)
    assert page.done and page.head == fake.now() == page.cursor.since
    assert [(c.name, c.deleted) for c in page.changes] == [("acme/two", False), ("acme/one", False)]
    fake.delete("acme/two")
    later = await indexer.changes(page.cursor)
    assert [(c.name, c.deleted) for c in later.changes] == [("acme/two", True)]
    again = await indexer.changes(later.cursor)
    assert again.changes == () and again.cursor == later.cursor


async def test_a_too_old_since_resyncs_by_walking_the_package_list(
    fake: FakePackagist, indexer: ComposerIndexer
) -> None:
    old = await indexer.start_cursor()
    for name in ("acme/a", "acme/b", "acme/c"):
        fake.publish(name, "1.0.0")
    fake.forget_before(fake.now())
    page = await indexer.changes(old)
    assert page.changes == () and not page.done and page.cursor.listed == ""
    walked: list[str] = []
    cursor = page.cursor
    while cursor.listed is not None:
        page = await indexer.changes(cursor)
        walked += [c.name for c in page.changes]
        cursor = page.cursor
    assert walked == ["acme/a", "acme/b", "acme/c"]  # two pages of two, then the end
    fake.publish("acme/d", "1.0.0")
    after = await indexer.changes(cursor)
    assert [c.name for c in after.changes] == ["acme/d"] and after.done


async def test_positions_and_a_refused_since(fake: FakePackagist, indexer: ComposerIndexer) -> None:
    origin = await indexer.cursor_at("origin")
    assert origin == ComposerCursor(fake.now(), listed="")
    assert await indexer.cursor_at("12") == ComposerCursor(FEED_EPOCH)
    at = await indexer.cursor_at("2024-01-01T00:00:10Z")
    assert at.since == (1704067200 + 10) * 10_000
    with pytest.raises(FeedError, match="refused"):
        await indexer.changes(ComposerCursor(5))


async def test_the_inventory_prefers_the_repositorys_available_packages(
    fake: FakePackagist, indexer: ComposerIndexer
) -> None:
    fake.publish("acme/listed", "1.0.0")
    fake.root_extra["available-packages"] = ["acme/private", "acme/listed", "Not A Name"]
    page = await indexer.inventory(None)
    assert [e.change.name for e in page.entries] == ["acme/listed", "acme/private"]
    assert page.done


def test_composer_lock_names_packages_and_dev_packages() -> None:
    fake = FakePackagist()
    fake.publish("acme/one", "v1.2.3")
    fake.publish("acme/two", "2.0.0", shasum=True)
    _, data = fake.lockfile([("acme/one", "v1.2.3")])
    lock = json.loads(data)
    lock["packages-dev"] = [
        {**fake.tagged["acme/two"]["2.0.0"]},
        {"name": "acme/local", "version": "dev-main", "dist": {"type": "path", "url": "../x"}},
    ]
    text = json.dumps(lock)
    entries = list(read_composer_lock(text))
    assert [e.key for e in entries] == [
        "pkg:composer/acme/one@v1.2.3",
        "pkg:composer/acme/two@2.0.0",
        None,
    ]
    assert entries[2].problem == "not from a registry: dist type path"
    # dist.shasum is pinned as sha1; a code-forge zipball's empty one pins nothing.
    (two,) = [d for d in fake.dists.values() if d.name == "acme/two"]
    assert [e.integrity for e in entries] == [(), (("sha1", two.sha1),), ()]
    assert [e.key for e in read_lockfile(text.encode())] == [e.key for e in entries]
    with pytest.raises(LockfileError):
        list(read_composer_lock('{"packages": {}}'))
