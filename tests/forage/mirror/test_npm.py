"""The npm mirror's rules, seen over HTTP: upstream first, the archive on every failure,
removed releases, holds, single flight, the metadata cache and hostile names."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from forage.db.models import Archive, Package
from indexers.fakeserver import RunningServer, blackhole, start_fake
from indexers.npm.fake import FakeNpmRegistry, NpmTarball, tarball_path
from indexers.npm.mirror import CORGI
from storage import parse_cid
from tests.forage.mirror.conftest import Forage, forage_mirror

TARBALL = "/npm/left-pad/-/left-pad-1.1.0.tgz"


@pytest.fixture
def registry() -> FakeNpmRegistry:
    registry = FakeNpmRegistry()
    registry.publish("left-pad", "1.0.0")
    registry.publish("left-pad", "1.1.0", files={"index.js": b"module.exports = 1;\n"})
    registry.publish("@scope/pkg", "2.0.0", deprecated="use other")
    return registry


@pytest.fixture
async def upstream(registry: FakeNpmRegistry) -> AsyncIterator[RunningServer]:
    running = await start_fake(registry.make_app())
    yield running
    await running.close()


async def archived_forage(
    tmp_path: Path, db_url: str, upstream: str, **mirror: Any
) -> AsyncIterator[Forage]:
    async with forage_mirror(tmp_path, db_url, npm=upstream, mirror=mirror) as forage:
        await forage.ingest("npm", "left-pad")
        await forage.ingest("npm", "@scope/pkg")
        await forage.archive_all()
        yield forage


@pytest.fixture
async def forage(
    tmp_path: Path, db_url: str, upstream: RunningServer, registry: FakeNpmRegistry
) -> AsyncIterator[Forage]:
    async for running in archived_forage(tmp_path, db_url, upstream.url):
        registry.requests.clear()
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as shared:
        yield shared


def tarball(registry: FakeNpmRegistry, version: str = "1.1.0") -> NpmTarball:
    return registry.tarballs[tarball_path("left-pad", version)]


async def test_upstream_packument_with_tarballs_through_forage(
    forage: Forage, registry: FakeNpmRegistry, client: httpx.AsyncClient
) -> None:
    response = await client.get(
        f"{forage.url}/npm/left-pad", headers={"accept": "application/json"}
    )
    assert response.headers["Forage-Source"] == "upstream"
    doc = response.json()
    upstream = registry.docs["left-pad"]
    assert doc["dist-tags"] == upstream["dist-tags"]
    assert doc["time"] == upstream["time"]
    for version, manifest in doc["versions"].items():
        dist = manifest["dist"]
        assert dist["integrity"] == upstream["versions"][version]["dist"]["integrity"]
        assert dist["tarball"] == f"{forage.url}/npm/left-pad/-/left-pad-{version}.tgz"
    corgi = await client.get(f"{forage.url}/npm/left-pad", headers={"accept": CORGI})
    assert corgi.headers["content-type"].startswith(CORGI)
    assert "time" not in corgi.json()
    abbreviated = corgi.json()["versions"]["1.0.0"]
    assert abbreviated["dist"]["integrity"] == tarball(registry, "1.0.0").integrity
    assert not {"description", "scripts", "gitHead", "_npmUser", "maintainers"} & set(abbreviated)
    scoped = await client.get(f"{forage.url}/npm/@scope%2fpkg")
    assert scoped.json()["versions"]["2.0.0"]["deprecated"] == "use other"
    assert scoped.json()["versions"]["2.0.0"]["dist"]["tarball"].endswith(
        "/npm/@scope/pkg/-/pkg-2.0.0.tgz"
    )
    body = await client.get(f"{forage.url}{TARBALL}")
    assert body.content == tarball(registry).data
    # An archived tarball never changes: served from the archive, the upstream not asked.
    assert body.headers["Forage-Source"] == "archive"
    assert body.headers["Forage-Verified"] == "sha512,sha1"
    assert tarball_path("left-pad", "1.1.0") not in registry.requests.paths()


@pytest.mark.parametrize(
    "fault",
    ["stopped", "503", "reset", "truncate", "drip", "tamper"],
)
async def test_every_upstream_failure_falls_back_to_the_archive(
    fault: str,
    forage: Forage,
    registry: FakeNpmRegistry,
    upstream: RunningServer,
    client: httpx.AsyncClient,
) -> None:
    expected_kind = {
        "stopped": "refused",
        "503": "status",
        "reset": "reset",
        "truncate": "truncated",
        "drip": "slow",
        "tamper": "digest",
    }[fault]
    original = tarball(registry).data
    if fault == "stopped":
        await upstream.close()
    elif fault == "503":
        registry.faults.fail(503, times=2)
    elif fault == "reset":
        registry.faults.reset(times=2)
    elif fault == "truncate":
        registry.faults.truncate(path=tarball_path("left-pad", "1.1.0"))
    elif fault == "drip":
        registry.faults.drip(0.2, chunk=50, path=tarball_path("left-pad", "1.1.0"))
    else:
        registry.tamper("left-pad", "1.1.0", b"evil bytes")
    started = time.monotonic()
    response = await client.get(f"{forage.url}{TARBALL}")
    assert response.status_code == 200
    assert response.content == original
    assert response.headers["Forage-Source"] == "archive"
    if fault in ("truncate", "drip", "tamper"):  # the archived tarball is not fetched at all
        assert "Forage-Upstream-Error" not in response.headers
        assert tarball_path("left-pad", "1.1.0") not in registry.requests.paths()
    else:  # the packument, read for removals, is what failed
        assert response.headers["Forage-Upstream-Error"].startswith(expected_kind)
    assert response.headers["Forage-Verified"] == "sha512,sha1"
    assert time.monotonic() - started < 3


async def test_packument_falls_back_to_archived_versions_only(
    forage: Forage, registry: FakeNpmRegistry, upstream: RunningServer, client: httpx.AsyncClient
) -> None:
    registry.publish("left-pad", "2.0.0")  # never archived
    await forage.ingest("npm", "left-pad")
    await upstream.close()
    response = await client.get(f"{forage.url}/npm/left-pad")
    assert response.headers["Forage-Source"] == "archive"
    doc = response.json()
    assert set(doc["versions"]) == {"1.0.0", "1.1.0"}
    assert doc["dist-tags"]["latest"] == "1.1.0"  # 2.0.0 is upstream's latest, not held
    manifest = doc["versions"]["1.1.0"]
    assert manifest["main"] == "index.js"  # read from the archived tarball's package.json
    assert manifest["dist"]["integrity"] == tarball(registry).integrity
    # Neither the upstream nor the archive can answer: a 502 npm reports (and retries), not
    # the 404 that makes it say the package does not exist.
    unarchived = await client.get(f"{forage.url}/npm/left-pad/-/left-pad-2.0.0.tgz")
    assert unarchived.status_code == 502
    corgi = await client.get(f"{forage.url}/npm/left-pad", headers={"accept": CORGI})
    assert set(corgi.json()["versions"]) == {"1.0.0", "1.1.0"}
    missing = await client.get(f"{forage.url}/npm/never-archived")
    assert missing.status_code == 502
    assert missing.json()["error"].startswith("upstream failed (refused: connection refused)")


async def test_blackholed_upstream_answers_within_the_deadline(
    tmp_path: Path, db_url: str, upstream: RunningServer, client: httpx.AsyncClient
) -> None:
    async for _ in archived_forage(tmp_path, db_url, upstream.url):
        pass
    # The same index and archive, with the registry now at an address that never answers.
    with blackhole() as hole:
        async with forage_mirror(tmp_path, db_url, npm=hole) as forage:
            started = time.monotonic()
            response = await client.get(f"{forage.url}/npm/left-pad")
            elapsed = time.monotonic() - started
    assert response.headers["Forage-Source"] == "archive"
    assert response.headers["Forage-Upstream-Error"].startswith("timeout")
    assert set(response.json()["versions"]) == {"1.0.0", "1.1.0"}
    assert elapsed < 2.5  # connect timeout 1 s in these tests


async def test_removed_release_is_left_out_but_served_on_exact_request(
    forage: Forage, registry: FakeNpmRegistry, upstream: RunningServer, client: httpx.AsyncClient
) -> None:
    original = tarball(registry).data
    registry.unpublish_version("left-pad", "1.1.0")
    del registry.tarballs[tarball_path("left-pad", "1.1.0")]  # the registry 404s it now
    await forage.ingest("npm", "left-pad")
    listed = await client.get(f"{forage.url}/npm/left-pad")
    assert set(listed.json()["versions"]) == {"1.0.0"}
    exact = await client.get(f"{forage.url}{TARBALL}")
    assert exact.status_code == 200
    assert exact.content == original
    assert exact.headers["Forage-Source"] == "archive-removed"
    await upstream.close()
    listed = await client.get(f"{forage.url}/npm/left-pad")
    assert set(listed.json()["versions"]) == {"1.0.0"}
    assert listed.json()["dist-tags"] == {"latest": "1.0.0"}
    exact = await client.get(f"{forage.url}{TARBALL}")
    assert exact.headers["Forage-Source"] == "archive-removed"
    assert exact.content == original


async def test_a_held_package_is_never_served(
    forage: Forage, upstream: RunningServer, client: httpx.AsyncClient
) -> None:
    with forage.ctx.sessionmaker.begin() as session:
        package = session.execute(sa.select(Package).where(Package.name == "left-pad")).scalar_one()
        package.extra = {**package.extra, "security_hold": "malware"}
    response = await client.get(f"{forage.url}{TARBALL}")
    assert response.status_code == 404
    assert "security hold: malware" in response.json()["error"]
    await upstream.close()
    assert (await client.get(f"{forage.url}/npm/left-pad")).status_code == 404
    assert (await client.get(f"{forage.url}{TARBALL}")).status_code == 404


async def test_a_corrupt_archive_is_never_served(
    forage: Forage, upstream: RunningServer, client: httpx.AsyncClient
) -> None:
    with forage.ctx.sessionmaker() as session:
        cid = session.execute(
            sa.select(Archive.cid)
            .join(Archive.artifact)
            .where(sa.text("filename = 'left-pad-1.1.0.tgz'"))
        ).scalar_one()
    store = forage.ctx.blockstore
    assert store is not None
    location = store.locate(parse_cid(cid))  # type: ignore[attr-defined]
    fd = os.open(store.pack_path(location.pack), os.O_WRONLY)  # type: ignore[attr-defined]
    try:
        os.pwrite(fd, b"rotten", location.offset)  # the block's first bytes, in its pack
    finally:
        os.close(fd)
    await upstream.close()
    response = await client.get(f"{forage.url}{TARBALL}")
    assert response.status_code == 502
    assert "failed verification" in response.json()["error"]
    assert response.content.find(b"rotten") == -1


async def test_concurrent_requests_make_one_upstream_fetch(
    forage: Forage, registry: FakeNpmRegistry, client: httpx.AsyncClient
) -> None:
    registry.publish("left-pad", "2.0.0")  # not archived: fetched from the upstream
    registry.faults.slow(0.3, path=tarball_path("left-pad", "2.0.0"))
    # Learn the tarball's upstream location first, so only the tarball is in flight.
    await client.get(f"{forage.url}/npm/left-pad")
    registry.requests.clear()
    new = f"{forage.url}/npm/left-pad/-/left-pad-2.0.0.tgz"
    responses = await asyncio.gather(*(client.get(new) for _ in range(12)))
    assert {r.content for r in responses} == {tarball(registry, "2.0.0").data}
    assert registry.requests.paths() == [tarball_path("left-pad", "2.0.0")]


async def test_metadata_cache_and_short_lived_404(
    tmp_path: Path,
    db_url: str,
    upstream: RunningServer,
    registry: FakeNpmRegistry,
    client: httpx.AsyncClient,
) -> None:
    settings = {"metadata_ttl": 60, "negative_ttl": 0.3}
    async for forage in archived_forage(tmp_path, db_url, upstream.url, **settings):
        registry.requests.clear()
        for _ in range(3):
            assert (await client.get(f"{forage.url}/npm/left-pad")).status_code == 200
        assert registry.requests.paths() == ["/left-pad"]
        # Cached documents are still an upstream answer, and still rewritten for Forage.
        assert (await client.get(f"{forage.url}/npm/left-pad")).headers[
            "Forage-Source"
        ] == "upstream"
        assert (await client.get(f"{forage.url}/npm/brand-new")).status_code == 404
        registry.publish("brand-new", "0.1.0")
        assert (await client.get(f"{forage.url}/npm/brand-new")).status_code == 404  # cached 404
        await asyncio.sleep(0.35)
        assert (await client.get(f"{forage.url}/npm/brand-new")).status_code == 200


async def test_a_down_upstream_is_skipped_for_a_while(
    tmp_path: Path,
    db_url: str,
    upstream: RunningServer,
    registry: FakeNpmRegistry,
    client: httpx.AsyncClient,
) -> None:
    async for forage in archived_forage(tmp_path, db_url, upstream.url, down_seconds=30):
        registry.requests.clear()
        registry.faults.fail(503)
        first = await client.get(f"{forage.url}/npm/left-pad")
        assert first.headers["Forage-Upstream-Error"] == "status: HTTP 503"
        second = await client.get(f"{forage.url}{TARBALL}")
        assert second.headers["Forage-Source"] == "archive"
        assert second.headers["Forage-Upstream-Error"].startswith("down")
        assert registry.requests.paths() == ["/left-pad"]


@pytest.mark.parametrize(
    "path",
    [
        "/npm/..%2f..%2fetc%2fpasswd",
        "/npm/%2e%2e",
        "/npm/a%00b",
        "/npm/" + "a" * 5000,
        "/npm/left-pad/-/..%2f..%2fsecret.tgz",
        "/npm/left-pad/-/%2e%2e",
        "/npm/left-pad/-/x%00.tgz",
        "/npm/@scope%2f..%2fpkg",
        "/npm/ left-pad",
    ],
    ids=lambda path: path[:40],
)
async def test_hostile_names_never_reach_the_upstream(
    path: str, forage: Forage, registry: FakeNpmRegistry, client: httpx.AsyncClient
) -> None:
    response = await client.get(forage.url + path)
    assert response.status_code in (400, 404)
    assert registry.requests.seen == []
