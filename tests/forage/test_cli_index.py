"""``forage watch``, ``worker``, ``import`` and ``status`` as a user runs them, in subprocesses,
against the loopback npm fake and the embedded SQLite store."""

from __future__ import annotations

import json
import re
from pathlib import Path

from indexers import ECOSYSTEMS
from indexers.fakeserver import ThreadedServer
from indexers.npm.fake import FakeNpmRegistry
from tests.forage.index_harness import configure_npm, run_cli


def test_watch_then_worker_records_packages_and_status_reports_them(tmp_path: Path) -> None:
    registry = FakeNpmRegistry()
    with ThreadedServer(registry.make_app()) as fake:
        configure_npm(tmp_path, fake.url)
        first = run_cli(tmp_path, "watch", "npm", "--once")
        assert first.returncode == 0, first.stderr
        assert "caught up; 0 changes queued" in first.stderr
        registry.publish("left-pad", "1.0.0")
        registry.publish("left-pad", "1.1.0")
        registry.publish("@scope/pkg", "2.0.0")
        second = run_cli(tmp_path, "watch", "npm", "--once")
        assert "caught up; 2 changes queued" in second.stderr

        status = json.loads(run_cli(tmp_path, "status", "--json").stdout)
        assert status["npm"]["imports"] == {"pending": 2, "dead": 0}
        assert status["npm"]["packages"]["known"] == 0

        worker = run_cli(tmp_path, "worker", "--drain", "--kind", "import")
        assert worker.returncode == 0, worker.stderr
        assert "2 done" in worker.stderr

        status = json.loads(run_cli(tmp_path, "status", "--json").stdout)["npm"]
        assert (status["packages"]["known"], status["versions"]["known"]) == (2, 3)
        assert status["imports"]["pending"] == 0
        assert status["cursor"]["seq"] == status["head"] == registry.seq
        assert status["lag_seconds"] == 0
        # Three files known, none archived yet: all three wait.
        assert status["files"] == {
            "known": 3,
            "archived": 0,
            "pending": 3,
            "failed": 0,
            "removed": 0,
        }

        registry.publish("backfill-me", "0.1.0")
        backfill = run_cli(tmp_path, "import", "npm", "backfill-me")
        assert backfill.returncode == 0, backfill.stderr
        assert "1 new versions, 1 new artifacts" in backfill.stderr
        lines = run_cli(tmp_path, "status").stdout.splitlines()
        block = lines[lines.index("npm") : lines.index("npm") + 6]
        feed = r"  feed      cursor at seq (\d+), head seq \1, lag 0 s \(at head\)"
        assert re.fullmatch(feed, block[1]), block[1]
        assert block[2:] == [
            "  packages  3 known, 0 removed",
            "  versions  4 known, 0 removed",
            "  files     4 known, 0 archived, 4 pending, 0 failed, 0 removed",
            "  imports   0 pending, 0 dead",
        ]


def test_hostile_and_missing_names_exit_with_clear_errors(tmp_path: Path) -> None:
    registry = FakeNpmRegistry()
    with ThreadedServer(registry.make_app()) as fake:
        configure_npm(tmp_path, fake.url)
        hostile = run_cli(tmp_path, "import", "npm", "../../etc/passwd")
        assert hostile.returncode == 2
        assert "invalid name" in hostile.stderr
        assert "Traceback" not in hostile.stderr
        assert not any(p.path.endswith("passwd") for p in registry.requests.seen)

        missing = run_cli(tmp_path, "import", "npm", "no-such-package")
        assert missing.returncode == 1
        assert "does not exist upstream" in missing.stderr

        unknown = run_cli(tmp_path, "watch", "nuget", "--once")
        assert unknown.returncode == 2
        assert f"known: {', '.join(ECOSYSTEMS)}" in unknown.stderr
