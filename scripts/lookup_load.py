"""The throughput half of ``bench_lookup.py``: lookups per second of ``forage serve --processes
N`` under several concurrent clients.

For each process count the real command is started (``python -m forage serve --processes N
--port 0``) on the benchmark's index. ``clients`` threads, each with one keep-alive
connection, post batches drawn from a fixed pool (their answers stored beforehand, as a server
in service has them) back to back for ``seconds``. Reported per count: lookups and keys per
second, latency p50/p99, how the clients' connections were spread over the server processes
(each first asks ``/healthz``, which names the pid that answered), the CPU the server
processes used (seconds, milliseconds per lookup, cores kept busy: on a machine shared with
other work, how much of it the server got) and the CPU seconds the clients used (they share
the machine's cores with the server).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
HEADERS = {"Content-Type": "application/json"}


@contextlib.contextmanager
def forage_serve(url: str, processes: int) -> Iterator[tuple[str, int]]:
    """``forage serve --processes N`` on the index at ``url`` until the block ends; its URL
    and pid."""
    data_dir = tempfile.mkdtemp(prefix="forage-bench-data-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORAGE_")}
    env.update(
        FORAGE_DATABASE_URL=url,
        FORAGE_DATA_DIR=data_dir,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    command = [sys.executable, "-m", "forage", "-q", "serve", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", "0", "--processes", str(processes)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=data_dir,
    )
    try:
        assert server.stderr is not None
        base = None
        for line in server.stderr:
            if "serving on " in line:
                base = line.split("serving on ", 1)[1].strip()
                break
            sys.stderr.write(line)
        if base is None:
            raise SystemExit(f"forage serve --processes {processes} exited {server.wait()}")
        # Keep reading what it says, so it never blocks on a full pipe.
        threading.Thread(
            target=shutil.copyfileobj, args=(server.stderr, sys.stderr), daemon=True
        ).start()
        yield base, server.pid
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    if server.returncode != 0:
        raise SystemExit(f"forage serve --processes {processes} exited {server.returncode}")


def server_cpu(pid: int) -> float:
    """CPU seconds (user and system) used by ``pid`` and its children (Linux ``/proc``)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0
    for each in (pid, *map(int, children)):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class _Client:
    """What one client thread saw: the server process its connection reached, its timings."""

    pid: int = 0
    times: list[float] = field(default_factory=list)
    finished: float = 0.0


def _client(
    base: str, pool: list[bytes], seed: int, ready: threading.Barrier, window: list[float]
) -> _Client:
    rng = random.Random(seed)
    seen = _Client()
    with httpx.Client(base_url=base, timeout=120) as http:
        seen.pid = int(http.get("/healthz").json()["pid"])
        _post(http, pool[0])  # warm the connection and this process's caches
        ready.wait()
        while time.perf_counter() < window[0]:
            body = rng.choice(pool)
            started = time.perf_counter()
            _post(http, body)
            seen.times.append(time.perf_counter() - started)
        seen.finished = time.perf_counter()
    return seen


def _post(http: httpx.Client, body: bytes) -> None:
    response = http.post("/api/v1/lookup", content=body, headers=HEADERS)
    if response.status_code != 200:
        raise SystemExit(f"lookup answered {response.status_code}: {response.text[:300]}")


def hammer(
    base: str,
    pool: list[bytes],
    *,
    server: int,
    keys: int,
    clients: int,
    seconds: float,
    seed: int,
) -> dict[str, Any]:
    """``clients`` threads posting ``pool`` batches of ``keys`` keys for ``seconds`` to the
    server of pid ``server``."""
    ready = threading.Barrier(clients + 1)
    window = [float("inf")]
    seen: list[_Client] = []

    def run(number: int) -> None:
        seen.append(_client(base, pool, seed + number, ready, window))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    cpu, served = time.process_time(), server_cpu(server)
    started = time.perf_counter()
    window[0] = started + seconds
    ready.wait()
    for thread in threads:
        thread.join()
    served = server_cpu(server) - served
    if len(seen) != clients:
        raise SystemExit("a client failed (see above)")
    elapsed = max(client.finished for client in seen) - started
    times = sorted(t for client in seen for t in client.times)
    lookups = len(times)
    spread = Counter(client.pid for client in seen)
    return {
        "lookups": lookups,
        "seconds": round(elapsed, 2),
        "lookups_per_s": round(lookups / elapsed, 1),
        "keys_per_s": round(lookups * keys / elapsed),
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "p99_ms": round(times[min(lookups - 1, round(0.99 * (lookups - 1)))] * 1000, 2),
        "connections_per_process": sorted(spread.values(), reverse=True),
        "server_cpu_seconds": round(served, 2),
        "server_cpu_ms_per_lookup": round(served * 1000 / lookups, 2),
        "server_cores_busy": round(served / elapsed, 2),
        "client_cpu_seconds": round(time.process_time() - cpu, 2),
        # Other work on the machine: the server's share of the cores depends on it.
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def throughput(
    url: str,
    pool: list[bytes],
    *,
    keys: int,
    processes: list[int],
    clients: int,
    seconds: float,
    seed: int,
    prime: Callable[[str], None],
) -> dict[str, Any]:
    """Lookups per second for each server process count; ``prime(base)`` runs on the first
    server, to store the pool's answers before anything is timed."""
    results: dict[str, Any] = {}
    for number, count in enumerate(processes):
        with forage_serve(url, count) as (base, pid):
            if number == 0:
                prime(base)
            result = hammer(
                base, pool, server=pid, keys=keys, clients=clients, seconds=seconds, seed=seed
            )
        print(f"  {count} server processes: {result}", file=sys.stderr)
        results[str(count)] = result
    return results
