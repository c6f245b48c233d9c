"""``forage cid`` and ``forage car`` (forage.cli.content), run as a user would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from forage.cli import main
from storage.car import read_car
from storage.unixfs import compute_cid
from tests.vectors import content, load

VECTORS = {v["size"]: v for v in load("unixfs") if v["content"].startswith("forage-vector:")}
HELLO = next(v for v in load("unixfs") if v["content"] == "hello world\\n")


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = []
    for size in (12, 0, 262_145):
        path = tmp_path / f"f{size}"
        path.write_bytes(content(VECTORS[size]["content"], size))
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    ("flag", "key"), [([], "cid_v1_raw_leaves"), (["--cid-version", "0"], "cid_v0")]
)
def test_cid_prints_cid_and_file_pairs_in_order(
    files: list[Path], flag: list[str], key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cid", *flag, *map(str, files)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{VECTORS[size][key]}  {path}" for size, path in zip((12, 0, 262_145), files, strict=True)
    ]
    assert err == ""


def test_an_unreadable_file_is_named_and_the_others_still_printed(
    files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.tgz"
    assert main(["cid", str(files[0]), str(missing), str(tmp_path), str(files[2])]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{VECTORS[12]['cid_v1_raw_leaves']}  {files[0]}",
        f"{VECTORS[262_145]['cid_v1_raw_leaves']}  {files[2]}",
    ]
    assert f"forage: {missing}: No such file or directory" in err
    assert f"forage: {tmp_path}: Is a directory" in err


def test_cid_reads_stdin_for_a_dash() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "forage", "cid", "-"],
        input=b"hello world\n",
        capture_output=True,
        check=True,
    )
    assert done.stdout.decode().split() == [HELLO["cid_v1_raw_leaves"], "-"]


def test_cid_does_not_load_the_server_database_or_scheduler(files: list[Path]) -> None:
    script = (
        "import sys; from forage.cli import main; rc = main(['cid', sys.argv[1]]); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlalchemy', 'aiohttp', 'apscheduler', 'alembic', 'psycopg'}); "
        "print(rc, heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(files[0])], capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines() == [f"{VECTORS[12]['cid_v1_raw_leaves']}  {files[0]}", "0 []"]


def test_car_writes_a_readable_car_and_prints_the_root(
    files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.car"
    assert main(["car", str(files[2]), "-o", str(output), "--cid-version", "0"]) == 0
    root = capsys.readouterr().out.strip()
    assert root == VECTORS[262_145]["cid_v0"]
    with output.open("rb") as stream:
        reader = read_car(stream)
        assert [str(cid) for cid in reader.roots] == [root]
        blocks = list(reader)
    assert str(blocks[0].cid) == root
    assert sum(len(block.data) for block in blocks[1:]) > 262_145  # dag-pb leaves wrap the bytes
    assert oct(output.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0", "f12", "f262145", "out.car"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_car_of_a_missing_file_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.car"
    assert main(["car", str(tmp_path / "nope"), "-o", str(output)]) == 1
    assert f"forage: {tmp_path / 'nope'}: No such file or directory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_car_into_a_missing_directory_is_refused(
    files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["car", str(files[0]), "-o", str(tmp_path / "no" / "out.car")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_car_that_fails_midway_leaves_no_partial_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pipe cannot be read twice: the failure comes after the temp file was created, and
    neither OUT.car nor the temp file remains."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as pipe:
            pipe.write(b"x" * 1000)  # the reader may already have given up and closed

    feeder = threading.Thread(target=feed)
    feeder.start()
    output = tmp_path / "out" / "out.car"
    output.parent.mkdir()
    assert main(["car", str(fifo), "-o", str(output)]) == 1
    feeder.join()
    assert "Illegal seek" in capsys.readouterr().err
    assert list(output.parent.iterdir()) == []


def test_help_texts_explain_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("cid", "car"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "ipfs add --cid-version=1" in text
    assert "- reads stdin" in text
    assert "OUT.car appears only when complete" in text


def test_identical_files_print_identical_lines(tmp_path: Path) -> None:
    paths = []
    for index in range(3):
        path = tmp_path / f"same{index}"
        path.write_bytes(b"same bytes")
        paths.append(str(path))
    done = subprocess.run(
        [sys.executable, "-m", "forage", "cid", *paths], capture_output=True, text=True, check=True
    )
    assert done.stdout == "".join(f"{compute_cid(b'same bytes')}  {path}\n" for path in paths)
