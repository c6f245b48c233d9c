"""``forage demo``: local registries, a temporary Forage, a lookup answer, nothing left behind.

What is shown: in this process, where the socket guard refuses every host but loopback, the
demo indexes, archives and pins every file it publishes, answers the batch lookup with a CID
and a pin for each key, serves the package's web page, and removes its temporary directory;
as a command (``forage demo --once``), it prints the answer as JSON on stdout and exits 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from forage.runtime.demo import EXPECTED_FILES, KEYS, PIN_BACKEND, DemoReport, run_demo
from storage import parse_cid


def check_answer(lookup: dict[str, object]) -> None:
    results = lookup["results"]
    assert isinstance(results, list)
    assert [r["key"] for r in results] == list(KEYS)
    files = [a for r in results for a in r["artifacts"]]
    assert all(r["status"] == "found" for r in results)
    assert len(files) == EXPECTED_FILES - 1  # @demo/hello 1.0.0 is not asked for
    for artifact in files:
        parse_cid(artifact["cid"])
        assert artifact["archive"]["status"] == "archived"
        assert [(p["backend"], p["status"]) for p in artifact["pins"]] == [(PIN_BACKEND, "pinned")]


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
    assert (report.archived, report.pinned) == (EXPECTED_FILES, EXPECTED_FILES)
    check_answer(dict(report.lookup))
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
