"""The real ``composer`` installs through Forage's Composer repository.

A small project requires two packages of a loopback Packagist: one whose dist is a code-forge
zipball with an empty ``shasum`` (as Packagist lists GitHub packages) and one whose ``shasum``
is published. ``composer install`` runs with Forage as its only repository (``packagist.org``
disabled, ``secure-http`` off for loopback, home and cache in ``tmp_path``) with the upstream
up, then down (the archive answers), then serving corrupt bytes (Forage refuses them and the
archive answers), and on an air-gapped Forage loaded from ``forage export``/``import-car``;
each time the zips Composer downloaded are the published bytes and the installed files are
theirs. Skips only where ``composer`` is absent and ``CI`` is not ``true``.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from pathlib import Path

import httpx
import pytest

from forage.lookup.batch import lookup
from indexers.composer.fake import ComposerDist, FakePackagist
from indexers.fakeserver import serve, start_fake
from tests.forage.mirror.conftest import forage_mirror, mirror_config
from tests.forage.mirror.test_clients import base_env, need, run
from tests.forage.mirror.test_offline import cli, second_database

pytestmark = pytest.mark.slow


def composer_env(root: Path) -> dict[str, str]:
    env = base_env(root)
    env.update(
        COMPOSER_HOME=str(root / "composer-home"),
        COMPOSER_CACHE_DIR=str(root / "composer-cache"),
        COMPOSER_NO_AUDIT="1",
        COMPOSER_ALLOW_SUPERUSER="1",
        COMPOSER_NO_INTERACTION="1",
        COMPOSER_DISABLE_XDEBUG_WARN="1",
    )
    return env


async def composer_install(
    composer: str, repository: str, require: dict[str, str], root: Path
) -> dict[str, object]:
    """``composer install`` of a project requiring ``require`` from ``repository`` only;
    returns the ``composer.lock`` it wrote."""
    project = root / "project"
    project.mkdir(parents=True)
    manifest = {
        "name": "forage/consumer",
        "require": require,
        "repositories": [{"type": "composer", "url": repository}, {"packagist.org": False}],
        "config": {"secure-http": False},
    }
    (project / "composer.json").write_text(json.dumps(manifest, indent=2))
    await run([composer, "install", "--no-progress"], env=composer_env(root), cwd=project)
    lock: dict[str, object] = json.loads((project / "composer.lock").read_text())
    return lock


def downloaded(root: Path) -> set[bytes]:
    """The zips Composer downloaded (its files cache keeps each one it verified)."""
    return {path.read_bytes() for path in (root / "composer-cache" / "files").rglob("*.zip")}


def installed(root: Path, dist: ComposerDist) -> dict[str, bytes]:
    """The files Composer installed for ``dist``'s package, by path inside the package."""
    where = root / "project" / "vendor" / dist.name
    return {
        str(path.relative_to(where)): path.read_bytes()
        for path in where.rglob("*")
        if path.is_file()
    }


def published(dist: ComposerDist) -> dict[str, bytes]:
    """The files inside the published zip, without its top directory."""
    with zipfile.ZipFile(io.BytesIO(dist.data)) as archive:
        return {
            info.filename.split("/", 1)[1]: archive.read(info)
            for info in archive.infolist()
            if not info.is_dir()
        }


def locked(lock: dict[str, object]) -> dict[str, dict[str, object]]:
    packages = lock["packages"]
    assert isinstance(packages, list)
    return {entry["name"]: entry for entry in packages}


def check(root: Path, lock: dict[str, object], forage: str, *dists: ComposerDist) -> None:
    """Composer installed exactly the published bytes of ``dists`` through ``forage``."""
    entries = locked(lock)
    assert set(entries) == {dist.name for dist in dists}
    for dist in dists:
        entry = entries[dist.name]
        assert entry["version"] == dist.version
        assert entry["dist"]["url"].startswith(f"{forage}/composer/dists/")
        assert entry["dist"]["shasum"] == dist.shasum
        assert installed(root, dist) == published(dist)
    assert downloaded(root) == {dist.data for dist in dists}


async def test_composer_installs_through_forage_upstream_up_down_and_corrupt(
    tmp_path: Path, db_url: str
) -> None:
    composer = need("composer")
    fake = FakePackagist()
    older = fake.publish("acme/left-pad", "1.0.0")
    forge = fake.publish("acme/left-pad", "1.1.0")
    hosted = fake.publish("acme/hosted", "2.0.0", shasum=True)
    newer = fake.publish("acme/hosted", "2.1.0", shasum=True)
    fake.branch("acme/left-pad", "dev-main")
    assert forge.shasum == "" and hosted.shasum == hosted.sha1
    wanted = {"acme/left-pad": "1.1.0", "acme/hosted": "2.0.0"}
    upstream = await start_fake(fake.make_app())
    endpoints = {"composer": fake.config_endpoints(upstream.url)}
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
        await forage.ingest("composer", "acme/left-pad")
        await forage.ingest("composer", "acme/hosted")
        assert await forage.archive_all() == 4  # every tagged version's dist; no branch
        repository = f"{forage.url}/composer"

        fake.requests.clear()
        lock = await composer_install(composer, repository, wanted, tmp_path / "up")
        check(tmp_path / "up", lock, forage.url, forge, hosted)
        assert fake.notifications == []  # install notices stay with Forage
        # Archived dists never change: served from the archive, the upstream not asked.
        assert forge.path not in fake.requests.paths()
        assert hosted.path not in fake.requests.paths()

        # Lookups say which archive only Forage's own digest vouches for.
        keys = ["pkg:composer/acme/left-pad@1.1.0", "packagist:acme/hosted:2.0.0"]
        answers = lookup(forage.ctx.sessionmaker, None, keys, policy=None)
        (own,), (published_sha1,) = (answer.to_json()["artifacts"] for answer in answers)
        assert own["digests"] == {}
        assert own["archive"]["digest_source"] == "forage"
        assert own["archive"]["digest"] == f"sha256:{forge.sha256}"
        assert published_sha1["digests"] == {"sha1": hosted.sha1}
        assert published_sha1["archive"]["digest_source"] == "registry"
        assert published_sha1["archive"]["digest"] == f"sha1:{hosted.sha1}"

        # Corrupt bytes upstream: refused against the published sha1, and where the registry
        # published none, against the sha256 Forage recorded at the first download.
        fake.tamper("acme/left-pad", "1.0.0", b"PK\x03\x04 not the published zip")
        fake.tamper("acme/hosted", "2.1.0", b"PK\x03\x04 not the published zip")
        others = {"acme/left-pad": "1.0.0", "acme/hosted": "2.1.0"}
        lock = await composer_install(composer, repository, others, tmp_path / "corrupt")
        check(tmp_path / "corrupt", lock, forage.url, older, newer)
        async with httpx.AsyncClient() as client:
            for dist in (older, newer):
                served = await client.get(locked(lock)[dist.name]["dist"]["url"])
                assert served.content == dist.data
                assert served.headers["Forage-Source"] == "archive"  # archived: not fetched
                assert "Forage-Upstream-Error" not in served.headers

        await upstream.close()
        lock = await composer_install(composer, repository, wanted, tmp_path / "down")
        check(tmp_path / "down", lock, forage.url, forge, hosted)
        async with httpx.AsyncClient() as client:
            listing = await client.get(f"{repository}/p2/acme/left-pad.json")
        assert listing.headers["Forage-Source"] == "archive"
        versions = [e["version"] for e in listing.json()["packages"]["acme/left-pad"]]
        assert versions == ["1.1.0", "1.0.0"]


async def test_composer_installs_from_an_air_gapped_forage(
    tmp_path: Path, db_url: str, _sqlite_template: Path
) -> None:
    composer = need("composer")
    fake = FakePackagist()
    forge = fake.publish("acme/left-pad", "1.1.0")
    fake.publish("acme/left-pad", "1.2.0")  # not in the lockfile: neither primed nor exported
    hosted = fake.publish("acme/hosted", "2.0.0", shasum=True)
    _, lock_bytes = fake.lockfile([("acme/left-pad", "1.1.0"), ("acme/hosted", "2.0.0")])
    lockfile = tmp_path / "composer.lock"
    lockfile.write_bytes(lock_bytes)
    car = tmp_path / "deps.car"
    async with serve(fake.make_app()) as upstream:
        online = tmp_path / "online"
        online.mkdir()
        endpoints = {"composer": fake.config_endpoints(upstream.url)}
        config = mirror_config(online, db_url, registries=endpoints)
        source = str(config.source)
        assert await asyncio.to_thread(cli, "-c", source, "prime", "--lockfile", str(lockfile)) == 0
        code = await asyncio.to_thread(
            cli, "-c", source, "export", "--lockfile", str(lockfile), "-o", str(car)
        )
        assert code == 0

    airgap = tmp_path / "airgap"
    airgap.mkdir()
    other = mirror_config(airgap, second_database(tmp_path, _sqlite_template))
    assert other.configured_registries() == ()
    assert await asyncio.to_thread(cli, "-c", str(other.source), "import-car", str(car)) == 0
    async with forage_mirror(airgap, other.database.url or "") as forage:
        wanted = {"acme/left-pad": "^1.1", "acme/hosted": "2.0.0"}
        lock = await composer_install(composer, f"{forage.url}/composer", wanted, tmp_path / "a")
        check(tmp_path / "a", lock, forage.url, forge, hosted)
        async with httpx.AsyncClient() as client:
            root = (await client.get(f"{forage.url}/composer/packages.json")).json()
        assert root["available-packages"] == ["acme/hosted", "acme/left-pad"]


@pytest.mark.parametrize(
    "path",
    [
        "/composer/p2/acme/x%00.json",
        "/composer/p2/Not%20A/Name.json",
        "/composer/p2/acme.json",
        "/composer/dists/acme/x/1.0.0",
        "/composer/dists/acme/x/1.0.0/..%2F..%2Fetc",
        "/composer/dists/acme/x/1.0.0%00/a.zip",
        "/composer/dists/../../x/1.0.0/a.zip",
    ],
)
async def test_hostile_composer_paths_get_a_4xx(path: str, tmp_path: Path, db_url: str) -> None:
    async with forage_mirror(tmp_path, db_url) as forage, httpx.AsyncClient() as client:
        response = await client.get(forage.url + path)
    assert 400 <= response.status_code < 500, (path, response.status_code, response.text)


async def test_a_composer_install_that_worked_once_works_in_an_outage(
    tmp_path: Path, db_url: str
) -> None:
    """Nothing primed: the dists composer fetched through Forage are archived in that pass
    (one with no published digest held to Forage's own sha256), and the same install from an
    empty cache succeeds with the upstream down."""
    composer = need("composer")
    fake = FakePackagist()
    forge = fake.publish("acme/left-pad", "1.1.0")
    hosted = fake.publish("acme/hosted", "2.0.0", shasum=True)
    wanted = {"acme/left-pad": "1.1.0", "acme/hosted": "2.0.0"}
    upstream = await start_fake(fake.make_app())
    endpoints = {"composer": fake.config_endpoints(upstream.url)}
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
        repository = f"{forage.url}/composer"
        assert forage.archived_cids() == []
        lock = await composer_install(composer, repository, wanted, tmp_path / "up")
        check(tmp_path / "up", lock, forage.url, forge, hosted)
        await forage.mirror.registries["composer"].settle()
        assert len(forage.archived_cids()) == 2

        await upstream.close()
        lock = await composer_install(composer, repository, wanted, tmp_path / "down")
        check(tmp_path / "down", lock, forage.url, forge, hosted)
