"""The Go indexer against a loopback fake of the index, a GOPROXY and the sumdb.

Reference ``h1:`` values in ``tests/data/golang/reference.json`` were computed by the go
command (go 1.19.8, ``go mod download -json`` from a ``file://`` GOPROXY), not by Forage; the
fake computes its own ``h1:`` from file contents, independently of ``indexers.golang.gomod``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import tracemalloc
import warnings
import zipfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexers.errors import (
    DigestMismatch,
    FeedError,
    InvalidArchive,
    InvalidDigest,
    InvalidName,
    PackageNotFound,
    UpstreamUnavailable,
)
from indexers.golang import sumdb
from indexers.golang.fake import SHARED_TIMESTAMP, GoFake, demo_fake
from indexers.golang.gomod import (
    check_path,
    check_version,
    escape_path,
    escape_version,
    gomod_h1,
    is_pseudo_version,
    pseudo_version_time,
    sort_versions,
    unescape_path,
    unescape_version,
    verify_go_zip,
    zip_h1,
)
from indexers.golang.indexer import (
    INDEX_EPOCH,
    GoCursor,
    GoIndexer,
    IndexEntry,
    Retraction,
    next_page,
    parse_retractions,
    parse_sumdb_lookup,
    timestamp_ns,
    zip_filename,
)
from indexers.types import Change

REFERENCE = json.loads(
    (Path(__file__).parent.parent / "data" / "golang" / "reference.json").read_text()
)
TOML = "github.com/BurntSushi/toml"
TOML_PSEUDO = "v1.3.1-0.20230102030405-0123456789ab"


@pytest.fixture
async def fake() -> AsyncIterator[GoFake]:
    async with demo_fake() as running:
        yield running


def indexer_for(fake: GoFake, http_client: httpx.AsyncClient, **options: Any) -> GoIndexer:
    endpoints = fake.endpoints
    settings: dict[str, Any] = {
        "index_url": endpoints.index_url,
        "proxy_url": endpoints.proxy_url,
        "sumdb_url": endpoints.sumdb_url,
        "start": INDEX_EPOCH,
        **options,
    }
    return GoIndexer(http_client, **settings)


def feed_changes(fake: GoFake) -> list[Change]:
    """Every (path, version) of the fake's feed, in order: what a complete walk must report."""
    return [
        Change(name=item["Path"], version=item["Version"])
        for item in (json.loads(line.text) for line in fake.feed)
    ]


def make_zip(files: Mapping[str, bytes], *, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on the duplicate names some tests need
        with zipfile.ZipFile(buffer, "w", method) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    return buffer.getvalue()


def reference_zip(module: Mapping[str, Any], *, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    prefix = f"{module['path']}@{module['version']}/"
    names = sorted(module["files"], reverse=True)  # h1 must not depend on entry order
    return make_zip({prefix + n: module["files"][n].encode() for n in names}, method=method)


# -- module paths, versions, escaping ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "escaped"),
    [
        ("github.com/BurntSushi/toml", "github.com/!burnt!sushi/toml"),
        ("github.com/Azure/azure-sdk-for-go", "github.com/!azure/azure-sdk-for-go"),
        ("github.com/GoogleCloudPlatform/x", "github.com/!google!cloud!platform/x"),
        ("golang.org/x/mod", "golang.org/x/mod"),
        ("gopkg.in/yaml.v2", "gopkg.in/yaml.v2"),
        ("example.com/a~b+c_d/v3", "example.com/a~b+c_d/v3"),
    ],
)
def test_path_escaping_round_trips(path: str, escaped: str) -> None:
    """Upper-case letters become '!' + lower case, and unescaping gives the path back."""
    assert escape_path(path) == escaped
    assert unescape_path(escaped) == path


def test_version_escaping_round_trips() -> None:
    """Versions are case-encoded too (pre-release identifiers may hold upper case)."""
    assert escape_version("v1.0.0-RC1") == "v1.0.0-!r!c1"
    assert unescape_version("v1.0.0-!r!c1") == "v1.0.0-RC1"
    assert escape_version("v2.0.1+incompatible") == "v2.0.1+incompatible"


@pytest.mark.parametrize(
    ("escaped", "reason"),
    [
        ("github.com/Burnt/toml", "upper-case letter"),
        ("github.com/!Burnt/toml", "instead of a lower-case letter"),
        ("github.com/!1/toml", "instead of a lower-case letter"),
        ("github.com/toml!", "trailing '!'"),
        ("github.com/!!x", "instead of a lower-case letter"),
    ],
)
def test_unescape_rejects_bad_escapes(escaped: str, reason: str) -> None:
    """An escaped path with a raw capital or a dangling '!' is not the output of escape_path."""
    with pytest.raises(InvalidName, match=reason):
        unescape_path(escaped)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty module path"),
        ("../etc/passwd", "double dot"),
        ("example.com/a/../b", "double dot"),
        ("example.com/%2e%2e/x", "percent sign"),
        ("example.com/%2e", "percent sign"),
        ("example.com/a\x00b", "NUL"),
        ("example.com/" + "a" * 2000, "longer than 1024"),
        ("/example.com/x", "leading slash"),
        ("Example.com/x", "in first path element"),
        ("examplecom/x", "missing dot"),
        ("-example.com/x", "leading dash"),
        ("example.com/x/", "empty path element"),
        ("example.com//x", "empty path element"),
        ("example.com/.git", "leading dot"),
        ("example.com/x./y", "trailing dot"),
        ("example.com/a b", "invalid character ' '"),
        ("example.com/caf\u00e9", "invalid character"),
        ("example.com/a\\b", "invalid character"),
        ("example.com/con", "reserved file name"),
        ("example.com/NUL.txt", "reserved file name"),
        ("example.com/x/v1", "major version suffix"),
        ("example.com/x/v02", "major version suffix"),
        ("example.com/x/v2.1", "major version suffix"),
        ("gopkg.in/yaml", "major version suffix"),
    ],
)
def test_check_path_rejects(path: str, reason: str) -> None:
    """Hostile and malformed module paths fail with InvalidName naming the rule broken."""
    with pytest.raises(InvalidName, match=reason) as caught:
        check_path(path)
    assert caught.value.ecosystem == "golang"


@pytest.mark.parametrize(
    "path",
    [TOML, "gopkg.in/yaml.v2", "gopkg.in/check.v1", "example.com/x/v2", "rsc.io/quote/v3", "a.b"],
)
def test_check_path_accepts(path: str) -> None:
    """Real-world module path shapes pass unchanged."""
    assert check_path(path) == path


@pytest.mark.parametrize(
    ("version", "path"),
    [
        ("v1.2.3", TOML),
        ("v0.0.0-20191109021931-daa7c04131f5", "example.com/x"),
        ("v1.2.4-0.20191109021931-daa7c04131f5", "example.com/x"),
        ("v2.0.1+incompatible", "example.com/x"),
        ("v1.0.0-rc.1", "example.com/x"),
        ("v2.3.0", "example.com/x/v2"),
        ("v2.4.0", "gopkg.in/yaml.v2"),
        ("v0.0.0-20161208181325-20d25e280405", "gopkg.in/check.v1"),
    ],
)
def test_check_version_accepts(version: str, path: str) -> None:
    """Canonical versions matching the path's major suffix pass unchanged."""
    assert check_version(version, path=path) == version


@pytest.mark.parametrize(
    ("version", "path", "reason"),
    [
        ("1.2.3", None, "not a semantic version"),
        ("v1.2", None, r"not canonical \(want v1.2.0\)"),
        ("v1.0.0+meta", None, "not canonical"),
        ("v01.0.0", None, "not a semantic version"),
        ("v1.0.0-01", None, "not a semantic version"),
        ("v1.0.0-", None, "not a semantic version"),
        ("v1.0.0+incompatible", None, "only allowed for major versions 2"),
        ("v1.0.0\x00", None, "NUL"),
        ("v1.0.0-" + "a" * 300, None, "longer than"),
        ("v1.0.0", "example.com/x/v2", "want v2"),
        ("v2.0.0", "example.com/x", "want v0 or v1"),
        ("v3.0.0", "gopkg.in/yaml.v2", "want v2"),
        ("v2.0.0+incompatible", "example.com/x/v2", "has a major suffix"),
    ],
)
def test_check_version_rejects(version: str, path: str | None, reason: str) -> None:
    """Non-canonical, malformed or mismatched versions fail with InvalidName."""
    with pytest.raises(InvalidName, match=reason):
        check_version(version, path=path)


def test_pseudo_versions_and_their_times() -> None:
    """All three pseudo-version forms are recognized and carry their commit time."""
    forms = [
        "v0.0.0-20191109021931-daa7c04131f5",
        "v1.2.4-0.20191109021931-daa7c04131f5",
        "v1.2.3-pre.0.20191109021931-daa7c04131f5+incompatible",
    ]
    for version in forms:
        assert is_pseudo_version(version)
        assert pseudo_version_time(version).isoformat() == "2019-11-09T02:19:31+00:00"
    assert not is_pseudo_version("v1.0.0-rc.1")
    with pytest.raises(InvalidName, match="not a pseudo-version"):
        pseudo_version_time("v1.0.0")


def test_sort_versions_follows_semver_precedence() -> None:
    """The precedence example of semver.org section 11, shuffled, sorts back in order."""
    ordered = [
        "v1.0.0-alpha",
        "v1.0.0-alpha.1",
        "v1.0.0-alpha.beta",
        "v1.0.0-beta",
        "v1.0.0-beta.2",
        "v1.0.0-beta.11",
        "v1.0.0-rc.1",
        "v1.0.0",
        "v2.0.0",
        "v10.0.0",
    ]
    assert sort_versions(reversed(ordered)) == ordered


# -- h1 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", REFERENCE["modules"], ids=lambda m: m["path"])
@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_zip_h1_matches_the_go_command(module: Mapping[str, Any], method: int) -> None:
    """h1 of a module zip equals what `go mod download` printed, whatever the zip's layout."""
    data = reference_zip(module, method=method)
    assert zip_h1(io.BytesIO(data)) == module["h1"]
    assert gomod_h1(module["go_mod"].encode()) == module["go_mod_h1"]


def test_verify_go_zip_accepts_a_spooled_file_and_rejects_a_changed_one() -> None:
    """verify_go_zip reads a temp file; one changed byte in one member is a DigestMismatch."""
    module = REFERENCE["modules"][0]
    with tempfile.TemporaryFile() as spooled:
        spooled.write(reference_zip(module))
        assert verify_go_zip(spooled, module["h1"], url="http://x/t.zip") == module["h1"]
    files = dict(module["files"])
    files["decode.go"] = files["decode.go"].replace("nil, nil", "nil, nil ")
    changed = reference_zip({**module, "files": files})
    with pytest.raises(DigestMismatch) as caught:
        verify_go_zip(io.BytesIO(changed), module["h1"], url="http://x/t.zip")
    assert caught.value.expected == module["h1"]
    assert caught.value.actual.startswith("h1:") and caught.value.actual != module["h1"]
    assert caught.value.url == "http://x/t.zip"


@pytest.mark.parametrize(
    "expected", ["", "h1:short=", "sha256:" + "a" * 64, "h1:" + "!" * 43 + "="]
)
def test_verify_go_zip_rejects_a_malformed_expected_hash(expected: str) -> None:
    """A published hash that is not h1:<base64 of 32 bytes> cannot be checked: InvalidDigest."""
    with pytest.raises(InvalidDigest):
        verify_go_zip(io.BytesIO(make_zip({"m@v1.0.0/a": b"a"})), expected, url="u")


def _with_raw_name(files: Mapping[str, bytes], placeholder: str, raw: bytes) -> bytes:
    """A zip whose entry ``placeholder`` is renamed to ``raw`` bytes zipfile would not write."""
    assert len(placeholder.encode()) == len(raw)
    return make_zip(files).replace(placeholder.encode(), raw)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (make_zip({"m@v1.0.0/../../etc/passwd": b"x"}), "'..' path element"),
        (make_zip({"/m@v1.0.0/a": b"x"}), "absolute path"),
        (make_zip({"m@v1.0.0/a\\b": b"x"}), "backslash"),
        (make_zip({"m@v1.0.0/./a": b"x"}), "'.'"),
        (make_zip({"m@v1.0.0//a": b"x"}), "empty"),
        (make_zip({"m@v1.0.0/a\nb": b"x"}), "newline"),
        (make_zip({"C:/m@v1.0.0/a": b"x"}), "colon"),
        (_with_raw_name({"m@v1.0.0/aXb": b"x"}, "aXb", b"a\x00b"), "NUL"),
        (_with_raw_name({"m@v1.0.0/aXb": b"x"}, "aXb", b"a\xffb"), "not UTF-8"),
        (make_zip({"m@v1.0.0/a": b"x", "m@v1.0.0/A": b"y"}), "duplicate"),
        (make_zip({"m@v1.0.0/a": b"x", "m@v1.0.0/b": b"y"}).replace(b"/b", b"/a"), "duplicate"),
        (b"not a zip at all", "unreadable zip"),
        (make_zip({"m@v1.0.0/a": b"x" * 1000})[:-40], "unreadable zip"),
    ],
)
def test_zip_h1_rejects_unsafe_or_broken_zips(data: bytes, reason: str) -> None:
    """Unsafe entry names, duplicates and corrupt zips raise InvalidArchive before hashing."""
    with pytest.raises(InvalidArchive, match=reason):
        zip_h1(io.BytesIO(data), url="http://x/m.zip")


def test_zip_h1_rejects_a_corrupted_member() -> None:
    """Flipped bytes inside a stored member fail the zip's CRC check: InvalidArchive."""
    data = make_zip({"m@v1.0.0/a": b"hello world" * 10}, method=zipfile.ZIP_STORED)
    with pytest.raises(InvalidArchive, match="unreadable zip"):
        zip_h1(io.BytesIO(data.replace(b"hello", b"jello", 1)))


def test_zip_h1_streams_members_in_constant_memory() -> None:
    """A 64 MiB member is hashed with a Python heap peak far below its size."""
    size = 64 << 20
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("m@v1.0.0/zeros", "w") as member,
    ):
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            member.write(block)
    tracemalloc.start()
    try:
        result = zip_h1(buffer)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.startswith("h1:")
    assert peak < 4 << 20, f"peak {peak} bytes"


# -- documents -------------------------------------------------------------------------------


def test_parse_retractions_reads_single_interval_and_block_forms() -> None:
    """Each retract form yields its interval; the rationale is the comment above or beside it."""
    gomod = (
        "module example.com/m\n\n"
        "// Published by accident.\n"
        "retract v1.0.0\n\n"
        'retract [v1.1.0, "v1.1.9"] // broken builds\n\n'
        "// Security: CVE-0000-0001.\n"
        "retract (\n"
        "\tv1.5.0\n"
        "\t// wrong API\n"
        "\t[v1.6.0, v1.6.2]\n"
        ")\n"
        "require example.com/other v1.0.0 // retract v9.9.9 is not a directive here\n"
        "retract [v1.7.0 v1.7.1]\n"
    )
    assert parse_retractions(gomod) == (
        Retraction("v1.0.0", "v1.0.0", "Published by accident."),
        Retraction("v1.1.0", "v1.1.9", "broken builds"),
        Retraction("v1.5.0", "v1.5.0", "Security: CVE-0000-0001."),
        Retraction("v1.6.0", "v1.6.2", "wrong API"),
    )
    interval = Retraction("v1.6.0", "v1.6.2")
    assert interval.covers("v1.6.1") and not interval.covers("v1.6.3")


def test_parse_sumdb_lookup_checks_the_record_shape() -> None:
    """Hash lines for another module, a missing note or a bad hash are FeedErrors."""
    h1 = "h1:" + "A" * 43 + "="
    good = (
        f"12\nexample.com/m v1.0.0 {h1}\nexample.com/m v1.0.0/go.mod {h1}\n\ngo.sum database tree\n"
    )
    assert parse_sumdb_lookup(good, "example.com/m", "v1.0.0", url="u") == (h1, h1)
    for bad, reason in [
        (good.replace("example.com/m v1.0.0 ", "example.com/n v1.0.0 "), "unexpected line"),
        (good.replace("\n\ngo.sum database tree\n", "\n"), "no signed tree note"),
        (good.replace(f"v1.0.0 {h1}", "v1.0.0 h1:xyz"), "malformed hash"),
        (good.replace("12\n", "twelve\n"), "record number"),
        (good.replace("v1.0.0 ", "v1.0.1 ", 1), "another version"),
    ]:
        with pytest.raises(FeedError, match=reason):
            parse_sumdb_lookup(bad, "example.com/m", "v1.0.0", url="u")


def test_timestamps_compare_at_nanosecond_precision() -> None:
    """RFC3339Nano strings of different lengths order by time, not by text."""
    assert timestamp_ns("2019-04-10T20:30:02.1Z") < timestamp_ns("2019-04-10T20:30:02.25Z")  # type: ignore[operator]
    assert timestamp_ns("2019-04-10T20:30:03Z") == timestamp_ns("2019-04-10T20:30:03.000Z")
    assert timestamp_ns("2019-04-10T20:30:03.000000001Z") == timestamp_ns(
        "2019-04-10T21:30:03.000000001+01:00"
    )
    assert timestamp_ns("2019-04-10 20:30:03Z") is None


def test_zip_filename_is_one_safe_path_element() -> None:
    """The artifact name is the last non-major element, '@' and the version."""
    assert zip_filename(TOML, "v1.2.0") == "toml@v1.2.0.zip"
    assert zip_filename("example.com/m/v2", "v2.0.0") == "m@v2.0.0.zip"
    assert zip_filename("gopkg.in/yaml.v2", "v2.4.0") == "yaml@v2.4.0.zip"


# -- the feed --------------------------------------------------------------------------------


async def walk(
    indexer: GoIndexer, cursor: GoCursor, *, max_pages: int = 50
) -> tuple[list[Change], GoCursor]:
    changes: list[Change] = []
    for _ in range(max_pages):
        page = await indexer.changes(cursor)
        changes.extend(page.changes)
        cursor = page.cursor
        if page.done:
            return changes, cursor
    raise AssertionError("the feed walk did not end")


async def test_feed_pages_through_shared_timestamps_once_each(
    fake: GoFake, http_client: httpx.AsyncClient
) -> None:
    """With 4 a page, the 3 entries sharing a timestamp straddle pages 1 and 2; each is
    reported once, in feed order, and every request resumes at the last timestamp seen."""
    indexer = indexer_for(fake, http_client, page_size=4)
    changes, cursor = await walk(indexer, await indexer.start_cursor())
    assert changes == feed_changes(fake)
    sent = [r.query["since"] for r in fake.requests.seen if r.path == "/index"]
    assert sent == [INDEX_EPOCH, SHARED_TIMESTAMP, "2019-04-10T20:30:02.25Z"]
    assert {r.query["limit"] for r in fake.requests.seen} == {"4"}
    assert cursor == GoCursor(
        since="2019-04-10T20:30:03.000000001Z", seen=(f"{TOML}@{TOML_PSEUDO}",)
    )


async def test_feed_resumes_after_a_restart_without_repeats(
    fake: GoFake, http_client: httpx.AsyncClient
) -> None:
    """A cursor stored mid-timestamp (as JSON) and loaded by a new indexer skips what was seen."""
    first = indexer_for(fake, http_client, page_size=4)
    page = await first.changes(await first.start_cursor())
    assert page.cursor.since == SHARED_TIMESTAMP and len(page.cursor.seen) == 2
    stored = json.loads(json.dumps(first.cursor_to_dict(page.cursor)))
    async with httpx.AsyncClient(timeout=5) as other_client:
        second = indexer_for(fake, other_client, page_size=4)
        rest, _ = await walk(second, second.cursor_from_dict(stored))
    assert list(page.changes) + rest == feed_changes(fake)


def test_cursor_keeps_keys_seen_at_its_timestamp_when_a_page_omits_them() -> None:
    """Entries sharing the cursor's timestamp stay remembered even if a page lists them in
    another order or cuts them off, so none is reported twice."""
    stamp = "2020-01-01T00:00:00Z"
    nanos = timestamp_ns(stamp)
    assert nanos is not None
    cursor = GoCursor(since=stamp, seen=("example.com/x@v1.0.0",))
    entries = [IndexEntry("example.com/y", "v1.0.0", stamp, nanos)]
    page = next_page(cursor, entries, limit=1, url="u")
    assert page.changes == (Change("example.com/y", version="v1.0.0"),)
    assert page.cursor.seen == ("example.com/x@v1.0.0", "example.com/y@v1.0.0")
    assert not page.done
    again = next_page(
        page.cursor, [IndexEntry("example.com/x", "v1.0.0", stamp, nanos)], limit=1, url="u"
    )
    assert again.changes == () and again.cursor == page.cursor and again.done


async def test_same_cursor_twice_ends_the_run(fake: GoFake, http_client: httpx.AsyncClient) -> None:
    """At the head, asking again returns no changes, the same cursor and done."""
    indexer = indexer_for(fake, http_client, page_size=4)
    _, head = await walk(indexer, await indexer.start_cursor())
    again = await indexer.changes(head)
    assert again.changes == () and again.cursor == head and again.done


async def test_a_full_page_of_seen_entries_ends_the_run_with_a_warning(
    fake: GoFake, http_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """With 2 a page and 3 entries at one timestamp, the index re-sends the same two: the
    cursor stops moving, the run ends instead of looping, and the limitation is logged."""
    indexer = indexer_for(fake, http_client, page_size=2)
    with caplog.at_level(logging.WARNING, logger="indexers.golang"):
        changes, cursor = await walk(indexer, await indexer.start_cursor())
    assert changes == feed_changes(fake)[:4]
    assert cursor.since == SHARED_TIMESTAMP
    assert "cannot page past them" in caplog.text


async def test_new_entries_at_the_cursor_timestamp_are_picked_up(
    http_client: httpx.AsyncClient,
) -> None:
    """An entry published later with the cursor's own timestamp is reported on the next run."""
    async with GoFake() as fake:
        fake.add_version("example.com/a", "v1.0.0", feed_at="2020-01-01T00:00:00Z")
        indexer = indexer_for(fake, http_client)
        first, cursor = await walk(indexer, await indexer.start_cursor())
        fake.add_version("example.com/b", "v1.0.0", feed_at="2020-01-01T00:00:00Z")
        second, _ = await walk(indexer, cursor)
    assert first == [Change("example.com/a", version="v1.0.0")]
    assert second == [Change("example.com/b", version="v1.0.0")]


async def test_invalid_index_entries_are_skipped_but_passed(http_client: httpx.AsyncClient) -> None:
    """An entry whose path or version breaks Go's rules is not reported, and the cursor moves on."""
    async with GoFake() as fake:
        fake.add_feed_line("Example.com/bad", "v1.0.0", "2020-01-01T00:00:00Z")
        fake.add_feed_line("example.com/ok", "v1.2", "2020-01-01T00:00:01Z")
        fake.add_feed_line("example.com/ok", "v1.2.0", "2020-01-01T00:00:02Z")
        indexer = indexer_for(fake, http_client)
        changes, cursor = await walk(indexer, await indexer.start_cursor())
    assert changes == [Change("example.com/ok", version="v1.2.0")]
    assert cursor.since == "2020-01-01T00:00:02Z"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"Path": "example.com/broken", ', "is not JSON"),
        ('["example.com/x", "v1.0.0"]', "not a JSON object"),
        ('{"Path": "example.com/x", "Version": "v1.0.0"}', "lacks string"),
        ('{"Path": "example.com/x", "Version": "v1.0.0", "Timestamp": "yesterday"}', "malformed"),
        (
            '{"Path": "example.com/x", "Version": "v1.0.0", "Timestamp": "2019-01-01T00:00:00Z"}',
            "out of Timestamp order",
        ),
    ],
)
async def test_malformed_feed_lines_are_feed_errors(
    http_client: httpx.AsyncClient, line: str, reason: str
) -> None:
    """A line that is not {Path, Version, Timestamp} in order raises FeedError, naming the line."""
    async with GoFake() as fake:
        fake.add_version("example.com/a", "v1.0.0", feed_at="2020-01-01T00:00:00Z")
        fake.add_malformed_line("2020-01-01T00:00:01Z", line)
        indexer = indexer_for(fake, http_client)
        with pytest.raises(FeedError, match=f"line 2 .*{reason}|line 2 {reason}"):
            await indexer.changes(await indexer.start_cursor())


async def test_feed_5xx_with_retry_after_then_recovery(
    fake: GoFake, http_client: httpx.AsyncClient
) -> None:
    """Two 503s with Retry-After are UpstreamUnavailable carrying it; the third call works."""
    indexer = indexer_for(fake, http_client, page_size=4)
    fake.faults.fail(503, times=2, retry_after="7", path="/index")
    cursor = await indexer.start_cursor()
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable) as caught:
            await indexer.changes(cursor)
        assert caught.value.retry_after == 7.0
        assert "HTTP 503" in str(caught.value)
    page = await indexer.changes(cursor)
    assert len(page.changes) == 4


async def test_feed_reset_and_slow_answers_are_transient(fake: GoFake) -> None:
    """A dropped connection and an answer slower than the client's timeout are transient."""
    async with httpx.AsyncClient(timeout=0.3) as impatient:
        indexer = indexer_for(fake, impatient)
        cursor = await indexer.start_cursor()
        fake.faults.reset(path="/index")
        with pytest.raises(UpstreamUnavailable, match="transport error"):
            await indexer.changes(cursor)
        fake.faults.slow(1.0, path="/index")
        with pytest.raises(UpstreamUnavailable, match="timeout"):
            await indexer.changes(cursor)


async def test_stored_cursor_garbage_is_refused(http_client: httpx.AsyncClient) -> None:
    """A cursor row that is not {since: RFC 3339, seen: [str]} raises FeedError, not TypeError."""
    indexer = GoIndexer(http_client, index_url="i", proxy_url="p", sumdb_url=None)
    with pytest.raises(FeedError, match="bad since"):
        indexer.cursor_from_dict({"since": "last tuesday"})
    with pytest.raises(FeedError, match="bad seen"):
        indexer.cursor_from_dict({"since": INDEX_EPOCH, "seen": "example.com/a@v1.0.0"})


# -- packages --------------------------------------------------------------------------------


async def test_package_maps_versions_info_and_checksums(
    fake: GoFake, http_client: httpx.AsyncClient
) -> None:
    """Listed versions plus the index's pseudo-version become releases with the fake's h1,
    .info time, an escaped zip URL and the go.mod hashes; v1.2.1 is retracted by v1.3.0."""
    info = await indexer_for(fake, http_client).package(
        TOML, change=Change(TOML, version=TOML_PSEUDO)
    )
    published = fake.modules[TOML]
    assert [r.version for r in info.releases] == ["v1.2.0", "v1.2.1", "v1.3.0", TOML_PSEUDO]
    for release in info.releases:
        truth = published[release.version]
        (artifact,) = release.artifacts
        assert artifact.digests == {"h1": truth.h1}
        assert artifact.filename == f"toml@{release.version}.zip"
        assert artifact.url == (
            f"{fake.endpoints.proxy_url}/github.com/!burnt!sushi/toml/@v/{release.version}.zip"
        )
        assert release.published_at == truth.time
        assert info.extra["go_mod_h1"][release.version] == truth.go_mod_h1
        assert release.yanked == (release.version == "v1.2.1")
    yanked = info.releases[1].artifacts[0]
    assert yanked.yanked_reason == "v1.2.1 broke decoding of inline tables."
    assert (info.name, info.display_name, info.ecosystem) == (TOML, TOML, "golang")


async def test_package_without_index_versions_lists_tagged_ones(
    fake: GoFake, http_client: httpx.AsyncClient
) -> None:
    """@v/list omits pseudo-versions: without the index's version, only tags are mapped."""
    info = await indexer_for(fake, http_client).package(TOML)
    assert [r.version for r in info.releases] == ["v1.2.0", "v1.2.1", "v1.3.0"]


async def test_release_zip_downloads_and_verifies(
    fake: GoFake, http_client: httpx.AsyncClient
) -> None:
    """The artifact URL serves a zip whose h1 matches the sumdb's; a tampered zip does not."""
    indexer = indexer_for(fake, http_client)
    release = await indexer.release(TOML, "v1.3.0")
    (artifact,) = release.artifacts
    for tampered in (False, True):
        if tampered:
            fake.tamper(TOML, "v1.3.0", {"decode.go": b"package toml // evil\n"})
        with tempfile.SpooledTemporaryFile(max_size=1 << 16) as spooled:
            async with http_client.stream("GET", artifact.url) as response:
                async for chunk in response.aiter_bytes():
                    spooled.write(chunk)
            if tampered:
                with pytest.raises(DigestMismatch):
                    verify_go_zip(spooled, artifact.digests["h1"], url=artifact.url)
            else:
                assert verify_go_zip(spooled, artifact.digests["h1"], url=artifact.url)


async def test_incompatible_version_is_escaped_and_named(
    fake: GoFake, http_client: httpx.AsyncClient
) -> None:
    """A +incompatible version of an upper-case path maps to one escaped, verifiable artifact."""
    info = await indexer_for(fake, http_client).package("github.com/Azure/go-autorest")
    (release,) = info.releases
    (artifact,) = release.artifacts
    assert release.version == "v14.2.0+incompatible"
    assert artifact.filename == "go-autorest@v14.2.0+incompatible.zip"
    assert "/github.com/!azure/go-autorest/@v/v14.2.0+incompatible.zip" in artifact.url
    truth = fake.modules["github.com/Azure/go-autorest"]["v14.2.0+incompatible"]
    assert artifact.digests == {"h1": truth.h1}


async def test_private_module_has_no_digest(fake: GoFake, http_client: httpx.AsyncClient) -> None:
    """A sumdb 404 (private module) leaves digests empty instead of failing the package."""
    info = await indexer_for(fake, http_client).package("example.com/private")
    assert [r.artifacts[0].digests for r in info.releases] == [{}]


async def test_sumdb_disabled_sends_no_lookups(
    fake: GoFake, http_client: httpx.AsyncClient
) -> None:
    """With sumdb_url=None nothing is asked of the sumdb and digests are empty."""
    info = await indexer_for(fake, http_client, sumdb_url=None).package(TOML)
    assert fake.lookups == 0
    assert all(r.artifacts[0].digests == {} for r in info.releases)


@pytest.mark.parametrize("name", ["example.com/gone", "example.com/never-published"])
async def test_gone_or_unknown_module_is_not_found(
    fake: GoFake, http_client: httpx.AsyncClient, name: str
) -> None:
    """The proxy's 410 (gone) and 404 (unknown) both raise PackageNotFound for the module."""
    with pytest.raises(PackageNotFound) as caught:
        await indexer_for(fake, http_client).package(name)
    assert caught.value.name == name
    assert fake.requests.paths() == [f"/proxy/{name}/@v/list"]


async def test_listed_version_that_is_gone_is_a_deleted_release(
    fake: GoFake, http_client: httpx.AsyncClient
) -> None:
    """A version still in @v/list whose .info answers 404 is kept as deleted, without artifacts."""
    fake.withdraw(TOML, "v1.2.0")
    info = await indexer_for(fake, http_client).package(TOML)
    first = info.releases[0]
    assert (first.version, first.deleted, first.artifacts) == ("v1.2.0", True, ())
    assert [r.deleted for r in info.releases[1:]] == [False, False]


async def test_start_is_sent_in_the_index_own_form(http_client: httpx.AsyncClient) -> None:
    """A start with an offset is normalized to UTC 'Z' (the index rejects '+00:00')."""
    indexer = GoIndexer(
        http_client,
        index_url="i",
        proxy_url="p",
        sumdb_url=None,
        start="2020-01-01T01:00:00.500+01:00",
    )
    assert indexer.start == "2020-01-01T00:00:00.5Z"
    with pytest.raises(ValueError, match="RFC 3339"):
        GoIndexer(http_client, index_url="i", proxy_url="p", sumdb_url=None, start="now")


async def test_unknown_version_is_not_found(fake: GoFake, http_client: httpx.AsyncClient) -> None:
    """release() of a version the proxy does not have names the version in PackageNotFound."""
    with pytest.raises(PackageNotFound) as caught:
        await indexer_for(fake, http_client).release(TOML, "v1.9.9")
    assert (caught.value.name, caught.value.version) == (TOML, "v1.9.9")


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "example.com/%2e%2e/secret",
        "example.com/a\x00b",
        "example.com/" + "x" * 5000,
        "Example.com/upper",
    ],
)
async def test_hostile_names_fail_before_any_request(
    fake: GoFake, http_client: httpx.AsyncClient, name: str
) -> None:
    """InvalidName is raised before a URL is built: the fake sees no request at all."""
    with pytest.raises(InvalidName):
        await indexer_for(fake, http_client).package(name)
    with pytest.raises(InvalidName):
        await indexer_for(fake, http_client).release(TOML, "v1.0.0/../../x")
    assert fake.requests.seen == []


async def test_untagged_module_falls_back_to_latest(http_client: httpx.AsyncClient) -> None:
    """A module with only a pseudo-version has an empty list; @latest names its version."""
    async with GoFake() as fake:
        version = "v0.0.0-20240102030405-abcdef123456"
        truth = fake.add_version("example.com/pseudo", version)
        info = await indexer_for(fake, http_client).package("example.com/pseudo")
    assert [(r.version, r.artifacts[0].digests["h1"]) for r in info.releases] == [
        (version, truth.h1)
    ]
    assert [r.path for r in fake.requests.seen][:2] == [
        "/proxy/example.com/pseudo/@v/list",
        "/proxy/example.com/pseudo/@latest",
    ]


async def test_sumdb_errors_are_translated(fake: GoFake, http_client: httpx.AsyncClient) -> None:
    """A sumdb 503 with Retry-After is transient; a malformed sumdb answer is a FeedError."""
    indexer = indexer_for(fake, http_client)
    fake.faults.fail(503, retry_after="30", path="/sumdb/")
    with pytest.raises(UpstreamUnavailable) as caught:
        await indexer.release(TOML, "v1.2.0")
    assert caught.value.retry_after == 30.0
    fake.faults.malformed(path="/sumdb/")
    with pytest.raises(FeedError, match="no signed tree note"):
        await indexer.release(TOML, "v1.2.0")


async def test_proxy_5xx_during_package_is_transient(
    fake: GoFake, http_client: httpx.AsyncClient
) -> None:
    """A 502 from one .info request fails the whole package with UpstreamUnavailable."""
    fake.faults.fail(502, path="/proxy/github.com/!burnt!sushi/toml/@v/v1.2.1.info")
    with pytest.raises(UpstreamUnavailable, match="HTTP 502"):
        await indexer_for(fake, http_client).package(TOML)


async def test_info_version_must_match_the_request(http_client: httpx.AsyncClient) -> None:
    """A proxy whose .info names another version than asked is answering wrongly: FeedError."""
    async with GoFake() as fake:
        entry = fake.add_version("example.com/m", "v1.0.0")
        entry.version = "v1.0.1"
        fake.modules["example.com/m"]["v1.0.0"] = entry
        with pytest.raises(FeedError, match=r"not v1\.0\.0"):
            await indexer_for(fake, http_client, sumdb_url=None).release("example.com/m", "v1.0.0")


# -- the checksum database's formats (indexers.golang.sumdb) ---------------------------------

#: golang.org/x/mod sumdb/note's published example: a signer key, a text, the signed note.
NOTE_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
NOTE_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
NOTE_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
NOTE_SIGNED = (
    NOTE_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZ"
    "SNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()


def test_notes_are_signed_and_verified_as_golang_x_mod_does() -> None:
    signer = sumdb.Signer.from_key(NOTE_SKEY)
    assert signer.verifier_key == NOTE_VKEY
    assert signer.sign(NOTE_TEXT) == NOTE_SIGNED
    assert sumdb.verify_note(NOTE_SIGNED, NOTE_VKEY, url="u") == NOTE_TEXT
    forged = NOTE_SIGNED.replace(b"cryptography", b"cryptanalysis")
    with pytest.raises(FeedError, match="no valid signature"):
        sumdb.verify_note(forged, NOTE_VKEY, url="u")
    other = sumdb.Signer.generate("PeterNeumann").verifier_key
    with pytest.raises(FeedError):
        sumdb.verify_note(NOTE_SIGNED, other, url="u")


@pytest.mark.parametrize(
    ("tile", "path"),
    [
        (sumdb.Tile(8, 0, 0, 256), "tile/8/0/000"),
        (sumdb.Tile(8, 1, 1234067, 17), "tile/8/1/x001/x234/067.p/17"),
        (sumdb.Tile(8, -1, 5, 256), "tile/8/data/005"),
    ],
)
def test_tile_paths_round_trip(tile: sumdb.Tile, path: str) -> None:
    assert tile.path == path
    assert sumdb.parse_tile_path(path) == tile


@pytest.mark.parametrize(
    "path",
    [
        "tile/8/0/0",
        "tile/8/0/000.p/256",
        "tile/8/0/000.p/0",
        "tile/8/0/x000/001",
        "tile/8/../000",
        "tile/31/0/000",
        "tile/8/0/000/",
    ],
)
def test_tile_paths_not_spelled_canonically_are_refused(path: str) -> None:
    assert sumdb.parse_tile_path(path) is None


def test_the_log_tree_hash_is_rfc6962s() -> None:
    """Tree hashes from a 7-record log, recomputed by RFC 6962's recursive definition over
    leaf hashes; a tile holds the level's hashes, a partial tile a prefix of the full one."""
    log = sumdb.TransparencyLog(sumdb.Signer.generate("t.test"), height=2)
    records = [f"example.com/m{i} v1.0.0 h1:x\n".encode() for i in range(7)]
    for record in records:
        log.append(record)
    leaves = [hashlib.sha256(b"\x00" + r).digest() for r in records]

    def node(a: bytes, b: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + a + b).digest()

    root = node(
        node(node(leaves[0], leaves[1]), node(leaves[2], leaves[3])),
        node(node(leaves[4], leaves[5]), leaves[6]),
    )
    size, found = sumdb.parse_tree(
        sumdb.verify_note(log.signed_tree(), log.signer.verifier_key, url="u"), url="u"
    )
    assert (size, found) == (7, root)
    assert log.tile(sumdb.Tile(2, 0, 1, 3)) == b"".join(leaves[4:7])
    assert log.tile(sumdb.Tile(2, 1, 0, 1)) == node(
        node(leaves[0], leaves[1]), node(leaves[2], leaves[3])
    )
    assert log.tile(sumdb.Tile(2, 1, 0, 2)) is None  # the second 4-leaf subtree is not complete
    assert log.tile(sumdb.Tile(2, -1, 0, 2)) == records[0] + b"\n" + records[1] + b"\n"
    record_id, text, note = sumdb.split_lookup(log.lookup(3), url="u")
    assert (record_id, text) == (3, records[3])
    assert note == log.signed_tree()
