"""Benchmark: CIDv1 (UnixFS, raw leaves, hash only) against plain SHA-256 over the same file.

SHA-256 is the floor: computing the CID hashes every byte once, plus one small dag-pb node per
174 chunks. Both sides read the same file (warm in the page cache) in 1 MiB pieces into one
reused buffer; each is timed ``--repeat`` times, alternating, and the best run counts. Prints
one JSON object: size, mb_per_s for each (MB = 10^6 bytes), ratio (cid / sha256), peak RSS.

    python3 scripts/bench_cid.py                 # 256 MiB of random bytes
    python3 scripts/bench_cid.py --size-mib 1024 --repeat 5

``--process`` times whole processes instead, start-up included, as a user meets them:
``forage cid FILE`` against ``sha256sum FILE`` and a plain ``python3 -c`` hashlib loop over
the same file; ratios above 1 mean ``forage cid`` finished first. ``--threads 1`` pins
``forage cid`` to one core (``taskset``), the one-thread baseline.

    python3 scripts/bench_cid.py --process --size-mib 1024 --repeat 5

``--startup`` times the light commands' start-up instead: the median wall time of ``--repeat``
runs each of ``python3 -c pass`` (the interpreter alone), ``forage --help``, ``forage cid`` of a
one-byte file and ``forage lookup --no-backfill`` of one key against an empty index.

    python3 scripts/bench_cid.py --startup --repeat 21
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from storage import compute_cid

PIECE = 1 << 20


def make_file(path: Path, size: int) -> None:
    """Write ``size`` random bytes (random, so no block repeats)."""
    with path.open("wb") as out:
        remaining = size
        while remaining:
            count = min(PIECE, remaining)
            out.write(os.urandom(count))
            remaining -= count


def time_sha256(path: Path) -> tuple[float, str]:
    buffer = memoryview(bytearray(PIECE))
    start = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as stream:
        while count := stream.readinto(buffer):
            digest.update(buffer[:count])
    return time.perf_counter() - start, digest.hexdigest()


def time_cid(path: Path) -> tuple[float, str]:
    start = time.perf_counter()
    with path.open("rb", buffering=0) as stream:
        cid = compute_cid(stream)
    return time.perf_counter() - start, str(cid)


#: A plain SHA-256 process in Python: the same reads, no CID.
PYTHON_SHA256 = (
    "import hashlib, sys\n"
    "buffer = memoryview(bytearray(1 << 20)); digest = hashlib.sha256()\n"
    "with open(sys.argv[1], 'rb', buffering=0) as stream:\n"
    "    while count := stream.readinto(buffer):\n"
    "        digest.update(buffer[:count])\n"
    "print(digest.hexdigest(), sys.argv[1])\n"
)


def time_process(command: list[str]) -> tuple[float, str]:
    """Wall time of one whole process (start-up included) and its first word of output."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout.split()[0]


def process_commands(path: Path, threads: int | None) -> dict[str, list[str]]:
    forage = [sys.executable, "-m", "forage", "cid", str(path)]
    if threads is not None:
        forage = ["taskset", "--cpu-list", f"0-{threads - 1}", *forage]
    commands = {
        "forage_cid": forage,
        "python_sha256": [sys.executable, "-c", PYTHON_SHA256, str(path)],
    }
    if shutil.which("sha256sum"):
        commands["sha256sum"] = ["sha256sum", str(path)]
    return commands


def bench_processes(path: Path, size: int, repeat: int, threads: int | None) -> dict[str, object]:
    commands = process_commands(path, threads)
    for command in commands.values():
        time_process(command)  # warm the page cache and the interpreter's files
    best = dict.fromkeys(commands, float("inf"))
    outputs: dict[str, str] = {}
    for _ in range(repeat):
        for name, command in commands.items():
            elapsed, outputs[name] = time_process(command)
            best[name] = min(best[name], elapsed)
    report: dict[str, object] = {"size": size, "cid": outputs["forage_cid"], "repeat": repeat}
    report["threads"] = threads or len(os.sched_getaffinity(0))
    for name, seconds in best.items():
        report[f"{name}_seconds"] = round(seconds, 3)
        report[f"{name}_mb_per_s"] = round(size / seconds / 1e6, 1)
    for name in best:
        if name != "forage_cid":
            report[f"ratio_vs_{name}"] = round(best[name] / best["forage_cid"], 3)
    return report


def bench_startup(repeat: int) -> dict[str, object]:
    """Median wall milliseconds of each light command, in a scratch directory."""
    forage = [sys.executable, "-m", "forage"]
    with tempfile.TemporaryDirectory() as temp:
        (Path(temp) / "one").write_bytes(b"x")
        subprocess.run([*forage, "db", "upgrade"], cwd=temp, capture_output=True, check=True)
        commands = {
            "python": [sys.executable, "-c", "pass"],
            "help": [*forage, "--help"],
            "cid": [*forage, "cid", "one"],
            "lookup": [*forage, "-q", "lookup", "--no-backfill", "npm:left-pad:1.3.0"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(repeat + 1):  # the first round warms the file cache and is dropped
            for name, command in commands.items():
                start = time.perf_counter()
                subprocess.run(command, cwd=temp, capture_output=True, check=False)
                times[name].append(time.perf_counter() - start)
    report: dict[str, object] = {"repeat": repeat}
    for name, values in times.items():
        report[f"{name}_ms"] = round(statistics.median(values[1:]) * 1000, 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="input size (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument(
        "--process", action="store_true", help="time whole processes (start-up included)"
    )
    parser.add_argument(
        "--threads", type=int, help="with --process: cores forage cid may use (taskset)"
    )
    parser.add_argument(
        "--startup", action="store_true", help="time the light commands' start-up instead"
    )
    args = parser.parse_args()
    if args.startup:
        print(json.dumps(bench_startup(args.repeat)))
        return
    size = args.size_mib << 20
    if args.process:
        with tempfile.TemporaryDirectory() as temp:
            path = Path(temp) / "input"
            make_file(path, size)
            print(json.dumps(bench_processes(path, size, args.repeat, args.threads)))
        return
    with tempfile.TemporaryDirectory() as temp:
        path = Path(temp) / "input"
        make_file(path, size)
        time_sha256(path)  # warm the page cache
        sha_best = cid_best = float("inf")
        for _ in range(args.repeat):
            sha_best = min(sha_best, time_sha256(path)[0])
            elapsed, cid = time_cid(path)
            cid_best = min(cid_best, elapsed)
    sha_rate, cid_rate = size / sha_best / 1e6, size / cid_best / 1e6
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "size": size,
                "cid": cid,
                "sha256_mb_per_s": round(sha_rate, 1),
                "cid_mb_per_s": round(cid_rate, 1),
                "ratio": round(cid_rate / sha_rate, 3),
                "peak_rss_mib": round(peak_kib / 1024, 1),
                "repeat": args.repeat,
            }
        )
    )


if __name__ == "__main__":
    main()
