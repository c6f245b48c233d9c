"""Benchmark ``storage.commp``: MB/s (10^6 bytes per second) of the compiled and pure-Python
CommP paths, against plain ``hashlib.sha256`` over the same bytes in the same run, plus peak RSS.
Prints one JSON document.

    python3 scripts/bench_commp.py [--size-mib 256] [--python-size-mib 16] [--chunk-kib 1024]

The input is generated: one 8 MiB SHAKE-128 block, streamed repeatedly in ``--chunk-kib``
slices up to the size asked (hashing costs the same whatever the bytes). The pure-Python path is
timed on a smaller slice. Peak RSS before and after the CommP runs shows the streaming hasher's
memory does not grow with the input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from storage.commp import COMPILED_AVAILABLE, CommP, Implementation

MIB = 1 << 20
BLOCK = hashlib.shake_128(b"forage-bench-commp").digest(8 * MIB)


def chunks(size: int, chunk: int) -> Iterator[memoryview]:
    """``size`` bytes as ``chunk``-byte views of the repeated block."""
    view = memoryview(BLOCK)
    sent = 0
    while sent < size:
        offset = sent % len(BLOCK)
        piece = view[offset : offset + min(chunk, size - sent, len(BLOCK) - offset)]
        yield piece
        sent += len(piece)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def timed(
    size: int, chunk: int, update: Callable[[memoryview], None], finish: Callable[[], Any]
) -> dict[str, Any]:
    start = time.perf_counter()
    for piece in chunks(size, chunk):
        update(piece)
    finish()
    seconds = time.perf_counter() - start
    return {"bytes": size, "seconds": round(seconds, 3), "mb_per_s": round(size / seconds / 1e6, 1)}


def commp_run(implementation: Implementation, size: int, chunk: int) -> dict[str, Any]:
    hasher = CommP(implementation=implementation)
    result = timed(size, chunk, hasher.update, hasher.digest)
    result["piece_cid_v2"] = hasher.piece_info().cid_v2
    return result


def sha256_run(size: int, chunk: int) -> dict[str, Any]:
    digest = hashlib.sha256()
    return timed(size, chunk, digest.update, digest.digest)


def cpu_has_sha_ni() -> bool | None:
    try:
        return " sha_ni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="input size (default 256)")
    parser.add_argument(
        "--python-size-mib", type=int, default=16, help="slice for the pure-Python path (16)"
    )
    parser.add_argument("--chunk-kib", type=int, default=1024, help="update() chunk (1024)")
    args = parser.parse_args()
    size, chunk = args.size_mib * MIB, args.chunk_kib * 1024
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "cpu_sha_ni": cpu_has_sha_ni(),
        "chunk_bytes": chunk,
        "hashlib_sha256": sha256_run(size, chunk),
        "peak_rss_mib_before_commp": peak_rss_mib(),
    }
    report["commp_compiled"] = commp_run("compiled", size, chunk) if COMPILED_AVAILABLE else None
    report["peak_rss_mib_after_compiled"] = peak_rss_mib()
    report["commp_python"] = commp_run("python", args.python_size_mib * MIB, chunk)
    report["peak_rss_mib"] = peak_rss_mib()
    if report["commp_compiled"]:
        report["sha256_over_compiled_commp"] = round(
            report["hashlib_sha256"]["mb_per_s"] / report["commp_compiled"]["mb_per_s"], 1
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
