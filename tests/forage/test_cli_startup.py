"""Light commands import only what they use (issue 19, criterion 8): ``forage --help`` loads
none of Forage's libraries, ``forage cid`` the content-addressing code alone, ``forage
lookup`` no server, scheduler, mirror or progress machinery. Checked in a fresh interpreter
by the modules it loaded (timings are measured by scripts/bench_cid.py, never asserted).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HEAVY = [
    "aiohttp",
    "alembic",
    "apscheduler",
    "asyncio",
    "concurrent.futures",
    "dataclasses",
    "forage.config",
    "forage.logs",
    "httpx",
    "indexers",
    "jinja2",
    "json",
    "logging",
    "multiformats",
    "packageurl",
    "sqlalchemy",
    "storage",
    "tqdm",
]

PROBE = """
import sys
from forage.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = os.environ["HEAVY"].split()
print(code, *sorted(m for m in heavy if m in sys.modules), file=sys.stderr)
"""


def loaded(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """Run ``forage ARGS`` in a fresh interpreter: exit code and the heavy modules loaded."""
    done = subprocess.run(
        [sys.executable, "-c", "import os\n" + PROBE, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"HEAVY": " ".join(HEAVY), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    code, *modules = done.stderr.splitlines()[-1].split()
    return int(code), modules


def test_help_loads_no_library(tmp_path: Path) -> None:
    assert loaded(tmp_path, "--help") == (0, [])
    assert loaded(tmp_path, "cid", "--help") == (0, [])


def test_cid_loads_the_content_addressing_code_alone(tmp_path: Path) -> None:
    """Not even multiformats (its codec table costs tens of milliseconds): the root CID is
    kept binary and printed through the standard library's base32."""
    (tmp_path / "file").write_bytes(b"x" * 100_000)
    assert loaded(tmp_path, "cid", "file") == (0, ["storage"])
    (tmp_path / "big").write_bytes(b"x" * 600_000)  # several leaves: hashed on threads
    code, modules = loaded(tmp_path, "cid", "big")  # (concurrent.futures loads logging)
    assert code == 0
    # Leaves are hashed on threads only where there are several cores to run them.
    assert ("concurrent.futures" in modules) == (len(os.sched_getaffinity(0)) > 1)
    assert not {"dataclasses", "forage.logs", "json", "multiformats"} & set(modules)


def test_cid_prints_what_multiformats_would(tmp_path: Path) -> None:
    """The standard-library text of a CIDv1 is the multiformats text, and v0 still works."""
    from storage import compute_cid

    for size in (0, 5, 262_144, 600_000):
        body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        (tmp_path / "file").write_bytes(body)
        for version in ("0", "1"):
            done = subprocess.run(
                [sys.executable, "-m", "forage", "cid", "--cid-version", version, "file"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                check=True,
            )
            expected = str(compute_cid(body, cid_version=int(version)))
            assert done.stdout == f"{expected}  file\n"


def test_lookup_loads_no_server_scheduler_or_progress(tmp_path: Path) -> None:
    code, modules = loaded(tmp_path, "db", "upgrade")
    assert code == 0
    code, modules = loaded(tmp_path, "-q", "lookup", "--no-backfill", "npm:left-pad:1.0.0")
    assert code == 3
    assert "sqlalchemy" in modules  # what it does need
    unused = {"aiohttp", "alembic", "apscheduler", "jinja2", "multiformats", "tqdm"}
    assert not unused & set(modules)
