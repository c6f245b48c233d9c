"""The crates.io indexer, its sparse-index rules and ``Cargo.lock``, against the loopback fake.

``tests/data/cargo/foo.index`` holds the index line ``rust-lang/cargo``'s
``src/doc/src/reference/registry-index.md`` documents (its comments dropped), a yanked
pre-release with ``rust_version``, a line that is not JSON and one without a ``cksum``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from indexers.cargo.fake import FakeCratesIo, dep, split_features
from indexers.cargo.indexer import YANKED, CargoCursor, CargoIndexer, map_index
from indexers.cargo.lockfiles import read_cargo_lock
from indexers.cargo.mirror import fallback_index, withdraw_index
from indexers.cargo.sparse import (
    canonical,
    download_url,
    index_path,
    name_of_path,
    parse_lines,
)
from indexers.errors import FeedError, InvalidName, InvalidPosition, LockfileError, PackageNotFound
from indexers.fakeserver import RunningServer, serve
from indexers.lockfiles import read_lockfile
from indexers.mirror.rows import ArchivedFile, PackageRows, Withdrawn

DATA = Path(__file__).parent.parent / "data" / "cargo"
CKSUM = "d867001db0e2b6e0496f9fac96930e2d42233ecd3ca0413e0753d4c7695d289c"


@pytest.fixture
def crates_io() -> FakeCratesIo:
    return FakeCratesIo()


@pytest.fixture
async def server(crates_io: FakeCratesIo) -> AsyncIterator[RunningServer]:
    async with serve(crates_io.make_app()) as running:
        yield running


def indexer(url: str, page_size: int = 100) -> CargoIndexer:
    return CargoIndexer(
        httpx.AsyncClient(), index_url=f"{url}/index", api_url=url, page_size=page_size
    )


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("a", "1/a"),
        ("AB", "2/ab"),
        ("xyz", "3/x/xyz"),
        ("Serde_JSON", "se/rd/serde_json"),
        ("cargo", "ca/rg/cargo"),
    ],
)
def test_index_paths_follow_the_sparse_layout_of_the_lowercased_name(name: str, path: str) -> None:
    assert index_path(name) == path
    assert name_of_path(path) == canonical(name)


def test_names_keep_their_separator_and_refuse_what_crates_io_refuses() -> None:
    assert canonical("Serde_JSON") == "serde_json"
    assert canonical("serde-json") == "serde-json"  # a different index file, as for cargo
    for bad in ("", "1abc", "-x", "a b", "a/b", "naïve", "x" * 65):
        with pytest.raises(InvalidName):
            canonical(bad)
    assert name_of_path("se/rd/Serde") is None  # cargo asks for lower-case paths only
    assert name_of_path("xx/yy/serde") is None


def test_download_urls_follow_the_dl_template_or_append_cargos_default() -> None:
    assert (
        download_url("https://static.crates.io/crates", "Serde", "1.0.0", CKSUM)
        == "https://static.crates.io/crates/Serde/1.0.0/download"
    )
    template = "https://h/{lowerprefix}/{prefix}/{crate}-{version}.crate?s={sha256-checksum}"
    assert (
        download_url(template, "Serde", "1.0.0", CKSUM)
        == f"https://h/se/rd/Se/rd/Serde-1.0.0.crate?s={CKSUM}"
    )


def test_the_documented_index_line_maps_to_a_release_with_its_cksum_and_yanks() -> None:
    body = (DATA / "foo.index").read_bytes()
    info = map_index(body, name="foo", dl="https://dl.example/crates", url="https://i/3/f/foo")
    assert [r.version for r in info.releases] == ["0.1.0", "0.2.0-rc.1"]
    first, second = info.releases
    (artifact,) = first.artifacts
    assert artifact.filename == "foo-0.1.0.crate"
    assert artifact.url == "https://dl.example/crates/foo/0.1.0/download"
    assert dict(artifact.digests) == {"sha256": CKSUM}
    assert (first.yanked, first.removal) == (False, None)
    assert (second.yanked, second.removal) == (True, YANKED)
    assert second.artifacts[0].yanked
    assert info.serial == 2
    kept = info.extra["lines"]
    assert kept["0.1.0"]["features2"] == {"serde": ["dep:serde", "chrono?/serde"]}
    assert kept["0.2.0-rc.1"]["rust_version"] == "1.70"
    assert CargoIndexer.is_prerelease("0.2.0-rc.1") and not CargoIndexer.is_prerelease("1.0.0+b-1")


def test_an_index_file_naming_another_crate_is_a_feed_error() -> None:
    body = (DATA / "foo.index").read_bytes()
    with pytest.raises(FeedError, match="another crate"):
        map_index(body, name="bar", dl="https://d", url="https://i/3/b/bar")


def test_the_fake_refuses_names_that_differ_only_by_case_or_separator(
    crates_io: FakeCratesIo,
) -> None:
    crates_io.publish("demo_crate", "0.1.0")
    for other in ("Demo_Crate", "demo-crate", "DEMO-CRATE"):
        with pytest.raises(ValueError, match="previously named `demo_crate`"):
            crates_io.publish(other, "0.2.0")
    with pytest.raises(ValueError, match="already uploaded"):
        crates_io.publish("demo_crate", "0.1.0+build")
    plain, newer = split_features({"default": ["std"], "serde": ["dep:serde"], "w": ["x?/y"]})
    assert plain == {"default": ["std"]} and set(newer) == {"serde", "w"}


async def test_the_walk_pages_down_to_the_cursor_and_resumes_mid_walk(
    crates_io: FakeCratesIo, server: RunningServer
) -> None:
    crates_io.publish("early", "1.0.0")
    feed = indexer(server.url, page_size=2)
    start = await feed.start_cursor()
    for name in ("aa", "bb", "cc", "dd", "ee"):
        crates_io.publish(name, "1.0.0")
    first = await feed.changes(start)
    assert [c.name for c in first.changes] == ["dd", "ee"]  # oldest first within a page
    assert not first.done and first.cursor.since == start.since and first.cursor.seek
    saved = json.loads(json.dumps(feed.cursor_to_dict(first.cursor)))
    await feed.client.aclose()

    crates_io.yank("bb", "1.0.0")  # moves to the top while the walk is below it
    resumed = indexer(server.url, page_size=2)
    cursor = resumed.cursor_from_dict(saved)
    names: list[str] = []
    while True:
        page = await resumed.changes(cursor)
        names += [c.name for c in page.changes]
        cursor = page.cursor
        if page.done:
            break
    assert names == ["aa", "cc"]  # "bb" moved above the walk: the next walk has it
    assert page.head == first.cursor.top == cursor.since
    again = await resumed.changes(cursor)
    assert [c.name for c in again.changes] == ["bb"]  # the yank, after the walk's top
    assert again.done and again.head == crates_io.feed_head()
    await resumed.client.aclose()


async def test_origin_walks_everything_and_a_time_walks_what_changed_after_it(
    crates_io: FakeCratesIo, server: RunningServer
) -> None:
    for name in ("aa", "bb", "cc"):
        crates_io.publish(name, "1.0.0")
    feed = indexer(server.url, page_size=2)
    cursor = await feed.cursor_at("origin")
    names: list[str] = []
    for _ in range(10):
        page = await feed.changes(cursor)
        names += [c.name for c in page.changes]
        cursor = page.cursor
        if page.done:
            break
    assert sorted(names) == ["aa", "bb", "cc"]
    after = crates_io.crates["aa"].updated_at.isoformat()
    page = await feed.changes(await feed.cursor_at(after))
    assert [c.name for c in page.changes] == ["bb", "cc"]
    with pytest.raises(InvalidPosition):
        await feed.cursor_at("12345")
    await feed.client.aclose()


async def test_the_inventory_lists_every_crate_by_name_with_its_version_count(
    crates_io: FakeCratesIo, server: RunningServer
) -> None:
    for name, count in (("cc", 1), ("aa", 3), ("bb", 2)):
        for minor in range(count):
            crates_io.publish(name, f"1.{minor}.0")
    feed = indexer(server.url, page_size=2)
    first = await feed.inventory(None)
    assert [(e.change.name, e.stamp) for e in first.entries] == [("aa", 3), ("bb", 2)]
    assert not first.done
    second = await feed.inventory(first.after)
    assert [(e.change.name, e.stamp) for e in second.entries] == [("cc", 1)]
    assert second.done
    info = await feed.package("aa")
    assert info.serial == 3  # compared with the inventory's stamp
    await feed.client.aclose()


async def test_a_crate_maps_from_its_index_file_and_a_deleted_one_is_not_found(
    crates_io: FakeCratesIo, server: RunningServer
) -> None:
    cksum, data = crates_io.publish("Demo_Crate", "0.1.0", deps=[dep("xyz", "^1")])
    feed = indexer(server.url)
    info = await feed.package("demo_crate")
    assert info.display_name == "Demo_Crate"
    (artifact,) = info.releases[0].artifacts
    assert artifact.filename == "Demo_Crate-0.1.0.crate"
    assert (await feed.client.get(artifact.url)).content == data
    assert artifact.digests["sha256"] == cksum
    crates_io.delete("demo_crate")
    with pytest.raises(PackageNotFound):
        await feed.package("demo_crate")
    await feed.client.aclose()


async def test_the_listing_refuses_pages_over_a_hundred(server: RunningServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.url}/api/v1/crates", params={"per_page": 101})
    assert response.status_code == 400
    assert "100" in response.json()["errors"][0]["detail"]


def _archived(version: str, *, removed: bool = False) -> ArchivedFile:
    return ArchivedFile(
        artifact_id=1,
        package="foo",
        version=version,
        filename=f"foo-{version}.crate",
        url="https://d",
        cid="bafk",
        size=10,
        digests={"sha256": CKSUM},
        removed=removed,
    )


def test_the_fallback_index_keeps_crates_io_lines_and_marks_withdrawals_yanked() -> None:
    body = (DATA / "foo.index").read_bytes()
    info = map_index(body, name="foo", dl="https://d", url="https://i")
    rows = PackageRows(
        ecosystem="cargo",
        name="foo",
        display_name="foo",
        deleted=False,
        extra=info.extra,
        versions=(),
        files=(_archived("0.1.0", removed=True), _archived("9.9.9")),
    )
    lines = [line for line in parse_lines(fallback_index(rows)) if line]
    assert [(line["vers"], line["yanked"]) for line in lines] == [("0.1.0", True), ("9.9.9", False)]
    assert lines[0]["features2"] == {"serde": ["dep:serde", "chrono?/serde"]}
    assert lines[1] == {
        "name": "foo",
        "vers": "9.9.9",
        "deps": [],
        "features": {},
        "cksum": CKSUM,
        "yanked": False,
    }
    assert withdraw_index(body, Withdrawn()) == body
    marked = list(parse_lines(withdraw_index(body, Withdrawn(versions=frozenset({"0.1.0"})))))
    assert [line["yanked"] for line in marked if line and "cksum" in line] == [True, True]


LOCK = """# This file is automatically @generated by Cargo.
# It is not intended for manual editing.
version = 4

[[package]]
name = "app"
version = "0.1.0"
dependencies = ["Inflector", "local-git", "other-reg", "serde"]

[[package]]
name = "Inflector"
version = "0.11.4"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "fe438c63458706e03479442743baae6c88256498e6431708f6dfc520a26515d3"

[[package]]
name = "local-git"
version = "0.1.0"
source = "git+https://example.org/x.git#0123456789abcdef"

[[package]]
name = "other-reg"
version = "1.0.0"
source = "sparse+https://registry.example.org/index/"

[[package]]
name = "serde"
version = "1.0.200"
source = "sparse+https://index.crates.io/"
"""


def test_cargo_lock_names_crates_io_packages_and_says_why_others_have_no_key() -> None:
    entries = list(read_cargo_lock(LOCK))
    assert [e.key for e in entries] == [
        "pkg:cargo/Inflector@0.11.4",
        None,
        None,
        "pkg:cargo/serde@1.0.200",
    ]
    assert "not from a registry" in (entries[1].problem or "")
    assert "another registry" in (entries[2].problem or "")
    assert [e.key for e in read_lockfile(LOCK.encode())] == [e.key for e in entries]
    with pytest.raises(LockfileError):
        list(read_cargo_lock("[[package]\nname="))
    poetry = '[[package]]\nname = "requests"\nversion = "2.31.0"\ndescription = "HTTP"\n'
    # A poetry.lock's [[package]] tables are PyPI's, never mistaken for crates.
    named = read_lockfile(poetry.encode(), filename="poetry.lock")
    assert [e.key for e in named] == ["pkg:pypi/requests@2.31.0"]


def test_the_fakes_lockfile_is_read_back() -> None:
    fake = FakeCratesIo()
    fake.publish("xyz", "1.0.0")
    name, data = fake.lockfile([("xyz", "1.0.0")])
    assert name == "Cargo.lock"
    assert [e.key for e in read_lockfile(data)] == ["pkg:cargo/xyz@1.0.0"]
    assert CargoCursor("") == CargoCursor("", "", "")
