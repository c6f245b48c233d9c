"""Pin jobs and the batched status check against the loopback Kubo, Cluster and Pinning
Service fakes, on SQLite and PostgreSQL, with archives imported for real into the blockstore.

What is shown: one archive is pinned on every configured backend and each backend's request id
is recorded (Kubo and Cluster receive the archive's own blocks as a CAR, the Pinning Service
gets the configured origins); the status check asks about many pins per request and moves
rows to the backend's state; a failed or lost pin is re-queued with growing delays and given
up after ``max_repins``; an unavailable backend is retried (after its ``Retry-After``) without
asking the others again, a refusal or unreadable blocks end the job; archives without a pin
on a newly configured backend are queued by the check; the next check is scheduled; tokens
never reach logs, rows or job errors. The configuration section is checked here too.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from forage.archive.job import archive_job
from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker, utcnow
from forage.db.models import Archive, Artifact, JobRecord, JobState, Pin, PinStatus
from forage.errors import ConfigError
from forage.fakes.cluster import FakeCluster
from forage.fakes.files import FakeFileServer
from forage.fakes.kubo import FakeKubo
from forage.fakes.pinning_service import FakePinningService
from forage.index.ingest import ARCHIVE, record_package
from forage.jobs import queue as jobs
from forage.jobs.queue import RetryPolicy
from forage.jobs.worker import JobContext, Worker, job_context
from forage.pins.backends import car_stream
from forage.pins.check import GONE, check_pins, pin_check_job
from forage.pins.kinds import PIN, PIN_CHECK, enqueue_pins
from forage.pins.pin import pin_job
from indexers import Artifact as ArtifactInfo
from indexers import PackageInfo, Release
from indexers.fakeserver import serve
from storage import FilesystemBlockstore, compute_cid, export_car, import_file, parse_cid
from tests.factories import make_archive, make_artifact

KUBO_TOKEN = "kubo-tok-91c4e07d"
CLUSTER_TOKEN = "cluster-tok-5be2a1f0"
PSA_TOKEN = "psa-tok-3f9a1c0b7d2e"
ORIGIN = "/ip4/10.1.2.3/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
HANDLERS = {PIN: pin_job, PIN_CHECK: pin_check_job}
POLICY = RetryPolicy(max_attempts=3, backoff_base=1, backoff_cap=1)


@dataclass
class Fakes:
    kubo: FakeKubo
    cluster: FakeCluster
    psa: FakePinningService
    urls: dict[str, str]


@asynccontextmanager
async def running_fakes(**psa_options: Any) -> AsyncIterator[Fakes]:
    kubo = FakeKubo(token=KUBO_TOKEN)
    cluster = FakeCluster(token=CLUSTER_TOKEN)
    psa = FakePinningService(tokens=frozenset({PSA_TOKEN}), **psa_options)
    async with serve(kubo.app()) as k, serve(cluster.app()) as c, serve(psa.app()) as p:
        yield Fakes(kubo, cluster, psa, {"home": k.url, "cluster": c.url, "psa": p.url})


def write_config(
    tmp_path: Path,
    url: str,
    urls: dict[str, str],
    *,
    backends: tuple[str, ...] = ("home", "cluster", "psa"),
    batch_size: int = 500,
    max_repins: int = 2,
    psa_token: str = PSA_TOKEN,
) -> Config:
    types = {"home": "kubo", "cluster": "cluster", "psa": "service"}
    lines = [
        f'[database]\nurl = "{url}"\n',
        f'[data]\ndir = "{tmp_path / "data"}"\n',
        f"[pinning]\ncheck_interval = 30\nrecheck_interval = 3600\n"
        f"batch_size = {batch_size}\nmax_repins = {max_repins}\n",
    ]
    for name in backends:
        lines.append(f'[pinning.backends.{name}]\ntype = "{types[name]}"\nurl = "{urls[name]}"\n')
        if name != "home":
            lines.append(f'origins = ["{ORIGIN}"]\n')
    path = tmp_path / "forage.toml"
    path.write_text("\n".join(lines))
    environ = {
        "FORAGE_PINNING_BACKENDS_HOME_TOKEN": KUBO_TOKEN,
        "FORAGE_PINNING_BACKENDS_CLUSTER_TOKEN": CLUSTER_TOKEN,
        "FORAGE_PINNING_BACKENDS_PSA_TOKEN": psa_token,
    }
    return load_config(path, environ=environ)


@asynccontextmanager
async def forage(config: Config) -> AsyncIterator[JobContext]:
    engine = make_engine(config.database)
    try:
        async with job_context(config, make_sessionmaker(engine)) as ctx:
            yield ctx
    finally:
        engine.dispose()


def content(seed: int, size: int) -> bytes:
    """Deterministic bytes that differ per seed (no two archives share blocks)."""
    block = f"forage pin test {seed}\n".encode()
    return (block * (size // len(block) + 1))[:size]


def archive_bytes(ctx: JobContext, data: bytes) -> int:
    """Import ``data`` into the blockstore and record an archived artifact; return its id."""
    result = import_file(data, sink=ctx.blockstore)
    with ctx.sessionmaker.begin() as session:
        archive = make_archive(
            session, artifact=make_artifact(session), cid=str(result.cid), size=len(data)
        )
        return archive.id


def rows(ctx: JobContext, fn: Callable[[Any], Any]) -> Any:
    with ctx.sessionmaker() as session:
        return fn(session)


def pins_of(ctx: JobContext, archive_id: int) -> dict[str, Pin]:
    return rows(
        ctx,
        lambda s: {
            p.backend: p for p in s.scalars(sa.select(Pin).where(Pin.archive_id == archive_id))
        },
    )


def queued(ctx: JobContext, kind: str) -> list[JobRecord]:
    return rows(
        ctx,
        lambda s: list(
            s.scalars(
                sa.select(JobRecord)
                .where(JobRecord.kind == kind, JobRecord.state == JobState.QUEUED)
                .order_by(JobRecord.id)
            )
        ),
    )


async def run_jobs(
    ctx: JobContext, *, at: float = 0.0, kinds: tuple[str, ...] = (PIN,), once: bool = False
) -> dict[str, int]:
    """Run every job of ``kinds`` due ``at`` seconds from now, as a worker would (claim, run,
    complete or fail), until none is due (``once``: one round of at most 10); return how many
    ended in each state."""
    when = utcnow() + timedelta(seconds=at)
    ended: dict[str, int] = {}
    while not (once and ended):
        claimed = await ctx.transaction(
            lambda s: jobs.claim(s, owner=ctx.owner, limit=10, policy=POLICY, kinds=kinds, now=when)
        )
        if not claimed:
            return ended
        for job in claimed:
            try:
                await HANDLERS[job.kind](ctx, job)
            except Exception as exc:
                state = await ctx.transaction(
                    lambda s, job=job, exc=exc: jobs.fail(
                        s, job.id, owner=ctx.owner, error=exc, policy=POLICY, now=when
                    )
                )
                ended[str(state)] = ended.get(str(state), 0) + 1
            else:
                await ctx.transaction(lambda s, job=job: jobs.complete(s, job.id, owner=ctx.owner))
                ended["done"] = ended.get("done", 0) + 1
    return ended


def confirmed_long_ago(ctx: JobContext) -> None:
    """Let two hours pass for every pin's last confirmation (recheck_interval is one)."""
    with ctx.sessionmaker.begin() as session:
        session.execute(
            sa.update(Pin)
            .where(Pin.checked_at.is_not(None))
            .values(checked_at=utcnow() - timedelta(hours=2))
        )


def enqueue(ctx: JobContext, *archive_ids: int) -> None:
    with ctx.sessionmaker.begin() as session:
        for archive_id in archive_ids:
            enqueue_pins(session, archive_id)


# -- pinning ----------------------------------------------------------------------------------


async def test_an_archive_is_pinned_on_every_backend_with_its_blocks(
    tmp_path: Path, migrated_url: str
) -> None:
    """Three chunks of 256 KiB make a dag-pb root over raw leaves: Kubo and Cluster receive
    all four blocks in the CAR (Kubo's fake refuses to pin a DAG with a block missing), the
    Pinning Service gets the origins; the rows hold each backend's request id."""
    async with running_fakes() as fakes:
        config = write_config(tmp_path, migrated_url, fakes.urls)
        async with forage(config) as ctx:
            data = content(1, 3 * 262144 - 100)
            archive_id = archive_bytes(ctx, data)
            cid = pins_cid(ctx, archive_id)
            enqueue(ctx, archive_id)
            enqueue(ctx, archive_id)  # a second call while the first waits adds nothing
            assert len(queued(ctx, PIN)) == 1
            assert await run_jobs(ctx) == {"done": 1}

            pins = pins_of(ctx, archive_id)
            assert set(pins) == {"home", "cluster", "psa"}
            assert (pins["home"].status, pins["home"].request_id) == (PinStatus.PINNED, cid)
            assert pins["home"].pinned_at is not None
            assert (pins["cluster"].status, pins["cluster"].request_id) == (PinStatus.QUEUED, cid)
            assert fakes.kubo.is_pinned(cid)
            assert len(fakes.kubo.blocks) == 4
            assert len(fakes.cluster.blocks) == 4
            assert fakes.cluster.pins[cid].name == f"{archive_id}-{_filename(ctx, archive_id)}"
            [service_pin] = fakes.psa.pins.values()
            assert pins["psa"].request_id == service_pin.requestid != cid
            assert pins["psa"].status == PinStatus.QUEUED
            assert (service_pin.cid, service_pin.origins) == (cid, [ORIGIN])

            # Running the job again (a kill after the commit) asks no backend again.
            seen = len(fakes.kubo.requests.seen) + len(fakes.psa.requests.seen)
            enqueue(ctx, archive_id)
            assert await run_jobs(ctx) == {"done": 1}
            assert len(fakes.kubo.requests.seen) + len(fakes.psa.requests.seen) == seen
            # The check waits for check_interval while pins are in flight.
            [check] = queued(ctx, PIN_CHECK)
            assert 25 < (check.run_after - utcnow()).total_seconds() <= 30


def _filename(ctx: JobContext, archive_id: int) -> str:
    return rows(
        ctx,
        lambda s: s.scalar(
            sa.select(Artifact.filename).join(Archive).where(Archive.id == archive_id)
        ),
    )


async def test_the_check_asks_many_pins_per_request_and_records_their_states(
    tmp_path: Path, migrated_url: str
) -> None:
    """21 pins, batch_size 10: three status calls per backend, each answered with one request
    (the Pinning Service's 10-CID filter is the limit there) instead of 21."""
    async with running_fakes() as fakes:
        config = write_config(tmp_path, migrated_url, fakes.urls, batch_size=10)
        async with forage(config) as ctx:
            ids = [archive_bytes(ctx, content(100 + n, 1000 + n)) for n in range(21)]
            enqueue(ctx, *ids)
            assert await run_jobs(ctx) == {"done": 21}
            for fake in (fakes.cluster, fakes.psa):
                fake.advance()
            fakes.kubo.pin_ls_args.clear()
            fakes.cluster.requests.clear()
            fakes.psa.requests.clear()

            confirmed_long_ago(ctx)  # Kubo's pins are due for confirmation
            reports = {r.backend: r for r in await check_pins(config, ctx.sessionmaker)}

            assert {name: (r.checked, r.batches) for name, r in reports.items()} == {
                "home": (21, 3),
                "cluster": (21, 3),
                "psa": (21, 3),
            }
            assert len(fakes.kubo.pin_ls_args) == 3
            assert [len(args) for args in fakes.kubo.pin_ls_args] == [10, 10, 1]
            assert fakes.cluster.status_requests() == 3
            assert fakes.psa.list_requests() == 3
            assert all(r.method == "GET" and r.path == "/pins" for r in fakes.psa.requests.seen)
            assert reports["cluster"].states == {"pinning": 21}
            assert reports["psa"].states == {"pinning": 21}

            for fake in (fakes.cluster, fakes.psa):
                fake.advance()
            fakes.kubo.pin_ls_args.clear()
            # The queued check job runs; Kubo's pins were confirmed moments ago: not due.
            assert await run_jobs(ctx, kinds=(PIN_CHECK,), at=31, once=True) == {"done": 1}
            assert fakes.kubo.pin_ls_args == []
            states = rows(
                ctx,
                lambda s: s.execute(
                    sa.select(Pin.backend, Pin.status, sa.func.count())
                    .where(Pin.pinned_at.is_not(None), Pin.checked_at.is_not(None))
                    .group_by(Pin.backend, Pin.status)
                ).all(),
            )
            assert sorted(states) == [
                ("cluster", PinStatus.PINNED, 21),
                ("home", PinStatus.PINNED, 21),
                ("psa", PinStatus.PINNED, 21),
            ]
            # Nothing in flight: the next check is when the oldest confirmation falls due.
            [check] = queued(ctx, PIN_CHECK)
            assert 3500 < (check.run_after - utcnow()).total_seconds() <= 3600


async def test_a_failed_pin_is_requeued_with_growing_delays_then_given_up(
    tmp_path: Path, migrated_url: str
) -> None:
    async with running_fakes() as fakes:
        config = write_config(tmp_path, migrated_url, fakes.urls, backends=("psa",))
        async with forage(config) as ctx:
            archive_id = archive_bytes(ctx, content(7, 5000))
            cid = pins_cid(ctx, archive_id)
            fakes.psa.fail_cid(cid, "could not fetch from origins: timeout")
            enqueue(ctx, archive_id)
            await run_jobs(ctx)
            requeued = []
            delays = []
            request_ids = []
            for _ in range(3):
                request_ids.append(pins_of(ctx, archive_id)["psa"].request_id)
                fakes.psa.advance()
                fakes.psa.advance()
                [report] = await check_pins(config, ctx.sessionmaker)
                requeued.append(report.requeued)
                pin = pins_of(ctx, archive_id)["psa"]
                assert pin.status == PinStatus.FAILED
                assert pin.error == "could not fetch from origins: timeout"
                repins = queued(ctx, PIN)
                if repins:
                    delays.append(round((repins[0].run_after - utcnow()).total_seconds()))
                    assert repins[0].payload == {"archive_id": archive_id, "backend": "psa"}
                    assert await run_jobs(ctx, at=delays[-1] + 1) == {"done": 1}

            assert requeued == [1, 1, 0]
            assert [math.ceil(d / 10) * 10 for d in delays] == [30, 60]
            assert len(set(request_ids)) == 3
            posts = [r for r in fakes.psa.requests.seen if r.method == "POST"]
            assert len(posts) == 3
            # Each replaced request was removed from the service; the last failed one stays.
            assert list(fakes.psa.pins) == [request_ids[-1]]
            assert queued(ctx, PIN) == []


def pins_cid(ctx: JobContext, archive_id: int) -> str:
    return rows(ctx, lambda s: s.get(Archive, archive_id).cid)


async def test_a_pin_the_backend_lost_is_pinned_again(tmp_path: Path, migrated_url: str) -> None:
    async with running_fakes() as fakes:
        config = write_config(tmp_path, migrated_url, fakes.urls, backends=("home", "cluster"))
        async with forage(config) as ctx:
            archive_id = archive_bytes(ctx, content(9, 300_000))
            cid = pins_cid(ctx, archive_id)
            enqueue(ctx, archive_id)
            await run_jobs(ctx)
            del fakes.kubo.pins[cid]
            fakes.cluster.pins.pop(cid)
            fakes.kubo.blocks.clear()

            confirmed_long_ago(ctx)
            reports = await check_pins(config, ctx.sessionmaker)
            assert [(r.backend, r.gone, r.requeued) for r in reports] == [
                ("home", 1, 1),
                ("cluster", 1, 1),
            ]
            pins = pins_of(ctx, archive_id)
            assert {p.status for p in pins.values()} == {PinStatus.FAILED}
            assert {p.error for p in pins.values()} == {GONE}

            assert await run_jobs(ctx, at=31) == {"done": 2}
            pins = pins_of(ctx, archive_id)
            assert pins["home"].status == PinStatus.PINNED
            assert pins["cluster"].status == PinStatus.QUEUED
            assert pins["home"].error is None
            assert fakes.kubo.is_pinned(cid)
            assert cid in fakes.cluster.pins
            assert len(fakes.kubo.blocks) == 3  # the blocks were sent again


async def test_kubo_refusing_at_once_marks_the_pin_failed_and_requeues_it(
    tmp_path: Path, migrated_url: str
) -> None:
    async with running_fakes() as fakes:
        config = write_config(tmp_path, migrated_url, fakes.urls, backends=("home",))
        async with forage(config) as ctx:
            archive_id = archive_bytes(ctx, content(11, 4000))
            fakes.kubo.fail_pin(pins_cid(ctx, archive_id), "disk quota exceeded")
            enqueue(ctx, archive_id)
            assert await run_jobs(ctx) == {"done": 1}
            pin = pins_of(ctx, archive_id)["home"]
            assert (pin.status, pin.error) == (PinStatus.FAILED, "disk quota exceeded")
            [repin] = queued(ctx, PIN)
            assert repin.payload == {"archive_id": archive_id, "backend": "home"}


async def test_archiving_an_artifact_queues_its_pins(tmp_path: Path, migrated_url: str) -> None:
    """The whole way: an imported PyPI file is downloaded, verified and stored by the archive
    job, which queues the pin job in its transaction; the pin job sends Kubo the blocks."""
    data = content(31, 600_000)
    files = FakeFileServer()
    async with running_fakes() as fakes, serve(files.make_app()) as host:
        config = write_config(tmp_path, migrated_url, fakes.urls, backends=("home",))
        path = tmp_path / "forage.toml"
        path.write_text(
            path.read_text() + f'[registries.pypi]\nindex_url = "{host.url}/simple"\n'
            f'json_url = "{host.url}/pypi"\nxmlrpc_url = "{host.url}/pypi"\nallow_http = true\n'
        )
        config = load_config(path, environ={"FORAGE_PINNING_BACKENDS_HOME_TOKEN": KUBO_TOKEN})
        artifact = ArtifactInfo(
            filename="demo-1.0.tar.gz",
            url=host.url + files.add("demo-1.0.tar.gz", data),
            size=len(data),
            digests={"sha256": hashlib.sha256(data).hexdigest()},
            kind="sdist",
        )
        info = PackageInfo(
            ecosystem="pypi",
            name="demo",
            display_name="demo",
            releases=(Release(version="1.0", artifacts=(artifact,)),),
        )
        async with forage(config) as ctx:
            with ctx.sessionmaker.begin() as session:
                record_package(session, info)
            worker = Worker(
                ctx,
                {ARCHIVE: archive_job, PIN: pin_job},
                concurrency=2,
                policy=POLICY,
                poll_interval=0.01,
            )
            stats = await worker.run(mode="drain")
            assert (stats.done, stats.dead, stats.retried) == (2, 0, 0)
            archive = rows(ctx, lambda s: s.scalars(sa.select(Archive)).one())
            pin = pins_of(ctx, archive.id)["home"]
    assert archive.cid == str(compute_cid(data))
    assert (pin.status, pin.request_id) == (PinStatus.PINNED, archive.cid)
    assert fakes.kubo.is_pinned(archive.cid)
    assert len(fakes.kubo.blocks) == 4  # three leaves and their root


async def test_two_checks_at_once_requeue_a_failed_pin_once(
    tmp_path: Path, migrated_url: str
) -> None:
    async with running_fakes() as fakes:
        config = write_config(tmp_path, migrated_url, fakes.urls, backends=("psa",))
        async with forage(config) as ctx:
            archive_id = archive_bytes(ctx, content(33, 900))
            fakes.psa.fail_cid(pins_cid(ctx, archive_id), "no provider could fetch it")
            enqueue(ctx, archive_id)
            await run_jobs(ctx)
            fakes.psa.advance()
            fakes.psa.advance()
            results = await asyncio.gather(
                check_pins(config, ctx.sessionmaker), check_pins(config, ctx.sessionmaker)
            )
            assert sum(report.requeued for [report] in results) == 1
            assert len(queued(ctx, PIN)) == 1
            assert pins_of(ctx, archive_id)["psa"].status == PinStatus.FAILED


# -- errors -----------------------------------------------------------------------------------


async def test_an_unavailable_backend_is_retried_alone_after_retry_after(
    tmp_path: Path, migrated_url: str
) -> None:
    async with running_fakes() as fakes:
        config = write_config(tmp_path, migrated_url, fakes.urls)
        async with forage(config) as ctx:
            archive_id = archive_bytes(ctx, content(13, 70_000))
            fakes.cluster.faults.fail(503, retry_after="600", path="/add")
            enqueue(ctx, archive_id)
            assert await run_jobs(ctx) == {"queued": 1}

            pins = pins_of(ctx, archive_id)
            assert pins["home"].status == PinStatus.PINNED
            assert pins["psa"].status == PinStatus.QUEUED
            assert (pins["cluster"].status, pins["cluster"].request_id) == (PinStatus.QUEUED, None)
            assert "BackendUnavailable" in pins["cluster"].error
            assert "HTTP 503" in pins["cluster"].error
            [job] = queued(ctx, PIN)
            assert (job.run_after - utcnow()).total_seconds() > 590

            imports = sum(r.path.endswith("dag/import") for r in fakes.kubo.requests.seen)
            assert await run_jobs(ctx, at=601) == {"done": 1}
            pins = pins_of(ctx, archive_id)
            assert pins["cluster"].request_id == pins_cid(ctx, archive_id)
            assert pins["cluster"].error is None
            assert sum(r.path.endswith("dag/import") for r in fakes.kubo.requests.seen) == imports
            assert sum(r.method == "POST" for r in fakes.psa.requests.seen) == 1


async def test_still_unavailable_on_the_last_attempt_fails_the_pin(
    tmp_path: Path, migrated_url: str
) -> None:
    async with running_fakes() as fakes:
        config = write_config(tmp_path, migrated_url, fakes.urls, backends=("psa",))
        async with forage(config) as ctx:
            archive_id = archive_bytes(ctx, content(15, 900))
            fakes.psa.faults.fail(502, times=POLICY.max_attempts)
            enqueue(ctx, archive_id)
            ended: dict[str, int] = {}
            for attempt in range(1, POLICY.max_attempts + 1):
                for state, n in (await run_jobs(ctx, at=60 * attempt, once=True)).items():
                    ended[state] = ended.get(state, 0) + n
            assert ended == {"queued": 2, "dead": 1}
            pin = pins_of(ctx, archive_id)["psa"]
            assert pin.status == PinStatus.FAILED
            assert "HTTP 502" in pin.error
            # Transient to the end: one re-pin is queued for later.
            [repin] = queued(ctx, PIN)
            assert repin.payload == {"archive_id": archive_id, "backend": "psa"}


async def test_a_refusal_fails_the_pin_and_the_job_for_good(
    tmp_path: Path, migrated_url: str
) -> None:
    async with running_fakes(insufficient_funds=True) as fakes:
        config = write_config(tmp_path, migrated_url, fakes.urls, backends=("home", "psa"))
        async with forage(config) as ctx:
            archive_id = archive_bytes(ctx, content(17, 900))
            enqueue(ctx, archive_id)
            assert await run_jobs(ctx) == {"dead": 1}
            pins = pins_of(ctx, archive_id)
            assert pins["home"].status == PinStatus.PINNED
            assert pins["psa"].status == PinStatus.FAILED
            assert "INSUFFICIENT_FUNDS" in pins["psa"].error
            assert queued(ctx, PIN) == []
            dead = rows(
                ctx,
                lambda s: s.scalar(sa.select(JobRecord.last_error).where(JobRecord.kind == PIN)),
            )
            assert dead.startswith("BackendRejected: psa: POST /pins: HTTP 409")


async def test_blocks_missing_from_the_blockstore_fail_the_upload_for_good(
    tmp_path: Path, migrated_url: str
) -> None:
    """An archive row whose blocks are not in the blockstore: Kubo cannot be sent them (a
    permanent failure: archive it again), while the Pinning Service, which fetches from the
    origins, is asked as usual."""
    async with running_fakes() as fakes:
        config = write_config(tmp_path, migrated_url, fakes.urls, backends=("home", "psa"))
        async with forage(config) as ctx:
            with ctx.sessionmaker.begin() as session:
                archive_id = make_archive(session).id
            enqueue(ctx, archive_id)
            assert await run_jobs(ctx) == {"dead": 1}
            pins = pins_of(ctx, archive_id)
            assert pins["home"].status == PinStatus.FAILED
            assert "cannot be read from the blockstore" in pins["home"].error
            assert "block not found" in pins["home"].error
            assert pins["psa"].status == PinStatus.QUEUED
            assert fakes.kubo.pins == {}


# -- the check's other duties -----------------------------------------------------------------


async def test_the_check_queues_archives_missing_a_newly_configured_backend(
    tmp_path: Path, migrated_url: str
) -> None:
    async with running_fakes() as fakes:
        first = write_config(tmp_path, migrated_url, fakes.urls, backends=("home",))
        async with forage(first) as ctx:
            ids = [archive_bytes(ctx, content(200 + n, 500)) for n in range(3)]
            enqueue(ctx, *ids)
            await run_jobs(ctx)
        config = write_config(tmp_path, migrated_url, fakes.urls, backends=("home", "psa"))
        async with forage(config) as ctx:
            reports = {r.backend: r for r in await check_pins(config, ctx.sessionmaker)}
            assert (reports["home"].queued, reports["psa"].queued) == (0, 3)
            assert await run_jobs(ctx) == {"done": 3}
            assert len(fakes.psa.pins) == 3
            assert sum(r.path.endswith("dag/import") for r in fakes.kubo.requests.seen) == 3
            reports = {r.backend: r for r in await check_pins(config, ctx.sessionmaker)}
            assert reports["psa"].queued == 0


async def test_a_failing_backend_does_not_stop_the_check_of_the_others(
    tmp_path: Path, migrated_url: str
) -> None:
    async with running_fakes() as fakes:
        config = write_config(tmp_path, migrated_url, fakes.urls, backends=("cluster", "psa"))
        async with forage(config) as ctx:
            archive_id = archive_bytes(ctx, content(19, 900))
            enqueue(ctx, archive_id)
            await run_jobs(ctx)
            fakes.cluster.faults.fail(500, path="/pins")
            fakes.psa.advance()
            reports = {r.backend: r for r in await check_pins(config, ctx.sessionmaker)}
            assert "HTTP 500" in reports["cluster"].error
            assert reports["cluster"].checked == 0
            assert reports["psa"].states == {"pinning": 1}
            assert pins_of(ctx, archive_id)["cluster"].checked_at is not None  # from the pin
            # The handler completes and the chain of checks goes on.
            assert await run_jobs(ctx, kinds=(PIN_CHECK,), at=31, once=True) == {"done": 1}
            [check] = queued(ctx, PIN_CHECK)
            assert 25 < (check.run_after - utcnow()).total_seconds() <= 30


# -- secrets ----------------------------------------------------------------------------------


async def test_tokens_never_reach_logs_rows_or_job_errors(
    tmp_path: Path, migrated_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The Pinning Service fake echoes a refused token in its 401 (some services do); the
    token is scrubbed from the pin's error, the dead job's error, the check's report and every
    log line, and no configured token shows anywhere."""
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-psa-token-77aa01"
    async with running_fakes(echo_token=True) as fakes:
        good = write_config(tmp_path, migrated_url, fakes.urls)
        async with forage(good) as ctx:
            first = archive_bytes(ctx, content(21, 900))
            enqueue(ctx, first)
            assert await run_jobs(ctx) == {"done": 1}
        bad = write_config(tmp_path, migrated_url, fakes.urls, psa_token=wrong)
        async with forage(bad) as ctx:
            second = archive_bytes(ctx, content(22, 900))
            enqueue(ctx, second)
            assert await run_jobs(ctx) == {"dead": 1}
            reports = {r.backend: r for r in await check_pins(bad, ctx.sessionmaker)}
            refused = pins_of(ctx, second)["psa"]
            job_errors = rows(ctx, lambda s: list(s.scalars(sa.select(JobRecord.last_error))))
            assert fakes.kubo.is_pinned(pins_cid(ctx, first))  # the right tokens were sent
    assert refused.status == PinStatus.FAILED
    assert "UNAUTHORIZED" in refused.error and "***" in refused.error
    assert "UNAUTHORIZED" in (reports["psa"].error or "")
    texts = [
        caplog.text,
        refused.error,
        " ".join(filter(None, job_errors)),
        repr(bad),
        str(bad.to_dict()),
        repr([r.to_dict() for r in reports.values()]),
    ]
    for text in texts:
        for token in (wrong, KUBO_TOKEN, CLUSTER_TOKEN, PSA_TOKEN):
            assert token not in text


# -- CAR stream -------------------------------------------------------------------------------


async def test_car_stream_matches_export_and_holds_one_block_at_a_time(tmp_path: Path) -> None:
    store = FilesystemBlockstore(tmp_path / "blocks")
    data = content(23, 5 * 262144 + 17)
    root = import_file(data, sink=store).cid
    chunks = [chunk async for chunk in car_stream(store, str(root))]
    expected = io.BytesIO()
    export_car(store, parse_cid(root), expected)
    assert b"".join(chunks) == expected.getvalue()
    assert len(chunks) == 1 + 7  # header, root, six leaves
    assert max(len(c) for c in chunks) <= 262144 + 64


# -- configuration ----------------------------------------------------------------------------


def _load(tmp_path: Path, body: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "forage.toml"
    path.write_text(body)
    return load_config(path, environ=environ or {})


def test_backends_are_read_with_tokens_from_the_environment_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "psa.token").write_text("file-token-1\n")
    config = _load(
        tmp_path,
        "[pinning]\nmax_repins = 5\n"
        '[pinning.backends.my-node]\ntype = "kubo"\nurl = "http://127.0.0.1:5001"\n'
        '[pinning.backends.pinata]\ntype = "service"\nurl = "https://api.pinata.invalid/psa"\n'
        f'token_file = "psa.token"\norigins = ["{ORIGIN}"]\n',
        {"FORAGE_PINNING_BACKENDS_MY_NODE_TOKEN": "env-token-2"},
    )
    assert config.pinning.backend_names == ("my-node", "pinata")
    assert config.pinning.max_repins == 5
    node, pinata = config.pinning.backends
    assert node.token is not None and node.token.reveal() == "env-token-2"
    assert pinata.token is not None and pinata.token.reveal() == "file-token-1"
    assert pinata.origins == (ORIGIN,)
    assert "file-token-1" not in repr(config) and "env-token-2" not in str(config.to_dict())
    assert config.to_dict()["pinning"]["backends"]["pinata"]["token"] == "********"
    with pytest.raises(ConfigError, match="no such backend; configured: my-node, pinata"):
        config.pinning.backend("estuary")


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ('type = "service"\nurl = "https://p.invalid"\ntoken = "x"', "token", "not read from"),
        ('type = "service"\nurl = "https://p.invalid"', "token", "needs an access token"),
        ('type = "s3"\nurl = "https://p.invalid"', "type", "one of kubo, cluster, service"),
        ('type = "kubo"', "url", "missing"),
        ('type = "kubo"\nurl = "http://10.0.0.5:5001"', "url", "allow_http"),
        (
            'type = "kubo"\nurl = "http://127.0.0.1:5001"\norigins = ["/p2p/x"]',
            "origins",
            "cluster",
        ),
        (
            'type = "cluster"\nurl = "http://[::1]:9094"\norigins = ["/ip4/1.2.3.4"]',
            "origins",
            "/p2p/",
        ),
        ('type = "kubo"\nurl = "http://127.0.0.1:5001"\nname = "x"', "name", "table key"),
        (
            'type = "cluster"\nurl = "https://c.invalid"\nreplication_min = 3\nreplication_max = 2',
            "replication_max",
            "smaller",
        ),
    ],
)
def test_bad_backend_settings_name_the_key(
    tmp_path: Path, body: str, key: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        _load(tmp_path, f"[pinning.backends.b1]\n{body}\n")
    assert raised.value.key == f"pinning.backends.b1.{key}"


def test_a_backend_name_must_fit_the_pins_table_and_a_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backend name"):
        _load(tmp_path, '[pinning.backends."My Node"]\ntype = "kubo"\nurl = "http://127.0.0.1"\n')
    with pytest.raises(ConfigError, match="share variable FORAGE_PINNING_BACKENDS_A_B_TOKEN"):
        _load(
            tmp_path,
            '[pinning.backends.a-b]\ntype = "kubo"\nurl = "http://127.0.0.1"\n'
            '[pinning.backends.a_b]\ntype = "kubo"\nurl = "http://127.0.0.1"\n',
        )


def test_backend_variables_are_known_so_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _load(
        tmp_path,
        '[pinning.backends.home]\ntype = "kubo"\nurl = "http://127.0.0.1:5001"\n',
        {"FORAGE_PINNING_BACKENDS_HOME_TOKEN": "t", "FORAGE_PINNING_BACKENDS_GONE_TOKEN": "t"},
    )
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["ignoring unknown configuration variable FORAGE_PINNING_BACKENDS_GONE_TOKEN"]
