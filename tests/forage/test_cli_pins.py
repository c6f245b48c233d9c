"""``forage pins`` and ``forage pins check`` as an operator runs them, in subprocesses, against
the loopback Kubo and Pinning Service fakes, on SQLite and PostgreSQL, with archives imported
for real and pinned by ``forage worker``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from forage.archive.blocks import open_blockstore
from forage.config import Config, load_config
from forage.db.engine import make_sessionmaker, open_database
from forage.fakes.kubo import FakeKubo
from forage.fakes.pinning_service import FakePinningService
from forage.pins.kinds import enqueue_pins
from indexers.fakeserver import ThreadedServer
from storage import import_file
from tests.factories import make_archive, make_artifact

KUBO_TOKEN = "kubo-cli-tok-0d1e"
PSA_TOKEN = "psa-cli-tok-8b3f27"
ORIGIN = "/ip4/10.0.0.7/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


@dataclass
class Setup:
    tmp_path: Path
    config: Config
    kubo: FakeKubo
    psa: FakePinningService
    cids: list[str]

    def forage(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORAGE_")}
        env["FORAGE_PINNING_BACKENDS_HOME_TOKEN"] = KUBO_TOKEN
        env["FORAGE_PINNING_BACKENDS_PSA_TOKEN"] = PSA_TOKEN
        done = subprocess.run(
            [sys.executable, "-m", "forage", "-c", str(self.tmp_path / "forage.toml"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.tmp_path,
            timeout=120,
            check=False,
        )
        for token in (KUBO_TOKEN, PSA_TOKEN):
            assert token not in done.stdout + done.stderr
        return done


def _setup(tmp_path: Path, database: str) -> Iterator[Setup]:
    """Three archived artifacts (one the Pinning Service will fail), their pins queued."""
    kubo = FakeKubo(token=KUBO_TOKEN)
    psa = FakePinningService(tokens=frozenset({PSA_TOKEN}))
    with ThreadedServer(kubo.app()) as k, ThreadedServer(psa.app()) as p:
        (tmp_path / "forage.toml").write_text(
            f'{database}[data]\ndir = "{tmp_path / "data"}"\n'
            f'[pinning.backends.home]\ntype = "kubo"\nurl = "{k.url}"\n'
            f'[pinning.backends.psa]\ntype = "service"\nurl = "{p.url}"\norigins = ["{ORIGIN}"]\n'
        )
        config = load_config(
            tmp_path / "forage.toml", environ={"FORAGE_PINNING_BACKENDS_PSA_TOKEN": PSA_TOKEN}
        )
        engine = open_database(config.database)
        cids = []
        try:
            with make_sessionmaker(engine).begin() as session:
                for n in range(3):
                    data = f"cli pin test {n}\n".encode() * (20_000 * (n + 1))
                    cid = str(import_file(data, sink=open_blockstore(config)).cid)
                    archive = make_archive(
                        session, artifact=make_artifact(session), cid=cid, size=len(data)
                    )
                    enqueue_pins(session, archive.id)
                    cids.append(cid)
        finally:
            engine.dispose()
        psa.fail_cid(cids[1], "could not fetch from origins: dial backoff")
        yield Setup(tmp_path, config, kubo, psa, cids)


@pytest.fixture
def setup(tmp_path: Path, migrated_url: str) -> Iterator[Setup]:
    """On the store under test (the counts and listings are SQL)."""
    yield from _setup(tmp_path, f'[database]\nurl = "{migrated_url}"\n')


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Setup]:
    """On the embedded SQLite default, for the command line's own behaviour."""
    yield from _setup(tmp_path, "")


def test_pins_shows_states_per_backend_and_the_check_moves_them(setup: Setup) -> None:
    worker = setup.forage("worker", "--drain", "--kind", "pin")
    assert worker.returncode == 0, worker.stderr
    assert "3 done" in worker.stderr
    assert all(setup.kubo.is_pinned(cid) for cid in setup.cids)
    assert len(setup.psa.pins) == 3

    setup.psa.advance()
    setup.psa.advance()
    setup.psa.requests.clear()
    check = setup.forage("pins", "check", "--backend", "psa")
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines() == [
        "psa: 3 pins checked in 1 batches: 1 failed, 2 pinned; 0 gone, 1 re-queued, "
        "0 archives queued"
    ]
    assert setup.psa.list_requests() == 1  # three pins, one GET /pins

    shown = json.loads(setup.forage("pins", "--json", "--failed").stdout)
    assert shown["backends"] == {
        "home": {
            "type": "kubo",
            "configured": True,
            "states": {"queued": 0, "pinning": 0, "pinned": 3, "failed": 0},
            "not_queued": 0,
        },
        "psa": {
            "type": "service",
            "configured": True,
            "states": {"queued": 0, "pinning": 0, "pinned": 2, "failed": 1},
            "not_queued": 0,
        },
    }
    [failed] = shown["failed"]
    assert (failed["cid"], failed["backend"]) == (setup.cids[1], "psa")
    assert failed["error"] == "could not fetch from origins: dial backoff"
    assert failed["request_id"] in setup.psa.pins

    table = setup.forage("pins", "--failed", "--backend", "psa").stdout.splitlines()
    assert table[0].split() == [
        "BACKEND",
        "TYPE",
        "queued",
        "pinning",
        "pinned",
        "failed",
        "NOT",
        "QUEUED",
    ]
    assert table[1].split() == ["psa", "service", "0", "0", "2", "1", "0"]
    assert table[2] == ""
    assert table[3].split() == ["ARCHIVE", "BACKEND", "CID", "ERROR"]
    [failed_line] = table[4:]
    assert failed_line.split()[1:3] == ["psa", setup.cids[1]]
    assert failed_line.endswith("could not fetch from origins: dial backoff")


def test_pins_names_the_configured_backends_for_an_unknown_one(embedded: Setup) -> None:
    shown = embedded.forage("pins", "--backend", "pinata")
    assert shown.returncode == 2
    assert "no such backend; configured: home, psa" in shown.stderr
    check = embedded.forage("pins", "check", "--backend", "pinata")
    assert check.returncode == 2
    assert "no such backend; configured: home, psa" in check.stderr


def test_pins_check_exits_non_zero_when_a_backend_cannot_be_asked(embedded: Setup) -> None:
    assert embedded.forage("worker", "--drain", "--kind", "pin").returncode == 0
    embedded.psa.faults.fail(503, path="/pins", times=5)
    check = embedded.forage("pins", "check", "--json")
    assert check.returncode == 1
    reports = {r["backend"]: r for r in json.loads(check.stdout)}
    assert reports["psa"]["checked"] == 0
    assert "HTTP 503" in reports["psa"]["error"]
    assert reports["home"]["error"] is None
