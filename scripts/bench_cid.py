"""Benchmark: CIDv1 (UnixFS, raw leaves, hash only) against plain SHA-256 over the same file.

SHA-256 is the floor: computing the CID hashes every byte once, plus one small dag-pb node per
174 chunks. Both sides read the same file (warm in the page cache) in 1 MiB pieces into one
reused buffer; each is timed ``--repeat`` times, alternating, and the best run counts. Prints
one JSON object: size, mb_per_s for each (MB = 10^6 bytes), ratio (cid / sha256), peak RSS.

    python3 scripts/bench_cid.py                 # 256 MiB of random bytes
    python3 scripts/bench_cid.py --size-mib 1024 --repeat 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="input size (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    args = parser.parse_args()
    size = args.size_mib << 20
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
