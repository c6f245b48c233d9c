"""The load generator ``bench_mirror.py`` drives every server with: one process, one client.

The same driver for Forage, verdaccio and devpi (``wrk`` is not on the machine), so the
servers' figures differ only by the server. Its client is aiohttp's: httpx spent 2.6 ms of CPU
a request, more than the servers it measured, so it measured itself on small files. It runs
in a process of its own (spawned, so it shares no event loop or GIL with a server in the
benchmark's process), keeps ``clients`` connections busy, sends a warm-up share of the
requests first and leaves it out of the figures, and counts answers that are not 200 (or fail
the caller's header check) as errors rather than stopping: a peer that errors is reported,
not fatal. Given the server's process id, it also reads the CPU time the server spent.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from queue import Empty
from typing import Any

#: The ``Accept`` header pip sends for a simple page (PEP 691 JSON, HTML as a fallback).
PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1"
#: The ``Accept`` header npm sends for a packument: the abbreviated ("corgi") document.
NPM_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


@dataclass(frozen=True)
class Endpoint:
    """One measured endpoint: the paths requested in turn, with ``headers``.

    ``source_header``: an answer counts as an error unless this response header is present
    and contains ``source_value`` (Forage says where each answer came from; peers don't).
    """

    name: str
    paths: list[str]
    total: int
    headers: dict[str, str] = field(default_factory=dict)
    source_header: str | None = None
    source_value: str = ""


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process ``pid`` has used, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    base: str, endpoint: Endpoint, *, clients: int, warmup: int, pid: int | None = None
) -> dict[str, Any]:
    """Send ``warmup`` unmeasured requests, then ``endpoint.total`` measured ones; with the
    server's ``pid``, also the server CPU time per measured request (which a busy machine
    disturbs less than requests/s)."""
    import aiohttp

    async with aiohttp.ClientSession(
        base_url=base,
        timeout=aiohttp.ClientTimeout(total=120),
        connector=aiohttp.TCPConnector(limit=clients),
    ) as client:
        if warmup:
            await _run(client, endpoint, clients=clients, total=warmup, seed=2)
        before = cpu_seconds(pid) if pid is not None else 0.0
        results = await _run(client, endpoint, clients=clients, total=endpoint.total, seed=1)
        if pid is not None:
            used = cpu_seconds(pid) - before
            results["server_cpu_ms_per_request"] = round(used / endpoint.total * 1000, 2)
        return results


async def _run(
    client: Any, endpoint: Endpoint, *, clients: int, total: int, seed: int
) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    received = 0
    errors: dict[str, int] = {}
    queue = [endpoint.paths[i % len(endpoint.paths)] for i in range(total)]
    random.Random(seed).shuffle(queue)

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def worker() -> None:
        nonlocal received
        while queue:
            path = queue.pop()
            started = time.perf_counter()
            try:
                async with client.get(path, headers=endpoint.headers) as response:
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                latencies.append(time.perf_counter() - started)
                error(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - started)
            received += len(body)
            if response.status != 200:
                error(str(response.status))
            elif endpoint.source_header and endpoint.source_value not in response.headers.get(
                endpoint.source_header, ""
            ):
                error(f"{endpoint.source_header}: {response.headers.get(endpoint.source_header)}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": total,
        "errors": sum(errors.values()),
        **({"error_kinds": errors} if errors else {}),
        "seconds": round(elapsed, 3),
        "requests_per_second": round(total / elapsed, 1),
        "mb_per_second": round(received / elapsed / 1e6, 2),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "bytes_per_response": received // total,
    }


def _client_process(
    base: str, endpoints: list[Endpoint], clients: int, warmup: float, pid: int | None, out: Any
) -> None:
    async def run() -> dict[str, Any]:
        return {
            endpoint.name: await load(
                base, endpoint, clients=clients, warmup=int(endpoint.total * warmup), pid=pid
            )
            for endpoint in endpoints
        }

    out.put(asyncio.run(run()))


async def measure(
    base: str, endpoints: list[Endpoint], *, clients: int, warmup: float, pid: int | None = None
) -> dict[str, Any]:
    """Measure ``endpoints`` one after another from a separate (spawned) process (and the CPU
    time of the server process ``pid``, if given)."""
    for endpoint in endpoints:
        if not endpoint.paths:
            raise ValueError(f"{endpoint.name}: nothing to request")
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    process = context.Process(
        target=_client_process, args=(base, endpoints, clients, warmup, pid, queue)
    )
    process.start()
    try:
        while True:
            try:
                results: dict[str, Any] = await asyncio.to_thread(queue.get, True, 1)
                return results
            except Empty:
                if process.exitcode is not None:
                    code = process.exitcode
                    raise RuntimeError(f"the load generator exited with {code}") from None
    finally:
        await asyncio.to_thread(process.join, 60)


def discover_files(base: str, page: str, suffix: str, limit: int) -> list[str]:
    """The first ``limit`` file URLs ending in ``suffix`` on a server's PEP 691 page, as paths
    relative to ``base`` (every server links its own files its own way)."""
    from urllib.parse import urljoin, urlsplit

    import httpx

    response = httpx.get(base + page, headers={"accept": PIP_ACCEPT}, timeout=300)
    response.raise_for_status()
    urls = [
        urljoin(base + page, file["url"])
        for file in response.json()["files"]
        if file["filename"].endswith(suffix)
    ][:limit]
    out = []
    for url in urls:
        parts = urlsplit(url)
        out.append(parts.path + (f"?{parts.query}" if parts.query else ""))
    return out


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (``VmHWM``) since it started or since
    :func:`reset_peak_rss`."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for process {pid}")


def rss_mb(pid: int) -> float:
    """The process's resident set now (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def reset_peak_rss(pid: int) -> None:
    """Start ``VmHWM`` over at the current RSS (Linux ``clear_refs`` 5), so setup and
    priming are left out of a server's peak."""
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")
