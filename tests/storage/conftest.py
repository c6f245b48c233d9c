"""Shared helpers for the storage tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

# Linux keeps ru_maxrss across fork and exec, so a child of the (large) pytest process would
# report pytest's own peak. A small Python process in between starts the measured script and
# reads the script's peak from RUSAGE_CHILDREN.
_WRAPPER = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-c", *sys.argv[1:]], capture_output=True, text=True)
sys.stderr.write(done.stderr)
if done.returncode:
    sys.exit(done.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(done.stdout, end="")
"""


def _run_measured(script: str, *args: str) -> tuple[dict[str, Any], int]:
    """Run ``script`` (with ``args``) in a fresh interpreter; return its JSON output and its
    peak RSS in KiB."""
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, script, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    peak, _, output = done.stdout.partition("\n")
    return json.loads(output), int(peak)


Measure = Callable[..., tuple[dict[str, Any], int]]


@pytest.fixture
def run_measured() -> Measure:
    """``run_measured(script, *args)``: the script's JSON output and its peak RSS in KiB."""
    return _run_measured
