"""The real ``npm``, ``pip`` and ``go`` commands install through the mirror.

Each test imports and archives packages from a loopback fake, installs them through Forage
with the upstream running (the answer must match the upstream's digests), then stops the
upstream and installs again into fresh directories and caches: the archive answers and the
installed bytes still match the upstream's digests. Every client is isolated from the
machine: caches, configs and homes in ``tmp_path``, the registry/index/proxy set to Forage
only (``GOSUMDB=off``, ``GOPROXY=<forage>/go``), so nothing can reach a public host. A test
skips only where its client is absent and ``CI`` is not ``true``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from indexers.fakeserver import start_fake
from indexers.golang.fake import GoFake
from indexers.npm.fake import FakeNpmRegistry
from indexers.pypi.fake import FakePyPI
from storage import compute_cid
from tests.forage.mirror.conftest import forage_mirror

pytestmark = pytest.mark.slow


def need(command: str) -> str:
    found = shutil.which(command)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{command} is required under CI=true", pytrace=False)
        pytest.skip(f"{command} is not installed")
    return found


async def run(argv: list[str], *, env: dict[str, str], cwd: Path) -> str:
    """Run a client; fail the test with its output if it fails."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=180)
    text = output.decode(errors="replace")
    assert process.returncode == 0, f"{' '.join(argv)} failed:\n{text}"
    return text


def base_env(root: Path) -> dict[str, str]:
    """A fresh working directory and a minimal environment whose home is inside it."""
    (root / "home").mkdir(parents=True)
    return {"PATH": os.environ["PATH"], "HOME": str(root / "home"), "LANG": "C.UTF-8"}


# -- npm ---------------------------------------------------------------------------------------


def npm_env(where: Path) -> dict[str, str]:
    env = base_env(where)
    (where / "package.json").write_text('{"name": "consumer", "version": "1.0.0"}\n')
    (where / "npmrc").write_text("")
    (where / "global-npmrc").write_text("")
    env.update(
        npm_config_cache=str(where / "cache"),
        npm_config_userconfig=str(where / "npmrc"),
        npm_config_globalconfig=str(where / "global-npmrc"),
        npm_config_update_notifier="false",
    )
    return env


def read_json(path: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads(path.read_text())
    return document


async def npm_install(npm: str, registry: str, spec: str, where: Path) -> dict[str, object]:
    await run(
        [npm, "install", "--registry", registry, "--no-audit", "--no-fund", spec],
        env=npm_env(where),
        cwd=where,
    )
    return read_json(where / "package-lock.json")


async def test_npm_installs_through_forage_with_the_upstream_up_and_down(
    tmp_path: Path, db_url: str
) -> None:
    npm = need("npm")
    registry = FakeNpmRegistry()
    registry.publish("left-pad", "1.0.0")
    wanted = registry.publish("left-pad", "1.1.0", files={"index.js": b"module.exports = 'pad';\n"})
    scoped = registry.publish("@fk/scoped", "2.0.0")
    upstream = await start_fake(registry.make_app())
    async with forage_mirror(tmp_path, db_url, npm=upstream.url) as forage:
        await forage.ingest("npm", "left-pad")
        await forage.ingest("npm", "@fk/scoped")
        await forage.archive_all()
        url = f"{forage.url}/npm/"
        registry.requests.clear()

        lock = await npm_install(npm, url, "left-pad@1.1.0", tmp_path / "up")
        packages = lock["packages"]
        assert isinstance(packages, dict)
        assert packages["node_modules/left-pad"]["integrity"] == wanted.integrity
        installed = tmp_path / "up" / "node_modules" / "left-pad" / "index.js"
        assert read_bytes(installed) == b"module.exports = 'pad';\n"
        # Archived: served from the archive, the upstream not asked for the tarball.
        assert "/left-pad/-/left-pad-1.1.0.tgz" not in registry.requests.paths()

        await upstream.close()
        lock = await npm_install(npm, url, "left-pad@1.1.0", tmp_path / "down")
        packages = lock["packages"]
        assert isinstance(packages, dict)
        assert packages["node_modules/left-pad"]["integrity"] == wanted.integrity
        assert packages["node_modules/left-pad"]["resolved"].startswith(forage.url)
        installed = tmp_path / "down" / "node_modules" / "left-pad" / "index.js"
        assert read_bytes(installed) == b"module.exports = 'pad';\n"

        lock = await npm_install(npm, url, "@fk/scoped@2.0.0", tmp_path / "scoped")
        packages = lock["packages"]
        assert isinstance(packages, dict)
        assert packages["node_modules/@fk/scoped"]["integrity"] == scoped.integrity


async def test_npm_install_that_worked_once_works_in_an_outage(tmp_path: Path, db_url: str) -> None:
    """Nothing primed: what one install passed through is archived, so the same install
    from an empty cache succeeds with the upstream down, with the same bytes."""
    npm = need("npm")
    registry = FakeNpmRegistry()
    registry.publish("left-pad", "1.0.0")
    wanted = registry.publish("left-pad", "1.1.0", files={"index.js": b"module.exports = 'pad';\n"})
    upstream = await start_fake(registry.make_app())
    async with forage_mirror(tmp_path, db_url, npm=upstream.url) as forage:
        url = f"{forage.url}/npm/"
        assert forage.archived_cids() == []
        lock = await npm_install(npm, url, "left-pad@1.1.0", tmp_path / "up")
        packages = lock["packages"]
        assert isinstance(packages, dict)
        assert packages["node_modules/left-pad"]["integrity"] == wanted.integrity
        await forage.mirror.registries["npm"].settle()
        assert forage.archived_cids() == [str(compute_cid(wanted.data))]

        await upstream.close()
        lock = await npm_install(npm, url, "left-pad@1.1.0", tmp_path / "down")
        packages = lock["packages"]
        assert isinstance(packages, dict)
        assert packages["node_modules/left-pad"]["integrity"] == wanted.integrity
        installed = tmp_path / "down" / "node_modules" / "left-pad" / "index.js"
        assert read_bytes(installed) == b"module.exports = 'pad';\n"


# -- pip ---------------------------------------------------------------------------------------


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def only_file(directory: Path) -> Path:
    (found,) = directory.iterdir()
    return found


async def pip_download(index: str, spec: str, where: Path) -> Path:
    env = base_env(where)
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    await run(
        [
            "python3",
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--only-binary=:all:",
            "--index-url",
            index,
            "--trusted-host",
            "127.0.0.1",
            "-d",
            str(where / "out"),
            spec,
        ],
        env=env,
        cwd=where,
    )
    return only_file(where / "out")


async def test_pip_downloads_through_forage_with_the_upstream_up_and_down(
    tmp_path: Path, db_url: str
) -> None:
    pypi = FakePyPI()
    pypi.release("Sample.Project", "1.0", sdist=False)
    (wheel,) = pypi.release("Sample.Project", "1.1", sdist=False)
    upstream = await start_fake(pypi.make_app())
    async with forage_mirror(tmp_path, db_url, pypi=upstream.url) as forage:
        await forage.ingest("pypi", "sample-project")
        await forage.archive_all()
        index = f"{forage.url}/pypi/simple/"

        got = await pip_download(index, "Sample.Project==1.1", tmp_path / "up")
        assert got.name == wheel.filename
        assert hashlib.sha256(read_bytes(got)).hexdigest() == wheel.sha256

        await upstream.close()
        got = await pip_download(index, "sample_project==1.1", tmp_path / "down")
        assert got.name == wheel.filename
        assert hashlib.sha256(read_bytes(got)).hexdigest() == wheel.sha256


async def test_pip_download_that_worked_once_works_in_an_outage(
    tmp_path: Path, db_url: str
) -> None:
    """Nothing primed: the wheel pip fetched through Forage is archived in that pass and
    downloaded again, the same bytes, with the upstream down."""
    pypi = FakePyPI()
    pypi.release("Sample.Project", "1.0", sdist=False)
    (wheel,) = pypi.release("Sample.Project", "1.1", sdist=False)
    upstream = await start_fake(pypi.make_app())
    async with forage_mirror(tmp_path, db_url, pypi=upstream.url) as forage:
        index = f"{forage.url}/pypi/simple/"
        got = await pip_download(index, "Sample.Project==1.1", tmp_path / "up")
        assert hashlib.sha256(read_bytes(got)).hexdigest() == wheel.sha256
        await forage.mirror.registries["pypi"].settle()
        assert str(compute_cid(wheel.data)) in forage.archived_cids()

        await upstream.close()
        got = await pip_download(index, "sample_project==1.1", tmp_path / "down")
        assert got.name == wheel.filename
        assert hashlib.sha256(read_bytes(got)).hexdigest() == wheel.sha256


# -- go ----------------------------------------------------------------------------------------


def go_env(root: Path, proxy: str) -> dict[str, str]:
    env = base_env(root)
    env.update(
        GOPROXY=proxy,
        GOSUMDB="off",
        GONOSUMDB="*",
        GOFLAGS="-mod=mod",
        GOPATH=str(root / "gopath"),
        GOMODCACHE=str(root / "modcache"),
        GOCACHE=str(root / "gocache"),
        GOENV="off",
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
    )
    return env


async def go_download(go: str, proxy: str, spec: str, root: Path) -> dict[str, str]:
    output = await run([go, "mod", "download", "-json", spec], env=go_env(root, proxy), cwd=root)
    result: dict[str, str] = json.loads(output)
    return result


async def test_go_downloads_through_forage_with_the_upstream_up_and_down(
    tmp_path: Path, db_url: str
) -> None:
    go = need("go")
    async with GoFake() as fake:
        module = fake.add_version(
            "example.com/Demo",
            "v1.0.0",
            files={"go.mod": "module example.com/Demo\n\ngo 1.19\n", "lib.go": "package demo\n"},
        )
        async with forage_mirror(tmp_path, db_url, golang=fake.endpoints) as forage:
            await forage.ingest("golang", "example.com/Demo")
            await forage.archive_all()
            proxy = f"{forage.url}/go"
            fake.requests.clear()

            result = await go_download(go, proxy, "example.com/Demo@v1.0.0", tmp_path / "up")
            assert result["Sum"] == module.h1
            assert result["GoModSum"] == module.go_mod_h1
            assert "/proxy/example.com/!demo/@v/v1.0.0.zip" not in fake.requests.paths()

            await fake.close()
            result = await go_download(go, proxy, "example.com/Demo@v1.0.0", tmp_path / "down")
            assert result["Sum"] == module.h1
            assert result["GoModSum"] == module.go_mod_h1
            assert (
                hashlib.sha256(read_bytes(Path(result["Zip"]))).hexdigest()
                == hashlib.sha256(module.zip).hexdigest()
            )


async def test_go_download_that_worked_once_works_in_an_outage(tmp_path: Path, db_url: str) -> None:
    """Nothing primed: the module zip the go command fetched through Forage is archived in
    that pass; with the proxy down an empty module cache downloads the same module again."""
    go = need("go")
    async with GoFake() as fake:
        module = fake.add_version(
            "example.com/Demo",
            "v1.0.0",
            files={"go.mod": "module example.com/Demo\n\ngo 1.19\n", "lib.go": "package demo\n"},
        )
        async with forage_mirror(tmp_path, db_url, golang=fake.endpoints) as forage:
            proxy = f"{forage.url}/go"
            result = await go_download(go, proxy, "example.com/Demo@v1.0.0", tmp_path / "up")
            assert result["Sum"] == module.h1
            await forage.mirror.registries["golang"].settle()
            assert forage.archived_cids() == [str(compute_cid(module.zip))]

            await fake.close()
            result = await go_download(go, proxy, "example.com/Demo@v1.0.0", tmp_path / "down")
            assert result["Sum"] == module.h1
            assert result["GoModSum"] == module.go_mod_h1
            assert read_bytes(Path(result["Zip"])) == module.zip
