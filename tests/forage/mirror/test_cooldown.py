"""The mirror's cooldown (``registries.<name>.cooldown_days``): releases younger than it stay
out of npm packuments and dist-tags, PyPI simple pages and Go ``@v/list``/``@latest``,
whether the upstream answers or the archive does; a release older than the cooldown shows.

Each fake publishes an old release (ten days ago) and a fresh one (an hour ago); a mirror
with a one-day cooldown hides the fresh one, a mirror whose cooldown (about fourteen minutes)
it has outlived shows it. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from indexers import FakeRegistry
from indexers.fakeserver import RunningServer, start_fake
from indexers.golang.fake import GoFake
from indexers.npm.fake import FakeNpmRegistry
from indexers.npm.mirror import CORGI
from indexers.pypi.fake import FakePyPI
from indexers.pypi.mirror import SIMPLE_JSON
from tests.forage.mirror.conftest import Forage, forage_mirror

#: A day hides a release an hour old; 0.01 day (14.4 minutes) does not.
HIDES, SHOWS = 1.0, 0.01


def _now() -> datetime:
    return datetime.now(UTC)


@asynccontextmanager
async def mirror_of(
    tmp_path: Path, db_url: str, ecosystem: str, fake: FakeRegistry, cooldown: float
) -> AsyncIterator[tuple[Forage, httpx.AsyncClient, RunningServer]]:
    upstream = await start_fake(fake.make_app())
    table = {**fake.config_endpoints(upstream.url), "cooldown_days": cooldown}
    try:
        async with (
            forage_mirror(
                tmp_path / str(cooldown), db_url, registries={ecosystem: table}
            ) as forage,
            httpx.AsyncClient(base_url=forage.url) as client,
        ):
            yield forage, client, upstream
    finally:
        await upstream.close()


def _npm() -> FakeNpmRegistry:
    registry = FakeNpmRegistry(start_time=_now() - timedelta(days=10))
    registry.publish("cool-pkg", "1.0.0")
    registry.start_time = _now() - timedelta(hours=1)
    registry.publish("cool-pkg", "1.1.0")
    return registry


@pytest.mark.parametrize(("cooldown", "visible"), [(HIDES, False), (SHOWS, True)])
async def test_npm_packument_and_dist_tags_wait_out_the_cooldown(
    migrated_url: str, tmp_path: Path, cooldown: float, visible: bool
) -> None:
    (tmp_path / str(cooldown)).mkdir()
    async with mirror_of(tmp_path, migrated_url, "npm", _npm(), cooldown) as (_, client, _up):
        full = (await client.get("/npm/cool-pkg")).json()
        corgi = (await client.get("/npm/cool-pkg", headers={"accept": CORGI})).json()
        latest = (await client.get("/npm/cool-pkg/latest")).json()
        tarball = await client.get("/npm/cool-pkg/-/cool-pkg-1.1.0.tgz")
    newest = "1.1.0" if visible else "1.0.0"
    assert set(full["versions"]) == ({"1.0.0", "1.1.0"} if visible else {"1.0.0"})
    assert ("1.1.0" in full["time"]) is visible
    assert full["dist-tags"]["latest"] == corgi["dist-tags"]["latest"] == newest
    assert set(corgi["versions"]) == set(full["versions"])
    assert latest["version"] == newest
    assert tarball.status_code == 200  # an exact request is not a listing


async def test_npm_archive_fallback_keeps_the_cooldown(migrated_url: str, tmp_path: Path) -> None:
    (tmp_path / str(HIDES)).mkdir()
    async with mirror_of(tmp_path, migrated_url, "npm", _npm(), HIDES) as (forage, client, up):
        await forage.ingest("npm", "cool-pkg")
        assert await forage.archive_all() == 2
        await up.close()  # the upstream is gone: the archive answers
        answer = await client.get("/npm/cool-pkg")
    assert answer.headers["Forage-Source"] == "archive"
    assert set(answer.json()["versions"]) == {"1.0.0"}
    assert answer.json()["dist-tags"]["latest"] == "1.0.0"


def _pypi() -> FakePyPI:
    registry = FakePyPI(start_time=_now() - timedelta(days=10))
    registry.release("cool-proj", "1.0")
    registry.start_time = _now() - timedelta(hours=1)
    registry.release("cool-proj", "1.1")
    return registry


@pytest.mark.parametrize(("cooldown", "visible"), [(HIDES, False), (SHOWS, True)])
async def test_pypi_simple_page_waits_out_the_cooldown(
    migrated_url: str, tmp_path: Path, cooldown: float, visible: bool
) -> None:
    (tmp_path / str(cooldown)).mkdir()
    async with mirror_of(tmp_path, migrated_url, "pypi", _pypi(), cooldown) as (_, client, _up):
        page = (await client.get("/pypi/simple/cool-proj/", headers={"accept": SIMPLE_JSON})).json()
        html = (await client.get("/pypi/simple/cool-proj/")).text
    files = {file["filename"] for file in page["files"]}
    assert any("1.0" in f for f in files)
    assert any("-1.1" in f for f in files) is visible
    assert ("1.1" in page["versions"]) is visible
    assert ("cool_proj-1.1" in html or "cool-proj-1.1" in html) is visible


def _go() -> GoFake:
    registry = GoFake()
    registry.add_version("example.com/cool", "v1.0.0", time=_now() - timedelta(days=10))
    registry.add_version("example.com/cool", "v1.1.0", time=_now() - timedelta(hours=1))
    return registry


@pytest.mark.parametrize(("cooldown", "visible"), [(HIDES, False), (SHOWS, True)])
async def test_go_list_and_latest_wait_out_the_cooldown(
    migrated_url: str, tmp_path: Path, cooldown: float, visible: bool
) -> None:
    (tmp_path / str(cooldown)).mkdir()
    async with mirror_of(tmp_path, migrated_url, "golang", _go(), cooldown) as (_, client, _up):
        listed = (await client.get("/go/example.com/cool/@v/list")).text.split()
        latest = (await client.get("/go/example.com/cool/@latest")).json()
        info = await client.get("/go/example.com/cool/@v/v1.1.0.info")
    assert listed == (["v1.0.0", "v1.1.0"] if visible else ["v1.0.0"])
    assert latest["Version"] == ("v1.1.0" if visible else "v1.0.0")
    assert info.status_code == 200  # an exact request is not a listing
