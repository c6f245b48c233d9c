"""A real full disk for tests: a small tmpfs mounted for the test, filled and freed at will.

Mounting needs root (CI runs as root); elsewhere the tests that need it are skipped, and
under ``CI=true`` they fail instead, so the check cannot silently vanish there.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

#: The name of the file that fills a disk.
FILLER = ".filler"


def _cannot(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the full-disk checks must run under CI: {reason}")
    pytest.skip(reason)


@contextmanager
def small_disk(path: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the duration of the block."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        _cannot("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        _cannot(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> None:
    """Write to ``disk`` until it has not one byte free (ENOSPC)."""
    fd = os.open(disk / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\xff" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)


def free(disk: Path) -> None:
    """Remove what :func:`fill` wrote."""
    (disk / FILLER).unlink(missing_ok=True)
