"""Repair from the network: missing and damaged blocks fetched back, verified, before the
registry is asked again.

What is shown, against loopback fakes of a trustless gateway (raw blocks and CARs) and of
Kubo's RPC (``dag/export``, ``block/get``), with real archives made by the archive job: the
scheduled re-verification restores a deleted and a corrupt block from a gateway's CAR and
leaves the registry alone; a gateway that sends wrong bytes (in a CAR or as a raw block) is
refused and the next source, the Kubo node the archive was pinned on, supplies them; with
every source failing, re-verification falls back to downloading from the registry as before;
a missing internal node is fetched block by block and its missing children after it; slow,
oversized and redirecting answers are refused; ``forage archive --repair`` does it for the
archives an operator names; the configuration refuses gateway URLs it should.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from forage.archive.blocks import open_blockstore
from forage.archive.job import archive_job
from forage.archive.repair import repair_dag
from forage.archive.sources import open_repair_sources
from forage.cli import main
from forage.config import RepairConfig, load_config
from forage.db.engine import make_engine, upgrade
from forage.db.models import ArchiveStatus, JobRecord, JobState
from forage.errors import ConfigError
from forage.fakes.files import FakeFileServer
from forage.fakes.gateway import FakeGateway
from forage.fakes.kubo import FakeKubo
from forage.index.ingest import ARCHIVE
from forage.jobs import queue
from forage.jobs.queue import RetryPolicy
from forage.jobs.reverify import reverify_job
from forage.jobs.worker import JobContext, Worker
from forage.pins.kinds import PIN
from forage.pins.pin import pin_job
from indexers.fakeserver import ThreadedServer, serve
from storage import (
    Block,
    MemoryBlockstore,
    compute_cid,
    import_file,
    parse_cid,
    read_file,
    walk_dag,
)
from tests.forage.test_archive import (
    archive_row,
    blob,
    forage,
    npm_artifact,
    package,
    record,
    write_config,
)

DATA = blob(600_000, 11)  # three leaves (256 KiB, 256 KiB, 75,712 bytes) under a dag-pb root
CID = str(compute_cid(DATA))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'forage.db'}"
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def config_file(tmp_path: Path, url: str, host: str, extra: str) -> Path:
    path = write_config(tmp_path, url, host)
    path.write_text(path.read_text() + "\n" + extra)
    return path


@asynccontextmanager
async def archived(
    tmp_path: Path, url: str, extra: str
) -> AsyncIterator[tuple[FakeFileServer, JobContext, int]]:
    """Forage with ``extra`` configuration and ``DATA`` archived (and pinned, when a pinning
    backend is configured) from a fake registry host."""
    host = FakeFileServer()
    async with serve(host.make_app()) as running:
        config = load_config(config_file(tmp_path, url, running.url, extra), environ={})
        async with forage(config) as ctx:
            key = running.url + host.add("pad.tgz", DATA)
            [artifact_id] = record(
                url, package("npm", "pad", {"1.0.0": npm_artifact(key, DATA, "p")})
            )
            worker = Worker(
                ctx,
                {ARCHIVE: archive_job, PIN: pin_job},
                concurrency=2,
                policy=RetryPolicy(max_attempts=3, backoff_base=0, backoff_cap=0),
                poll_interval=0.01,
            )
            await worker.run(mode="drain")
            yield host, ctx, artifact_id


def blocks_of(ctx: JobContext) -> list[Block]:
    assert ctx.blockstore is not None
    return list(walk_dag(ctx.blockstore, parse_cid(CID)))


def damage(ctx: JobContext) -> tuple[Block, Block]:
    """Delete the first leaf and rot the last one; return both as they should be."""
    store = ctx.blockstore
    assert store is not None
    _root, first, _second, last = blocks_of(ctx)
    store.delete(first.cid)
    store.delete(last.cid)
    store.put(Block(last.cid, b"bit rot" + last.data[7:]))  # a put trusts its block
    return first, last


def reverify(ctx: JobContext) -> Any:
    now = datetime.now(UTC)
    job = queue.Job(1, "reverify", {"sample": 10}, 1, 1, None, "test", now + timedelta(1), now)
    return reverify_job(ctx, job)


def archive_jobs(ctx: JobContext) -> list[tuple[JobState, int]]:
    with ctx.sessionmaker() as session:
        rows = session.execute(
            sa.select(JobRecord.state, JobRecord.id).where(JobRecord.kind == ARCHIVE)
        )
        return [(row.state, row.id) for row in rows]


def summary(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    [record] = [r for r in caplog.records if r.getMessage().startswith("re-verified")]
    fields: dict[str, Any] = record.fields  # type: ignore[attr-defined]
    return fields


async def test_reverify_restores_a_deleted_and_a_corrupt_block_from_a_gateway(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = FakeGateway()
    async with serve(gateway.app()) as gw:
        extra = f'[repair]\ngateways = ["{gw.url}"]\n'
        async with archived(tmp_path, sqlite_url, extra) as (host, ctx, artifact_id):
            gateway.add_blocks((str(b.cid), b.data) for b in blocks_of(ctx))
            first, last = damage(ctx)
            downloads, jobs_before = len(host.requests.seen), archive_jobs(ctx)
            with caplog.at_level(logging.INFO, logger="forage.jobs.reverify"):
                await reverify(ctx)

            assert len(host.requests.seen) == downloads  # the registry was not asked
            assert archive_jobs(ctx) == jobs_before  # and no download was queued
            row = archive_row(ctx, artifact_id)
            assert row is not None and (row.status, row.cid) == (ArchiveStatus.ARCHIVED, CID)
            assert ctx.blockstore is not None
            assert b"".join(read_file(ctx.blockstore, CID)) == DATA
            # One CAR brought both blocks (the gateway was asked for nothing else).
            [request] = gateway.requests.seen
            assert (request.path, request.query["format"]) == (f"/ipfs/{CID}", "car")
            assert request.headers["accept"].startswith("application/vnd.ipld.car")
            label = f"{gw.url.removeprefix('http://')} (gateway)"
            expected = {label: {"blocks": 2, "bytes": len(first.data) + len(last.data)}}
            assert summary(caplog) == {
                "checked": 1,
                "damaged": 1,
                "repaired": 1,
                "requeued": 0,
                "repaired_from": expected,
            }
            assert "restored from the network: 2 blocks" in caplog.text


@pytest.mark.parametrize("serve_car", [True, False], ids=["lies-in-a-car", "lies-in-a-block"])
async def test_a_gateway_sending_wrong_bytes_is_refused_and_the_next_source_used(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, serve_car: bool
) -> None:
    lost, kept, liar = FakeKubo(), FakeKubo(), FakeGateway(serve_car=serve_car)
    async with serve(lost.app()) as one, serve(kept.app()) as two, serve(liar.app()) as gw:
        # Asked in this order: one's RPC, one's gateway (the liar), two's RPC.
        extra = (
            f'[pinning.backends.one]\ntype = "kubo"\nurl = "{one.url}"\ngateway = "{gw.url}"\n'
            f'[pinning.backends.two]\ntype = "kubo"\nurl = "{two.url}"\n'
        )
        async with archived(tmp_path, sqlite_url, extra) as (host, ctx, artifact_id):
            assert lost.is_pinned(CID) and kept.is_pinned(CID)  # the pin jobs' dag/import
            liar.add_blocks((str(b.cid), b.data) for b in blocks_of(ctx))
            first, last = damage(ctx)
            liar.lie(str(first.cid), b"not the bytes you are looking for")
            del lost.blocks[bytes(first.cid.digest)]  # node one lost them too
            del lost.blocks[bytes(last.cid.digest)]
            with caplog.at_level(logging.INFO, logger="forage"):
                await reverify(ctx)

            assert summary(caplog)["repaired_from"] == {
                "two (Kubo RPC)": {"blocks": 2, "bytes": len(first.data) + len(last.data)}
            }
            assert "one (gateway) dropped: sent wrong bytes" in caplog.text
            # The liar was dropped at its first wrong block and asked nothing more.
            asked = [r.query["format"] for r in liar.requests.seen]
            assert asked == (["car"] if serve_car else ["car", "raw"])
            # Node one was asked (export cut short, then each block: not found), node two
            # exported the DAG, read offline.
            assert [r.path for r in lost.requests.seen[-3:]] == [
                "/api/v0/dag/export",
                "/api/v0/block/get",
                "/api/v0/block/get",
            ]
            assert [r.path for r in kept.requests.seen[-1:]] == ["/api/v0/dag/export"]
            assert kept.requests.seen[-1].query == {"arg": CID, "offline": "true"}
            row = archive_row(ctx, artifact_id)
            assert row is not None and (row.status, row.cid) == (ArchiveStatus.ARCHIVED, CID)
            assert ctx.blockstore is not None
            assert b"".join(read_file(ctx.blockstore, CID)) == DATA
            assert len(host.requests.seen) == 1  # the one download that archived it


async def test_with_every_source_failing_reverify_falls_back_to_the_registry(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty, down = FakeGateway(), FakeGateway()
    async with serve(empty.app()) as gw1, serve(down.app()) as gw2:
        extra = f'[repair]\ngateways = ["{gw1.url}", "{gw2.url}"]\n'
        async with archived(tmp_path, sqlite_url, extra) as (host, ctx, artifact_id):
            down.add_blocks((str(b.cid), b.data) for b in blocks_of(ctx))
            down.faults.fail(503, times=20)
            damage(ctx)
            downloads = len(host.requests.seen)
            with caplog.at_level(logging.INFO, logger="forage.jobs.reverify"):
                await reverify(ctx)
            assert summary(caplog)["requeued"] == 1
            assert "network repair: 2 of 2 blocks found nowhere" in caplog.text
            assert "HTTP 503" in caplog.text
            row = archive_row(ctx, artifact_id)
            assert row is not None and row.status == ArchiveStatus.FAILED
            assert [state for state, _ in archive_jobs(ctx)].count(JobState.QUEUED) == 1

            worker = Worker(
                ctx,
                {ARCHIVE: archive_job},
                concurrency=1,
                policy=RetryPolicy(max_attempts=3, backoff_base=0, backoff_cap=0),
                poll_interval=0.01,
            )
            await worker.run(mode="drain")
            assert len(host.requests.seen) == downloads + 1  # downloaded again, as before
            row = archive_row(ctx, artifact_id)
            assert row is not None and (row.status, row.cid) == (ArchiveStatus.ARCHIVED, CID)


async def test_a_partial_repair_keeps_the_blocks_it_restored(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A source that has only the rotten block restores it; the deleted one is found nowhere,
    so the download is queued, and the restored block stays (it may be another archive's)."""
    partial = FakeGateway(serve_car=False)
    async with serve(partial.app()) as gw:
        extra = f'[repair]\ngateways = ["{gw.url}"]\n'
        async with archived(tmp_path, sqlite_url, extra) as (_host, ctx, _artifact_id):
            first, last = damage(ctx)
            partial.add_blocks([(str(last.cid), last.data)])
            with caplog.at_level(logging.INFO, logger="forage.jobs.reverify"):
                await reverify(ctx)
            assert summary(caplog)["requeued"] == 1
            assert ctx.blockstore is not None
            assert ctx.blockstore.get(last.cid).data == last.data
            assert not ctx.blockstore.has(first.cid)


def empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "forage.toml"
    path.write_text("")
    return path


def small_dag() -> tuple[MemoryBlockstore, str, bytes]:
    """A file of 5,000 bytes in 1 KiB chunks: five leaves under a dag-pb root."""
    data = blob(5000, 5)
    store = MemoryBlockstore()
    return store, str(import_file(data, sink=store, chunk_size=1024).cid), data


async def test_a_missing_node_is_fetched_block_by_block_and_then_its_missing_children(
    tmp_path: Path,
) -> None:
    store, root, data = small_dag()
    blocks = list(walk_dag(store, parse_cid(root)))
    gateway = FakeGateway(serve_car=False)
    gateway.add_blocks((str(b.cid), b.data) for b in blocks)
    node, leaf = blocks[0], blocks[3]
    store.delete(node.cid)
    store.delete(leaf.cid)  # invisible until its parent is back
    async with serve(gateway.app()) as gw:
        config = load_config(empty_file(tmp_path), environ={"FORAGE_REPAIR_GATEWAYS": gw.url})
        async with open_repair_sources(config) as sources:
            report = await repair_dag(store, root, sources, size=len(data), config=config.repair)
    assert (report.damaged, report.left, report.fetched) == (2, 0, 2)
    assert b"".join(read_file(store, root)) == data
    asked = [(r.path, r.query["format"]) for r in gateway.requests.seen]
    assert asked == [
        (f"/ipfs/{root}", "car"),
        (f"/ipfs/{root}", "raw"),
        (f"/ipfs/{leaf.cid}", "raw"),
    ]


async def test_slow_oversized_and_redirecting_answers_are_refused(tmp_path: Path) -> None:
    store, root, data = small_dag()
    blocks = list(walk_dag(store, parse_cid(root)))
    store.delete(blocks[2].cid)
    gateways = [FakeGateway() for _ in range(4)]
    for gateway in gateways:
        gateway.add_blocks((str(b.cid), b.data) for b in blocks)
    slow, big, moved, good = gateways
    slow.faults.slow(0.6, times=2)
    big.lie(str(blocks[2].cid), b"x" * 4096)  # over max_block_size, and wrong
    big.serve_car = False
    moved.faults.fail(307, times=2)
    async with (
        serve(slow.app()) as s1,
        serve(big.app()) as s2,
        serve(moved.app()) as s3,
        serve(good.app()) as s4,
    ):
        urls = ",".join(server.url for server in (s1, s2, s3, s4))
        env = {"FORAGE_REPAIR_GATEWAYS": urls, "FORAGE_REPAIR_TIMEOUT": "0.2"}
        env["FORAGE_REPAIR_MAX_BLOCK_SIZE"] = "2048"
        config = load_config(empty_file(tmp_path), environ=env)
        async with open_repair_sources(config) as sources:
            report = await repair_dag(store, root, sources, size=len(data), config=config.repair)
    assert (report.left, report.fetched) == (0, 1)
    supplied = {label: s.blocks for label, s in report.supplied.items() if s.blocks}
    assert supplied == {f"{s4.url.removeprefix('http://')} (gateway)": 1}
    problems = "\n".join(report.problems)
    assert "timed out" in problems
    assert "response over 2048 bytes" in problems
    assert "redirect to ? not followed" in problems
    assert b"".join(read_file(store, root)) == data


def test_forage_archive_repair_names_archives_by_cid_or_key(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host, gateway = FakeFileServer(), FakeGateway()
    with ThreadedServer(host.make_app()) as fake, ThreadedServer(gateway.app()) as gw:
        config = config_file(tmp_path, sqlite_url, fake.url, "")
        url = fake.url + host.add("pad.tgz", DATA)
        record(sqlite_url, package("npm", "pad", {"1.0.0": npm_artifact(url, DATA, "p")}))
        assert main(["--config", str(config), "archive", "pkg:npm/pad@1.0.0"]) == 0
        capsys.readouterr()

        # No source configured: a usage error that says what to set.
        assert main(["--config", str(config), "archive", "--repair", CID]) == 2
        assert "nowhere to repair from: set [repair] gateways" in capsys.readouterr().err

        config = config_file(tmp_path, sqlite_url, fake.url, f'[repair]\ngateways = ["{gw.url}"]\n')
        store = open_blockstore(load_config(config, environ={}))
        gateway.add_blocks((str(b.cid), b.data) for b in walk_dag(store, parse_cid(CID)))
        root = next(walk_dag(store, parse_cid(CID)))
        store.delete(root.cid)
        assert main(["--config", str(config), "archive", "--repair", CID]) == 0
        out = capsys.readouterr()
        assert out.out.startswith(f"{CID} archive 1 {CID}: repaired 1 of 1 blocks: 1 block (")
        assert "forage: checked 1, intact 0, repaired 1, queued for download 0" in out.err

        assert main(["--config", str(config), "archive", "--repair", "npm:pad"]) == 0
        assert capsys.readouterr().out == f"npm:pad archive 1 {CID}: intact\n"
        cid_v0 = str(parse_cid(CID).set(version=0, base="base58btc"))  # Qm...: the same DAG
        assert main(["--config", str(config), "archive", "--repair", cid_v0]) == 0
        assert capsys.readouterr().out == f"{cid_v0} archive 1 {CID}: intact\n"
        assert main(["--config", str(config), "archive", "--repair", "not-a-cid"]) == 2
        assert "neither a key (pkg:TYPE/NAME@VERSION) nor a CID" in capsys.readouterr().err
        assert main(["--config", str(config), "archive", "--repair", "bafkqaaa"]) == 3
        assert "no archived copy of bafkqaaa" in capsys.readouterr().err
        assert main(["--config", str(config), "archive", "--repair", "--pending"]) == 2
    assert len(host.requests.seen) == 1


def test_gateway_urls_are_checked_like_every_upstream(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"repair\.gateways: must be an https URL"):
        RepairConfig(gateways=("http://gateway.example",))
    assert RepairConfig(gateways=("http://gateway.example",), allow_http=True).gateways
    assert RepairConfig(gateways=("http://127.0.0.1:8080",)).gateways  # loopback
    path = tmp_path / "forage.toml"
    path.write_text(
        '[pinning.backends.pinata]\ntype = "service"\nurl = "https://api.pinata.example/psa"\n'
        'gateway = "ftp://gateway.pinata.example"\n'
    )
    env = {"FORAGE_PINNING_BACKENDS_PINATA_TOKEN": "t"}
    with pytest.raises(ConfigError, match=r"pinning\.backends\.pinata\.gateway: must be an https"):
        load_config(path, environ=env)
