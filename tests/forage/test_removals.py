"""Removals and statuses, on SQLite and PostgreSQL, against the loopback registries.

What is shown: a version or file the registry stops listing is recorded once with when and
how (PyPI's ``remove release``/``remove file`` reached through the changelog, npm's unpublish,
a Go retraction), cleared when it is listed again, and never inferred from a partial answer;
a package the registry lost is ``removed``; PEP 792 statuses and npm deprecations are stored.
Lookups (stored answers included), the version and package API, the package page and the
mirror show them; removed releases stay out of listings whether the upstream answers (even a
stale one) or not, quarantined projects are never served, and archives are kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import Archive, ArchiveStatus, Artifact, Package, Version
from forage.index.ingest import mark_package_deleted, record_package, watch_feed
from forage.index.removals import release_removal
from forage.lookup.batch import lookup
from forage.server.app import make_app
from forage.server.state import BLOCKSTORE
from indexers import Artifact as FileInfo
from indexers import PackageInfo, Release
from indexers.fakeserver import RunningServer, serve, start_fake
from indexers.golang.fake import GoFake
from indexers.mirror.rows import Withdrawn
from indexers.npm.fake import FakeNpmRegistry
from indexers.pypi.fake import FakePyPI
from indexers.pypi.mirror import SIMPLE_JSON, withdraw_page
from tests.forage.mirror.conftest import Forage, forage_mirror
from tests.forage.test_ingest import drain

SHA = "ab" * 32


def _file(name: str) -> FileInfo:
    return FileInfo(
        filename=name, url=f"https://files.invalid/{name}", size=3, digests={"sha256": SHA}
    )


def _info(ecosystem: str, releases: Mapping[str, tuple[str, ...]], **fields: Any) -> PackageInfo:
    return PackageInfo(
        ecosystem=ecosystem,
        name="demo",
        display_name="demo",
        releases=tuple(
            Release(version=v, artifacts=tuple(_file(f) for f in files))
            for v, files in releases.items()
        ),
        **fields,
    )


def _state(session: Session, ecosystem: str = "pypi") -> dict[str, Any]:
    versions = session.execute(
        sa.select(Version.number, Version.removed_at, Version.removal, Version.deleted)
        .join(Package)
        .where(Package.ecosystem == ecosystem, Package.name == "demo")
    ).all()
    files = session.execute(
        sa.select(Artifact.filename, Artifact.removed_at, Artifact.removal)
        .join(Version)
        .join(Package)
        .where(Package.ecosystem == ecosystem, Package.name == "demo")
    ).all()
    return {
        "versions": {row.number: (row.removal, row.removed_at, row.deleted) for row in versions},
        "files": {row.filename: (row.removal, row.removed_at) for row in files},
    }


def test_what_leaves_the_listing_is_recorded_once_and_cleared_when_listed_again(
    db_session: Session,
) -> None:
    full = {"1.0": ("a-1.0.tar.gz", "a-1.0-py3-none-any.whl"), "1.1": ("a-1.1.tar.gz",)}
    record_package(db_session, _info("pypi", full), archive=False)
    assert all(r[0] is None for r in _state(db_session)["versions"].values())
    shrunk = {"1.0": ("a-1.0.tar.gz",)}
    record_package(db_session, _info("pypi", shrunk), archive=False)
    first = _state(db_session)
    assert first["versions"]["1.1"][0] == "pypi: remove release"
    assert first["versions"]["1.1"][2] is True  # the old flag agrees
    assert first["versions"]["1.0"][0] is None
    assert first["files"]["a-1.1.tar.gz"][0] == "pypi: remove release"
    assert first["files"]["a-1.0-py3-none-any.whl"][0] == "pypi: remove file"
    assert first["files"]["a-1.0.tar.gz"] == (None, None)
    # Seen gone again: when it was first seen gone stands.
    record_package(db_session, _info("pypi", shrunk), archive=False)
    assert _state(db_session) == first
    # Listed again: cleared, rows kept.
    record_package(db_session, _info("pypi", full), archive=False)
    again = _state(db_session)
    assert all(r[:2] == (None, None) for r in again["versions"].values())
    assert all(r == (None, None) for r in again["files"].values())
    assert again["versions"]["1.1"][2] is False


def test_a_partial_answer_or_an_unlisted_version_removes_nothing(db_session: Session) -> None:
    full = {"1.0": ("a-1.0.tar.gz", "a-1.0-py3-none-any.whl"), "1.1": ("a-1.1.tar.gz",)}
    record_package(db_session, _info("pypi", full), archive=False)
    record_package(
        db_session, _info("pypi", {"1.0": ("a-1.0.tar.gz",)}, complete=False), archive=False
    )
    assert all(r[0] is None for r in _state(db_session)["files"].values())
    assert all(r[0] is None for r in _state(db_session)["versions"].values())
    # Go serves versions it never lists (pseudo-versions): absence says nothing.
    go = {"v1.0.0": ("demo@v1.0.0.zip",), "v0.0.0-20240101000000-abcdefabcdef": ("p.zip",)}
    record_package(db_session, _info("golang", go), archive=False)
    record_package(db_session, _info("golang", {"v1.0.0": ("demo@v1.0.0.zip",)}), archive=False)
    assert all(r[0] is None for r in _state(db_session, "golang")["versions"].values())


def test_a_package_the_registry_lost_is_removed_with_its_releases(db_session: Session) -> None:
    record_package(db_session, _info("pypi", {"1.0": ("a-1.0.tar.gz",)}), archive=False)
    assert mark_package_deleted(db_session, "pypi", "demo")
    package = db_session.execute(sa.select(Package).where(Package.name == "demo")).scalar_one()
    assert (package.status, package.status_reason, package.deleted) == (
        "removed",
        "pypi: remove project",
        True,
    )
    state = _state(db_session)
    assert state["versions"]["1.0"][0] == "pypi: remove project"
    assert state["files"]["a-1.0.tar.gz"][0] == "pypi: remove project"
    assert not mark_package_deleted(db_session, "pypi", "unknown")


def test_a_bad_package_status_is_refused_by_the_schema(db_session: Session) -> None:
    with pytest.raises(sa.exc.IntegrityError), db_session.begin_nested():
        record_package(db_session, _info("pypi", {}, status="gone-fishing"), archive=False)


# -- PyPI through the changelog, lookups, API, page and mirror -------------------------------


@asynccontextmanager
async def _site(forage: Forage) -> AsyncIterator[str]:
    """The whole HTTP server (API and pages) on the mirror's database."""
    app = make_app(
        forage.config, sessionmaker=forage.ctx.sessionmaker, blockstore=forage.app[BLOCKSTORE]
    )
    async with serve(app) as running:
        yield running.url


def _lookup(forage: Forage, *keys: str) -> list[dict[str, Any]]:
    results = lookup(
        forage.ctx.sessionmaker,
        forage.ctx.sessionmaker,
        list(keys),
        policy=None,
        rendered=True,
    )
    return [result.to_json() for result in results]


async def test_pypi_remove_release_and_remove_file_reach_lookups_pages_and_the_mirror(
    tmp_path: Path, migrated_url: str
) -> None:
    pypi = FakePyPI()
    pypi.release("Sample", "1.0")
    pypi.release("Sample", "1.1")
    pypi.release("Sample", "2.0")
    wheel_10 = "sample-1.0-py3-none-any.whl"
    upstream = await start_fake(pypi.make_app())
    try:
        async with forage_mirror(tmp_path, migrated_url, pypi=upstream.url) as forage:
            await watch_feed(forage.ctx, "pypi")  # the cursor starts at the head
            await forage.ingest("pypi", "sample")
            await forage.archive_all()
            before = _lookup(forage, "pkg:pypi/sample@1.1")[0]  # stores the answer
            assert before["removal"] is None and before["package_status"] is None
            pypi.remove_release("Sample", "1.1")
            pypi.remove_file(wheel_10)
            stats = await watch_feed(forage.ctx, "pypi")
            assert stats.changes == 1  # both journal rows name one project
            await drain(forage.ctx)
            await _check_pypi_rows(forage, wheel_10)
            await _check_pypi_views(forage, wheel_10)
            await _check_pypi_mirror(forage, pypi, upstream, wheel_10)
    finally:
        await upstream.close()


async def _check_pypi_rows(forage: Forage, wheel_10: str) -> None:
    with forage.ctx.sessionmaker() as session:
        versions = {n: r for n, r in session.execute(sa.select(Version.number, Version.removal))}
        files = {
            row.filename: row
            for row in session.execute(
                sa.select(Artifact.filename, Artifact.removal, Archive.status).join(Archive)
            )
        }
    assert versions == {"1.0": None, "1.1": "pypi: remove release", "2.0": None}
    assert files[wheel_10].removal == "pypi: remove file"
    assert files["sample-1.0.tar.gz"].removal is None
    assert files["sample-1.1.tar.gz"].removal == "pypi: remove release"
    # Archives are kept.
    assert {row.status for row in files.values()} == {ArchiveStatus.ARCHIVED}


async def _check_pypi_views(forage: Forage, wheel_10: str) -> None:
    removed, kept = _lookup(forage, "pkg:pypi/sample@1.1", "pypi:sample:1.0")
    assert removed["status"] == "found"  # the stored answer was retired and rendered again
    assert removed["removal"] == "pypi: remove release"
    assert removed["removed_at"] is not None
    assert all(a["cid"] and a["removal"] for a in removed["artifacts"])
    assert kept["removal"] is None
    by_name = {a["filename"]: a for a in kept["artifacts"]}
    assert by_name[wheel_10]["removal"] == "pypi: remove file"
    assert by_name["sample-1.0.tar.gz"]["removed_at"] is None
    async with _site(forage) as site, httpx.AsyncClient() as client:
        one = (await client.get(f"{site}/api/v1/packages/pypi/sample/versions/1.1")).json()
        assert one["removal"] == "pypi: remove release"
        package = (await client.get(f"{site}/api/v1/packages/pypi/sample")).json()
        summary = {v["version"]: v for v in package["versions"]}
        assert summary["1.1"]["removal"] == "pypi: remove release"
        assert summary["1.1"]["removed_at"] is not None
        assert summary["2.0"]["removal"] is None
        page = await client.get(f"{site}/packages/pypi/sample")
        assert page.status_code == 200
        section = page.text.split('id="v-1.1"', 1)[1].split("</section>", 1)[0]
        assert "Removed upstream" in section and "pypi: remove release" in section
        assert "Removed upstream" not in page.text.split('id="v-2.0"', 1)[1].split("</section>")[0]


async def _check_pypi_mirror(
    forage: Forage, pypi: FakePyPI, upstream: RunningServer, wheel_10: str
) -> None:
    listing = f"{forage.url}/pypi/simple/sample/"
    json_accept = {"accept": SIMPLE_JSON}
    async with httpx.AsyncClient() as client:
        # A stale upstream (a CDN node behind the journal) still lists the removed wheel.
        pypi.stale("sample", times=1)
        page = await client.get(listing, headers=json_accept)
        assert page.headers["Forage-Source"] == "upstream"
        names = {f["filename"] for f in page.json()["files"]}
        assert wheel_10 not in names and "sample-1.1.tar.gz" not in names
        assert "sample-1.0.tar.gz" in names and "1.1" not in page.json()["versions"]
        await upstream.close()
        for accept in (json_accept, {}):
            down = await client.get(listing, headers=accept)
            assert down.headers["Forage-Source"] == "archive"
            assert wheel_10 not in down.text and "sample-1.1" not in down.text
            assert "sample-1.0.tar.gz" in down.text and "sample-2.0.tar.gz" in down.text
        removed = next(
            f for f in pypi.projects["sample"].files if f.filename == "sample-1.0.tar.gz"
        )
        assert removed  # the kept sdist is listed; the removed wheel is served on exact request
        with forage.ctx.sessionmaker() as session:
            sha = session.execute(
                sa.text(
                    "SELECT d.value FROM artifact_digests d JOIN artifacts a"
                    " ON a.id = d.artifact_id WHERE a.filename = :f AND d.algorithm = 'sha256'"
                ),
                {"f": wheel_10},
            ).scalar_one()
        exact = await client.get(f"{forage.url}/pypi/files/{sha}/{wheel_10}")
        assert exact.status_code == 200
        assert exact.headers["Forage-Source"] == "archive-removed"


# -- PEP 792 -----------------------------------------------------------------------------------


async def test_pep_792_statuses_are_stored_shown_and_quarantine_is_never_served(
    tmp_path: Path, migrated_url: str
) -> None:
    pypi = FakePyPI()
    pypi.release("Sample", "1.0")
    upstream = await start_fake(pypi.make_app())
    try:
        async with forage_mirror(tmp_path, migrated_url, pypi=upstream.url) as forage:
            await forage.ingest("pypi", "sample")
            await forage.archive_all()
            pypi.set_status("Sample", "archived", reason="no longer maintained")
            await forage.ingest("pypi", "sample")
            (answer,) = _lookup(forage, "pkg:pypi/sample@1.0")
            assert answer["package_status"] == {
                "status": "archived",
                "reason": "no longer maintained",
            }
            async with _site(forage) as site, httpx.AsyncClient() as client:
                package = (await client.get(f"{site}/api/v1/packages/pypi/sample")).json()
                assert (package["status"], package["status_reason"]) == (
                    "archived",
                    "no longer maintained",
                )
                page = await client.get(f"{site}/packages/pypi/sample")
                assert "Status: <strong>archived</strong>" in page.text
            pypi.set_status("Sample", "quarantined", reason="malware report")
            await forage.ingest("pypi", "sample")
            with forage.ctx.sessionmaker() as session:
                package_row = session.execute(sa.select(Package)).scalar_one()
                removals = session.execute(sa.select(Artifact.removal)).scalars().all()
            assert (package_row.status, package_row.status_reason) == (
                "quarantined",
                "malware report",
            )
            # The quarantined page withholds its files: that is no removal.
            assert set(removals) == {None}
            (answer,) = _lookup(forage, "pkg:pypi/sample@1.0")
            assert answer["package_status"]["status"] == "quarantined"
            await _check_quarantine(forage, pypi, upstream)
    finally:
        await upstream.close()


async def _check_quarantine(forage: Forage, pypi: FakePyPI, upstream: RunningServer) -> None:
    listing = f"{forage.url}/pypi/simple/sample/"
    async with httpx.AsyncClient() as client:
        pypi.stale("sample", times=1)  # a stale upstream page still lists the files
        page = (await client.get(listing, headers={"accept": SIMPLE_JSON})).json()
        assert page["files"] == [] and page["project-status"]["status"] == "quarantined"
        filename = "sample-1.0.tar.gz"
        file = next(f for f in pypi.projects["sample"].files if f.filename == filename)
        served = await client.get(f"{forage.url}/pypi/files/{file.sha256}/{filename}")
        assert served.status_code == 404 and "quarantined" in served.text
        await upstream.close()
        down = (await client.get(listing, headers={"accept": SIMPLE_JSON})).json()
        assert down["files"] == [] and down["project-status"]["status"] == "quarantined"
        served = await client.get(f"{forage.url}/pypi/files/{file.sha256}/{filename}")
        assert served.status_code == 404


def test_withdraw_page_leaves_unknown_pages_alone() -> None:
    doc = {"name": "x", "files": [{"filename": "x-1.0.tar.gz"}], "versions": ["1.0"]}
    assert withdraw_page(doc, Withdrawn()) is doc
    gone = withdraw_page(
        doc, Withdrawn(versions=frozenset({"1.0"}), files=frozenset({"x-1.0.tar.gz"}))
    )
    assert gone["files"] == [] and gone["versions"] == []


# -- npm -----------------------------------------------------------------------------------------


async def test_npm_unpublish_and_deprecation_are_recorded_and_shown(
    tmp_path: Path, migrated_url: str
) -> None:
    npm = FakeNpmRegistry()
    for version in ("1.0.0", "1.1.0", "2.0.0"):
        npm.publish_release("left-pad", version)
    upstream = await start_fake(npm.make_app())
    try:
        async with forage_mirror(tmp_path, migrated_url, npm=upstream.url) as forage:
            await forage.ingest("npm", "left-pad")
            await forage.archive_all()
            npm.deprecate("left-pad", "2.0.0", "use right-pad")
            npm.unpublish_version("left-pad", "1.1.0")
            await forage.ingest("npm", "left-pad")
            removed, deprecated = _lookup(forage, "npm:left-pad:1.1.0", "npm:left-pad:2.0.0")
            assert removed["removal"] == "npm: version unpublished"
            assert removed["deleted"] is True and removed["artifacts"][0]["cid"]
            assert deprecated["deprecated"] == "use right-pad"
            assert deprecated["removal"] is None and deprecated["package_status"] is None
            async with httpx.AsyncClient() as client:
                npm.lag("left-pad", times=1)  # the upstream still serves the old revision
                doc = (await client.get(f"{forage.url}/npm/left-pad")).json()
                assert set(doc["versions"]) == {"1.0.0", "2.0.0"}
                await upstream.close()
                down = await client.get(f"{forage.url}/npm/left-pad")
                assert down.headers["Forage-Source"] == "archive"
                assert set(down.json()["versions"]) == {"1.0.0", "2.0.0"}
                assert down.json()["versions"]["2.0.0"]["deprecated"] == "use right-pad"
                tarball = await client.get(f"{forage.url}/npm/left-pad/-/left-pad-1.1.0.tgz")
                assert tarball.status_code == 200
                assert tarball.headers["Forage-Source"] == "archive-removed"
    finally:
        await upstream.close()


async def test_npm_package_statuses_deprecated_then_unpublished(
    tmp_path: Path, migrated_url: str
) -> None:
    npm = FakeNpmRegistry()
    npm.publish_release("old-pkg", "1.0.0")
    upstream = await start_fake(npm.make_app())
    try:
        async with forage_mirror(tmp_path, migrated_url, npm=upstream.url) as forage:
            npm.deprecate("old-pkg", "1.0.0", "unmaintained")
            await forage.ingest("npm", "old-pkg")
            (answer,) = _lookup(forage, "npm:old-pkg:1.0.0")
            assert answer["package_status"] == {"status": "deprecated", "reason": "unmaintained"}
            npm.unpublish("old-pkg")
            await forage.ingest("npm", "old-pkg")
            (answer,) = _lookup(forage, "npm:old-pkg:1.0.0")
            assert answer["package_status"]["status"] == "unpublished"
            assert answer["removal"] == "npm: version unpublished"
    finally:
        await upstream.close()


# -- Go --------------------------------------------------------------------------------------------


async def test_a_go_retraction_is_recorded_with_its_rationale(
    tmp_path: Path, migrated_url: str
) -> None:
    path = "example.com/retracting"
    go = GoFake()
    for version in ("v1.0.0", "v1.1.0"):
        go.add_version(path, version, files={"go.mod": f"module {path}\n", "a.go": "package a\n"})
    retracts = f"module {path}\n\n// v1.1.0 corrupts data.\nretract v1.1.0\n"
    go.add_version(path, "v1.2.0", files={"go.mod": retracts, "a.go": "package a\n"})
    async with go, forage_mirror(tmp_path, migrated_url, golang=go.endpoints) as forage:
        await forage.ingest("golang", path)
        await forage.archive_all()
        retracted, fine = _lookup(forage, f"pkg:golang/{path}@v1.1.0", f"go:{path}:v1.0.0")
        assert retracted["removal"] == "golang: retracted v1.1.0: v1.1.0 corrupts data."
        assert retracted["yanked"] is True and retracted["removed_at"] is not None
        assert fine["removal"] is None
        async with httpx.AsyncClient() as client:
            listed = await client.get(f"{forage.url}/go/{path}/@v/list")
            assert listed.headers["Forage-Source"] == "upstream"
            assert listed.text.split() == ["v1.0.0", "v1.2.0"]
            await go.close()
            down = await client.get(f"{forage.url}/go/{path}/@v/list")
            assert down.headers["Forage-Source"] == "archive"
            assert down.text.split() == ["v1.0.0", "v1.2.0"]
            zip_ = await client.get(f"{forage.url}/go/{path}/@v/v1.1.0.zip")
            assert zip_.status_code == 200
            assert zip_.headers["Forage-Source"] == "archive-removed"


def test_a_release_can_name_its_own_removal(db_session: Session) -> None:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    info = PackageInfo(
        ecosystem="npm",
        name="demo",
        display_name="demo",
        releases=(
            Release("1.0.0", (_file("demo-1.0.0.tgz"),), when),
            Release("0.9.0", (), when, deleted=True, removal="npm: version unpublished"),
        ),
    )
    record_package(db_session, info, archive=False)
    state = _state(db_session, "npm")
    assert state["versions"]["0.9.0"][0] == "npm: version unpublished"
    assert state["versions"]["1.0.0"][0] is None


# -- the indexers' mappings ----------------------------------------------------------------------


def test_pep_792_markers_map_to_statuses() -> None:
    from indexers.pypi.indexer import map_simple_project, project_status

    assert project_status({"status": "active"}) == (None, None)
    assert project_status({"status": "frozen-in-time"}) == (None, None)  # unknown: active
    assert project_status(None) == (None, None)
    assert project_status({"status": "archived", "reason": ""}) == ("archived", None)
    page = {
        "meta": {"api-version": "1.4"},
        "name": "x",
        "project-status": {"status": "quarantined", "reason": "malware"},
        "files": [],
        "versions": [],
    }
    info = map_simple_project(page, url="https://pypi.invalid/simple/x/")
    assert (info.status, info.status_reason, info.complete) == ("quarantined", "malware", False)
    page["project-status"] = {"status": "deprecated"}
    info = map_simple_project(page, url="https://pypi.invalid/simple/x/")
    assert (info.status, info.complete) == ("deprecated", True)


def test_npm_status_rules_and_go_retraction_notes() -> None:
    from indexers.golang.indexer import Retraction
    from indexers.npm.indexer import package_status

    live = Release("1.0.0", (), deprecated="old")
    newer = Release("2.0.0", (), deprecated="use y")
    gone = Release("0.1.0", (), deleted=True)
    assert package_status([gone, live, newer], None) == ("deprecated", "use y")
    assert package_status([live, Release("3.0.0", ())], None) == (None, None)
    assert package_status([], None) == (None, None)
    stub = {"time": "2024-05-01T00:00:00.000Z", "versions": ["1.0.0"]}
    assert package_status([], stub) == ("unpublished", "unpublished 2024-05-01T00:00:00.000Z")
    assert Retraction("v1.0.0", "v1.1.0", "bad").note() == "golang: retracted [v1.0.0, v1.1.0]: bad"
    assert Retraction("v1.2.1", "v1.2.1").note() == "golang: retracted v1.2.1"
    # A version the proxy lists but no longer serves, in the Go indexer's words.
    gone_go = Release("v1.0.0", (), deleted=True)
    assert release_removal("golang", gone_go) == "golang: listed but no longer served"
    assert release_removal("npm", Release("1.0.0", ())) is None
