"""Feedback on long work and on empty results (issue 19, criterion 7): progress bars with
totals when asked (and none in logs otherwise), ``forage jobs show`` with the payload and the
whole error, empty listings that say so and name the next step, sizes in human units.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from forage.cli import main
from forage.cli.index import describe_position, duration
from forage.cli.progress import human_size
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import JobRecord, JobState, VersionAnswer
from forage.jobs import queue as jobs
from tests.forage.test_api import seed

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def store() -> str:
    """SQLite only: what is shown does not depend on the store."""
    return "sqlite"


@pytest.fixture
def sessions(migrated_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@pytest.fixture
def forage(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Run:
    for name in [n for n in os.environ if n.startswith("FORAGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FORAGE_DATABASE_URL", migrated_url)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["-q", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_render_answers_shows_a_bar_with_its_total_only_when_asked(
    forage: Run, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as session:
        seed(session)
    code, _, err = forage("db", "render-answers")
    assert code == 0
    assert "3 lookup answers rendered" in err
    assert "rendering" not in err  # stderr is no terminal here: logs stay clean
    with sessions.begin() as session:
        session.execute(sa.update(VersionAnswer).values(body=None))  # retired: stale again
    code, _, err = forage("db", "render-answers", "--progress")
    assert code == 0
    assert "rendering: 100%" in err and "3/3" in err
    assert "3 lookup answers rendered" in err


def test_jobs_show_prints_the_payload_and_the_whole_error(
    forage: Run, sessions: sessionmaker[Session]
) -> None:
    error = "first line of the failure\n" + "\n".join(f"detail {i}" for i in range(40))
    with sessions.begin() as session:
        job_id = jobs.enqueue(session, "import_package", {"ecosystem": "npm", "name": "x" * 90})
        session.execute(
            sa.update(JobRecord)
            .where(JobRecord.id == job_id)
            .values(state=JobState.DEAD, last_error=error, attempts=3)
        )
    code, out, _ = forage("jobs", "show", str(job_id))
    assert code == 0
    assert f"job       {job_id}" in out
    assert "state     dead" in out
    payload = out[out.index("payload\n") + 8 : out.index("last error")]
    assert json.loads(payload) == {"ecosystem": "npm", "name": "x" * 90}
    assert out.rstrip("\n").splitlines()[-41:] == [f"  {line}" for line in error.splitlines()]
    code, out, err = forage("jobs", "show", str(job_id + 100))
    assert (code, out) == (3, "")
    assert f"no job {job_id + 100}" in err


def test_empty_listings_say_so_and_name_the_next_step(forage: Run) -> None:
    for command, words in (
        (["jobs"], "no jobs; 'forage watch', 'forage import'"),
        (["jobs", "--state", "dead"], "no jobs with state=dead"),
        (["jobs", "stats"], "the job queue is empty"),
        (["pieces"], "no pieces yet; 'forage pieces build'"),
        (["deals"], "no deals recorded; 'forage deals sync'"),
        (["status"], "the index is empty; configure a registry"),
    ):
        code, out, err = forage(*command)
        assert code == 0, command
        assert words in err, (command, err)
        assert "ID  KIND" not in out and "PIECE CID" not in out and "DEAL " not in out
    code, out, _ = forage("status")
    assert "  feed      not watched yet: 'forage watch npm' follows it" in out


def test_sizes_durations_and_positions_in_words() -> None:
    assert [human_size(n) for n in (None, 0, 1023, 1024, 1536, 34 * 2**30, 2**60)] == [
        "-",
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "34.0 GiB",
        "1024.0 PiB",
    ]
    assert [duration(s) for s in (0, 42.9, 185, 7_800, 280_000)] == [
        "0 s",
        "42 s",
        "3 min 5 s",
        "2 h 10 min",
        "3 d 5 h",
    ]
    assert describe_position("npm", 1234) == "seq 1234"
    assert describe_position("pypi", 99) == "serial 99"
    assert describe_position("golang", "2026-01-02T03:04:05.123Z") == "2026-01-02 03:04:05 UTC"
    assert describe_position("golang", None) == "unknown"
