"""The sparse registry under ``/cargo/``: its answers over HTTP, and the real ``cargo`` fetching
through it by source replacement.

cargo runs with ``CARGO_HOME`` in ``tmp_path`` holding only ``[source.crates-io] replace-with
= "forage"`` and ``[source.forage] registry = "sparse+<forage>/cargo/index/"``, so the only
host it can reach is Forage (no ``--offline``: it must fetch through Forage). The crates are
real ``.crate`` tarballs cargo unpacks; ``demo_crate`` depends on ``xyz``, and its newer
version is yanked. cargo fetches with the upstream up, serving corrupt bytes, down, and from
an air-gapped Forage loaded by ``forage export``/``forage import-car``; every time the
lockfile's checksums and the ``.crate`` files cargo keeps equal the registry's ``cksum``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tomllib
from pathlib import Path

import httpx
import pytest

from forage.cli import main
from indexers.cargo.fake import FakeCratesIo, dep
from indexers.cargo.sparse import parse_lines
from indexers.fakeserver import start_fake
from indexers.lockfiles import read_lockfile
from tests.forage.mirror.conftest import forage_mirror, mirror_config
from tests.forage.mirror.test_clients import base_env, run


def need_cargo() -> str:
    """cargo from ``PATH``, else rustup's default place; skipped (failed under CI) if absent."""
    found = shutil.which("cargo")
    fallback = Path.home() / ".cargo" / "bin" / "cargo"
    if found is None and fallback.exists():
        found = str(fallback)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("cargo is required under CI=true", pytrace=False)
        pytest.skip("cargo is not installed")
    return found


def cargo_env(root: Path, forage_url: str, requirement: str) -> dict[str, str]:
    """A project depending on ``demo_crate = requirement`` and a ``CARGO_HOME`` naming only
    Forage."""
    env = base_env(root)
    home = root / "cargo-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[source.crates-io]\nreplace-with = "forage"\n\n'
        f'[source.forage]\nregistry = "sparse+{forage_url}/cargo/index/"\n\n'
        "[net]\nretry = 0\n"
    )
    (root / "Cargo.toml").write_text(
        '[package]\nname = "consumer"\nversion = "0.1.0"\nedition = "2021"\n\n'
        f'[dependencies]\ndemo_crate = "{requirement}"\n'
    )
    (root / "src").mkdir()
    (root / "src" / "lib.rs").write_text("")
    rustup = os.environ.get("RUSTUP_HOME") or str(Path.home() / ".rustup")
    env.update(CARGO_HOME=str(home), RUSTUP_HOME=rustup, CARGO_TERM_COLOR="never")
    return env


async def cargo_fetch(
    cargo: str, forage_url: str, root: Path, requirement: str = "0.1"
) -> dict[str, str]:
    """``cargo fetch`` in ``root``; returns the sha256 of every ``.crate`` cargo kept, by name."""
    await run([cargo, "fetch"], env=cargo_env(root, forage_url, requirement), cwd=root)
    kept = (root / "cargo-home" / "registry" / "cache").glob("*/*.crate")
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in kept}


def lock_checksums(root: Path) -> dict[str, str]:
    """``name-version`` to checksum for every crates.io package of the project's Cargo.lock."""
    text = (root / "Cargo.lock").read_text()
    packages = tomllib.loads(text)["package"]
    return {f"{p['name']}-{p['version']}": p["checksum"] for p in packages if "checksum" in p}


def registry() -> tuple[FakeCratesIo, dict[str, str]]:
    """The fake crates.io and each published ``.crate``'s ``cksum`` by ``name-version``:
    ``demo_crate`` 0.1.0 to 0.1.2 depending on ``xyz``, and 0.1.3, yanked. Each phase of the
    client test fetches its own version, so none is answered by an earlier phase's download."""
    fake = FakeCratesIo()
    sums = {"xyz-1.0.0": fake.publish("xyz", "1.0.0")[0]}
    for version in ("0.1.0", "0.1.1", "0.1.2", "0.1.3"):
        cksum, _ = fake.publish("demo_crate", version, deps=[dep("xyz", "^1.0")])
        sums[f"demo_crate-{version}"] = cksum
    fake.yank("demo_crate", "0.1.3")
    return fake, sums


def crates(sums: dict[str, str], *keys: str) -> dict[str, str]:
    """The ``.crate`` files cargo keeps for ``keys``, with their registry ``cksum``."""
    return {f"{key}.crate": sums[key] for key in keys}


async def test_the_index_marks_what_the_index_knows_was_yanked_upstream_or_not(
    tmp_path: Path, db_url: str
) -> None:
    fake, _ = registry()
    upstream = await start_fake(fake.make_app())
    endpoints = {"cargo": fake.config_endpoints(upstream.url)}
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
        await forage.ingest("cargo", "demo_crate")
        await forage.archive_all()
        fake.unyank("demo_crate", "0.1.3")  # a lagging upstream: Forage saw the yank
        async with httpx.AsyncClient() as client:
            config = (await client.get(f"{forage.url}/cargo/index/config.json")).json()
            assert config["dl"] == f"{forage.url}/cargo/api/v1/crates"
            for source in ("upstream", "archive"):
                if source == "archive":
                    await upstream.close()
                page = await client.get(f"{forage.url}/cargo/index/de/mo/demo_crate")
                assert page.status_code == 200 and page.headers["Forage-Source"] == source
                lines = {line["vers"]: line for line in parse_lines(page.content) if line}
                assert {v: line["yanked"] for v, line in lines.items()} == {
                    "0.1.0": False,
                    "0.1.1": False,
                    "0.1.2": False,
                    "0.1.3": True,
                }
                assert lines["0.1.0"]["deps"][0]["name"] == "xyz"
            missing = await client.get(f"{forage.url}/cargo/index/ab/cd/abcdef")
            assert missing.status_code == 502  # upstream down, nothing archived
            wrong = await client.get(f"{forage.url}/cargo/index/xx/yy/demo_crate")
            assert wrong.status_code == 404
            escape = await client.get(f"{forage.url}/cargo/index/..%2f..%2fetc")
            assert escape.status_code == 404
            bad = await client.get(f"{forage.url}/cargo/index/ab/cd/ab%00cd")
            assert bad.status_code == 400
            bad = await client.get(f"{forage.url}/cargo/api/v1/crates/a%20b/1.0.0/download")
            assert bad.status_code == 400


@pytest.mark.slow
async def test_cargo_fetches_through_forage_up_corrupt_down_and_air_gapped(
    tmp_path: Path, db_url: str, _sqlite_template: Path
) -> None:
    cargo = need_cargo()
    fake, sums = registry()
    upstream = await start_fake(fake.make_app())
    endpoints = {"cargo": fake.config_endpoints(upstream.url)}
    (tmp_path / "f").mkdir()
    async with forage_mirror(tmp_path / "f", db_url, registries=endpoints) as forage:
        await forage.ingest("cargo", "xyz")
        await forage.ingest("cargo", "demo_crate")
        await forage.archive_all()
        fake.requests.clear()

        kept = await cargo_fetch(cargo, forage.url, tmp_path / "up")
        newest = ("demo_crate-0.1.2", "xyz-1.0.0")  # the yanked 0.1.3 is not chosen
        assert lock_checksums(tmp_path / "up") == {key: sums[key] for key in newest}
        assert kept == crates(sums, *newest)
        # Archived crates never change: served from the archive, the upstream not asked.
        assert "/crates/demo_crate/0.1.2/download" not in fake.requests.paths()

        # The lockfile names the crates for prime and export, while the upstream is up.
        lockfile = tmp_path / "up" / "Cargo.lock"
        keys = [e.key for e in read_lockfile(lockfile.read_bytes(), filename="Cargo.lock")]
        assert keys == ["pkg:cargo/demo_crate@0.1.2", "pkg:cargo/xyz@1.0.0"]
        online = mirror_config(tmp_path / "f", db_url, registries=endpoints)
        car = tmp_path / "crates.car"
        for argv in (["prime"], ["export", "-o", str(car)]):
            argv = ["-c", str(online.source), *argv, "--lockfile", str(lockfile)]
            assert await asyncio.to_thread(main, argv) == 0

        fake.tamper("demo_crate", "0.1.1", b"corrupt bytes from a broken CDN")
        fake.requests.clear()
        kept = await cargo_fetch(cargo, forage.url, tmp_path / "corrupt", "=0.1.1")
        assert kept == crates(sums, "demo_crate-0.1.1", "xyz-1.0.0")
        assert "/crates/demo_crate/0.1.1/download" not in fake.requests.paths()  # archived

        await upstream.close()
        kept = await cargo_fetch(cargo, forage.url, tmp_path / "down", "=0.1.0")
        assert lock_checksums(tmp_path / "down") == {
            key: sums[key] for key in ("demo_crate-0.1.0", "xyz-1.0.0")
        }
        assert kept == crates(sums, "demo_crate-0.1.0", "xyz-1.0.0")

    airgap = tmp_path / "airgap"
    airgap.mkdir()
    database = airgap / "airgap.db"
    shutil.copyfile(_sqlite_template, database)
    other = mirror_config(airgap, f"sqlite:///{database}")
    assert other.configured_registries() == ()
    assert await asyncio.to_thread(main, ["-c", str(other.source), "import-car", str(car)]) == 0
    async with forage_mirror(airgap, f"sqlite:///{database}") as forage:
        project = tmp_path / "offline"
        project.mkdir()
        shutil.copyfile(lockfile, project / "Cargo.lock")
        kept = await cargo_fetch(cargo, forage.url, project)
        assert kept == crates(sums, *newest)
        async with httpx.AsyncClient() as client:
            page = await client.get(f"{forage.url}/cargo/index/de/mo/demo_crate")
        assert page.headers["Forage-Source"] == "archive"
        versions = [json.loads(line)["vers"] for line in page.text.splitlines()]
        assert versions == ["0.1.2"]  # only the named release came across


@pytest.mark.slow
async def test_a_cargo_fetch_that_worked_once_works_in_an_outage(
    tmp_path: Path, db_url: str
) -> None:
    """Nothing primed: the crates cargo fetched through Forage are archived in that pass, and
    the same fetch from an empty cargo home succeeds, the same bytes, with the upstream down."""
    cargo = need_cargo()
    fake, sums = registry()
    upstream = await start_fake(fake.make_app())
    endpoints = {"cargo": fake.config_endpoints(upstream.url)}
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
        assert forage.archived_cids() == []
        kept = await cargo_fetch(cargo, forage.url, tmp_path / "up", "=0.1.1")
        wanted = crates(sums, "demo_crate-0.1.1", "xyz-1.0.0")
        assert kept == wanted
        await forage.mirror.registries["cargo"].settle()
        assert len(forage.archived_cids()) == 2

        await upstream.close()
        assert await cargo_fetch(cargo, forage.url, tmp_path / "down", "=0.1.1") == wanted


async def test_an_archived_crate_the_upstream_deleted_is_served_marked_removed(
    tmp_path: Path, db_url: str
) -> None:
    """The archived ``.crate`` is served without asking the upstream for it, but its index
    file, read at the metadata TTL (0 here), says the registry deleted the crate."""
    fake, _ = registry()
    upstream = await start_fake(fake.make_app())
    endpoints = {"cargo": fake.config_endpoints(upstream.url)}
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
        await forage.ingest("cargo", "xyz")
        await forage.archive_all()
        download = f"{forage.url}/cargo/api/v1/crates/xyz/1.0.0/download"
        async with httpx.AsyncClient() as client:
            served = await client.get(download)
            assert served.headers["Forage-Source"] == "archive"
            fake.delete("xyz")  # the index has not heard of it yet
            fake.requests.clear()
            removed = await client.get(download)
        assert removed.status_code == 200
        assert removed.headers["Forage-Source"] == "archive-removed"
        assert "/crates/xyz/1.0.0/download" not in fake.requests.paths()
    await upstream.close()
