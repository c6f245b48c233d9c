"""Crash safety of archiving: ``forage worker`` processes SIGKILLed mid-work, then restarted.

300 fixture artifacts (npm tarballs with sha512 and sha1, PyPI files with sha256 and size, Go
module zips with ``h1:``; from 1 KiB to 1.5 MiB) are served by a throttled loopback file host.
A worker is killed with SIGKILL at a random moment while archive jobs are in hand, four
times; a last worker drains the queue. At the end every artifact has exactly one archive
row, archived, whose CID recomputed from the bytes read back out of the blockstore matches;
every archive job is done (none queued, running or dead: no job lost); the store holds only
verified blocks that some archive's DAG reaches; no staging directory or spool file is left.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa

from forage.archive.blocks import open_packed
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import Archive, ArchiveStatus, Artifact, JobRecord
from forage.fakes.files import FakeFileServer
from forage.index.ingest import ARCHIVE
from indexers import Artifact as ArtifactInfo
from indexers.fakeserver import ThreadedServer
from indexers.golang.fake import GoFake
from storage import compute_cid, read_file, walk_dag
from tests.forage.test_archive import (
    blob,
    leftovers,
    npm_artifact,
    package,
    pypi_artifact,
    record,
    write_config,
)

ROOT = Path(__file__).resolve().parents[2]
KILLS = 4


Fixture = tuple[bytes, str | None]


def fixtures(host: FakeFileServer, rng: random.Random) -> dict[str, Fixture]:
    """Publish 300 artifacts on ``host``: filename -> (bytes, Go h1 or None)."""
    published: dict[str, Fixture] = {}
    go = GoFake()
    for index in range(300):
        big = index % 10 == 9  # one in ten spans several chunks
        size = rng.randint(300_000, 1_500_000) if big else rng.randint(1024, 40_000)
        if index % 15 == 0:
            module = go.add_version(
                f"example.com/m{index}", "v1.0.0", files={"a": blob(size, index)}
            )
            name, data, h1 = f"m{index}-v1.0.0.zip", module.zip, module.h1
        else:
            name = f"p{index}.tgz" if index % 2 else f"p{index}.tar.gz"
            data, h1 = blob(size, index), None
        host.add(name, data)
        published[name] = (data, h1)
    return published


def record_all(url: str, base: str, published: dict[str, Fixture]) -> dict[int, str]:
    """Record every fixture as the importer would (queueing its archive job); id -> name."""
    ids: dict[int, str] = {}
    for name, (data, h1) in published.items():
        link = f"{base}/files/{name}"
        if h1 is not None:
            info = ArtifactInfo(name, link, None, {"h1": h1})
            ecosystem, package_name, version = "golang", f"example.com/{name[:-11]}", "v1.0.0"
        elif name.endswith(".tgz"):
            info, ecosystem, package_name = npm_artifact(link, data, name), "npm", name[:-4]
            version = "1.0.0"
        else:
            info, ecosystem, package_name = pypi_artifact(link, data, name), "pypi", name[:-7]
            version = "1.0.0"
        [artifact_id] = record(url, package(ecosystem, package_name, {version: info}))
        ids[artifact_id] = name
    return ids


def start_worker(config: Path, log: IO[bytes], *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FORAGE_JOBS_LEASE_SECONDS": "2",
        "FORAGE_JOBS_MAX_ATTEMPTS": "30",
        "FORAGE_JOBS_POLL_INTERVAL": "0.1",
    }
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "forage", "-q", "-c", str(config), "worker"),
            *("--kind", ARCHIVE, "--concurrency", "4", *args),
        ],
        cwd=config.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def held_by(url: str, pid: int) -> int:
    """How many archive jobs the worker process ``pid`` holds (owner ``host:pid:random``)."""
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            count = session.scalar(
                sa.select(sa.func.count()).where(
                    JobRecord.state == "running", JobRecord.lease_owner.like(f"%:{pid}:%")
                )
            )
            return int(count or 0)
    finally:
        engine.dispose()


def job_states(url: str) -> Counter[str]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            rows = session.execute(
                sa.select(JobRecord.state, sa.func.count())
                .where(JobRecord.kind == ARCHIVE)
                .group_by(JobRecord.state)
            )
            return Counter({str(state): n for state, n in rows})
    finally:
        engine.dispose()


@pytest.mark.slow
def test_sigkilled_workers_lose_no_job_and_leave_one_verified_archive_each(
    migrated_url: str, tmp_path: Path
) -> None:
    rng = random.Random(20240401)
    host = FakeFileServer(rate=3_000_000)  # about 0.3 s for a 1 MiB file: kills land mid-job
    with ExitStack() as stack:
        fake = stack.enter_context(ThreadedServer(host.make_app()))
        published = fixtures(host, rng)
        config = write_config(tmp_path, migrated_url, fake.url)
        ids = record_all(migrated_url, fake.url, published)
        assert len(ids) == 300 and job_states(migrated_url) == {"queued": 300}
        data_dir = tmp_path / "data"

        log = stack.enter_context((tmp_path / "workers.log").open("wb"))
        for _ in range(KILLS):
            worker = start_worker(config, log)
            try:
                deadline = time.monotonic() + 60
                time.sleep(rng.uniform(0.0, 2.0))
                while held_by(migrated_url, worker.pid) == 0:  # kill it with jobs in hand
                    assert worker.poll() is None, "the worker exited"
                    assert time.monotonic() < deadline, "the worker never started a job"
                    time.sleep(rng.uniform(0.0, 0.1))
            finally:
                worker.send_signal(signal.SIGKILL)
                worker.wait(timeout=30)
        assert job_states(migrated_url)["queued"] > 0  # the kills all came before the end

        last = start_worker(config, log, "--drain")
        last.wait(timeout=240)
        assert last.returncode == 0, (tmp_path / "workers.log").read_text(errors="replace")

    # No job lost: every archive job ran to its end exactly as one job.
    assert job_states(migrated_url) == {"done": 300}
    engine = make_engine(migrated_url)
    try:
        with make_sessionmaker(engine)() as session:
            archives = session.execute(
                sa.select(Artifact.id, Archive.status, Archive.cid, Archive.size).join(
                    Archive, Archive.artifact_id == Artifact.id
                )
            ).all()
            retried = session.scalar(sa.select(sa.func.count()).where(JobRecord.attempts > 1))
    finally:
        engine.dispose()
    assert retried and retried > 0  # some jobs were cut short and ran again
    assert sorted(row.id for row in archives) == sorted(ids)  # exactly one row each
    store = open_packed(data_dir / "blocks")
    reachable: set[bytes] = set()
    for row in archives:
        data = published[ids[row.id]][0]
        assert (row.status, row.size) == (ArchiveStatus.ARCHIVED, len(data))
        stored = b"".join(read_file(store, row.cid))
        assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
        assert str(compute_cid(stored)) == row.cid
        reachable |= {bytes(block.cid.digest) for block in walk_dag(store, row.cid)}
    # Every block on disk verifies (get() re-hashes it) and belongs to some archive.
    on_disk = list(store.iterate())
    for cid in on_disk:
        store.get(cid)
    assert {bytes(cid.digest) for cid in on_disk} == reachable
    assert leftovers(data_dir) == []
