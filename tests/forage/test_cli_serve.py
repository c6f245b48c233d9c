"""``forage serve`` as a user runs it: a subprocess on SQLite and on PostgreSQL.

What is shown: it listens where told (port 0: a free port, printed), answers the API and the
OpenAPI document, and on SIGTERM or SIGINT stops cleanly (listener closed, exit status 0);
a bad port is a usage error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.forage.test_api import TOKEN


def start(tmp_path: Path, url: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``forage serve`` and return it with the URL it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORAGE_")}
    env.update(
        FORAGE_DATABASE_URL=url, FORAGE_DATA_DIR=str(tmp_path / "data"), FORAGE_API_TOKEN=TOKEN
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "forage", "serve", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "serving on " in line:
            return process, line.split("serving on ", 1)[1].strip()
    process.wait(timeout=30)
    raise AssertionError(f"forage serve exited {process.returncode} without serving")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serves_then_stops_cleanly_on_a_signal(
    tmp_path: Path, migrated_url: str, signum: signal.Signals
) -> None:
    process, url = start(tmp_path, migrated_url)
    try:
        assert url.startswith("http://127.0.0.1:")
        stats = httpx.get(f"{url}/api/v1/stats", timeout=10)
        assert stats.status_code == 200
        assert stats.json()["packages"] == 0
        document = httpx.get(f"{url}/api/openapi.json", timeout=10)
        assert document.json()["openapi"].startswith("3.1")
        queued = httpx.post(
            f"{url}/api/v1/lookup", json={"keys": ["npm:left-pad:1.0.0"]}, timeout=10
        )
        # npm is not configured here: the key is reported, nothing is queued.
        assert queued.json()["results"][0]["reason"] == (
            "the npm registry is not configured on this server"
        )
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "forage: stopping" in stderr and "forage: stopped" in stderr
    assert "Traceback" not in stderr
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORAGE_")}
    done = subprocess.run(
        [sys.executable, "-m", "forage", "serve", "--port", "70000"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr.strip()) == (
        2,
        "forage: --port must be in 0..65535, got 70000",
    )
