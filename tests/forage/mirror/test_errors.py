"""Honest errors (issue 16, criterion 3): when neither the upstream nor the archive can answer,
the client is told the registry failed (502/503/504, a message in its registry's error format),
never that the package does not exist; what the upstream says does not exist stays a 404; Go
keeps 404/410 so a ``GOPROXY`` list falls through to its next entry.

The generic tests run every registered ecosystem's mirror against its own fake; the real
``npm`` and ``pip`` show what their users then read.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from aiohttp import web

from forage.db.models import Artifact, ArtifactDigest
from indexers import ECOSYSTEMS, Ecosystem, FakeRegistry
from indexers.errors import UpstreamFailed
from indexers.fakeserver import RunningServer, fake_app, start_fake
from indexers.mirror.failures import unavailable
from indexers.npm.fake import FakeNpmRegistry
from indexers.pypi.fake import FakePyPI
from tests.forage.mirror.conftest import Forage, forage_mirror
from tests.forage.mirror.test_clients import base_env, need, npm_env

#: What Go's mirror answers for "cannot answer": a GOPROXY list moves on to its next entry.
GO_ABSENT = {404, 410}
ecosystems = pytest.mark.parametrize("ecosystem", list(ECOSYSTEMS.values()), ids=list(ECOSYSTEMS))


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("refused", 502),
        ("status", 502),
        ("truncated", 502),
        ("digest", 502),
        ("timeout", 504),
        ("slow", 504),
        ("offline", 503),
        ("down", 503),
    ],
)
def test_each_failure_kind_has_its_status(kind: str, status: int) -> None:
    answer = unavailable(UpstreamFailed("http://u/x", kind, "why"), {"A": "b"}, retry_after=9.5)
    assert answer.status == status
    assert answer.headers["A"] == "b"
    assert f"({kind}: why)" in answer.message
    # Only a skipped upstream has a known time to come back (its skip window).
    assert answer.headers.get("Retry-After") == ("10" if kind == "down" else None)


def _digests(forage: Forage, filename: str) -> dict[str, str]:
    with forage.ctx.sessionmaker() as session:
        rows = session.execute(
            sa.select(ArtifactDigest.algorithm, ArtifactDigest.value)
            .join(Artifact, Artifact.id == ArtifactDigest.artifact_id)
            .where(Artifact.filename == filename)
        ).all()
    return dict(rows)


@pytest.fixture
async def indexed(
    ecosystem: Ecosystem, tmp_path: Path, db_url: str
) -> AsyncIterator[tuple[FakeRegistry, RunningServer, Forage, list[str]]]:
    """A release indexed but not archived; yields the fake, its server, Forage and the URLs
    of its listing, its file and the listing of a package the registry does not have."""
    fake = ecosystem.fake()
    name = fake.NAME_EXAMPLES[0][1]
    version = fake.SAMPLE_VERSIONS[0]
    fake.publish_release(name, version)
    filename, _ = fake.release_file(name, version)
    upstream = await start_fake(fake.make_app())
    endpoints = {ecosystem.name: fake.config_endpoints(upstream.url)}
    routes = ecosystem.mirror()
    try:
        async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
            await forage.ingest(ecosystem.name, name)
            digests = _digests(forage, filename)
            urls = [
                forage.url + routes.listing_path(name),
                forage.url + routes.file_path(name, version, filename, digests),
                forage.url + routes.listing_path(f"{name}-missing"),
            ]
            fake.tamper_release(name, version)
            yield fake, upstream, forage, urls
    finally:
        await upstream.close()


@ecosystems
async def test_upstream_failures_are_no_not_found(
    ecosystem: Ecosystem, indexed: tuple[FakeRegistry, RunningServer, Forage, list[str]]
) -> None:
    _, upstream, _, (listing, download, missing) = indexed
    async with httpx.AsyncClient(timeout=10) as client:
        # What the registry does not have stays "not found".
        absent = await client.get(missing)
        assert absent.status_code in GO_ABSENT, absent.text[:300]

        # Bytes that fail their digest, nothing archived: a 502 everywhere (for Go too: bad
        # bytes from the upstream stop ``go`` rather than send it on to the next proxy).
        await client.get(listing)  # learns where the upstream serves the file
        corrupt = await client.get(download)
        assert corrupt.status_code == 502, corrupt.text[:300]
        assert corrupt.headers["Forage-Upstream-Error"].startswith("digest")

        await upstream.close()
        for url in (listing, download, missing):
            response = await client.get(url)
            assert response.headers["Forage-Upstream-Error"].startswith("refused")
            if ecosystem.name == "golang":
                assert response.status_code in GO_ABSENT, (url, response.text[:300])
                continue
            assert response.status_code == 502, (url, response.text[:300])
            assert "upstream failed (refused: connection refused)" in response.text


@ecosystems
async def test_an_offline_mirror_without_a_copy_answers_503(
    ecosystem: Ecosystem, tmp_path: Path, db_url: str
) -> None:
    fake = ecosystem.fake()
    name = fake.NAME_EXAMPLES[0][1]
    version = fake.SAMPLE_VERSIONS[0]
    fake.publish_release(name, version)
    filename, _ = fake.release_file(name, version)
    routes = ecosystem.mirror()
    upstream = await start_fake(fake.make_app())
    endpoints = {ecosystem.name: fake.config_endpoints(upstream.url)}
    try:
        async with forage_mirror(
            tmp_path, db_url, registries=endpoints, mirror={"offline": True}
        ) as forage:
            await forage.ingest(ecosystem.name, name)  # the index reads the fake, not the mirror
            urls = [
                forage.url + routes.listing_path(name),
                forage.url + routes.file_path(name, version, filename, _digests(forage, filename)),
            ]
            async with httpx.AsyncClient(timeout=10) as client:
                for url in urls:
                    response = await client.get(url)
                    assert response.headers["Forage-Upstream-Error"].startswith("offline")
                    if ecosystem.name == "golang":
                        assert response.status_code in GO_ABSENT, (url, response.text[:300])
                        continue
                    assert response.status_code == 503, (url, response.text[:300])
                    assert "mirror is offline" in response.text
                    assert "Retry-After" not in response.headers  # asking again will not help
    finally:
        await upstream.close()


async def test_npm_timeouts_are_504_and_a_skipped_upstream_503_with_retry_after(
    tmp_path: Path, db_url: str
) -> None:
    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(2)  # past the test mirror's 1 s first-byte timeout
        return web.Response(status=500)

    app = fake_app()
    app.router.add_get("/{tail:.*}", stall)
    stalled = await start_fake(app)
    try:
        async with (
            forage_mirror(tmp_path, db_url, npm=stalled.url, mirror={"down_seconds": 30}) as forage,
            httpx.AsyncClient(timeout=10) as client,
        ):
            first = await client.get(f"{forage.url}/npm/left-pad")
            assert first.status_code == 504
            assert first.json()["error"].startswith("upstream timed out (timeout: ")
            assert "Retry-After" not in first.headers
            second = await client.get(f"{forage.url}/npm/left-pad")  # not asked: down window
            assert second.status_code == 503
            assert second.json()["error"].startswith("upstream is down (down: ")
            assert second.headers["Retry-After"] == "30"
    finally:
        await stalled.close()


# -- what the users of the real clients read ---------------------------------------------------


async def _fails(argv: list[str], *, env: dict[str, str], cwd: Path) -> str:
    """Run a client that must fail; return its output."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=180)
    text = output.decode(errors="replace")
    assert process.returncode != 0, f"{' '.join(argv)} succeeded:\n{text}"
    return text


@pytest.mark.slow
async def test_npm_reports_an_upstream_failure_not_a_missing_package(
    tmp_path: Path, db_url: str
) -> None:
    npm = need("npm")
    registry = FakeNpmRegistry()
    registry.publish("left-pad", "1.0.0")
    upstream = await start_fake(registry.make_app())
    async with forage_mirror(tmp_path, db_url, npm=upstream.url) as forage:
        await upstream.close()
        where = tmp_path / "npm"
        env = npm_env(where)
        # npm retries a 5xx (fetch-retries); keep its back-off short for the test.
        env.update(npm_config_fetch_retries="1", npm_config_fetch_retry_mintimeout="100")
        env.update(npm_config_fetch_retry_maxtimeout="200")
        argv = [npm, "install", "--registry", f"{forage.url}/npm/", "--no-audit", "left-pad"]
        output = await _fails(argv, env=env, cwd=where)
    assert "E502" in output
    assert "upstream failed (refused: connection refused)" in output
    assert "E404" not in output and "is not in this registry" not in output


@pytest.mark.slow
async def test_pip_reports_an_upstream_failure_on_a_file(tmp_path: Path, db_url: str) -> None:
    pypi = FakePyPI()
    (wheel,) = pypi.release("Sample.Project", "1.0", sdist=False)
    pypi.tamper(wheel.filename, b"not the wheel")
    upstream = await start_fake(pypi.make_app())
    try:
        async with forage_mirror(tmp_path, db_url, pypi=upstream.url) as forage:
            where = tmp_path / "pip"
            env = base_env(where)
            env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
            output = await _fails(
                [
                    *("python3", "-m", "pip", "download", "--no-deps", "--no-cache-dir"),
                    *("--index-url", f"{forage.url}/pypi/simple/", "-d", str(where / "out")),
                    "sample-project==1.0",
                ],
                env=env,
                cwd=where,
            )
    finally:
        await upstream.close()
    assert "HTTP error 502" in output
    assert "No matching distribution" not in output
