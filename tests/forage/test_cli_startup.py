"""Light commands import only what they use (issue 19, criterion 8): ``forage --help`` loads
none of Forage's libraries, ``forage cid`` the content-addressing code alone, ``forage
lookup`` no server, scheduler, mirror or progress machinery. Checked in a fresh interpreter
by the modules it loaded (timings are measured by scripts/bench_cid.py, never asserted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = [
    "aiohttp",
    "alembic",
    "apscheduler",
    "asyncio",
    "forage.config",
    "httpx",
    "indexers",
    "jinja2",
    "multiformats",
    "packageurl",
    "sqlalchemy",
    "storage",
    "tqdm",
]

PROBE = """
import json, sys
from forage.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = json.loads(os.environ["HEAVY"])
print(json.dumps([code, sorted(m for m in heavy if m in sys.modules)]), file=sys.stderr)
"""


def loaded(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """Run ``forage ARGS`` in a fresh interpreter: exit code and the heavy modules loaded."""
    done = subprocess.run(
        [sys.executable, "-c", "import os\n" + PROBE, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"HEAVY": json.dumps(HEAVY), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    code, modules = json.loads(done.stderr.splitlines()[-1])
    return code, modules


def test_help_loads_no_library(tmp_path: Path) -> None:
    assert loaded(tmp_path, "--help") == (0, [])
    assert loaded(tmp_path, "cid", "--help") == (0, [])


def test_cid_loads_the_content_addressing_code_alone(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x" * 600_000)
    assert loaded(tmp_path, "cid", "file") == (0, ["multiformats", "storage"])


def test_lookup_loads_no_server_scheduler_or_progress(tmp_path: Path) -> None:
    code, modules = loaded(tmp_path, "db", "upgrade")
    assert code == 0
    code, modules = loaded(tmp_path, "-q", "lookup", "--no-backfill", "npm:left-pad:1.0.0")
    assert code == 3
    assert "sqlalchemy" in modules  # what it does need
    assert not {"aiohttp", "apscheduler", "jinja2", "multiformats", "tqdm"} & set(modules)
