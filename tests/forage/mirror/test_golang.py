"""The GOPROXY mirror over HTTP: pass-through, the archive on failure, 404/410 never 5xx,
removed modules, case-encoded paths and hostile input."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from indexers.fakeserver import serve
from indexers.golang.fake import FakeVersion, GoEndpoints, GoFake
from indexers.golang.gomod import zip_h1
from tests.forage.mirror.conftest import Forage, forage_mirror

MODULE = "example.com/Demo"
ESCAPED = "example.com/!demo"
GO_MOD = "module example.com/Demo\n\ngo 1.19\n"


@pytest.fixture
async def fake() -> AsyncIterator[GoFake]:
    fake = GoFake()
    fake.add_version(MODULE, "v1.0.0", files={"go.mod": GO_MOD, "a.go": "package demo\n"})
    fake.add_version(MODULE, "v1.1.0", files={"go.mod": GO_MOD, "a.go": "package demo // 1.1\n"})
    fake.add_version(MODULE, "v1.2.0-rc.1", files={"go.mod": GO_MOD})
    async with fake:
        yield fake


@pytest.fixture
async def forage(tmp_path: Path, db_url: str, fake: GoFake) -> AsyncIterator[Forage]:
    async with forage_mirror(tmp_path, db_url, golang=fake.endpoints) as running:
        await running.ingest("golang", MODULE)
        await running.archive_all()
        fake.requests.clear()
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as shared:
        yield shared


def version(fake: GoFake, number: str) -> FakeVersion:
    return fake.modules[MODULE][number]


async def test_upstream_answers_pass_through(
    forage: Forage, fake: GoFake, client: httpx.AsyncClient
) -> None:
    base = f"{forage.url}/go/{ESCAPED}"
    listed = await client.get(f"{base}/@v/list")
    assert listed.text.split() == ["v1.0.0", "v1.1.0", "v1.2.0-rc.1"]
    assert listed.headers["Forage-Source"] == "upstream"
    info = await client.get(f"{base}/@v/v1.1.0.info")
    assert info.json()["Version"] == "v1.1.0"
    assert (await client.get(f"{base}/@v/v1.1.0.mod")).text == GO_MOD
    # The go command sends "!" as %21.
    archive = await client.get(f"{forage.url}/go/example.com/%21demo/@v/v1.1.0.zip")
    assert archive.content == version(fake, "v1.1.0").zip
    assert archive.headers["Forage-Verified"] == "h1"
    # An archived zip never changes: served from the archive, the proxy not asked for it.
    assert archive.headers["Forage-Source"] == "archive"
    assert "/proxy/example.com/!demo/@v/v1.1.0.zip" not in fake.requests.paths()


@pytest.mark.parametrize("fault", ["stopped", "503", "tamper"])
async def test_failures_fall_back_to_the_archive(
    fault: str, forage: Forage, fake: GoFake, client: httpx.AsyncClient
) -> None:
    expected = version(fake, "v1.1.0").zip
    if fault == "stopped":
        await fake.close()
    elif fault == "503":
        fake.faults.fail(503, times=5)
    else:
        fake.tamper(MODULE, "v1.1.0", {"go.mod": GO_MOD, "a.go": b"package evil\n"})
    base = f"{forage.url}/go/{ESCAPED}"
    archive = await client.get(f"{base}/@v/v1.1.0.zip")
    assert archive.status_code == 200
    assert archive.content == expected
    assert archive.headers["Forage-Source"] == "archive"
    if fault == "tamper":  # the archived zip is not fetched, so the tampered one is never seen
        assert "Forage-Upstream-Error" not in archive.headers
        return
    kind = {"stopped": "refused", "503": "status"}[fault]
    assert archive.headers["Forage-Upstream-Error"].startswith(kind)
    listed = await client.get(f"{base}/@v/list")
    assert listed.text.split() == ["v1.0.0", "v1.1.0", "v1.2.0-rc.1"]
    assert listed.headers["Forage-Source"] == "archive"
    latest = await client.get(f"{base}/@latest")
    assert latest.json()["Version"] == "v1.1.0"
    info = await client.get(f"{base}/@v/v1.0.0.info")
    assert info.json()["Version"] == "v1.0.0"
    assert info.json()["Time"].endswith("Z")
    mod = await client.get(f"{base}/@v/v1.0.0.mod")
    assert mod.text == GO_MOD
    assert "go.mod h1" in mod.headers["Forage-Verified"]


async def test_not_archived_is_a_404_never_a_5xx(
    forage: Forage, fake: GoFake, client: httpx.AsyncClient
) -> None:
    await fake.close()
    for path in (
        "/go/example.com/other/@v/list",
        "/go/example.com/other/@latest",
        f"/go/{ESCAPED}/@v/v9.9.9.zip",
        f"/go/{ESCAPED}/@v/v9.9.9.info",
        "/go/example.com/@v/list",  # the go command probes path prefixes
        "/go/sumdb/sum.golang.org/supported",
    ):
        response = await client.get(forage.url + path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("text/plain")


async def test_removed_module_serves_an_exact_zip_marked_removed(
    forage: Forage, fake: GoFake, client: httpx.AsyncClient
) -> None:
    fake.remove_module(MODULE)  # the proxy answers 410 Gone
    base = f"{forage.url}/go/{ESCAPED}"
    listed = await client.get(f"{base}/@v/list")
    assert listed.status_code == 410
    archive = await client.get(f"{base}/@v/v1.0.0.zip")
    assert archive.status_code == 200
    assert archive.headers["Forage-Source"] == "archive-removed"
    assert zip_h1_of(archive.content) == version(fake, "v1.0.0").h1
    info = await client.get(f"{base}/@v/v1.0.0.info")
    assert info.headers["Forage-Source"] == "archive-removed"


def zip_h1_of(data: bytes) -> str:
    return zip_h1(io.BytesIO(data))


@pytest.mark.parametrize(
    "path",
    [
        "/go/example.com/%2e%2e/@v/list",
        "/go/example.com/../secret/@v/list",
        "/go/example.com/Demo/@v/list",  # upper case must be case-encoded
        "/go/example.com/a%00b/@v/list",
        "/go/" + "a" * 3000 + ".com/x/@v/list",
        f"/go/{ESCAPED}/@v/..%2f..%2fv1.0.0.zip",
        f"/go/{ESCAPED}/@v/V1.0.0.zip",
        f"/go/{ESCAPED}/@v/v1.0.0.exe",
    ],
    ids=lambda path: path[:40],
)
async def test_hostile_paths_never_reach_the_upstream(
    path: str, forage: Forage, fake: GoFake, client: httpx.AsyncClient
) -> None:
    response = await client.get(forage.url + path)
    assert response.status_code == 404
    assert fake.requests.seen == []


async def test_a_module_without_go_mod_gets_the_synthetic_one(
    tmp_path: Path, db_url: str, client: httpx.AsyncClient
) -> None:
    fake = GoFake()
    fake.add_version("example.com/plain", "v0.1.0", files={"x.go": "package x\n"})
    async with serve(fake.app()) as running:
        endpoints = GoEndpoints.at(running.url)
        async with forage_mirror(tmp_path, db_url, golang=endpoints) as forage:
            await forage.ingest("golang", "example.com/plain")
            await forage.archive_all()
            await running.close()
            mod = await client.get(f"{forage.url}/go/example.com/plain/@v/v0.1.0.mod")
    assert mod.status_code == 200
    assert mod.text == "module example.com/plain\n"
    assert mod.headers["Forage-Source"] == "archive"
