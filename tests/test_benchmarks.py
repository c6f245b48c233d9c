"""The benchmark scripts run end to end on small inputs and print the JSON the README quotes.

Timings are never asserted: the scripts' own checks (every artifact archived, every key found,
stored answers byte-identical to computed ones) and the reports' shape are.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.s3server import rclone_path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

pytestmark = pytest.mark.slow


def run_script(name: str, *args: str, cwd: Path) -> dict[str, Any]:
    """Run ``scripts/<name>`` and return the JSON it printed (it fails the test on error)."""
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(SCRIPTS.parent)},
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_archive_benchmark_reports_the_pipeline_and_the_floor(tmp_path: Path) -> None:
    report = run_script(
        "bench_archive.py",
        "--total-mib=4",
        "--count=24",
        "--max-mib=1",
        "--floor",
        "--breakdown",
        f"--workdir={tmp_path}",
        cwd=tmp_path,
    )
    assert report["artifacts"] == 24 and report["bytes"] == 4 * 1024 * 1024
    assert report["largest"] == 1024 * 1024 and report["smallest"] == 1024
    assert report["commit_batches"] == 24  # one durable batch per artifact archived
    assert report["ratio"] > 0 and report["peak_rss_mib"] >= report["rss_before_pipeline_mib"]
    floor = report["floor_cpu_seconds"]
    assert set(floor) == {"download", "server", "leaves", "write", "digest"}
    # Leaving the server's CPU out can only raise the ceiling.
    assert report["ratio_ceiling_client_only"] >= report["ratio_ceiling"] > 0
    assert list(tmp_path.iterdir()) == []  # the scratch directory is cleaned up


def test_the_archive_benchmark_runs_with_the_packs_in_a_bucket(tmp_path: Path) -> None:
    rclone_path()  # skipped without rclone, failed under CI
    report = run_script(
        "bench_archive.py",
        "--total-mib=4",
        "--count=24",
        "--max-mib=1",
        "--layout=s3",
        "--breakdown",
        f"--workdir={tmp_path}",
        cwd=tmp_path,
    )
    assert report["layout"] == "s3" and report["block_files"] == 24  # one object each
    assert report["commit_batches"] == 24 and report["sync"] is None
    assert report["s3_server_cpu_seconds"] > 0 and report["store_only_mb_s"] > 0
    assert list(tmp_path.iterdir()) == []  # the scratch directory (and bucket) cleaned up


def test_the_lookup_benchmark_reports_both_paths_against_the_bare_query(tmp_path: Path) -> None:
    report = run_script(
        "bench_lookup.py",
        "--artifacts=2000",
        "--rounds=3",
        "--stores=sqlite",
        "--batches=1,1000",
        "--processes=2",
        "--clients=3",
        "--seconds=1",
        "--batch-keys=100",
        cwd=tmp_path,
    )
    sqlite = report["stores"]["sqlite"]
    assert sqlite["index"]["artifacts"] == 2000
    assert set(sqlite["batches"]) == {"1", "1000"}
    for batch in sqlite["batches"].values():
        assert set(batch) == {"http", "http_first_sight", "sql", "http_over_sql_p50"}
        assert batch["http"]["p50_ms"] <= batch["http"]["p99_ms"]
    load = sqlite["throughput"]["processes"]
    assert set(load) == {"2"}  # forage serve --processes 2, run as a command
    assert load["2"]["lookups"] > 0 and load["2"]["keys_per_s"] > load["2"]["lookups_per_s"]
    # Every client's connection reached one of the two server processes.
    spread = load["2"]["connections_per_process"]
    assert sum(spread) == 3 and len(spread) <= 2
    assert set(report["goals"]) >= {"sqlite_p50_at_most_30ms", "http_at_most_2x_bare_query"}


def test_the_memory_benchmark_reports_rss_around_a_burst_of_heavy_lookups(tmp_path: Path) -> None:
    report = run_script(
        "bench_memory.py",
        "--artifacts=1000",
        "--concurrency=3",
        "--body-mib=0.5",
        "--keys=200",
        "--settle=0.5",
        cwd=tmp_path,
    )
    assert report["requests"] == 3 and report["body_bytes"] == 512 * 1024
    assert report["statuses"] == {"200": 3}  # the default budget admits them in turn
    assert report["keys_found"] == 3 * 200  # every padded key names an indexed version
    assert report["rss_peak_mib"] >= report["rss_baseline_mib"] > 0
    assert report["peak_under_400_mib"] is (report["rss_peak_mib"] < 400)


def test_the_mirror_benchmark_measures_forage_alone_when_no_peer_is_asked(tmp_path: Path) -> None:
    report = run_script(
        "bench_mirror.py",
        "--peers=none",
        "--tarballs=4",
        "--tarball-size=4096",
        "--tarball-requests=24",
        "--versions=30",
        "--files=12",
        "--page-requests=12",
        "--wheels=6",
        "--clients=3",
        cwd=tmp_path,
    )
    # The Forage-only fields the README quotes since issue 7.
    assert report["tarballs"]["requests"] == 24 and report["tarballs"]["bytes_per_response"] > 4096
    assert report["packument"]["p50_ms"] <= report["packument"]["p99_ms"]
    assert report["packument_cold_ms"] > 0 and report["simple_page_cold_ms"] > 0
    assert report["server_peak_rss_mb"] >= report["server_rss_before_load_mb"] > 0
    cold = report["fallback_packument_cold"]  # all 3 clients at once, one build (issue 16)
    assert (cold["versions"], cold["clients"], cold["errors"]) == (30, 3, {})
    assert cold["server_peak_rss_mb"] >= cold["server_rss_before_mb"] > 0
    comparison = report["comparison"]
    corgi = comparison["servers"]["forage"]["upstream_down"]["abbreviated_packument"]
    assert cold["bytes_per_response"] == corgi["bytes_per_response"]
    assert list(comparison["servers"]) == ["forage"] and comparison["forage_over_best_peer"] == {}
    forage = comparison["servers"]["forage"]
    for mode in ("upstream_down", "offline"):
        figures = forage[mode]
        assert set(figures) == {
            "tarball",
            "abbreviated_packument",
            "simple_page",
            "wheel",
            "peak_rss_mb",
        }
        # Every answer came from the archive (the script counts any other as an error).
        assert all(figures[name]["errors"] == 0 for name in figures if name != "peak_rss_mb")
        assert figures["tarball"]["requests"] == figures["wheel"]["requests"] == 24
        assert 512 <= figures["wheel"]["bytes_per_response"] <= 576  # the script's wheels
        # The abbreviated packument is smaller than the full one, for the same 30 versions.
        full = report["packument"]["bytes_per_response"]
        assert 0 < figures["abbreviated_packument"]["bytes_per_response"] < full
        assert figures["peak_rss_mb"] > 0
    refused = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_mirror.py"), "--peers=verdaccio,nexus"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SCRIPTS.parent)},
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and "unknown peer nexus" in refused.stderr


def test_chaos_reports_no_5xx_nothing_lost_and_the_recovery(tmp_path: Path) -> None:
    report = run_script(
        "chaos.py",
        "--duration=14",
        "--fill-at=4",
        "--fill-for=4",
        "--kill-every=3",
        "--clients=4",
        "--drain=60",
        cwd=tmp_path,
    )
    assert report["correct"] and report["5xx"] == 0 and report["5xx_samples"] == []
    assert report["lost"] == [] and report["duplicated"] == 0
    assert report["published"] > 0 and report["bytes_checked"] == report["published"]
    assert report["workers_killed"] >= 1 and report["forage_run_survived"]
    assert set(report["requests"]) >= {"lookup", "npm_packument", "simple_page"}
    disk = report["disk"]
    assert isinstance(disk, dict) or not os.environ.get("CI"), disk  # CI runs as root
    if isinstance(disk, dict):  # filled only where a tmpfs can be mounted (root)
        assert disk["healthz_while_full"].get("503", 0) >= 1
        assert "blockstore" in disk["named_down"]
        assert disk["healthy_after_free_s"] is not None


def test_the_tasks_benchmark_times_the_migration_and_every_periodic_task(tmp_path: Path) -> None:
    database = tmp_path / "forage.db"
    report = run_script("bench_tasks.py", "--build=2000", f"--sqlite-path={database}", cwd=tmp_path)
    assert report["build"]["artifacts"] == 2000 and report["packages"] == 250
    migrations = report["migrations"]
    assert int(migrations["from"]) == int(migrations["to"]) - 1  # forage db upgrade, one step
    tasks = {"drain_archives", "reverify", "stats", "prune_jobs", "render_answers", "optimize"}
    tasks |= {"watch:npm", "reconcile:pypi", "pin_check", "sync_deals"}
    assert tasks <= set(report["tasks"])
    jobs = {"reverify: sample", "pin_check: due", "build_pieces: candidates", "worker: claim"}
    assert jobs <= set(report["jobs"])
    timings = [*report["tasks"].values(), *report["jobs"].values()]
    assert report["slowest"]["seconds"] == max(timings)
    # Each ran in a transaction rolled back: the tasks queued jobs, none is left.
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
