"""``forage serve --processes 2`` as an operator runs it: a real subprocess on port 0, on SQLite
and on PostgreSQL.

What is shown: both server processes answer lookups correctly (each is made the only one able
to accept by stopping the other with SIGSTOP, and ``/healthz`` names the pid that answered);
``/metrics`` counts the requests of both; a child killed with SIGKILL is replaced and the
service keeps answering, from the new process too, and when the replacement dies young as
well the next one waits twice as long; SIGTERM to the parent stops everything, exit status
0, no child left. A database that cannot be reached is one line and exit 1; the backfill
budget is shared out between the processes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from forage.cli.serve import share_config
from forage.config import load_config
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import VersionAnswer
from tests.factories import artifact_content, raw_cid
from tests.forage.test_api import TOKEN, seed

KEYS = ["pkg:pypi/Django@5.0", "npm:@scope/pkg:2.0.0"]


def start(tmp_path: Path, url: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``forage serve`` and return it with the URL it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORAGE_")}
    env.update(
        FORAGE_DATABASE_URL=url, FORAGE_DATA_DIR=str(tmp_path / "data"), FORAGE_API_TOKEN=TOKEN
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "forage", "serve", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        if "serving on " in line:
            return process, line.split("serving on ", 1)[1].strip()
        lines.append(line)
    process.wait(timeout=30)
    raise AssertionError(f"forage serve exited {process.returncode}: {''.join(lines)}")


def children(parent: int) -> set[int]:
    """The pids of ``parent``'s children (Linux: its main thread's ``children`` file)."""
    text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
    return {int(pid) for pid in text.split()}


def alive(pid: int) -> bool:
    """Whether ``pid`` exists (a zombie counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def fresh(url: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    """One request on a connection of its own, so any process free to accept may take it."""
    with httpx.Client(base_url=url, timeout=10) as client:
        return client.request(method, path, **kwargs)  # type: ignore[arg-type]


def answered_by(url: str) -> int:
    response = fresh(url, "GET", "/healthz")
    assert response.status_code == 200, response.text
    return int(response.json()["pid"])


def lookup_cids(url: str) -> list[str]:
    response = fresh(url, "POST", "/api/v1/lookup", json={"keys": KEYS})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["status"] for result in results] == ["found", "found"]
    return [artifact["cid"] for result in results for artifact in result["artifacts"]]


@contextlib.contextmanager
def alone(stopped: set[int]) -> Iterator[None]:
    """Stop the ``stopped`` processes (SIGSTOP) for the block: only the others can accept."""
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def stored_answers(database_url: str) -> int:
    """How many versions have a rendered answer stored."""
    engine = make_engine(database_url, read_only=True)
    try:
        with engine.connect() as connection:
            query = sa.select(sa.func.count()).where(VersionAnswer.body.is_not(None))
            return int(connection.execute(query).scalar_one())
    finally:
        engine.dispose()


def wait_for(check: Callable[[], object], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def expected(migrated_url: str) -> Iterator[list[str]]:
    """The index of ``test_api.seed``; the CIDs the lookup of ``KEYS`` must give."""
    engine = make_engine(migrated_url)
    try:
        with make_sessionmaker(engine).begin() as session:
            rows = seed(session)
            cids = [raw_cid(artifact_content(rows[name])) for name in ("sdist", "tarball")]
    finally:
        engine.dispose()
    yield cids


def test_two_processes_answer_survive_a_kill_and_stop_cleanly(
    tmp_path: Path, migrated_url: str, expected: list[str]
) -> None:
    process, url = start(tmp_path, migrated_url, "--processes", "2")
    known: set[int] = set()
    try:
        first = children(process.pid)
        known |= first
        assert len(first) == 2
        for pid in sorted(first):
            with alone(first - {pid}):
                assert answered_by(url) == pid
                assert lookup_cids(url) == expected
                # The answers are stored off the request's path: let that write end before
                # this process is stopped (on SQLite it would hold the write lock meanwhile).
                wait_for(lambda: stored_answers(migrated_url) == len(KEYS), "answers stored")
        metrics = fresh(url, "GET", "/metrics").text
        # Counted by both processes, summed in one scrape.
        assert re.search(
            r'^forage_http_requests_total\{method="POST",route="/api/v1/lookup",status="200"\} '
            r"2\.0$",
            metrics,
            re.MULTILINE,
        ), metrics

        victim, survivor = sorted(first)
        killed = [victim]
        for _ in range(2):  # the first replacement is killed young too: a longer wait
            os.kill(killed[-1], signal.SIGKILL)
            wait_for(lambda: children(process.pid) - {*killed, survivor}, "a new process")
            (replacement,) = children(process.pid) - {*killed, survivor}
            known.add(replacement)
            with alone({survivor}):
                # Accepted once the new process serves (the connection waits in the queue).
                assert answered_by(url) == replacement
                assert lookup_cids(url) == expected
            killed.append(replacement)
        assert answered_by(url) in {survivor, replacement}

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        for pid in known:
            if alive(pid):
                os.kill(pid, signal.SIGCONT)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    restarts = re.findall(
        r"server process (\d) \((\d+)\) was killed by SIGKILL after [\d.]+ s; "
        r"starting another in ([\d.]+) s",
        stderr,
    )
    slot = restarts[0][0]
    assert restarts == [(slot, str(killed[0]), "0.5"), (slot, str(killed[1]), "1.0")], stderr
    assert "forage: stopping" in stderr and "forage: stopped" in stderr
    assert "Traceback" not in stderr
    assert not [pid for pid in known if alive(pid)]


def test_an_unreachable_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORAGE_")}
    env["FORAGE_DATABASE_URL"] = "postgresql://forage@127.0.0.1:1/forage"
    done = subprocess.run(
        [sys.executable, "-m", "forage", "serve", "--port", "0", "--processes", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("forage: database postgresql"), line
    assert "127.0.0.1:1/forage is unreachable" in line


@pytest.mark.parametrize(
    ("count", "rate", "burst"), [(2, 3.0, 250), (3, 2.0, 166), (1000, 0.006, 1)]
)
def test_the_backfill_budget_is_shared_out_between_the_processes(
    count: int, rate: float, burst: int
) -> None:
    """Each process's token bucket gets its share: together they queue no more imports per
    second than configured (a burst never drops to nothing while one is configured)."""
    environ = {"FORAGE_SERVER_PROCESSES": str(count), "FORAGE_SERVER_BACKFILL_RATE": "6"}
    config = load_config(environ=environ)
    assert (config.server.processes, config.server.backfill_burst) == (count, 500)
    shared = share_config(config, count)
    assert shared.server.backfill_rate == pytest.approx(rate)
    assert shared.server.backfill_burst == burst
    assert shared.server.max_keys == config.server.max_keys  # nothing else changes
