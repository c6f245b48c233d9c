"""Progress bars for long commands, and sizes in human units.

A bar (tqdm: count, total, rate and ETA) goes to stderr when it is a terminal, or always with
``--progress``; ``--no-progress`` hides it. While a bar is shown, log lines are written
above it rather than through it, so neither garbles the other.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import IO, Any, cast

#: Binary prefixes, as ``ls -h`` and ``du -h`` print them.
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(size: int | None) -> str:
    """``size`` bytes in the largest binary unit below it (``1.5 GiB``); ``-`` if unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` (default: when stderr is a terminal)."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar with total and ETA (default: when stderr is a terminal)",
    )


def wanted(args: argparse.Namespace) -> bool:
    """Whether the command should draw a bar."""
    flag = getattr(args, "progress", None)
    return sys.stderr.isatty() if flag is None else bool(flag)


@contextlib.contextmanager
def bar(
    args: argparse.Namespace, *, total: int | None, desc: str, unit: str, in_bytes: bool = False
) -> Iterator[Any]:
    """A tqdm bar on stderr (disabled unless :func:`wanted`); logging goes above it."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    enabled = wanted(args)
    options: dict[str, Any] = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}
    with tqdm(
        total=total,
        desc=desc,
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        **(options if in_bytes else {"unit": unit}),
    ) as progress:
        if not enabled:
            yield progress
            return
        with logging_redirect_tqdm():
            yield progress


class _CountingWriter:
    """A binary file object that advances a bar by the bytes written through it."""

    def __init__(self, out: IO[bytes], progress: Any) -> None:
        self._out = out
        self._progress = progress

    def write(self, data: bytes | bytearray | memoryview) -> int:
        written = self._out.write(data)
        self._progress.update(len(data))
        return written

    def flush(self) -> None:
        self._out.flush()


class _CountingReader:
    """A binary file object that advances a bar by the bytes read through it."""

    def __init__(self, stream: IO[bytes], progress: Any) -> None:
        self._stream = stream
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._progress.update(len(data))
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        count = self._stream.readinto(buffer)  # type: ignore[attr-defined]
        self._progress.update(count or 0)
        return int(count or 0)


def counting_writer(out: IO[bytes], progress: Any) -> IO[bytes]:
    """``out``, advancing ``progress`` by every byte written."""
    return cast(IO[bytes], _CountingWriter(out, progress))


def counting_reader(stream: IO[bytes], progress: Any) -> IO[bytes]:
    """``stream``, advancing ``progress`` by every byte read."""
    return cast(IO[bytes], _CountingReader(stream, progress))
