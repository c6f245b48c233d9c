"""The operator's mistakes end in one line naming the thing and the fix (issue 19, criterion 2).

Each case sets up a real broken environment (a closed port for PostgreSQL, a directory or a
text file where the SQLite database should be, a file where ``data.dir`` should be, a port
already taken) and runs the ``forage`` entry point as the console script does: one line on
stderr, no traceback, the documented exit code (1 failed, 2 usage or configuration).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from forage.cli import main


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str


@pytest.fixture
def forage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., Done]]:
    """Run ``forage ARGS`` in ``tmp_path`` with only the given ``FORAGE_*`` variables."""
    for name in [n for n in os.environ if n.startswith("FORAGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def run(*args: str, **env: str) -> Done:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            code = main(["-q", *args])
        out, err = capsys.readouterr()
        return Done(code, out, err)

    yield run


def one_line(done: Done) -> str:
    assert "Traceback" not in done.err
    lines = done.err.splitlines()
    assert len(lines) == 1, done.err
    assert lines[0].startswith("forage: ")
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_postgresql_is_named_with_its_masked_url(forage: Callable[..., Done]) -> None:
    url = f"postgresql://forage:s3cret@127.0.0.1:{closed_port()}/forage"
    done = forage("jobs", "stats", FORAGE_DATABASE_URL=url)
    line = one_line(done)
    assert done.code == 1
    assert "is unreachable" in line and "start PostgreSQL" in line
    assert "127.0.0.1" in line and "s3cret" not in line


def test_sqlite_path_that_is_a_directory_or_not_a_database(
    forage: Callable[..., Done], tmp_path: Path
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    done = forage("db", "upgrade", FORAGE_DATABASE_URL=f"sqlite:///{folder}")
    assert done.code == 2
    assert "cannot open it as an SQLite file" in one_line(done)

    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 200)
    done = forage("status", FORAGE_DATABASE_URL=f"sqlite:///{text}")
    assert done.code == 2
    line = one_line(done)
    assert str(text) in line and "not an SQLite database" in line


def test_a_file_in_the_way_of_data_dir(forage: Callable[..., Done], tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    done = forage("db", "upgrade", FORAGE_DATA_DIR=str(tmp_path / "data"))
    assert done.code == 2
    line = one_line(done)
    assert "data.dir" in line and "a file is in the way" in line


def test_read_only_commands_never_create_a_database(
    forage: Callable[..., Done], tmp_path: Path
) -> None:
    for command in (
        ["status"],
        ["jobs"],
        ["jobs", "stats"],
        ["lookup", "npm:left-pad:1.3.0"],
        ["pins"],
        ["pieces"],
        ["deals"],
        ["db", "current"],
        ["archive", "--failed"],
    ):
        done = forage(*command)
        assert done.code == 2, command
        line = one_line(done)
        assert "no database at" in line and "-c FILE" in line
    assert list(tmp_path.iterdir()) == []


def test_every_configuration_mistake_is_reported_at_once(
    forage: Callable[..., Done], tmp_path: Path
) -> None:
    config = tmp_path / "forage.toml"
    config.write_text('[server]\nport = "eighty"\ncolour = "red"\n[jobs]\nmax_attempts = 0\n')
    done = forage("config", FORAGE_WORKER_CONCURRENCY="many")
    assert done.code == 2
    assert "Traceback" not in done.err
    keys = sorted(line.split(":")[1].split()[-1] for line in done.err.splitlines())
    assert keys == ["jobs.max_attempts", "server.colour", "server.port", "worker.concurrency"]


def test_missing_lockfile_and_all_invalid_keys_are_usage_errors(
    forage: Callable[..., Done],
) -> None:
    forage("db", "upgrade")
    done = forage("lookup", "--lockfile", "nowhere/package-lock.json")
    assert done.code == 2
    assert "nowhere/package-lock.json" in one_line(done)
    done = forage("export", "--lockfile", "nowhere.lock", "-o", "out.car")
    assert done.code == 2
    assert "nowhere.lock" in one_line(done)
    done = forage("lookup", "left-pad", "npm:")
    assert done.code == 2
    assert "2 invalid" in done.err
    done = forage("lookup", "left-pad", "npm:left-pad:1.3.0", "--no-backfill")
    assert done.code == 3


def test_port_in_use_and_an_unknown_host(forage: Callable[..., Done]) -> None:
    forage("db", "upgrade")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = forage("serve", "--host", "127.0.0.1", "--port", port)
    assert done.code == 1
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in done.err
    assert "Traceback" not in done.err
    done = forage("serve", "--host", "no-such-host.invalid", "--port", "0")
    assert done.code == 2
    assert "cannot listen on no-such-host.invalid:0" in done.err
    assert "--host" in done.err and "Traceback" not in done.err


def test_cid_pairs_each_cid_with_its_file(forage: Callable[..., Done], tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a\n")
    (tmp_path / "c").write_bytes(b"c\n")
    done = forage("cid", "a", "b", "c")
    assert done.code == 1
    first, third = done.out.splitlines()
    assert first.endswith("  a") and third.endswith("  c")
    assert first.split("  ")[0] != third.split("  ")[0]
    assert one_line(done) == "forage: b: No such file or directory"


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    for index in range(400):
        (tmp_path / f"f{index}").write_bytes(str(index).encode())
    names = sorted(p.name for p in tmp_path.iterdir())
    with subprocess.Popen(
        [sys.executable, "-m", "forage", "cid", *names],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as forage:
        assert forage.stdout is not None and forage.stderr is not None
        forage.stdout.readline()
        forage.stdout.close()
        err = forage.stderr.read().decode()
        assert forage.wait(timeout=60) == 0
    assert err == ""
