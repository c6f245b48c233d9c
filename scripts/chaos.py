"""Chaos: mixed load on a running Forage while workers are SIGKILLed and the disk fills up.

What runs, all on 127.0.0.1 in a temporary directory:

- fake npm and PyPI registries (each home's loopback fake), on which a new release is
  published every ``--publish-every`` seconds, so archiving never stops;
- ``forage run`` (HTTP server, scheduler and one worker): what the clients talk to, never
  killed;
- ``--workers`` more ``forage worker`` processes; every ``--kill-every`` seconds one of them
  is SIGKILLed and started again at once;
- with root, the SQLite database and the data directory on a ``--disk`` tmpfs that is filled
  to the last byte ``--fill-at`` seconds in, for ``--fill-for`` seconds, then emptied;
- ``--clients`` concurrent clients mixing batch lookups (known and unknown keys), gateway
  reads of archived CIDs, npm packuments and tarballs, and PyPI simple pages through the
  mirror.

After ``--duration`` seconds publishing stops and the archive drains (up to ``--drain``
seconds). The JSON report gives the requests by kind and status, every 5xx (with samples),
how long each killed worker's jobs stayed held, the disk phase (``/healthz`` 503s seen, the
time from freeing the disk to healthy and to the next archive), and the releases published,
archived, lost (not archived, or archived bytes that differ from the published ones) and
duplicated. ``correct`` holds when there was no 5xx and nothing was lost or duplicated (the
exit status says it); ``ok`` when, besides, everything recovered with no hand: healthy again
after the disk was freed, and each killed worker's jobs running again within their lease.

Run: ``python3 scripts/chaos.py`` (about two minutes), or ``--duration 20`` for a short one.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

FILLER = ".chaos-filler"
#: The job lease: a killed worker's jobs must run again well before it ends.
LEASE_SECONDS = 10
#: How a trustless-gateway client asks for a DAG.
CAR = {"Accept": "application/vnd.ipld.car"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the disk -------------------------------------------------------------------------------------


def mount_disk(path: Path, size: str) -> bool:
    """Mount a tmpfs at ``path``; False (and the run goes on without the disk phase) if this
    user cannot."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def fill(disk: Path) -> None:
    fd = os.open(disk / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with suppress(OSError):
                while True:
                    os.write(fd, b"\xff" * size)
    finally:
        os.close(fd)


def empty(disk: Path) -> None:
    (disk / FILLER).unlink(missing_ok=True)


# -- Forage and its upstreams ---------------------------------------------------------------------


def write_config(root: Path, disk: Path, urls: dict[str, str], fakes: dict[str, Any]) -> Path:
    tables = []
    for name, fake in fakes.items():
        endpoints = fake.config_endpoints(urls[name])
        lines = [f"[registries.{name}]", *(f'{k} = "{v}"' for k, v in endpoints.items())]
        tables.append("\n".join([*lines, "allow_http = true", "interval = 1"]))
    path = root / "forage.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{disk / "forage.db"}"\n\n[data]\ndir = "{disk / "data"}"\n\n'
        "[jobs]\npoll_interval = 0.2\nbackoff_base = 1\nbackoff_cap = 5\n"
        f"lease_seconds = {LEASE_SECONDS}\n\n"
        "[schedule]\nleader_poll = 0.5\nbuild_pieces = 0\nstats = 0\nreverify = 0\n"
        "drain_archives = 5\nretry_failed = 5\n\n" + "\n\n".join(tables) + "\n"
    )
    return path


def forage(config: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "forage", "-c", str(config), "--log-format", "logfmt", *args],
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )


@dataclass
class Run:
    """What the run saw."""

    started: float = field(default_factory=time.monotonic)
    requests: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    published: list[tuple[str, str, str]] = field(default_factory=list)
    cids: list[str] = field(default_factory=list)
    lease_recovery: list[float] = field(default_factory=list)
    disk: dict[str, Any] = field(default_factory=dict)
    stopping: bool = False

    def seen(self, kind: str, response: httpx.Response) -> None:
        self.requests[kind][response.status_code] += 1
        if response.status_code >= 500 and len(self.failures) < 20:
            at = round(time.monotonic() - self.started, 1)
            self.failures.append(
                {
                    "at_s": at,
                    "kind": kind,
                    "url": str(response.url.path)[:120],
                    "status": response.status_code,
                    "body": response.text[:200],
                }
            )


# -- the clients ----------------------------------------------------------------------------------


def _cids_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k == "cid" and isinstance(v, str)]
        return found + [c for v in value.values() for c in _cids_in(v)]
    if isinstance(value, list):
        return [c for v in value for c in _cids_in(v)]
    return []


async def client_loop(client: httpx.AsyncClient, run: Run, rng: random.Random) -> None:
    while not run.stopping:
        choice = rng.random()
        try:
            if choice < 0.4 or not run.published:
                known = [
                    f"{e}:{n}:{v}"
                    for e, n, v in rng.sample(run.published, min(len(run.published), 10))
                ]
                unknown = [f"npm:chaos-unknown-{rng.randrange(10**6)}:1.0.0"]
                response = await client.post("/api/v1/lookup", json={"keys": known + unknown})
                run.seen("lookup", response)
                if response.status_code == 200:
                    run.cids = list(dict.fromkeys(run.cids + _cids_in(response.json())))[-500:]
            elif choice < 0.6 and run.cids:
                cid = rng.choice(run.cids)
                run.seen("gateway", await client.get(f"/ipfs/{cid}", headers=CAR))
            else:
                ecosystem, name, _ = rng.choice(run.published)
                if ecosystem == "npm":
                    packument = await client.get(f"/npm/{name}")
                    run.seen("npm_packument", packument)
                    if packument.status_code == 200:
                        versions = packument.json().get("versions", {})
                        if versions:
                            dist = rng.choice(list(versions.values()))["dist"]["tarball"]
                            run.seen("npm_tarball", await client.get(httpx.URL(dist).path))
                else:
                    run.seen("simple_page", await client.get(f"/pypi/simple/{name}/"))
        except httpx.HTTPError as exc:
            run.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.1)


# -- the chaos ------------------------------------------------------------------------------------


def held_by(engine: sa.Engine, pid: int) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM jobs WHERE state = 'running' AND lease_owner LIKE :owner"
                ),
                {"owner": f"%:{pid}:%"},
            ).scalar_one()
        )


async def kill_loop(
    args: argparse.Namespace,
    run: Run,
    workers: list[subprocess.Popen[bytes]],
    start_worker: Any,
    engine: sa.Engine,
    rng: random.Random,
) -> None:
    """SIGKILL a worker, start its replacement at once, and time until no job is still held by
    the dead one."""
    while not run.stopping:
        await asyncio.sleep(args.kill_every)
        if run.stopping or not workers:
            return
        index = rng.randrange(len(workers))
        victim = workers[index]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = time.monotonic()
        workers[index] = start_worker()
        while await asyncio.to_thread(_held_or_none, engine, victim.pid):
            if time.monotonic() - killed > 120:
                break
            await asyncio.sleep(0.1)
        run.lease_recovery.append(round(time.monotonic() - killed, 2))


def _held_or_none(engine: sa.Engine, pid: int) -> int:
    try:
        return held_by(engine, pid)
    except sa.exc.OperationalError:
        return 1  # the database is busy or full: ask again


def archived_count(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT count(*) FROM archives WHERE status = 'archived'")
            ).scalar_one()
        )


async def disk_phase(
    args: argparse.Namespace, run: Run, disk: Path, client: httpx.AsyncClient, engine: sa.Engine
) -> None:
    await asyncio.sleep(args.fill_at)
    await asyncio.to_thread(fill, disk)
    filled = time.monotonic()
    statuses: Counter[int] = Counter()
    down: set[str] = set()
    while time.monotonic() - filled < args.fill_for:
        with suppress(httpx.HTTPError):
            health = await client.get("/healthz")
            statuses[health.status_code] += 1
            down.update(health.json().get("down", []))
        await asyncio.sleep(0.5)
    before = await asyncio.to_thread(_archived_or, engine, -1)
    empty(disk)
    freed = time.monotonic()
    healthy = next_archive = None
    while time.monotonic() - freed < 120 and (healthy is None or next_archive is None):
        with suppress(httpx.HTTPError):
            if healthy is None and (await client.get("/healthz")).status_code == 200:
                healthy = round(time.monotonic() - freed, 2)
        if next_archive is None and await asyncio.to_thread(_archived_or, engine, -1) > before:
            next_archive = round(time.monotonic() - freed, 2)
        await asyncio.sleep(0.2)
    run.disk = {
        "filled_for_s": args.fill_for,
        "healthz_while_full": {str(k): v for k, v in sorted(statuses.items())},
        "named_down": sorted(down),
        "healthy_after_free_s": healthy,
        "next_archive_after_free_s": next_archive,
    }


def _archived_or(engine: sa.Engine, default: int) -> int:
    try:
        return archived_count(engine)
    except sa.exc.OperationalError:
        return default


async def publish_loop(args: argparse.Namespace, run: Run, fakes: dict[str, Any]) -> None:
    serial = 0
    while not run.stopping:
        serial += 1
        ecosystem = "npm" if serial % 2 else "pypi"
        name, version = f"chaos-{serial % args.packages}", f"1.0.{serial}"
        fakes[ecosystem].publish_release(name, version)
        run.published.append((ecosystem, name, version))
        await asyncio.sleep(args.publish_every)


# -- the verdict ----------------------------------------------------------------------------------


def verdict(engine: sa.Engine, run: Run, fakes: dict[str, Any], config: Path) -> dict[str, Any]:
    """Lost: a published release with a file not archived, or whose archived bytes (read
    back from the blockstore, every block checked against its CID) differ from the published
    file. Duplicated: a file with more than one archive row."""
    from forage.archive.blocks import open_blockstore
    from forage.config import load_config
    from storage import read_file

    store = open_blockstore(load_config(config, environ={}))
    lost, checked = [], 0
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT p.ecosystem, p.name, v.number, a.filename, ar.status, ar.cid"
                " FROM packages p JOIN versions v ON v.package_id = p.id"
                " JOIN artifacts a ON a.version_id = v.id"
                " LEFT JOIN archives ar ON ar.artifact_id = a.id"
            )
        ).all()
        duplicated = connection.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT artifact_id FROM archives"
                " GROUP BY artifact_id HAVING count(*) > 1) AS d"
            )
        ).scalar_one()
    by_release = defaultdict(list)
    for row in rows:
        by_release[(row[0], row[1], row[2])].append(row)
    for ecosystem, name, version in run.published:
        files = by_release.get((ecosystem, name, version), [])
        if not files or any(row[4] != "archived" for row in files):
            lost.append(f"{ecosystem}:{name}:{version}")
            continue
        filename, data = fakes[ecosystem].release_file(name, version)
        cid = next((row[5] for row in files if row[3] == filename), None)
        checked += 1
        try:
            stored = b"".join(read_file(store, cid)) if cid else b""
        except Exception as exc:  # a missing or damaged block is a loss, whatever its kind
            lost.append(f"{ecosystem}:{name}:{version} ({type(exc).__name__})")
            continue
        if hashlib.sha256(stored).digest() != hashlib.sha256(data).digest():
            lost.append(f"{ecosystem}:{name}:{version} (bytes differ)")
    return {
        "published": len(run.published),
        "bytes_checked": checked,
        "lost": lost,
        "duplicated": int(duplicated),
    }


async def chaos(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from indexers import ECOSYSTEMS
    from indexers.fakeserver import ThreadedServer

    disk = root / "disk"
    mounted = not args.no_disk and mount_disk(disk, args.disk)
    fakes = {name: ECOSYSTEMS[name].fake() for name in ("npm", "pypi")}
    rng = random.Random(args.seed)
    run = Run()
    with ExitStack() as stack:
        if mounted:
            stack.callback(subprocess.run, ["umount", "-l", str(disk)], check=False)
        urls = {
            name: stack.enter_context(ThreadedServer(fake.make_app())).url
            for name, fake in fakes.items()
        }
        config = write_config(root, disk, urls, fakes)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        logs = root / "logs"
        logs.mkdir()
        processes: list[subprocess.Popen[bytes]] = []
        main = forage(config, logs / "run.log", "run", "--port", str(port))
        processes.append(main)

        def start_worker() -> subprocess.Popen[bytes]:
            worker = forage(config, logs / "workers.log", "worker", "--concurrency", "4")
            processes.append(worker)
            return worker

        workers = [start_worker() for _ in range(args.workers)]
        stack.callback(lambda: [p.kill() for p in processes if p.poll() is None])
        engine = sa.create_engine(f"sqlite:///{disk / 'forage.db'}")
        stack.callback(engine.dispose)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                with suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline or main.poll() is not None:
                    raise SystemExit(f"forage run did not start; see {logs / 'run.log'}")
                await asyncio.sleep(0.2)
            await asyncio.sleep(3)  # the watchers take their cursors at the feeds' heads
            run.started = time.monotonic()
            limits = httpx.Limits(max_connections=args.clients)
            async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as load:
                tasks = [asyncio.create_task(publish_loop(args, run, fakes))]
                tasks += [
                    asyncio.create_task(client_loop(load, run, random.Random(i)))
                    for i in range(args.clients)
                ]
                tasks.append(
                    asyncio.create_task(kill_loop(args, run, workers, start_worker, engine, rng))
                )
                if mounted:
                    tasks.append(asyncio.create_task(disk_phase(args, run, disk, client, engine)))
                await asyncio.sleep(args.duration)
                run.stopping = True
                await asyncio.gather(*tasks)
            drained_at = None
            result = await asyncio.to_thread(verdict, engine, run, fakes, config)
            drain_deadline = time.monotonic() + args.drain
            while time.monotonic() < drain_deadline:
                result = await asyncio.to_thread(verdict, engine, run, fakes, config)
                if not result["lost"]:
                    drained_at = time.monotonic()
                    break
                await asyncio.sleep(1)
            main_alive = main.poll() is None
            main.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                main.wait(timeout=30)
    errors_5xx = sum(
        n for statuses in run.requests.values() for status, n in statuses.items() if status >= 500
    )
    recovery = run.lease_recovery
    report = {
        "duration_s": args.duration,
        "clients": args.clients,
        "requests": {kind: dict(sorted(c.items())) for kind, c in sorted(run.requests.items())},
        "requests_total": sum(sum(c.values()) for c in run.requests.values()),
        "5xx": errors_5xx,
        "5xx_samples": run.failures,
        "client_errors": dict(run.errors),
        "workers_killed": len(recovery),
        "lease_recovery_s": {
            "max": max(recovery, default=None),
            "median": statistics.median(recovery) if recovery else None,
        },
        "disk": run.disk if mounted else "not filled (needs root to mount a tmpfs)",
        "drain_s": round(drained_at - run.started - args.duration, 1) if drained_at else None,
        "forage_run_survived": main_alive,
        **result,
    }
    recovered = not mounted or (
        run.disk.get("healthy_after_free_s") is not None
        and run.disk.get("next_archive_after_free_s") is not None
    )
    report["correct"] = (
        errors_5xx == 0 and not result["lost"] and result["duplicated"] == 0 and main_alive
    )
    # Recovered with no hand: healthy again after the disk was freed, and every killed
    # worker's jobs running again before their lease (10 s here) could have run out.
    report["ok"] = report["correct"] and recovered and all(r < LEASE_SECONDS for r in recovery)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=90, help="seconds of chaos (90)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument(
        "--workers", type=int, default=2, help="extra `forage worker` processes to kill (2)"
    )
    parser.add_argument(
        "--kill-every", type=float, default=5, help="seconds between SIGKILLs of a worker (5)"
    )
    parser.add_argument(
        "--publish-every",
        type=float,
        default=0.5,
        help="seconds between new releases on the fakes (0.5)",
    )
    parser.add_argument(
        "--packages",
        type=int,
        default=20,
        help="distinct package names the releases cycle through (20)",
    )
    parser.add_argument("--disk", default="256m", help="size of the tmpfs holding the data (256m)")
    parser.add_argument(
        "--fill-at",
        type=float,
        default=20,
        help="seconds into the run when the disk is filled (20)",
    )
    parser.add_argument(
        "--fill-for", type=float, default=15, help="seconds the disk stays full (15)"
    )
    parser.add_argument("--no-disk", action="store_true", help="skip the full-disk phase")
    parser.add_argument(
        "--drain",
        type=float,
        default=120,
        help="seconds to wait for the archive to catch up at the end (120)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    args = parser.parse_args()
    if args.fill_at + args.fill_for >= args.duration and not args.no_disk:
        parser.error("--fill-at + --fill-for must end before --duration")
    with tempfile.TemporaryDirectory(prefix="forage-chaos-") as tmp:
        report = asyncio.run(chaos(args, Path(tmp)))
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["correct"] else 1)


if __name__ == "__main__":
    main()
