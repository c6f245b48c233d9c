"""Benchmark the server's memory under concurrent heavy lookups: peak RSS and what stays after.

Builds an index of ``--artifacts`` files on the embedded SQLite store (the layout of
``bench_lookup.py``: npm, PyPI and Go packages, archived, pinned, in pieces with deals), starts
``forage serve`` on it as a child process on loopback, then sends ``--concurrency``
simultaneous ``POST /api/v1/lookup`` bodies of ``--body-mib`` MiB each. A body holds
``--keys`` purls of indexed versions (so every lookup reads real rows), each padded with a
qualifier to ``--key-length`` characters (qualifiers do not change the version a purl names,
and the reply echoes every key), and JSON whitespace fills the rest of the size. The server's
resident memory (``/proc/PID/status``: ``VmRSS`` polled, ``VmHWM`` the kernel's own peak) is
reported before the burst, at its peak, and ``--settle`` seconds after it, what stays split
into anonymous memory and mapped file pages (``RssAnon``, ``RssFile``: SQLite readers map the
database file). Prints JSON.

    python scripts/bench_memory.py                          # 16 concurrent 15 MiB lookups
    python scripts/bench_memory.py --concurrency 4 --body-mib 2 --keys 1000 --artifacts 2000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench_lookup import VERSIONS, build, free_port, key_of

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
#: The goal of issue 15: 16 concurrent 15 MB lookups keep the server under this.
PEAK_GOAL_MIB = 400


def status_mib(pid: int, field: str) -> float:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/{pid}/status has no {field}")


def lookup_body(
    rng: random.Random, packages: int, *, keys: int, key_length: int, size: int
) -> bytes:
    """``{"keys": [...]}`` of ``size`` bytes: ``keys`` padded purls of indexed versions."""
    items = []
    for _ in range(keys):
        purl = key_of(rng.randrange(packages), rng.randrange(VERSIONS)).purl()
        items.append(json.dumps(purl + "?pad=" + "p" * max(0, key_length - len(purl) - 5)))
    head, tail = b'{"keys":[', b"]}"
    bare = len(head) + len(tail) + sum(len(item) for item in items) + max(0, keys - 1)
    if bare > size:
        raise SystemExit(f"{keys} keys of {key_length} characters need {bare} bytes > {size}")
    spaces, extra = divmod(size - bare, max(1, keys))
    gap = " " * spaces
    body = head + ",".join(gap + item for item in items).encode() + b" " * extra + tail
    assert len(body) == size
    return body


class Sampler(threading.Thread):
    """Polls a process's ``VmRSS`` until stopped; ``peak`` is the highest seen."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, status_mib(self.pid, "VmRSS"))
            self.done.wait(self.interval)


def start_server(url: str, data_dir: str, port: int) -> subprocess.Popen[bytes]:
    """``forage serve`` on the index, waiting until it answers."""
    env = {
        **os.environ,
        "FORAGE_DATABASE_URL": url,
        "FORAGE_DATA_DIR": data_dir,
        "PYTHONPATH": str(ROOT),
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "forage", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/stats").status_code == 200:
                return child
        if child.poll() is not None:
            raise SystemExit(f"forage serve exited with status {child.returncode}")
        time.sleep(0.1)
    child.terminate()
    raise SystemExit("forage serve did not answer within 60 s")


def burst(base: str, bodies: list[bytes], timeout: float) -> list[dict[str, Any]]:
    """Send every body at once, one connection each; each reply's status and headline."""

    def send(body: bytes) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            with httpx.Client(base_url=base, timeout=timeout) as client:
                response = client.post(
                    "/api/v1/lookup", content=body, headers={"Content-Type": "application/json"}
                )
        except httpx.HTTPError as exc:
            return {"status": type(exc).__name__, "seconds": time.perf_counter() - started}
        outcome: dict[str, Any] = {"status": response.status_code}
        outcome["seconds"] = time.perf_counter() - started
        outcome["bytes"] = len(response.content)
        if response.status_code == 200:
            outcome["summary"] = response.json()["summary"]
        else:
            outcome["retry_after"] = response.headers.get("Retry-After")
            outcome["error"] = response.text[:300]
        return outcome

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--artifacts", type=int, default=20_000, help="files in the index")
    parser.add_argument("--concurrency", type=int, default=16, help="simultaneous lookups")
    parser.add_argument("--body-mib", type=float, default=15, help="size of each body, MiB")
    parser.add_argument(
        "--keys", type=int, default=10_000, help="keys per body (server.max_keys: 10,000)"
    )
    parser.add_argument(
        "--key-length", type=int, default=1000, help="characters per key, padded (max 1024)"
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before RSS after")
    parser.add_argument("--interval", type=float, default=0.01, help="RSS polling, seconds")
    parser.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    size = int(args.body_mib * MIB)
    with tempfile.TemporaryDirectory(prefix="forage-bench-memory-") as scratch:
        url = f"sqlite:///{scratch}/forage.db"
        index, seconds = build(url, args.artifacts)
        print(f"built {index} in {seconds:.1f}s", file=sys.stderr)
        bodies = [
            lookup_body(rng, index.packages, keys=args.keys, key_length=args.key_length, size=size)
            for _ in range(args.concurrency)
        ]
        port = free_port()
        child = start_server(url, f"{scratch}/data", port)
        base = f"http://127.0.0.1:{port}"
        try:
            # One small lookup first, so the baseline is a server that has answered one.
            warm = httpx.post(f"{base}/api/v1/lookup", json={"keys": [key_of(0, 0).purl()]})
            assert warm.status_code == 200, warm.text[:300]
            time.sleep(1.0)
            baseline = status_mib(child.pid, "VmRSS")
            sampler = Sampler(child.pid, args.interval)
            sampler.start()
            started = time.perf_counter()
            outcomes = burst(base, bodies, args.timeout)
            elapsed = time.perf_counter() - started
            sampler.done.set()
            sampler.join()
            peak = max(sampler.peak, status_mib(child.pid, "VmHWM"))
            time.sleep(args.settle)
            after = status_mib(child.pid, "VmRSS")
            after_parts = {
                field: round(status_mib(child.pid, field), 1)
                for field in ("RssAnon", "RssFile", "RssShmem")
            }
        finally:
            child.terminate()
            child.wait(30)
    statuses = Counter(str(outcome["status"]) for outcome in outcomes)
    found = sum(o.get("summary", {}).get("found", 0) for o in outcomes)
    refusals = [o for o in outcomes if o["status"] != 200][:3]
    report = {
        "artifacts": index.artifacts,
        "requests": len(bodies),
        "body_bytes": size,
        "keys_per_body": args.keys,
        "key_length": args.key_length,
        "statuses": dict(sorted(statuses.items())),
        "keys_found": found,
        "burst_seconds": round(elapsed, 2),
        "rss_baseline_mib": round(baseline, 1),
        "rss_peak_mib": round(peak, 1),
        "rss_after_mib": round(after, 1),
        "settle_seconds": args.settle,
        "after_over_baseline_mib": round(after - baseline, 1),
        "rss_after_parts_mib": after_parts,
        "peak_under_400_mib": peak < PEAK_GOAL_MIB,
        "refusals": [
            {key: o.get(key) for key in ("status", "retry_after", "error")} for o in refusals
        ],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
