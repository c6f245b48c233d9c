"""The real ``gem`` and ``bundle`` commands install through Forage's ``/gems/`` source.

Gems come from the loopback RubyGems fake (real ``.gem`` files built in Python), are imported
and archived, then installed with ``gem install --clear-sources --source`` and ``bundle
install`` from a ``Gemfile.lock``: with the upstream up, serving corrupt bytes, and down, and
from a second Forage that knows no registry after ``forage export``/``forage import-car``.
The installed ``.gem`` files must hash to the registry's checksums. Homes, gem homes and
Bundler's paths are in ``tmp_path``; the only source is Forage.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from indexers.fakeserver import serve, start_fake
from indexers.gem.fake import FakeGem, FakeRubyGems, gemfile_lock
from tests.forage.mirror.conftest import forage_mirror, mirror_config
from tests.forage.mirror.test_clients import base_env, need, run
from tests.forage.mirror.test_offline import cli, second_database

pytestmark = pytest.mark.slow


#: What the gems :func:`publish` pushes depend on, as a lockfile nests it.
REQUIRES = {"fk-hola": [("fk-dep", ">= 0.1")]}


def gem_env(where: Path) -> dict[str, str]:
    env = base_env(where)
    env.update(GEM_HOME=str(where / "gems"), GEM_PATH=str(where / "gems"))
    return env


async def gem_install(source: str, spec: str, version: str, where: Path) -> Path:
    """``gem install`` from ``source`` only; the directory of cached ``.gem`` files."""
    gem = need("gem")
    argv = [gem, "install", "--clear-sources", "--source", source, "--no-document"]
    await run([*argv, spec, "-v", version], env=gem_env(where), cwd=where)
    return where / "gems" / "cache"


async def bundle_install(source: str, releases: list[tuple[str, str]], where: Path) -> Path:
    """``bundle install --frozen`` of a ``Gemfile.lock``; the directory of cached gems."""
    bundle = need("bundle")
    env = base_env(where)
    names = dict.fromkeys(name for name, _ in releases)
    (where / "Gemfile").write_text(
        f'source "{source}"\n' + "".join(f'gem "{name}"\n' for name in names)
    )
    (where / "Gemfile.lock").write_text(gemfile_lock(source, releases, requires=REQUIRES))
    env.update(
        BUNDLE_GEMFILE=str(where / "Gemfile"),
        BUNDLE_PATH=str(where / "bundle"),
        BUNDLE_USER_HOME=str(where / "bundle-home"),
        BUNDLE_APP_CONFIG=str(where / "bundle-config"),
        BUNDLE_FROZEN="true",
        GEM_HOME=str(where / "gems"),
    )
    await run([bundle, "install"], env=env, cwd=where)
    (cache,) = (where / "bundle" / "ruby").glob("*/cache")
    return cache


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish(gems: FakeRubyGems) -> tuple[FakeGem, FakeGem, FakeGem]:
    """A gem with a dependency, a java variant and a newer prerelease; a native gem."""
    dep = gems.push("fk-dep", "0.2.0")
    hola = gems.push("fk-hola", "1.0.0", deps=[("fk-dep", (">= 0.1",))], ruby=(">= 2.5",))
    gems.push("fk-hola", "1.0.0", platform="java", deps=[("fk-dep", (">= 0.1",))])
    gems.push("fk-hola", "1.1.0.pre1", deps=[("fk-dep", (">= 0.1",))])
    gems.push("fk-native", "2.0.0")
    native = gems.push("fk-native", "2.0.0", platform="x86_64-linux")
    return dep, hola, native


async def test_gem_and_bundle_install_with_the_upstream_up_corrupt_and_down(
    tmp_path: Path, db_url: str
) -> None:
    need("gem"), need("bundle")
    gems = FakeRubyGems()
    dep, hola, native = publish(gems)
    upstream = await start_fake(gems.make_app())
    endpoints = {"gem": gems.config_endpoints(upstream.url)}
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
        for name in ("fk-dep", "fk-hola", "fk-native"):
            await forage.ingest("gem", name)
        assert await forage.archive_all() == 6  # every platform gem and the prerelease
        source = f"{forage.url}/gems/"
        locked = [("fk-dep", "0.2.0"), ("fk-hola", "1.0.0")]

        # Corrupt bytes first: a verified upstream answer is shared for a moment after it
        # was fetched, and a bad one never is.
        gems.tamper(hola.filename, b"corrupt bytes from a broken CDN")
        async with httpx.AsyncClient() as client:
            served = await client.get(f"{source}gems/{hola.filename}")
        assert served.headers["Forage-Source"] == "archive"  # archived: not fetched again
        assert "Forage-Upstream-Error" not in served.headers
        cache = await gem_install(source, "fk-hola", "1.0.0", tmp_path / "corrupt")
        assert digest(cache / hola.filename) == hola.sha256
        cache = await bundle_install(source, locked, tmp_path / "bundle-corrupt")
        assert digest(cache / hola.filename) == hola.sha256
        gems.tamper(hola.filename, hola.data)

        gems.requests.clear()
        cache = await gem_install(source, "fk-hola", "1.0.0", tmp_path / "up")
        assert digest(cache / hola.filename) == hola.sha256
        assert digest(cache / dep.filename) == dep.sha256
        assert f"/gems/{hola.filename}" not in gems.requests.paths()  # archived: served locally
        cache = await gem_install(source, "fk-native", "2.0.0", tmp_path / "native")
        assert [p.name for p in cache.iterdir()] == [native.filename]  # this machine's variant
        assert digest(cache / native.filename) == native.sha256
        cache = await bundle_install(source, locked, tmp_path / "bundle-up")
        assert digest(cache / hola.filename) == hola.sha256

        await upstream.close()
        cache = await gem_install(source, "fk-hola", "1.0.0", tmp_path / "down")
        assert digest(cache / hola.filename) == hola.sha256
        assert digest(cache / dep.filename) == dep.sha256
        cache = await bundle_install(source, locked, tmp_path / "bundle-down")
        assert digest(cache / hola.filename) == hola.sha256
        assert digest(cache / dep.filename) == dep.sha256


async def test_a_yanked_gem_leaves_the_index_and_bundler_refuses_its_lock(
    tmp_path: Path, db_url: str
) -> None:
    """Bundler's own answer to a lock on a yanked version is an error naming it; Forage's
    ``info`` must not list the version, upstream or not, even when the upstream lags."""
    need("bundle")
    gems = FakeRubyGems()
    gems.push("fk-dep", "0.1.0")
    yanked = gems.push("fk-dep", "0.2.0")
    async with serve(gems.make_app()) as upstream:
        endpoints = {"gem": gems.config_endpoints(upstream.url)}
        async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
            await forage.ingest("gem", "fk-dep")
            await forage.archive_all()
            gems.yank("fk-dep", "0.2.0")
            await forage.ingest("gem", "fk-dep")
            for gem in gems.gems["fk-dep"]:
                gem.yanked = False  # a lagging CDN lists the yanked version again
            source = f"{forage.url}/gems/"
            async with httpx.AsyncClient() as client:
                info = await client.get(f"{source}info/fk-dep")
                assert info.headers["Forage-Source"] == "upstream"
                assert "0.1.0 " in info.text and "0.2.0" not in info.text
                exact = await client.get(f"{source}gems/{yanked.filename}")
                assert exact.status_code == 200 and exact.content == yanked.data
            with pytest.raises(AssertionError, match="fk-dep"):
                await bundle_install(source, [("fk-dep", "0.2.0")], tmp_path / "b")


async def test_an_exported_gem_installs_on_an_air_gapped_forage(
    tmp_path: Path, db_url: str, _sqlite_template: Path
) -> None:
    need("gem"), need("bundle")
    gems = FakeRubyGems()
    dep, hola, _ = publish(gems)
    lockfile = tmp_path / "Gemfile.lock"
    lockfile.write_text(
        gemfile_lock(
            "https://rubygems.org/",
            [("fk-dep", "0.2.0"), ("fk-hola", "1.0.0")],
            requires=REQUIRES,
        )
    )
    async with serve(gems.make_app()) as upstream:
        online = tmp_path / "online"
        online.mkdir()
        config = mirror_config(
            online, db_url, registries={"gem": gems.config_endpoints(upstream.url)}
        )
        assert config.source is not None
        car = tmp_path / "gems.car"
        for command in (("prime",), ("export", "-o", str(car))):
            code = await asyncio.to_thread(
                cli, "-c", str(config.source), *command, "--lockfile", str(lockfile)
            )
            assert code == 0, command

    airgap = tmp_path / "airgap"
    airgap.mkdir()
    other = mirror_config(airgap, second_database(tmp_path, _sqlite_template))
    assert await asyncio.to_thread(cli, "-c", str(other.source), "import-car", str(car)) == 0
    async with forage_mirror(airgap, other.database.url or "") as forage:
        source = f"{forage.url}/gems/"
        cache = await bundle_install(
            source, [("fk-dep", "0.2.0"), ("fk-hola", "1.0.0")], tmp_path / "b"
        )
        assert digest(cache / hola.filename) == hola.sha256
        assert digest(cache / dep.filename) == dep.sha256
        cache = await gem_install(source, "fk-hola", "1.0.0", tmp_path / "g")
        assert digest(cache / hola.filename) == hola.sha256
        async with httpx.AsyncClient() as client:
            info = await client.get(f"{source}info/fk-hola")
        assert info.headers["Forage-Source"] == "archive"
        assert "1.1.0.pre1" not in info.text  # only what the lockfile named came across


async def test_a_gem_install_that_worked_once_works_in_an_outage(
    tmp_path: Path, db_url: str
) -> None:
    """Nothing primed: the gems ``gem install`` fetched through Forage are archived in that
    pass, and the same install into an empty home succeeds with the upstream down."""
    need("gem")
    gems = FakeRubyGems()
    dep, hola, _ = publish(gems)
    upstream = await start_fake(gems.make_app())
    endpoints = {"gem": gems.config_endpoints(upstream.url)}
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
        source = f"{forage.url}/gems/"
        assert forage.archived_cids() == []
        cache = await gem_install(source, "fk-hola", "1.0.0", tmp_path / "up")
        assert digest(cache / hola.filename) == hola.sha256
        await forage.mirror.registries["gem"].settle()
        assert len(forage.archived_cids()) == 2  # fk-hola and its dependency fk-dep

        await upstream.close()
        cache = await gem_install(source, "fk-hola", "1.0.0", tmp_path / "down")
        assert digest(cache / hola.filename) == hola.sha256
        assert digest(cache / dep.filename) == dep.sha256


async def test_an_archived_gem_the_upstream_yanked_is_served_marked_removed(
    tmp_path: Path, db_url: str
) -> None:
    """The archived ``.gem`` is served without asking the upstream for it; its ``/info``,
    read at the metadata TTL (0 here), no longer lists it once yanked."""
    gems = FakeRubyGems()
    dep = gems.push("fk-dep", "0.2.0")
    upstream = await start_fake(gems.make_app())
    endpoints = {"gem": gems.config_endpoints(upstream.url)}
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
        await forage.ingest("gem", "fk-dep")
        await forage.archive_all()
        download = f"{forage.url}/gems/gems/{dep.filename}"
        async with httpx.AsyncClient() as client:
            assert (await client.get(download)).headers["Forage-Source"] == "archive"
            gems.yank("fk-dep", "0.2.0")  # the index has not heard of it yet
            gems.requests.clear()
            removed = await client.get(download)
        assert removed.content == dep.data
        assert removed.headers["Forage-Source"] == "archive-removed"
        assert f"/gems/{dep.filename}" not in gems.requests.paths()
    await upstream.close()
