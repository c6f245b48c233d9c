"""The PyPI mirror's rules over HTTP: PEP 503/691 pages, redirects, yanks, the archive on
failure, removed files, quarantine and hostile names."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from forage.db.models import Package
from indexers.fakeserver import RunningServer, start_fake
from indexers.pypi.fake import FakePyPI, PyPIFile
from indexers.pypi.mirror import SIMPLE_JSON, negotiate
from tests.forage.mirror.conftest import Forage, forage_mirror
from tests.forage.mirror.test_clients import base_env, run

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)


@pytest.fixture
def pypi() -> FakePyPI:
    pypi = FakePyPI()
    pypi.release("Sample.Project", "1.0", requires_python=">=3.8")
    pypi.release("Sample.Project", "1.1", sdist=False)
    pypi.yank("Sample.Project", "1.0", reason="broken build")
    return pypi


@pytest.fixture
async def upstream(pypi: FakePyPI) -> AsyncIterator[RunningServer]:
    running = await start_fake(pypi.make_app())
    yield running
    await running.close()


@pytest.fixture
async def forage(
    tmp_path: Path, db_url: str, upstream: RunningServer, pypi: FakePyPI
) -> AsyncIterator[Forage]:
    async with forage_mirror(tmp_path, db_url, pypi=upstream.url) as running:
        await running.ingest("pypi", "sample-project")
        await running.archive_all()
        pypi.requests.clear()
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as shared:
        yield shared


def files(pypi: FakePyPI) -> list[PyPIFile]:
    return pypi.projects["sample-project"].files


def test_negotiation_follows_q_values() -> None:
    assert negotiate(PIP_ACCEPT) == SIMPLE_JSON
    assert negotiate("") == "text/html"
    assert negotiate("*/*") == "text/html"
    assert negotiate("text/html, application/vnd.pypi.simple.v1+json;q=0.5") == "text/html"
    assert negotiate("application/vnd.pypi.simple.v1+html") == "application/vnd.pypi.simple.v1+html"


async def test_upstream_page_in_both_forms_with_forage_urls(
    forage: Forage, pypi: FakePyPI, client: httpx.AsyncClient
) -> None:
    page = await client.get(
        f"{forage.url}/pypi/simple/sample-project/", headers={"accept": PIP_ACCEPT}
    )
    assert page.headers["content-type"].startswith(SIMPLE_JSON)
    assert page.headers["Forage-Source"] == "upstream"
    doc = page.json()
    assert doc["meta"]["api-version"] == "1.1"
    assert doc["versions"] == ["1.0", "1.1"]
    by_name = {f["filename"]: f for f in doc["files"]}
    for file in files(pypi):
        entry = by_name[file.filename]
        assert entry["hashes"] == {"sha256": file.sha256}
        assert entry["url"] == f"{forage.url}/pypi/files/{file.sha256}/{file.filename}"
        assert entry["yanked"] == ("broken build" if file.version == "1.0" else False)
    html = await client.get(f"{forage.url}/pypi/simple/sample-project/")
    assert html.headers["content-type"].startswith("text/html")
    text = html.text
    assert 'data-requires-python="&gt;=3.8"' in text
    assert 'data-yanked="broken build"' in text
    for file in files(pypi):
        assert f"/pypi/files/{file.sha256}/{file.filename}#sha256={file.sha256}" in text
    wheel = files(pypi)[-1]
    body = await client.get(f"{forage.url}/pypi/files/{wheel.sha256}/{wheel.filename}")
    assert body.content == wheel.data
    assert body.headers["Forage-Verified"] == "sha256"


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/pypi/simple/Sample.Project/", "/pypi/simple/sample-project/"),
        ("/pypi/simple/sample_project", "/pypi/simple/sample-project/"),
        ("/pypi/simple/sample-project", "/pypi/simple/sample-project/"),
        ("/pypi/simple", "/pypi/simple/"),
    ],
)
async def test_names_are_redirected_to_the_canonical_url(
    path: str, location: str, forage: Forage, pypi: FakePyPI, client: httpx.AsyncClient
) -> None:
    response = await client.get(forage.url + path)
    assert response.status_code == 301
    assert response.headers["location"] == location
    assert pypi.requests.seen == []


@pytest.mark.parametrize("fault", ["stopped", "503", "reset", "tamper"])
async def test_failures_fall_back_to_archived_files(
    fault: str,
    forage: Forage,
    pypi: FakePyPI,
    upstream: RunningServer,
    client: httpx.AsyncClient,
) -> None:
    wheel = files(pypi)[-1]
    page = await client.get(
        f"{forage.url}/pypi/simple/sample-project/", headers={"accept": PIP_ACCEPT}
    )
    assert page.headers["Forage-Source"] == "upstream"
    if fault == "stopped":
        await upstream.close()
    elif fault == "503":
        pypi.faults.fail(503, times=2)
    elif fault == "reset":
        pypi.faults.reset(times=2)
    else:
        pypi.tamper(wheel.filename, b"not the wheel")
    body = await client.get(f"{forage.url}/pypi/files/{wheel.sha256}/{wheel.filename}")
    assert body.status_code == 200
    assert body.content == wheel.data
    assert body.headers["Forage-Source"] == "archive"
    if fault == "tamper":  # an archived file is never fetched again
        assert "Forage-Upstream-Error" not in body.headers
        assert not [p for p in pypi.requests.paths() if p.endswith(wheel.filename)]
        return
    kind = {"stopped": "refused", "503": "status", "reset": "reset"}[fault]
    assert body.headers["Forage-Upstream-Error"].startswith(kind)


async def test_fallback_page_lists_archived_files_with_their_marks(
    forage: Forage, pypi: FakePyPI, upstream: RunningServer, client: httpx.AsyncClient
) -> None:
    pypi.release("Sample.Project", "2.0", sdist=False)  # never archived
    await forage.ingest("pypi", "sample-project")
    await upstream.close()
    page = await client.get(
        f"{forage.url}/pypi/simple/sample-project/", headers={"accept": PIP_ACCEPT}
    )
    assert page.headers["Forage-Source"] == "archive"
    doc = page.json()
    assert doc["versions"] == ["1.0", "1.1"]
    listed = {f["filename"]: f for f in doc["files"]}
    assert set(listed) == {f.filename for f in files(pypi) if f.version != "2.0"}
    for file in files(pypi):
        if file.version == "1.0":
            assert listed[file.filename]["yanked"] == "broken build"
            assert listed[file.filename]["requires-python"] == ">=3.8"
    html = await client.get(f"{forage.url}/pypi/simple/sample-project/")
    assert 'data-yanked="broken build"' in html.text
    # Nothing archived and the upstream down: an upstream failure, not "no such project".
    unknown = await client.get(f"{forage.url}/pypi/simple/unknown/")
    assert unknown.status_code == 502
    assert unknown.text.startswith("502 upstream failed (refused: ")


async def test_a_removed_file_is_served_only_on_exact_request(
    forage: Forage, pypi: FakePyPI, client: httpx.AsyncClient
) -> None:
    wheel = files(pypi)[-1]
    pypi.remove_file(wheel.filename)
    page = await client.get(
        f"{forage.url}/pypi/simple/sample-project/", headers={"accept": PIP_ACCEPT}
    )
    assert wheel.filename not in {f["filename"] for f in page.json()["files"]}
    exact = await client.get(f"{forage.url}/pypi/files/{wheel.sha256}/{wheel.filename}")
    assert exact.status_code == 200
    assert exact.content == wheel.data
    assert exact.headers["Forage-Source"] == "archive-removed"
    wrong = await client.get(f"{forage.url}/pypi/files/{'0' * 64}/{wheel.filename}")
    assert wrong.status_code == 404


async def test_a_quarantined_project_is_never_served(
    forage: Forage, pypi: FakePyPI, upstream: RunningServer, client: httpx.AsyncClient
) -> None:
    wheel = files(pypi)[-1]
    with forage.ctx.sessionmaker.begin() as session:
        package = session.execute(
            sa.select(Package).where(Package.name == "sample-project")
        ).scalar_one()
        package.extra = {**package.extra, "project_status": {"status": "quarantined"}}
    response = await client.get(f"{forage.url}/pypi/files/{wheel.sha256}/{wheel.filename}")
    assert response.status_code == 404
    assert "quarantined" in response.text
    await upstream.close()
    page = await client.get(
        f"{forage.url}/pypi/simple/sample-project/", headers={"accept": PIP_ACCEPT}
    )
    assert page.json()["files"] == []
    assert page.json()["project-status"]["status"] == "quarantined"
    html = await client.get(f"{forage.url}/pypi/simple/sample-project/")
    assert '<meta name="pypi:project-status" content="quarantined">' in html.text
    assert (
        await client.get(f"{forage.url}/pypi/files/{wheel.sha256}/{wheel.filename}")
    ).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/pypi/simple/..%2f..%2fetc/",
        "/pypi/simple/%2e%2e/",
        "/pypi/simple/a%00b/",
        "/pypi/simple/" + "a" * 3000 + "/",
        "/pypi/files/" + "0" * 64 + "/..%2fsecret.whl",
        "/pypi/files/" + "0" * 64 + "/x%00.whl",
        "/pypi/files/ABC/x.whl",
        "/pypi/files/" + "0" * 64 + "/" + "x" * 400 + ".whl",
    ],
    ids=lambda path: path[:40],
)
async def test_hostile_names_never_reach_the_upstream(
    path: str, forage: Forage, pypi: FakePyPI, client: httpx.AsyncClient
) -> None:
    response = await client.get(forage.url + path)
    assert response.status_code in (400, 404)
    assert pypi.requests.seen == []


# -- PEP 658/714: core metadata files ----------------------------------------------------------


async def test_core_metadata_is_advertised_and_served_checked_against_its_hash(
    forage: Forage, pypi: FakePyPI, client: httpx.AsyncClient
) -> None:
    (wheel,) = pypi.release("Fresh", "1.0", sdist=False)  # not indexed, not archived
    assert wheel.metadata is not None
    metadata_sha256 = hashlib.sha256(wheel.metadata).hexdigest()
    page = await client.get(f"{forage.url}/pypi/simple/fresh/", headers={"accept": PIP_ACCEPT})
    (entry,) = page.json()["files"]
    assert entry["core-metadata"] == {"sha256": metadata_sha256}
    assert "dist-info-metadata" not in entry  # PEP 714: it makes pip 22.3-23.1 fail hard
    html = (await client.get(f"{forage.url}/pypi/simple/fresh/")).text
    assert f'data-core-metadata="sha256={metadata_sha256}"' in html
    assert f'data-dist-info-metadata="sha256={metadata_sha256}"' in html
    sdist = next(f for f in files(pypi) if f.filename.endswith(".tar.gz"))
    page = await client.get(
        f"{forage.url}/pypi/simple/sample-project/", headers={"accept": PIP_ACCEPT}
    )
    listed = {f["filename"]: f for f in page.json()["files"]}
    assert "core-metadata" not in listed[sdist.filename]  # PyPI advertises none for sdists

    served = await client.get(entry["url"] + ".metadata")
    assert served.status_code == 200
    assert served.content == wheel.metadata
    assert served.headers["Forage-Source"] == "upstream"
    assert served.headers["Forage-Verified"] == "sha256"
    assert not [p for p in pypi.requests.paths() if p.endswith(".whl")]  # never the wheel

    pypi.tamper_metadata(wheel.filename, b"Metadata-Version: 2.1\nName: evil\n")
    refused = await client.get(entry["url"] + ".metadata")
    assert refused.status_code == 502  # bytes failing the advertised hash, nothing archived
    assert refused.headers["Forage-Upstream-Error"].startswith("digest")
    assert b"evil" not in refused.content


async def test_core_metadata_is_archived_beside_its_wheel_and_served_in_an_outage(
    forage: Forage, pypi: FakePyPI, upstream: RunningServer, client: httpx.AsyncClient
) -> None:
    await upstream.close()
    page = await client.get(
        f"{forage.url}/pypi/simple/sample-project/", headers={"accept": PIP_ACCEPT}
    )
    assert page.headers["Forage-Source"] == "archive"
    listed = {f["filename"]: f for f in page.json()["files"]}
    assert not [name for name in listed if name.endswith(".metadata")]  # a sidecar, not a file
    wheels = [f for f in files(pypi) if f.filename.endswith(".whl")]
    assert len(wheels) == 2
    html = (await client.get(f"{forage.url}/pypi/simple/sample-project/")).text
    for wheel in wheels:
        assert wheel.metadata is not None
        advertised = hashlib.sha256(wheel.metadata).hexdigest()
        assert listed[wheel.filename]["core-metadata"] == {"sha256": advertised}
        assert f'data-core-metadata="sha256={advertised}"' in html
        served = await client.get(listed[wheel.filename]["url"] + ".metadata")
        assert served.status_code == 200
        assert served.content == wheel.metadata
        assert served.headers["Forage-Source"] == "archive"


@pytest.mark.slow
async def test_pip_resolves_from_metadata_files_without_the_wheels_it_rejects(
    tmp_path: Path, db_url: str
) -> None:
    """The newest ``app`` needs a ``lib`` nobody published, so pip backtracks to the older
    ``app``. A pip that reads PEP 714's ``core-metadata`` from JSON pages (23.2 and later)
    fetches only the newer one's ``.metadata``, never its wheel; an older one (Debian 12's
    venv bundles 23.0.1) must still resolve through the same page without failing."""
    pypi = FakePyPI()
    (old,) = pypi.release("app", "1.0", sdist=False)
    pypi.upload("app", "2.0", requires=("lib>=9",))
    (lib,) = pypi.release("lib", "1.0", sdist=False)
    upstream = await start_fake(pypi.make_app())
    try:
        async with forage_mirror(tmp_path, db_url, pypi=upstream.url) as forage:
            where = tmp_path / "pip"
            env = base_env(where)
            env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
            await run(
                [
                    *("python3", "-m", "pip", "download", "--no-cache-dir", "--only-binary=:all:"),
                    *("--index-url", f"{forage.url}/pypi/simple/", "-d", str(where / "out")),
                    "app",
                ],
                env=env,
                cwd=where,
            )
    finally:
        await upstream.close()
    assert sorted(p.name for p in (where / "out").iterdir()) == [old.filename]
    seen = pypi.requests.paths()
    if _pip_version() < (23, 2):
        return
    assert any(p.endswith("/app-2.0-py3-none-any.whl.metadata") for p in seen), seen
    assert not any(p.endswith("/app-2.0-py3-none-any.whl") for p in seen), seen
    assert lib.filename not in " ".join(seen)  # lib 1.0 fails the requirement: not fetched


def _pip_version() -> tuple[int, ...]:
    """The version of the ``python3 -m pip`` the tests run."""
    done = subprocess.run(
        ["python3", "-m", "pip", "--version"], capture_output=True, text=True, check=True
    )
    return tuple(int(part) for part in done.stdout.split()[1].split(".")[:2])
