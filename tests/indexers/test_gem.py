"""The RubyGems indexer against its loopback fake: the ``/versions`` feed by byte offset and
its rewrites, ``/info`` mapping (platforms, prereleases, yanks), Gemfile.lock, gemspecs."""

from __future__ import annotations

import subprocess
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from indexers import UpstreamUnavailable, read_lockfile
from indexers.fakeserver import RunningServer, serve
from indexers.gem.compact import parse_info_line
from indexers.gem.fake import FakeRubyGems
from indexers.gem.indexer import OVERLAP, GemCursor, GemIndexer, validate_name
from indexers.gem.marshal import quick_gemspec

DATA = Path(__file__).parent.parent / "data" / "gem"


@pytest.fixture
def gems() -> FakeRubyGems:
    return FakeRubyGems()


@pytest.fixture
async def upstream(gems: FakeRubyGems) -> AsyncIterator[RunningServer]:
    async with serve(gems.make_app()) as running:
        yield running


@pytest.fixture
async def indexer(upstream: RunningServer) -> AsyncIterator[GemIndexer]:
    async with httpx.AsyncClient() as client:
        yield GemIndexer(client, registry_url=upstream.url, page_bytes=1024)


async def drain(indexer: GemIndexer, cursor: GemCursor) -> tuple[list[str], GemCursor, int]:
    names: list[str] = []
    for pages in range(1, 200):
        page = await indexer.changes(cursor)
        names += [c.name for c in page.changes]
        if page.done and page.cursor == cursor:
            return names, page.cursor, pages
        cursor = page.cursor
    raise AssertionError("never caught up")


async def test_the_feed_resumes_by_byte_offset_with_ranged_requests(
    gems: FakeRubyGems, indexer: GemIndexer
) -> None:
    start = await indexer.start_cursor()
    assert start.offset == len(gems.versions)
    for n in range(40):  # over a page of lines: the walk pages at whole lines
        gems.push(f"gem{n:02d}", "1.0.0")
    names, cursor, pages = await drain(indexer, start)
    assert names == [f"gem{n:02d}" for n in range(40)]
    assert pages > 2 and cursor.offset == len(gems.versions)
    ranges = [r.headers.get("range", "") for r in gems.requests.seen if r.path == "/versions"]
    assert ranges[1] == f"bytes={max(0, start.offset - OVERLAP)}-{start.offset + 1024 - 1}"
    gems.yank("gem03", "1.0.0")
    later, _, _ = await drain(indexer, cursor)
    assert later == ["gem03"]


async def test_a_rewritten_versions_file_is_walked_again_from_the_start(
    gems: FakeRubyGems, indexer: GemIndexer
) -> None:
    gems.push("rack", "1.0.0")
    gems.push("rake", "13.0.0")
    cursor = await indexer.start_cursor()
    gems.yank("rack", "1.0.0")
    gems.rewrite()  # shorter now: yanks compacted out, a new created_at
    page = await indexer.changes(cursor)
    assert (page.changes, page.cursor.offset, page.done) == ((), 0, False)
    names, end, _ = await drain(indexer, page.cursor)
    assert names == ["rake"] and end.offset == len(gems.versions)


async def test_a_rewrite_that_keeps_the_length_is_caught_by_the_overlap(
    gems: FakeRubyGems, indexer: GemIndexer
) -> None:
    gems.push("rack", "1.0.0")
    cursor = await indexer.start_cursor()
    gems.versions[-10:-1] = b"x" * 9  # same size, other bytes before the cursor
    gems.push("rake", "1.0.0")
    page = await indexer.changes(cursor)
    assert page.cursor.offset == 0 and not page.changes


async def test_a_server_ignoring_range_answers_whole_and_is_checked(
    gems: FakeRubyGems, indexer: GemIndexer
) -> None:
    gems.push("rack", "1.0.0")
    cursor = await indexer.start_cursor()
    gems.push("rake", "1.0.0")
    gems.ranges = False
    names, end, _ = await drain(indexer, cursor)
    assert names == ["rake"] and end.offset == len(gems.versions)

    gems.push("thor", "1.0.0")
    gems.corrupt_versions = True  # 200, but not the bytes its digest names
    with pytest.raises(UpstreamUnavailable, match="repr-digest"):
        await indexer.changes(end)


async def test_origin_walks_every_gem_and_info_maps_platforms_and_yanks(
    gems: FakeRubyGems, indexer: GemIndexer
) -> None:
    gems.push("nokogiri", "1.16.0", deps=[("racc", ("~> 1.4",))], ruby=(">= 3.0",))
    java = gems.push("nokogiri", "1.16.0", platform="java")
    gems.push("nokogiri", "1.17.0.rc1")
    gems.push("nokogiri", "1.15.0")
    gems.yank("nokogiri", "1.15.0")
    cursor = await indexer.cursor_at("origin")
    names, _, _ = await drain(indexer, cursor)
    assert names == ["nokogiri"]
    info = await indexer.package("nokogiri")
    versions = {r.version: r for r in info.releases}
    assert set(versions) == {"1.16.0", "1.17.0.rc1"}  # the yanked one is gone from /info
    files = {a.filename: a for a in versions["1.16.0"].artifacts}
    assert set(files) == {"nokogiri-1.16.0.gem", "nokogiri-1.16.0-java.gem"}
    assert files[java.filename].digests == {"sha256": java.sha256}
    assert files[java.filename].url.endswith(f"/gems/{java.filename}")
    assert versions["1.16.0"].published_at is not None
    assert info.extra["info"]["1.16.0"].startswith("1.16.0 racc:~> 1.4|checksum:")
    assert GemIndexer.is_prerelease("1.17.0.rc1") and not GemIndexer.is_prerelease("1.16.0")
    assert indexer.release_removed == "version yanked"


@pytest.mark.parametrize("bad", ["", "a b", "../x", "-x", "123", "a/b", "x" * 256])
def test_names_rubygems_refuses(bad: str) -> None:
    from indexers import InvalidName

    with pytest.raises(InvalidName):
        validate_name(bad)


def test_a_gemfile_lock_names_registry_gems_with_their_platforms() -> None:
    entries = read_lockfile((DATA / "Gemfile.lock").read_bytes(), filename="")
    keys = [e.key for e in entries if e.key]
    assert "pkg:gem/nokogiri@1.16.0?platform=x86_64-linux" in keys
    assert "pkg:gem/nokogiri@1.16.0?platform=java" in keys
    assert "pkg:gem/racc@1.7.3" in keys
    assert keys.count("pkg:gem/rack@3.0.8") == 1  # CHECKSUMS repeats it: not a second entry
    problems = [e.problem for e in entries if e.problem]
    assert problems == ["mygem comes from a GIT source, not a registry"]
    pins = {e.key: e.integrity for e in entries if e.key}
    assert pins["pkg:gem/nokogiri@1.16.0?platform=x86_64-linux"] == (
        ("sha256", "0bd3e2ca4b3a6b2b9f8c3d5a0f5a4e2b8e0e9e1a2c3d4e5f60718293a4b5c6d7"),
    )  # each platform gem its own file's digest
    assert pins["pkg:gem/nokogiri@1.16.0?platform=java"][0][1].startswith("2c2cd1b7")


def test_a_written_gemspec_loads_in_ruby() -> None:
    ruby = "/usr/bin/ruby"
    if not Path(ruby).exists():
        pytest.skip("ruby is not installed")
    entry = parse_info_line("2.0.0-x86_64-linux a:>= 1&< 3,b:~> 0.2|checksum:ab,ruby:>= 3.1", "t")
    body = quick_gemspec("fk", entry, date="2024-02-03")
    script = (
        "require 'rubygems'; s = Marshal.load(Gem::Util.inflate(STDIN.read));"
        "puts [s.full_name, s.dependencies.map(&:to_s).join(';'), s.required_ruby_version,"
        " s.date.strftime('%F')].join('|')"
    )
    out = subprocess.run([ruby, "-e", script], input=body, capture_output=True, check=True)
    assert out.stdout.decode().strip() == (
        "fk-2.0.0-x86_64-linux|a (>= 1, < 3);b (~> 0.2)|>= 3.1|2024-02-03"
    )
    assert zlib.decompress(body).startswith(b"\x04\x08u:\x17Gem::Specification")
