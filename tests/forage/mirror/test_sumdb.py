"""Every Go byte verified: zips and go.mod files checked against the ``h1:`` Forage knows
before any client sees them, and the checksum database proxied under ``/go/sumdb/`` so the
real ``go`` command verifies through Forage, online and with the upstream gone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from indexers.golang.fake import SUMDB_NAME, GoFake
from indexers.golang.sumdb import Signer
from tests.forage.mirror.conftest import forage_mirror
from tests.forage.mirror.test_clients import base_env, need

MODULE = "example.com/Verified"
ESCAPED = "example.com/!verified"
GO_MOD = f"module {MODULE}\n\ngo 1.19\n"
EVIL = {"go.mod": GO_MOD.encode(), "lib.go": b"package evil\n"}


@pytest.fixture
async def fake() -> AsyncIterator[GoFake]:
    fake = GoFake()
    for version in ("v1.0.0", "v1.1.0"):
        fake.add_version(MODULE, version, files={"go.mod": GO_MOD, "lib.go": "package lib\n"})
    async with fake:
        yield fake


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as shared:
        yield shared


def go_env(root: Path, proxy: str, gosumdb: str) -> dict[str, str]:
    """The go command's environment: only Forage as proxy, ``gosumdb`` as the database."""
    env = base_env(root)
    env.update(
        GOPROXY=proxy,
        GOSUMDB=gosumdb,
        GOPATH=str(root / "gopath"),
        GOMODCACHE=str(root / "modcache"),
        GOCACHE=str(root / "gocache"),
        GOENV="off",
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
    )
    return env


async def go_download(root: Path, proxy: str, gosumdb: str, spec: str) -> tuple[int, str]:
    """``go mod download -json spec`` in a fresh ``root``: exit status and output."""
    process = await asyncio.create_subprocess_exec(
        need("go"),
        "mod",
        "download",
        "-json",
        spec,
        env=go_env(root, proxy, gosumdb),
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=180)
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.slow
async def test_go_verifies_through_forage_online_and_air_gapped(
    tmp_path: Path, db_url: str, fake: GoFake
) -> None:
    module = fake.modules[MODULE]["v1.0.0"]
    spec = f"{MODULE}@v1.0.0"
    async with forage_mirror(tmp_path, db_url, golang=fake.endpoints) as forage:
        await forage.ingest("golang", MODULE)
        await forage.archive_all()
        proxy = f"{forage.url}/go"
        fake.requests.clear()

        status, output = await go_download(tmp_path / "online", proxy, fake.sumdb_key, spec)
        assert status == 0, output
        assert json.loads(output)["Sum"] == module.h1
        asked = fake.requests.paths()
        assert f"/sumdb/lookup/{ESCAPED}@v1.0.0" in asked
        assert any(path.startswith("/sumdb/tile/8/0/") for path in asked)
        # go kept what it verified: the record, under the database's name
        verified = tmp_path / "online/modcache/cache/download/sumdb" / SUMDB_NAME / "lookup"
        assert (verified / f"{ESCAPED}@v1.0.0").is_file()

        await fake.close()
        status, output = await go_download(tmp_path / "offline", proxy, fake.sumdb_key, spec)
        assert status == 0, output
        assert json.loads(output)["Sum"] == module.h1

        # The signatures are really checked: another key of the same name is refused.
        impostor = Signer.generate(SUMDB_NAME).verifier_key
        status, output = await go_download(tmp_path / "impostor", proxy, impostor, spec)
        assert status != 0
        assert "verifying" in output and "signature" in output


@pytest.mark.slow
async def test_go_gets_no_tampered_zip_of_an_indexed_version(
    tmp_path: Path, db_url: str, fake: GoFake
) -> None:
    """Indexed (its h1 known), not archived: with GOSUMDB=off only Forage stands between the
    go command and the bad bytes."""
    async with forage_mirror(tmp_path, db_url, golang=fake.endpoints) as forage:
        await forage.ingest("golang", MODULE)  # indexed, never archived
        fake.tamper(MODULE, "v1.0.0", EVIL)
        status, output = await go_download(
            tmp_path / "go", f"{forage.url}/go", "off", f"{MODULE}@v1.0.0"
        )
    assert status != 0
    assert "502 Bad Gateway" in output
    assert "fails its checksum" in output
    assert not list((tmp_path / "go/modcache").glob("example.com/*"))


@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "sumdb-only"])
async def test_a_tampered_zip_is_an_honest_error_never_a_200(
    indexed: bool, tmp_path: Path, db_url: str, fake: GoFake, client: httpx.AsyncClient
) -> None:
    """The h1 comes from the index, or (not indexed) from the checksum database."""
    async with forage_mirror(tmp_path, db_url, golang=fake.endpoints) as forage:
        if indexed:
            await forage.ingest("golang", MODULE)
        fake.tamper(MODULE, "v1.0.0", EVIL)
        base = f"{forage.url}/go/{ESCAPED}/@v"
        bad = await client.get(f"{base}/v1.0.0.zip")
        good = await client.get(f"{base}/v1.1.0.zip")
    assert bad.status_code == 502
    assert bad.headers["Forage-Upstream-Error"].startswith("digest")
    assert fake.modules[MODULE]["v1.0.0"].h1 in bad.text
    assert good.status_code == 200
    assert good.content == fake.modules[MODULE]["v1.1.0"].zip
    assert good.headers["Forage-Verified"] == "h1"
    if not indexed:
        assert f"/sumdb/lookup/{ESCAPED}@v1.0.0" in fake.requests.paths()


async def test_a_module_the_database_does_not_know_passes_unverified(
    tmp_path: Path, db_url: str, client: httpx.AsyncClient
) -> None:
    """Private modules (no record, not indexed) have no digest to check against: they pass,
    and say so."""
    async with GoFake() as fake:
        fake.add_version("example.com/private", "v1.0.0", in_sumdb=False)
        async with forage_mirror(tmp_path, db_url, golang=fake.endpoints) as forage:
            answer = await client.get(f"{forage.url}/go/example.com/private/@v/v1.0.0.zip")
    assert answer.status_code == 200
    assert answer.headers["Forage-Verified"] == "none"


async def test_the_checksum_database_is_proxied_and_kept_for_offline_use(
    tmp_path: Path, db_url: str, fake: GoFake, client: httpx.AsyncClient
) -> None:
    async with forage_mirror(tmp_path, db_url, golang=fake.endpoints) as forage:
        sumdb = f"{forage.url}/go/sumdb/{SUMDB_NAME}"
        assert (await client.get(f"{sumdb}/supported")).status_code == 200
        other = await client.get(f"{forage.url}/go/sumdb/sum.golang.org/supported")
        assert other.status_code == 404  # the go command then asks that database itself
        urls = [f"{sumdb}/lookup/{ESCAPED}@v1.0.0", f"{sumdb}/tile/8/0/000.p/2", f"{sumdb}/latest"]
        online = [await client.get(url) for url in urls]
        assert [a.status_code for a in online] == [200, 200, 200]
        assert online[0].content == fake.sumdb.lookup(0)
        assert online[2].content == fake.sumdb.signed_tree()
        assert all(a.headers["Forage-Source"] == "upstream" for a in online)
        fake.requests.clear()
        again = await client.get(urls[1])  # tiles never change: not asked again
        assert again.headers["Forage-Source"] == "archive"
        assert fake.requests.seen == []

        await fake.close()
        offline = [await client.get(url) for url in urls]
        assert [a.content for a in offline] == [a.content for a in online]
        assert offline[2].headers["Forage-Source"] == "archive"
        assert offline[2].headers["Forage-Upstream-Error"].startswith("refused")
        never = await client.get(f"{sumdb}/lookup/{ESCAPED}@v1.1.0")
        assert never.status_code == 404
        for hostile in (
            "tile/8/0/0",
            "tile/8/0/../../latest",
            "lookup/Example.com/x@v1.0.0",
            "lookup/example.com/x",
            "nonsense",
        ):
            answer = await client.get(f"{sumdb}/{hostile}")
            assert answer.status_code == 404, hostile
    stored = list((tmp_path / "data/mirror-cache/golang/sumdb").rglob("*"))
    assert any(path.name == "latest" for path in stored)
