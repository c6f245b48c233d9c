"""``forage lookup`` through the console script's entry point, on SQLite and PostgreSQL.

What is shown: keys print a table with each file's CID, pins and active deals (provider and
expiry) and a summary on stderr, exiting 3 while some key is not found and 0 once all are;
``--json`` prints the API's answer; ``--lockfile`` answers every dependency and lists the
skipped ones; unknown keys queue one import unless ``--no-backfill``; usage errors exit 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from forage.cli import main
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import JobRecord
from tests.factories import artifact_content, raw_cid
from tests.forage.test_api import DATA, seed


@pytest.fixture
def sessions(migrated_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@pytest.fixture
def rows(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with sessions.begin() as session:
        return seed(session)


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def forage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Done]:
    """Run the ``forage`` entry point in this process, as the console script does."""

    def run(url: str, *args: str) -> Done:
        for name in [n for n in os.environ if n.startswith("FORAGE_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("FORAGE_DATABASE_URL", url)
        monkeypatch.setenv("FORAGE_DATA_DIR", str(tmp_path / "data"))
        # Configured but never contacted: lookups only queue imports.
        monkeypatch.setenv("FORAGE_REGISTRIES_NPM_REGISTRY_URL", "http://127.0.0.1:9/npm")
        monkeypatch.setenv("FORAGE_REGISTRIES_NPM_REPLICATE_URL", "http://127.0.0.1:9/r")
        monkeypatch.setenv("FORAGE_REGISTRIES_NPM_ALLOW_HTTP", "true")
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return run


def job_names(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return [p["name"] for p in session.execute(sa.select(JobRecord.payload)).scalars()]


def test_table_shows_cids_pins_and_deals_and_exit_status_tracks_misses(
    forage: Callable[..., Done],
    migrated_url: str,
    rows: dict[str, Any],
    sessions: sessionmaker[Session],
) -> None:
    done = forage(migrated_url, "lookup", "pkg:pypi/Django@5.0", "npm:left-pad:1.1.0")
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["KEY", "STATUS", "FILE", "CID", "PINS", "DEALS"]
    django = lines[1].split()
    assert django[:4] == [
        "pkg:pypi/Django@5.0",
        "found",
        "Django-5.0.tar.gz",
        raw_cid(artifact_content(rows["sdist"])),
    ]
    # Deal 9001 ends at epoch 99,000,000: Unix 1598306400 + 30 s x 99,000,000.
    assert django[4:] == ["kubo:pinned", "f09", "until", "2114-10-06"]
    assert lines[2].split()[:3] == ["npm:left-pad:1.1.0", "queued", "import"]
    assert "1 found, 1 queued, 0 not found, 0 invalid, 0 skipped" in done.stderr
    assert job_names(sessions) == ["left-pad"]

    found = forage(migrated_url, "lookup", "npm:@scope/pkg:2.0.0")
    assert found.returncode == 0, found.stderr


def test_json_lockfile_and_no_backfill(
    forage: Callable[..., Done],
    migrated_url: str,
    rows: dict[str, Any],
    sessions: sessionmaker[Session],
) -> None:
    done = forage(migrated_url, "lookup", "--json", "--no-backfill", "bad", "pkg:npm/x@1.0.0")
    body = json.loads(done.stdout)
    assert [(r["key"], r["status"]) for r in body["results"]] == [
        ("bad", "invalid"),
        ("pkg:npm/x@1.0.0", "not_found"),
    ]
    assert body["results"][1]["reason"] == "not in the index"
    assert body["summary"] == {"found": 0, "queued": 0, "not_found": 1, "invalid": 1}
    assert job_names(sessions) == []

    lock = forage(
        migrated_url,
        "lookup",
        "--json",
        "--lockfile",
        str(DATA / "package-lock.json"),
        "pkg:pypi/django@5.0",
    )
    body = json.loads(lock.stdout)
    assert body["dependencies"][0]["source"] == "argument"
    assert body["dependencies"][0]["status"] == "found"
    assert [d["source"] for d in body["dependencies"] if d["status"] == "skipped"] == [
        "node_modules/from-git"
    ]
    assert body["summary"]["queued"] == 5
    assert sorted(job_names(sessions)) == ["@babel/core", "debug", "lodash"]


def test_usage_errors_exit_before_opening_the_database(
    forage: Callable[..., Done], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    migrated_url = f"sqlite:///{tmp_path / 'never-created.db'}"
    nothing = forage(migrated_url, "lookup")
    assert (nothing.returncode, nothing.stderr.strip()) == (
        2,
        "forage: give keys to look up, or --lockfile FILE",
    )
    missing = forage(migrated_url, "lookup", "--lockfile", "absent.json")
    assert missing.returncode == 2
    assert "cannot read absent.json" in missing.stderr
    (tmp_path / "weird.json").write_text('{"neither": true}')
    weird = forage(migrated_url, "lookup", "--lockfile", "weird.json")
    assert weird.returncode == 2  # the operator's input: a usage error
    assert "weird.json is not a lockfile Forage reads (package-lock.json" in weird.stderr
    assert not (tmp_path / "never-created.db").exists()
