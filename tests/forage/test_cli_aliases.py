"""One name per ecosystem, its aliases accepted everywhere (issue 19, criterion 3): the CLI,
lookup keys, API paths and web pages take ``go`` for ``golang``; near misses get a "did you
mean", and a range, a tag or a Go version without its ``v`` is refused with what was meant.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from forage.cli import main
from tests.factories import make_package, make_version
from tests.forage.test_api import TOKEN, Api, sessions, start  # noqa: F401 - fixture

MODULE = "golang.org/x/text"


@pytest.fixture(scope="module")
def store() -> str:
    """SQLite only: aliases are resolved before any query (the stores are compared elsewhere)."""
    return "sqlite"


@pytest.fixture
async def api(
    migrated_url: str,
    tmp_path: Path,
    sessions: sessionmaker[Session],  # noqa: F811
) -> AsyncIterator[Api]:
    with sessions.begin() as session:
        make_version(
            session, package=make_package(session, ecosystem="golang", name=MODULE), number="v0.3.0"
        )
    async for value in start(migrated_url, tmp_path, sessions, FORAGE_API_TOKEN=TOKEN):
        yield value


async def test_lookup_keys_accept_aliases_and_explain_near_misses(api: Api) -> None:
    keys = [
        f"pkg:go/{MODULE}@v0.3.0",
        f"go:{MODULE}:v0.3.0",
        f"GoLang:{MODULE}:v0.3.0",
        f"pkg:golang/{MODULE}@0.3.0",
        f"pkg:golan/{MODULE}@v0.3.0",
        f"golan:{MODULE}:v0.3.0",
        "pkg:npm/left-pad@^1.0.0",
        "pkg:npm/left-pad@1.x",
        "pkg:npm/left-pad@latest",
        "pkg:pypi/django@==5.0",
        "pkg:pypi/django@>=5,<6",
    ]
    body = await api.json("POST", "/api/v1/lookup", json={"keys": keys, "backfill": False})
    results = body["results"]
    assert [r["status"] for r in results[:3]] == ["found"] * 3
    assert {r["purl"] for r in results[:3]} == {f"pkg:golang/{MODULE}@v0.3.0"}
    errors = [r.get("error", "") for r in results[3:]]
    assert all(r["status"] == "invalid" for r in results[3:])
    assert "did you mean v0.3.0?" in errors[0]
    assert "unknown purl type 'golan': did you mean 'golang'?" in errors[1]
    assert "unknown platform 'golan': did you mean 'golang'?" in errors[2]
    assert "'^1.0.0' is a range, not a version" in errors[3]
    assert "'1.x' is a range, not a version" in errors[4]
    assert "'latest' is a tag, not a version" in errors[5]
    assert "did you mean '5.0'?" in errors[6]
    assert "'>=5,<6' is a range" in errors[7]


async def test_api_paths_and_pages_take_aliases(api: Api) -> None:
    package = await api.json("GET", f"/api/v1/packages/go/{MODULE}")
    assert (package["ecosystem"], package["name"]) == ("golang", MODULE)
    version = await api.json("GET", f"/api/v1/packages/Go/{MODULE}/versions/v0.3.0")
    assert version["status"] == "found"
    near = await api.json("GET", f"/api/v1/packages/golan/{MODULE}", status=404)
    assert "did you mean 'golang'?" in near["error"]["message"]

    page = await api.client.get(f"/packages/go/{MODULE}?page=1", allow_redirects=False)
    assert page.status == 301
    assert page.headers["Location"] == f"/packages/golang/{MODULE}?page=1"
    followed = await api.client.get(f"/packages/go/{MODULE}")
    assert followed.status == 200
    assert "v0.3.0" in await followed.text()
    missing = await api.client.get(f"/packages/golan/{MODULE}")
    assert missing.status == 404
    assert "did you mean &#39;golang&#39;?" in await missing.text()


def test_cli_names_the_near_miss(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in [n for n in os.environ if n.startswith("FORAGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    assert main(["import", "goo", MODULE]) == 2
    assert "unknown registry 'goo': did you mean 'golang'?" in capsys.readouterr().err
    (tmp_path / "forage.toml").write_text("[registries.crates-io]\n")
    assert main(["config"]) == 2
    hint = "registries.crates-io: unknown registry: did you mean 'cargo'?"
    assert hint in capsys.readouterr().err
    (tmp_path / "forage.toml").unlink()
    assert main(["import", "go", MODULE]) == 2  # accepted, but no Go registry is configured
    assert "registries.golang: not configured" in capsys.readouterr().err
