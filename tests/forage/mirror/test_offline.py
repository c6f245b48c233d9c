"""Air-gapped use: ``forage prime``, ``forage export`` and ``forage import-car``.

One Forage primes the archive from an SBOM naming an npm, a PyPI and a Go release, and
exports them as one CAR; a second Forage with no registry configured at all imports the CAR
and its mirror installs all three with the real clients. Bundles that are tampered with, are
not Forage bundles, or carry hostile names are refused with ``BundleError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
from pathlib import Path

import httpx
import pytest

from forage.cli import main
from forage.db.engine import make_engine, make_sessionmaker
from forage.errors import BundleError
from forage.mirror.offline import export_bundle, import_bundle
from indexers.fakeserver import serve
from indexers.golang.fake import GoFake
from indexers.npm.fake import FakeNpmRegistry
from indexers.pypi.fake import FakePyPI
from storage import CarWriter, MemoryBlockstore, import_file, walk_dag
from tests.forage.mirror.conftest import forage_mirror, mirror_config
from tests.forage.mirror.test_clients import (
    go_download,
    need,
    npm_install,
    pip_download,
    read_bytes,
)


def sbom(tmp_path: Path) -> Path:
    path = tmp_path / "bom.json"
    components = [
        {"bom-ref": "a", "name": "left-pad", "purl": "pkg:npm/left-pad@1.1.0"},
        {"bom-ref": "b", "name": "sample", "purl": "pkg:pypi/sample-project@1.1"},
        {"bom-ref": "c", "name": "demo", "purl": "pkg:golang/example.com/Demo@v1.0.0"},
    ]
    path.write_text(json.dumps({"bomFormat": "CycloneDX", "components": components}))
    return path


def second_database(tmp_path: Path, template: Path) -> str:
    path = tmp_path / "airgap.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def cli(*argv: str) -> int:
    return main(list(argv))


@pytest.mark.slow
async def test_a_primed_export_installs_on_an_air_gapped_forage(
    tmp_path: Path, db_url: str, _sqlite_template: Path
) -> None:
    npm_command, go_command = need("npm"), need("go")
    registry = FakeNpmRegistry()
    tarball = registry.publish("left-pad", "1.1.0")
    registry.publish("left-pad", "1.2.0")  # not named: neither primed nor exported
    pypi = FakePyPI()
    (wheel,) = pypi.release("Sample.Project", "1.1", sdist=False)
    async with (
        serve(registry.make_app()) as npm_fake,
        serve(pypi.make_app()) as pypi_fake,
        GoFake() as go_fake,
    ):
        module = go_fake.add_version("example.com/Demo", "v1.0.0")
        online = tmp_path / "online"
        online.mkdir()
        config = mirror_config(
            online, db_url, npm=npm_fake.url, pypi=pypi_fake.url, golang=go_fake.endpoints
        )
        assert config.source is not None
        bom = sbom(tmp_path)
        car = tmp_path / "deps.car"
        code = await asyncio.to_thread(
            cli, "-c", str(config.source), "prime", "--lockfile", str(bom)
        )
        assert code == 0
        code = await asyncio.to_thread(
            cli, "-c", str(config.source), "export", "--lockfile", str(bom), "-o", str(car)
        )
        assert code == 0

    # The registries are gone; the second Forage knows none of them.
    airgap = tmp_path / "airgap"
    airgap.mkdir()
    other = mirror_config(airgap, second_database(tmp_path, _sqlite_template))
    assert other.configured_registries() == ()
    assert await asyncio.to_thread(cli, "-c", str(other.source), "import-car", str(car)) == 0
    async with forage_mirror(airgap, other.database.url or "") as forage:
        lock = await npm_install(
            npm_command, f"{forage.url}/npm/", "left-pad@1.1.0", tmp_path / "n"
        )
        packages = lock["packages"]
        assert isinstance(packages, dict)
        assert packages["node_modules/left-pad"]["integrity"] == tarball.integrity

        got = await pip_download(
            f"{forage.url}/pypi/simple/", "sample-project==1.1", tmp_path / "p"
        )
        assert hashlib.sha256(read_bytes(got)).hexdigest() == wheel.sha256

        result = await go_download(
            go_command, f"{forage.url}/go", "example.com/Demo@v1.0.0", tmp_path / "g"
        )
        assert result["Sum"] == module.h1

        # Only the named release came across, and the archive answered.
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{forage.url}/npm/left-pad")
        assert response.headers["Forage-Source"] == "archive"
        assert set(response.json()["versions"]) == {"1.1.0"}


def bundle(manifest: dict[str, object], blocks: MemoryBlockstore | None = None) -> bytes:
    out = io.BytesIO()
    export_bundle(manifest, blocks or MemoryBlockstore(), out)
    return out.getvalue()


def test_a_car_that_is_not_a_bundle_is_refused(tmp_path: Path) -> None:
    store = MemoryBlockstore()
    root = import_file(b'{"hello": "world"}', sink=store).cid
    out = io.BytesIO()
    writer = CarWriter(out, [root])
    for block in walk_dag(store, root):
        writer.put(block)
    sessions = make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'x.db'}"))
    with pytest.raises(BundleError, match="not a Forage mirror bundle"):
        import_bundle(io.BytesIO(out.getvalue()), blockstore=MemoryBlockstore(), sessions=sessions)


def test_a_tampered_block_is_refused(tmp_path: Path) -> None:
    data = bundle({"format": "forage-mirror-bundle", "version": 1, "packages": []})
    manifest_at = data.rindex(b"forage-mirror-bundle")
    broken = data[:manifest_at] + b"F" + data[manifest_at + 1 :]
    sessions = make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'x.db'}"))
    with pytest.raises(BundleError, match="not a readable bundle"):
        import_bundle(io.BytesIO(broken), blockstore=MemoryBlockstore(), sessions=sessions)


@pytest.mark.parametrize("name", ["../../etc/passwd", "a\x00b", "x" * 300, "Left-Pad "])
def test_hostile_names_in_a_bundle_are_refused(name: str, tmp_path: Path, db_url: str) -> None:
    manifest = {
        "format": "forage-mirror-bundle",
        "version": 1,
        "packages": [
            {"ecosystem": "npm", "name": name, "deleted": False, "extra": {}, "versions": []}
        ],
    }
    sessions = make_sessionmaker(make_engine(db_url))
    with pytest.raises(BundleError, match="bundle manifest"):
        import_bundle(
            io.BytesIO(bundle(manifest)), blockstore=MemoryBlockstore(), sessions=sessions
        )


async def test_prime_reports_releases_the_registry_does_not_list(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = FakeNpmRegistry()
    registry.publish("left-pad", "1.1.0")
    lockfile = tmp_path / "requirements-like.json"
    components = [
        {"bom-ref": "a", "purl": "pkg:npm/left-pad@1.1.0"},
        {"bom-ref": "b", "purl": "pkg:npm/left-pad@9.9.9"},
        {"bom-ref": "c", "name": "no purl"},
    ]
    lockfile.write_text(json.dumps({"bomFormat": "CycloneDX", "components": components}))
    async with serve(registry.make_app()) as fake:
        config = mirror_config(tmp_path, db_url, npm=fake.url)
        code = await asyncio.to_thread(
            cli, "-c", str(config.source), "prime", "--lockfile", str(lockfile)
        )
    assert code == 1
    captured = capsys.readouterr()
    assert "primed 2 releases: 1 archived, 0 already archived, 1 failed" in captured.out
    assert "pkg:npm/left-pad@9.9.9: the registry does not list this release" in captured.err
    assert "skipping c: component has no purl" in captured.err
