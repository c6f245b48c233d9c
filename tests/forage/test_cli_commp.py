"""``forage commp FILE...``: piece CIDs and padded size per file, as lines or JSON; a file that
cannot be read or is too small is named on stderr and makes the exit code non-zero."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from forage.cli import EXIT_FAILURE, main
from tests.vectors import content, load

VECTORS = {vector["size"]: vector for vector in load("commp")}


def write_vector(directory: Path, size: int) -> Path:
    path = directory / f"vector-{size}.car"
    path.write_bytes(content(f"forage-vector:{size}", size))
    return path


def test_prints_a_line_per_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each line names the file, then its v1, v2, padded size and payload size."""
    paths = [write_vector(tmp_path, 1000), write_vector(tmp_path, 262145)]
    assert main(["commp", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for path, line, size in zip(paths, lines, (1000, 262145), strict=True):
        vector = VECTORS[size]
        assert line == (
            f"{path}: v1 {vector['piece_cid_v1']}  v2 {vector['piece_cid_v2']}"
            f"  padded size {vector['padded_piece_size']}  payload {size}"
        )


def test_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one array with every file's sizes and CIDs."""
    path = write_vector(tmp_path, 262143)
    assert main(["commp", "--json", str(path)]) == 0
    vector = VECTORS[262143]
    assert json.loads(capsys.readouterr().out) == [
        {
            "file": str(path),
            "payload_size": 262143,
            "padded_size": vector["padded_piece_size"],
            "piece_cid_v1": vector["piece_cid_v1"],
            "piece_cid_v2": vector["piece_cid_v2"],
        }
    ]


def test_missing_and_unreadable_files_fail_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file and a directory are reported by name; the good file is still printed."""
    good = write_vector(tmp_path, 1000)
    missing = tmp_path / "missing.car"
    assert main(["commp", str(missing), str(tmp_path), str(good)]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"forage: {missing}: No such file or directory",
        f"forage: {tmp_path}: Is a directory",
    ]
    assert captured.out.startswith(f"{good}: v1 {VECTORS[1000]['piece_cid_v1']}")


def test_too_small_file_fails_with_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 12-byte file has no piece commitment: the message names the file and the minimum."""
    small = tmp_path / "hello.txt"
    small.write_bytes(b"hello world\n")
    assert main(["commp", "--json", str(small)]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert f"forage: {small}: a piece commitment needs at least 65 bytes" in captured.err
    assert json.loads(captured.out) == []


def test_reads_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``-`` hashes standard input, so a CAR can be piped in."""
    stdin: Any = io.TextIOWrapper(io.BytesIO(content("forage-vector:127", 127)))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["commp", "-"]) == 0
    assert capsys.readouterr().out.startswith(f"-: v1 {VECTORS[127]['piece_cid_v1']}  v2 ")
