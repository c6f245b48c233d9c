"""``forage demo``: local registries, a temporary Forage, a lookup answer, nothing left behind.

What is shown: in this process, where the socket guard refuses every host but loopback, the
demo publishes a release on every registered ecosystem, indexes, archives and pins every file
of them, answers the batch lookup with a CID and a pin for each key, serves the package's web
page, and removes its temporary directory;
as a command (``forage demo --once``), it prints the answer as JSON on stdout and exits 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from forage.runtime.demo import KEYS, PACKAGES, PIN_BACKEND, DemoReport, run_demo
from indexers import ECOSYSTEMS
from storage import parse_cid


def check_answer(lookup: dict[str, object]) -> list[object]:
    """Every key found, every file it shows archived and pinned; returns those files."""
    results = lookup["results"]
    assert isinstance(results, list)
    assert [r["key"] for r in results] == list(KEYS)
    assert all(r["status"] == "found" and r["artifacts"] for r in results)
    # Every registered ecosystem is asked for: one release at least each.
    assert {r["ecosystem"] for r in results} == set(ECOSYSTEMS)
    assert len(results) == len(PACKAGES) - 1  # @demo/hello 1.0.0 is not asked for
    files = [a for r in results for a in r["artifacts"]]
    for artifact in files:
        parse_cid(artifact["cid"])
        assert artifact["archive"]["status"] == "archived"
        assert [(p["backend"], p["status"]) for p in artifact["pins"]] == [(PIN_BACKEND, "pinned")]
    return files


async def test_the_demo_archives_pins_answers_and_cleans_up() -> None:
    pages: list[tuple[int, str]] = []
    reports: list[DemoReport] = []

    async def ready(report: DemoReport) -> None:
        reports.append(report)
        # Still serving here: the page the demo points at answers.
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(report.page_url)
        pages.append((response.status_code, response.text))
        assert report.config_path.is_file()

    report = await run_demo(once=True, on_ready=ready, within=90)
    assert reports == [report]
    assert report.files >= len(PACKAGES)
    assert (report.archived, report.pinned) == (report.files, report.files)
    # All of them but @demo/hello 1.0.0's tarball, which no key asks for.
    assert len(check_answer(dict(report.lookup))) == report.files - 1
    [(status, html)] = pages
    assert status == 200 and "left-pad" in html
    assert not report.config_path.parent.exists()  # the temporary directory is gone


@pytest.mark.slow
def test_forage_demo_once_prints_the_answer(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "forage", "demo", "--once"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    check_answer(json.loads(result.stdout))
    assert "forage demo: web page: http://127.0.0.1:" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran
