"""npm indexer against the loopback fake registry: feed paging, packument mapping, errors."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexers.errors import (
    FeedError,
    InvalidName,
    PackageNotFound,
    StaleMetadata,
    UpstreamUnavailable,
)
from indexers.fakeserver import RunningServer
from indexers.npm.fake import FakeNpmRegistry, make_tarball
from indexers.npm.indexer import NpmCursor, NpmIndexer, parse_changes, validate_name

DATA = Path(__file__).parent.parent / "data" / "npm"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def indexer(client: httpx.AsyncClient, server: RunningServer, **options: Any) -> NpmIndexer:
    return NpmIndexer(
        client, registry_url=server.url, replicate_url=server.url + "/registry", **options
    )


async def test_packument_maps_every_version_with_digests_times_and_tombstones(
    npm_registry: FakeNpmRegistry, npm_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    """All five live versions map (not only the newest), plus the one unpublished alone."""
    npm_registry.load_packument(load("packument-left-pad.json"))
    info = await indexer(http_client, npm_server).package("left-pad")

    by_version = {release.version: release for release in info.releases}
    assert sorted(by_version) == ["0.0.3", "0.0.9", "1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    assert [r.version for r in info.releases if r.deleted] == ["0.0.9"]
    assert by_version["0.0.9"].artifacts == ()
    assert info.deleted is False
    assert info.serial == 181
    assert info.extra["dist_tags"] == {"latest": "1.3.0"}
    assert by_version["1.2.0"].deprecated == "use String.prototype.padStart()"
    assert by_version["1.3.0"].deprecated is None
    assert by_version["1.0.0"].published_at == datetime(2016, 3, 23, 19, 55, 58, 404000, UTC)
    # Releases come in publish order.
    assert [r.version for r in info.releases] == [
        "0.0.3",
        "0.0.9",
        "1.0.0",
        "1.1.0",
        "1.2.0",
        "1.3.0",
    ]

    for version in ("0.0.3", "1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        (artifact,) = by_version[version].artifacts
        data = make_tarball("left-pad", version)
        assert artifact.filename == f"left-pad-{version}.tgz"
        assert artifact.url == f"{npm_server.url}/left-pad/-/left-pad-{version}.tgz"
        assert artifact.size is None
        assert artifact.digests["sha1"] == hashlib.sha1(data).hexdigest()  # noqa: S324
        if version == "0.0.3":
            assert "sha512" not in artifact.digests  # pre-2017: shasum only
        else:
            assert artifact.digests["sha512"] == hashlib.sha512(data).hexdigest()
        served = await http_client.get(artifact.url)
        assert served.content == data


async def test_scoped_name_uses_escaped_packument_url(
    npm_registry: FakeNpmRegistry, npm_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    """``@scope/name`` is requested as ``/@scope%2fname``, the way npm itself asks."""
    npm_registry.load_packument(load("packument-scoped.json"))
    info = await indexer(http_client, npm_server).package("@fixture/scoped")

    assert npm_registry.requests.seen[-1].raw_path == "/@fixture%2fscoped"
    assert npm_registry.requests.seen[-1].headers["accept"] == "application/json"
    assert info.name == "@fixture/scoped"
    assert [r.version for r in info.releases] == ["1.0.0", "2.0.0", "2.1.0-beta.1"]
    (artifact,) = info.releases[-1].artifacts
    assert artifact.filename == "scoped-2.1.0-beta.1.tgz"
    assert artifact.url.endswith("/@fixture/scoped/-/scoped-2.1.0-beta.1.tgz")


async def test_unpublished_stub_is_a_deleted_package_with_tombstones(
    npm_registry: FakeNpmRegistry, npm_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    npm_registry.load_packument(load("packument-unpublished.json"))
    info = await indexer(http_client, npm_server).package("gone-pkg")

    assert info.deleted is True
    assert [(r.version, r.deleted, r.artifacts) for r in info.releases] == [
        ("1.0.0", True, ()),
        ("1.0.1", True, ()),
    ]
    assert info.extra["unpublished"]["versions"] == ["1.0.0", "1.0.1"]


async def test_unpublish_then_delete_through_the_feed(
    npm_registry: FakeNpmRegistry, npm_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    """A full unpublish leaves a stub (deleted package); a deleted document is a 404 and a
    ``deleted`` feed entry."""
    npm = indexer(http_client, npm_server)
    npm_registry.publish("short-lived", "1.0.0")
    start = NpmCursor(npm_registry.seq)
    npm_registry.unpublish("short-lived")

    page = await npm.changes(start)
    assert [(c.name, c.deleted) for c in page.changes] == [("short-lived", False)]
    info = await npm.package("short-lived")
    assert info.deleted is True
    assert [(r.version, r.deleted) for r in info.releases] == [("1.0.0", True)]

    npm_registry.delete("short-lived")
    page = await npm.changes(page.cursor)
    assert [(c.name, c.deleted) for c in page.changes] == [("short-lived", True)]
    with pytest.raises(PackageNotFound) as caught:
        await npm.package("short-lived")
    assert caught.value.name == "short-lived"


async def test_feed_pages_until_the_same_cursor_comes_back(
    npm_registry: FakeNpmRegistry, npm_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    """Five packages, pages of two: three full-ish pages, then an empty page with the same
    cursor, which is how a run ends. ``since`` is exclusive and each page resumes after the
    previous ``last_seq``."""
    names = [f"pkg-{i}" for i in range(5)]
    for name in names:
        npm_registry.publish(name, "1.0.0")
    npm_registry.jump(1000)  # sparse seqs
    npm_registry.publish("pkg-0", "1.0.1")  # replaces pkg-0's earlier entry
    npm = indexer(http_client, npm_server, page_size=2)

    seen: list[str] = []
    cursor = NpmCursor(0)
    sinces: list[str] = []
    while True:
        page = await npm.changes(cursor)
        feed, root = npm_registry.requests.seen[-2:]
        sinces.append(feed.query["since"])
        assert feed.query["limit"] == "2"
        # Each page then reads the head from the replicate root.
        assert root.path == "/registry/" and page.head == npm_registry.seq
        seen += [change.name for change in page.changes]
        if page.cursor == cursor:
            assert page.changes == ()
            assert page.done
            break
        cursor = page.cursor
    assert seen == ["pkg-1", "pkg-2", "pkg-3", "pkg-4", "pkg-0"]
    assert cursor.seq == npm_registry.seq
    assert sinces[0] == "0"
    assert [int(s) for s in sinces] == sorted(int(s) for s in sinces)


async def test_start_cursor_is_the_replicate_update_seq(
    npm_registry: FakeNpmRegistry, npm_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    npm_registry.publish("a", "1.0.0")
    npm_registry.jump(500)
    assert await indexer(http_client, npm_server).start_cursor() == NpmCursor(npm_registry.seq)
    assert npm_registry.requests.paths() == ["/registry/"]


async def test_late_insertion_is_only_seen_by_rewinding(
    npm_registry: FakeNpmRegistry, npm_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    """An entry inserted behind the cursor is invisible to ``changes(cursor)`` and found by
    re-scanning a window with ``rewind``: the hook the watcher uses."""
    npm = indexer(http_client, npm_server)
    for name in ("a", "b", "c"):
        npm_registry.publish(name, "1.0.0")
    page = await npm.changes(NpmCursor(0))
    cursor = page.cursor
    npm_registry.feed_entry("late-pkg", rev="1-abc", seq=cursor.seq - 1)

    assert (await npm.changes(cursor)).changes == ()
    rescanned = await npm.changes(cursor.rewind(2))
    assert "late-pkg" in [change.name for change in rescanned.changes]
    assert rescanned.cursor == cursor  # re-scanning never moves the cursor backwards
    assert cursor.rewind(10**9) == NpmCursor(0)


def test_changes_document_skips_design_docs_and_hostile_ids() -> None:
    doc = load("changes-page.json")
    changes, next_seq, count = parse_changes(doc, since=41235500, url="http://fake/_changes")

    assert count == 6
    assert next_seq == 41235601
    assert [(c.name, c.serial, c.deleted) for c in changes] == [
        ("left-pad", 41235591, False),
        ("@fixture/scoped", 41235594, False),
        ("removed-pkg", 41235597, True),
        ("gone-pkg", 41235599, False),
    ]
    assert changes[0].revision == "181-0e8e2d7c9d3a4f1b2c5e6a7b8c9d0e1f"


def test_duplicate_ids_keep_the_newest_entry_and_regressed_last_seq_keeps_cursor() -> None:
    doc = {
        "results": [
            {"seq": 12, "id": "x", "changes": [{"rev": "2-b"}]},
            {"seq": 11, "id": "x", "changes": [{"rev": "1-a"}]},
        ],
        "last_seq": 3,
    }
    changes, next_seq, _ = parse_changes(doc, since=10, url="http://fake/_changes")
    assert [(c.name, c.serial, c.revision) for c in changes] == [("x", 12, "2-b")]
    assert next_seq == 12
    empty, same, _ = parse_changes({"results": [], "last_seq": 2}, since=10, url="u")
    assert (empty, same) == ((), 10)


@pytest.mark.parametrize(
    "doc",
    [
        {"results": [{"seq": "12-g1AAAA", "id": "x", "changes": []}], "last_seq": 12},
        {"results": "nope", "last_seq": 1},
        ["not", "an", "object"],
    ],
)
def test_unexpected_feed_shapes_raise_feed_error(doc: Any) -> None:
    with pytest.raises(FeedError):
        parse_changes(doc, since=0, url="http://fake/_changes")


async def test_packument_lagging_the_feed_raises_stale_metadata_once(
    npm_registry: FakeNpmRegistry, npm_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    npm = indexer(http_client, npm_server)
    npm_registry.publish("laggy", "1.0.0")
    npm_registry.publish("laggy", "1.1.0")
    (change,) = (await npm.changes(NpmCursor(0))).changes
    npm_registry.lag("laggy")

    with pytest.raises(StaleMetadata) as caught:
        await npm.package("laggy", change=change)
    assert (caught.value.expected, caught.value.actual) == (2, 1)
    info = await npm.package("laggy", change=change)
    assert [r.version for r in info.releases] == ["1.0.0", "1.1.0"]


@pytest.mark.parametrize(
    "name",
    ["JSONStream", "left-pad", "@babel/core", "lodash.merge", "@types/node", "a" * 214, "x!y'z"],
)
def test_valid_names_are_kept_verbatim(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a" * 215, "longer than 214"),
        ("../etc/passwd", "'..'"),
        ("foo..bar", "'..'"),
        ("foo/bar", "only allowed after an @scope"),
        ("@scope/a/b", "more than one '/'"),
        ("@scope", "@scope/name"),
        ("@/name", "@scope/name"),
        ("nul\x00byte", "control character"),
        ("line\nbreak", "control character"),
        (".hidden", "starts with '.' or '_'"),
        ("_private", "starts with '.' or '_'"),
        ("@scope/_x", "starts with '.' or '_'"),
        (" padded", "whitespace"),
        ("has space", "URL-safe"),
        ("percent%2f", "URL-safe"),
        ("node_modules", "reserved"),
    ],
)
def test_hostile_names_are_rejected_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(InvalidName) as caught:
        validate_name(name)
    assert reason in caught.value.reason
    assert caught.value.ecosystem == "npm"


async def test_upstream_errors_are_translated(
    npm_registry: FakeNpmRegistry, npm_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    npm = indexer(http_client, npm_server)
    npm_registry.publish("ok", "1.0.0")

    npm_registry.faults.fail(503, retry_after="7")
    with pytest.raises(UpstreamUnavailable) as unavailable:
        await npm.package("ok")
    assert unavailable.value.retry_after == 7.0

    npm_registry.faults.fail(429, path="/registry/_changes")
    with pytest.raises(UpstreamUnavailable) as limited:
        await npm.changes(NpmCursor(0))
    assert limited.value.retry_after is None

    npm_registry.faults.reset()
    with pytest.raises(UpstreamUnavailable, match="transport error"):
        await npm.changes(NpmCursor(0))

    npm_registry.faults.malformed()
    with pytest.raises(FeedError, match="not JSON"):
        await npm.changes(NpmCursor(0))

    with pytest.raises(PackageNotFound):
        await npm.package("never-published")

    assert npm_registry.faults.pending == 0
    assert [c.name for c in (await npm.changes(NpmCursor(0))).changes] == ["ok"]


async def test_slow_registry_is_a_timeout(
    npm_registry: FakeNpmRegistry, npm_server: RunningServer
) -> None:
    npm_registry.faults.slow(0.5)
    async with httpx.AsyncClient(timeout=0.1) as client:
        with pytest.raises(UpstreamUnavailable, match="timeout"):
            await indexer(client, npm_server).start_cursor()


def test_page_size_is_bounded_by_npm_cap(http_client: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="page_size"):
        NpmIndexer(http_client, registry_url="u", replicate_url="r", page_size=10_001)
