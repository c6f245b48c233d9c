"""PyPI indexer against the loopback fake PyPI: changelog paging, PEP 691 mapping, staleness."""

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
from indexers.fakeserver import RunningServer, ThreadedServer
from indexers.pypi.fake import FakePyPI
from indexers.pypi.indexer import (
    PyPICursor,
    PyPIIndexer,
    decode_response,
    encode_call,
    map_simple_project,
    normalize,
    parse_changelog,
)

DATA = Path(__file__).parent.parent / "data" / "pypi"


def indexer(client: httpx.AsyncClient, server: RunningServer) -> PyPIIndexer:
    return PyPIIndexer(client, xmlrpc_url=server.url + "/pypi", simple_url=server.url + "/simple")


async def test_recorded_page_maps_every_file_of_every_release(
    pypi: FakePyPI, pypi_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    doc = json.loads((DATA / "simple-sampleproject.json").read_text())
    pypi.load_simple_page(doc, serial=23044590)
    info = await indexer(http_client, pypi_server).package("SampleProject")

    assert pypi.requests.seen[-1].path == "/simple/sampleproject/"
    assert pypi.requests.seen[-1].headers["accept"] == "application/vnd.pypi.simple.v1+json"
    assert info.name == "sampleproject"
    assert info.serial == 23044590
    releases = {release.version: release for release in info.releases}
    assert list(releases) == ["1.2.0", "1.3.0", "1.3.1", "2.0.0", "3.0.0", "4.0.0", "5.0.0a1"]

    # Every file is an artifact, legacy ones included, grouped under its release, and so is
    # each wheel's PEP 658 metadata file (Warehouse advertised it with a sha256).
    kinds = {a.filename: a.kind for a in releases["1.2.0"].artifacts}
    assert kinds == {
        "sampleproject-1.2.0-py2.7.egg": "egg",
        "sampleproject-1.2.0.win32.exe": "other",
        "sampleproject-1.2.0-py2.py3-none-any.whl": "wheel",
        "sampleproject-1.2.0-py2.py3-none-any.whl.metadata": "metadata",
        "sampleproject-1.2.0.tar.gz": "sdist",
    }
    assert len(releases["3.0.0"].artifacts) == 4 + 3
    assert releases["5.0.0a1"].artifacts == ()
    assert info.extra["unmatched_files"] == ("sampleproject-latest.tar.gz",)
    files = {f["filename"]: f for f in doc["files"]}
    for release in info.releases:
        for artifact in release.artifacts:
            if artifact.kind == "metadata":
                wheel = next(
                    a for a in release.artifacts if a.filename + ".metadata" == artifact.filename
                )
                advertised = files[wheel.filename]["core-metadata"]["sha256"]
                assert artifact.digests == {"sha256": advertised}
                assert artifact.url == wheel.url + ".metadata"
                continue
            recorded = files[artifact.filename]
            assert artifact.digests == {"sha256": recorded["hashes"]["sha256"]}
            assert artifact.size == recorded["size"]
            assert artifact.requires_python == recorded["requires-python"]

    # PEP 592: one yanked file does not yank its release; all files yanked does.
    sdist_130 = next(a for a in releases["1.3.0"].artifacts if a.kind == "sdist")
    assert (sdist_130.yanked, sdist_130.yanked_reason) == (True, "Broken metadata on Python 2")
    assert releases["1.3.0"].yanked is False
    assert releases["1.3.1"].yanked is True
    assert {a.yanked_reason for a in releases["1.3.1"].artifacts} == {None}

    # Upload times; a release is published at its first upload.
    assert releases["1.2.0"].published_at == datetime(2015, 6, 14, 14, 37, 56, 383366, UTC)
    # A relative file URL resolves against the project page URL.
    wheel_400 = next(a for a in releases["4.0.0"].artifacts if a.kind == "wheel")
    assert wheel_400.url.startswith(f"{pypi_server.url}/packages/eb/45/")


async def test_generated_files_carry_the_sha256_of_the_served_bytes(
    pypi: FakePyPI, pypi_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    uploaded = pypi.release(
        "Sample_Project",
        "1.0",
        wheels=("py3-none-any", "cp311-cp311-manylinux_2_17_x86_64", "cp311-cp311-win_amd64"),
        requires_python=">=3.9",
    )
    pypi.add_version("sample-project", "2.0.dev0")
    info = await indexer(http_client, pypi_server).package("sample.project")

    assert [r.version for r in info.releases] == ["1.0", "2.0.dev0"]
    artifacts = [a for a in info.releases[0].artifacts if a.kind != "metadata"]
    assert [a.filename for a in artifacts] == [file.filename for file in uploaded]
    assert [a.kind for a in artifacts] == ["wheel", "wheel", "wheel", "sdist"]
    # Each wheel's PEP 658 metadata file is an artifact too, carrying the served bytes' sha256.
    sidecars = [a for a in info.releases[0].artifacts if a.kind == "metadata"]
    assert [a.filename for a in sidecars] == [f.filename + ".metadata" for f in uploaded[:3]]
    for sidecar in sidecars:
        body = (await http_client.get(sidecar.url)).content
        assert body.startswith(b"Metadata-Version: ")
        assert sidecar.digests == {"sha256": hashlib.sha256(body).hexdigest()}
    for artifact, file in zip(artifacts, uploaded, strict=True):
        body = (await http_client.get(artifact.url)).content
        assert artifact.digests["sha256"] == hashlib.sha256(body).hexdigest()
        assert artifact.size == len(body)
        assert artifact.uploaded_at == file.uploaded_at
        assert artifact.requires_python == ">=3.9"
    assert info.serial == pypi.projects["sample-project"].last_serial


async def test_changelog_pages_until_empty_and_reports_highest_serial_per_name(
    pypi: FakePyPI, pypi_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    """Cap of four rows per call: a release arrives as several rows across pages; each page
    names a project once with its highest serial; the empty page repeats the cursor."""
    pypi.changelog_cap = 4
    pypi.release("alpha", "1.0", wheels=("py3-none-any", "py2-none-any"))  # 5 rows: create,
    pypi.release("Beta", "0.1", sdist=False)  # new release, one per file; then 3 rows
    client = indexer(http_client, pypi_server)

    cursor = PyPICursor(pypi.start_serial)
    pages = []
    while True:
        page = await client.changes(cursor)
        pages.append(page)
        if page.done:
            assert page.cursor == cursor
            assert page.changes == ()
            break
        cursor = page.cursor
    assert [[(c.name, c.serial) for c in p.changes] for p in pages] == [
        [("alpha", pypi.start_serial + 4)],
        [("alpha", pypi.start_serial + 5), ("beta", pypi.start_serial + 8)],
        [],
    ]
    assert cursor.serial == pypi.serial


async def test_start_cursor_is_the_last_serial(
    pypi: FakePyPI, pypi_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    pypi.release("alpha", "1.0")
    assert await indexer(http_client, pypi_server).start_cursor() == PyPICursor(pypi.serial)


def test_recorded_changelog_is_normalized_and_deduplicated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Spellings of one project merge under its PEP 503 name with the highest serial, ordered
    by that serial; the last row decides ``deleted``; an invalid name is skipped, logged."""
    body = (DATA / "changelog-response.xml").read_bytes()
    rows = decode_response(body, "http://fake/pypi")
    changes, next_serial = parse_changelog(rows, since=23044579, url="http://fake/pypi")

    assert next_serial == 23044589
    assert [(c.name, c.serial, c.deleted) for c in changes] == [
        ("django", 23044582, False),
        ("sampleproject", 23044583, False),
        ("old-thing", 23044585, True),
        ("zope-interface", 23044586, False),
        ("revived", 23044589, False),
    ]
    assert "'not a valid name!'" in caplog.text


def test_xmlrpc_call_round_trips_through_the_stdlib_encoder() -> None:
    body = encode_call("changelog_since_serial", 42)
    assert b"<methodName>changelog_since_serial</methodName>" in body
    assert b"<int>42</int>" in body


async def test_removed_project_is_a_deleted_change_and_a_404(
    pypi: FakePyPI, pypi_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    pypi.release("doomed", "1.0")
    client = indexer(http_client, pypi_server)
    start = PyPICursor(pypi.serial)
    pypi.remove_project("doomed")

    page = await client.changes(start)
    assert [(c.name, c.deleted) for c in page.changes] == [("doomed", True)]
    with pytest.raises(PackageNotFound) as caught:
        await client.package("doomed")
    assert (caught.value.ecosystem, caught.value.name) == ("pypi", "doomed")


async def test_stale_page_raises_then_fresh_page_passes(
    pypi: FakePyPI, pypi_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    """A CDN page older than the announced serial is refused, as bandersnatch does."""
    pypi.release("fresh", "1.0", sdist=False)
    start = PyPICursor(pypi.serial)
    pypi.release("fresh", "1.1", sdist=False)
    client = indexer(http_client, pypi_server)
    (change,) = (await client.changes(start)).changes
    pypi.stale("fresh")

    with pytest.raises(StaleMetadata) as caught:
        await client.package(change.name, change=change)
    assert caught.value.expected == change.serial
    assert caught.value.actual is not None and caught.value.actual < change.serial

    info = await client.package(change.name, change=change)
    assert info.serial == change.serial
    assert [r.version for r in info.releases] == ["1.0", "1.1"]


async def test_throttled_xmlrpc_is_unavailable_with_retry_after(
    pypi: FakePyPI, pypi_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    pypi.throttle(reset_in=3)
    with pytest.raises(UpstreamUnavailable) as caught:
        await indexer(http_client, pypi_server).changes(PyPICursor(0))
    assert caught.value.retry_after == 3.0


async def test_upstream_errors_are_translated(
    pypi: FakePyPI, pypi_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    pypi.release("ok", "1.0")
    client = indexer(http_client, pypi_server)

    pypi.faults.fail(502, retry_after="12", path="/simple/")
    with pytest.raises(UpstreamUnavailable) as unavailable:
        await client.package("ok")
    assert unavailable.value.retry_after == 12.0

    pypi.faults.malformed(path="/simple/")
    with pytest.raises(FeedError, match="not JSON"):
        await client.package("ok")

    pypi.faults.malformed(path="/pypi")
    with pytest.raises(FeedError, match="not an XML-RPC response"):
        await client.changes(PyPICursor(0))

    pypi.faults.fail(503, path="/pypi")
    with pytest.raises(UpstreamUnavailable):
        await client.start_cursor()

    with pytest.raises(PackageNotFound):
        await client.package("missing")

    assert pypi.faults.pending == 0
    assert [r.version for r in (await client.package("ok")).releases] == ["1.0"]


def test_unsupported_api_version_or_shape_is_a_feed_error() -> None:
    with pytest.raises(FeedError, match="api-version"):
        map_simple_project(
            {"meta": {"api-version": "2.0"}, "name": "x", "files": []}, url="http://f/simple/x/"
        )
    with pytest.raises(FeedError, match="files"):
        map_simple_project({"meta": {"api-version": "1.1"}, "name": "x"}, url="http://f/")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Django", "django"), ("zope.interface", "zope-interface"), ("Foo__Bar-.baz", "foo-bar-baz")],
)
def test_names_normalize_per_pep_503(name: str, expected: str) -> None:
    assert normalize(name) == expected


@pytest.mark.parametrize(
    "name", ["", "-leading", "trailing-", "a/b", "../etc", "nul\x00", "sp ace"]
)
def test_invalid_project_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidName) as caught:
        normalize(name)
    assert caught.value.ecosystem == "pypi"


def test_bad_changelog_rows_are_feed_errors() -> None:
    bad: list[Any] = [["name", "1.0", 0, "new release"]]
    with pytest.raises(FeedError, match="not \\(name, version"):
        parse_changelog(bad, since=0, url="http://fake/pypi")


def test_threaded_fake_serves_html_and_json_forms_of_one_page() -> None:
    """From synchronous code (as pip or ``forage demo`` would use it) the threaded fake serves
    the PEP 503 page with the same files and sha256 fragments as the PEP 691 document."""
    pypi = FakePyPI()
    files = pypi.release("Two.Forms", "1.0", wheels=("py3-none-any",))
    pypi.yank("two-forms", "1.0", reason="bad <build>")
    with ThreadedServer(pypi.make_app()) as fake, httpx.Client() as client:
        page = client.get(f"{fake.url}/simple/two-forms/", headers={"Accept": "text/html"})
        doc = client.get(
            f"{fake.url}/simple/two-forms/",
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
        ).json()
        redirect = client.get(f"{fake.url}/simple/Two.Forms/")
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-pypi-last-serial"] == str(pypi.serial)
    for file in files:
        assert f'#sha256={file.sha256}"' in page.text
        assert f">{file.filename}</a>" in page.text
    assert 'data-yanked="bad &lt;build&gt;"' in page.text
    assert [f["hashes"]["sha256"] for f in doc["files"]] == [file.sha256 for file in files]
    assert (redirect.status_code, redirect.headers["location"]) == (301, "/simple/two-forms/")
