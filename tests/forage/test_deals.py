"""Deal sync against the loopback Lotus and deal-service fakes, on SQLite and PostgreSQL.
What is shown: deals of Forage's pieces are recorded with provider, client, padded size,
epochs and their dates, activation and slashing; deals of unknown pieces are ignored; states
follow the chain (published, active, slashed, expired, proposal expired) across syncs,
including deals that leave the market state; without a market scan known deals are looked
up by id; a service's deals are linked by CAR root and, with Lotus, checked on chain (a
mismatched piece is ignored, a deal both report is one row); the job and ``forage deals
sync`` / ``forage deals`` / ``forage pieces`` run from the configuration."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from forage.cli import main
from forage.config import FilecoinConfig
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import Deal, DealState, Piece
from forage.errors import ConfigError
from forage.fakes.dealservice import FakeDealService
from forage.fakes.lotus import FakeLotus, fake_piece_cid
from forage.filecoin.deals import SYNC_DEALS, DealSources, open_sources, sync_deals, sync_deals_job
from forage.jobs import queue as jobs
from forage.jobs.queue import RetryPolicy
from forage.jobs.worker import JobContext, Worker
from indexers.fakeserver import ThreadedServer, serve
from storage import DealService, LotusClient, epoch_time
from tests.factories import make_piece

HEAD = 4_200_000
LOTUS_TOKEN = "lotus-jwt-c0ffee"
SERVICE_TOKEN = "svc-key-b4d"


@dataclass
class World:
    sessionmaker: sessionmaker[Session]
    pieces: list[Piece]
    lotus: FakeLotus
    service: FakeDealService


@pytest.fixture
def world(migrated_url: str) -> Iterator[World]:
    engine = make_engine(migrated_url)
    maker = make_sessionmaker(engine)
    with maker.begin() as session:
        pieces = [make_piece(session) for _ in range(2)]
        session.expunge_all()
    yield World(
        maker, pieces, FakeLotus(token=LOTUS_TOKEN, height=HEAD), FakeDealService(SERVICE_TOKEN)
    )
    engine.dispose()


@asynccontextmanager
async def sources(
    world: World, *, lotus: bool = True, service: bool = False, scan: bool = True
) -> AsyncIterator[DealSources]:
    async with (
        serve(world.lotus.app()) as lotus_server,
        serve(world.service.app()) as service_server,
        httpx.AsyncClient(timeout=5) as client,
    ):
        yield DealSources(
            LotusClient(client, lotus_server.url + "/rpc/v1", token=LOTUS_TOKEN, scan=scan)
            if lotus
            else None,
            DealService(client, service_server.url, token=SERVICE_TOKEN) if service else None,
            genesis=1_598_306_400,
        )


def deals(world: World) -> dict[str, Deal]:
    with world.sessionmaker() as session:
        rows = session.scalars(sa.select(Deal)).all()
        session.expunge_all()
    return {f"{row.source}:{row.deal_id}": row for row in rows}


async def test_lotus_deals_of_known_pieces_are_recorded(world: World) -> None:
    a, b = world.pieces
    sealed = world.lotus.add_deal(
        a.piece_cid, a.padded_size, provider="f01001", client="f0500", verified=True
    )
    world.lotus.activate(sealed, epoch=HEAD - 100)
    waiting = world.lotus.add_deal(a.piece_cid, a.padded_size, provider="f01002")
    other = world.lotus.add_deal(b.piece_cid, b.padded_size, provider="f01003")
    world.lotus.activate(other)
    world.lotus.add_deal(fake_piece_cid(b"not ours"), 2048)
    async with sources(world) as src:
        report = await sync_deals(world.sessionmaker, src)
    assert (report.recorded, report.updated, report.ended, report.ignored, report.head) == (
        3,
        0,
        0,
        0,
        HEAD,
    )
    rows = deals(world)
    assert sorted(rows) == [f"lotus:{i}" for i in sorted((sealed, waiting, other))]
    row = rows[f"lotus:{sealed}"]
    proposal = world.lotus.deals[sealed]
    assert (row.piece_id, row.provider, row.client, row.verified, row.piece_size) == (
        a.id,
        "f01001",
        "f0500",
        True,
        a.padded_size,
    )
    assert (row.start_epoch, row.end_epoch, row.activation_epoch, row.slash_epoch) == (
        proposal.start_epoch,
        proposal.end_epoch,
        HEAD - 100,
        None,
    )
    assert row.start_at == epoch_time(proposal.start_epoch)
    assert row.end_at == epoch_time(proposal.end_epoch)
    assert row.activated_at == datetime.fromtimestamp(1_598_306_400 + 30 * (HEAD - 100), UTC)
    assert row.state is DealState.ACTIVE
    assert rows[f"lotus:{waiting}"].state is DealState.PUBLISHED
    assert rows[f"lotus:{other}"].piece_id == b.id


async def test_states_follow_the_chain_across_syncs(world: World) -> None:
    (a, _) = world.pieces
    slashed = world.lotus.add_deal(a.piece_cid, a.padded_size, start_epoch=HEAD + 10, duration=1000)
    expiring = world.lotus.add_deal(a.piece_cid, a.padded_size, start_epoch=HEAD + 10, duration=500)
    never = world.lotus.add_deal(a.piece_cid, a.padded_size, start_epoch=HEAD + 10)
    lasting = world.lotus.add_deal(a.piece_cid, a.padded_size, start_epoch=HEAD + 10)
    async with sources(world) as src:
        await sync_deals(world.sessionmaker, src)
        for deal_id in (slashed, expiring, lasting):
            world.lotus.activate(deal_id, epoch=HEAD + 5)
        world.lotus.set_height(HEAD + 20)  # `never` missed its start epoch and left the state
        world.lotus.slash(slashed, epoch=HEAD + 15)
        second = await sync_deals(world.sessionmaker, src)
        states = {k: r.state for k, r in deals(world).items()}
        assert states == {
            f"lotus:{slashed}": DealState.SLASHED,
            f"lotus:{expiring}": DealState.ACTIVE,
            f"lotus:{never}": DealState.PROPOSAL_EXPIRED,
            f"lotus:{lasting}": DealState.ACTIVE,
        }
        assert (second.updated, second.ended) == (3, 1)
        assert deals(world)[f"lotus:{slashed}"].slashed_at == epoch_time(HEAD + 15)
        world.lotus.set_height(HEAD + 600)  # past `expiring`'s end: gone from the state
        third = await sync_deals(world.sessionmaker, src)
    states = {k: r.state for k, r in deals(world).items()}
    assert states[f"lotus:{expiring}"] is DealState.EXPIRED
    assert states[f"lotus:{lasting}"] is DealState.ACTIVE
    assert third.ended == 1


async def test_without_a_scan_known_deals_are_looked_up_by_id(world: World) -> None:
    (a, _) = world.pieces
    known = world.lotus.add_deal(a.piece_cid, a.padded_size)
    with world.sessionmaker.begin() as session:
        session.add(
            Deal(
                deal_id=str(known),
                source="lotus",
                piece_id=a.id,
                provider="f0?",
                state=DealState.PUBLISHED,
            )
        )
    world.lotus.activate(known)
    world.lotus.add_deal(a.piece_cid, a.padded_size)  # unknown and not scanned for
    async with sources(world, scan=False) as src:
        report = await sync_deals(world.sessionmaker, src)
    assert "Filecoin.StateMarketDeals" not in world.lotus.calls
    assert (report.recorded, report.updated) == (0, 1)
    row = deals(world)[f"lotus:{known}"]
    assert (row.state, row.provider) == (DealState.ACTIVE, "f01000")


async def test_service_deals_are_linked_by_car_root(world: World) -> None:
    a, b = world.pieces
    content = world.service.add_content(a.car_root, size=a.car_size)
    world.service.add_deal(content, "f02001", deal_id=801)
    world.service.set_on_chain(content, 801, sector_start=HEAD - 50)
    world.service.add_deal(content, "f02002", deal_id=802, failed=True)
    stranger = world.service.add_content(
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    )
    world.service.add_deal(stranger, "f02003", deal_id=803)
    now = epoch_time(HEAD)
    async with sources(world, lotus=False, service=True) as src:
        report = await sync_deals(world.sessionmaker, src, now=now)
    assert (report.recorded, report.head) == (2, HEAD)
    rows = deals(world)
    assert sorted(rows) == ["dealservice:801", "dealservice:802"]
    active = rows["dealservice:801"]
    assert (active.piece_id, active.provider, active.piece_size, active.state) == (
        a.id,
        "f02001",
        a.padded_size,
        DealState.ACTIVE,
    )
    assert active.activated_at == epoch_time(HEAD - 50)
    assert rows["dealservice:802"].state is DealState.REJECTED
    assert b.id not in {r.piece_id for r in rows.values()}


async def test_service_deals_are_checked_on_chain(world: World) -> None:
    a, b = world.pieces
    content = world.service.add_content(a.car_root)
    both = world.lotus.add_deal(a.piece_cid, a.padded_size, provider="f03001")
    world.lotus.activate(both)
    world.service.add_deal(content, "f03001", deal_id=both)
    lying = world.lotus.add_deal(b.piece_cid, b.padded_size, provider="f03002")
    world.service.add_deal(content, "f03002", deal_id=lying)  # the chain says: piece b
    world.service.add_deal(content, "f03003", deal_id=999)  # never on chain
    async with sources(world, service=True, scan=False) as src:
        report = await sync_deals(world.sessionmaker, src)
    rows = deals(world)
    assert sorted(rows) == ["dealservice:999", f"lotus:{both}"]
    assert rows[f"lotus:{both}"].state is DealState.ACTIVE
    assert rows["dealservice:999"].state is DealState.PROPOSAL_EXPIRED
    assert report.ignored == 1
    calls = world.lotus.calls
    assert (
        calls.count("Filecoin.StateMarketStorageDeal") == 3
        and "Filecoin.StateMarketDeals" not in calls
    )
    async with sources(world, service=True) as src:  # with the scan, still one row per deal
        await sync_deals(world.sessionmaker, src)
    assert sorted(deals(world)) == ["dealservice:999", f"lotus:{both}", f"lotus:{lying}"]


async def test_open_sources_needs_one_source() -> None:
    with pytest.raises(ConfigError, match="no deal source"):
        async with open_sources(FilecoinConfig()):
            pass


async def test_sync_deals_job_runs_in_the_worker(
    world: World, tmp_path: Path, migrated_url: str
) -> None:
    (a, _) = world.pieces
    deal_id = world.lotus.add_deal(a.piece_cid, a.padded_size)
    async with serve(world.lotus.app()) as server:
        config = _config(tmp_path, migrated_url, lotus=server.url)
        with world.sessionmaker.begin() as session:
            jobs.enqueue(session, SYNC_DEALS, {})
        context = JobContext(config, world.sessionmaker, owner="test")
        stats = await Worker(
            context, {SYNC_DEALS: sync_deals_job}, concurrency=1, policy=RetryPolicy()
        ).run(mode="drain")
    assert (stats.done, stats.dead) == (1, 0)
    assert list(deals(world)) == [f"lotus:{deal_id}"]
    assert world.lotus.requests.seen[0].headers["authorization"] == f"Bearer {LOTUS_TOKEN}"


def _config(tmp_path: Path, url: str, *, lotus: str) -> object:
    from forage.config import load_config

    path = tmp_path / "forage.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n[data]\ndir = "{tmp_path / "data"}"\n'
        f'[filecoin]\nlotus_url = "{lotus}/rpc/v1"\nallow_http = true\n'
        f'lotus_token_file = "{tmp_path / "lotus.token"}"\n'
    )
    (tmp_path / "lotus.token").write_text(LOTUS_TOKEN + "\n")
    return load_config(path, environ={})


def test_cli_syncs_and_lists_deals_and_pieces(
    world: World, tmp_path: Path, migrated_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (a, _) = world.pieces
    deal_id = world.lotus.add_deal(a.piece_cid, a.padded_size, provider="f04001")
    world.lotus.activate(deal_id)
    with ThreadedServer(world.lotus.app()) as server:
        _config(tmp_path, migrated_url, lotus=server.url)
        assert main(["-c", str(tmp_path / "forage.toml"), "deals", "sync"]) == 0
    assert "1 new, 0 updated, 0 ended, 0 ignored" in capsys.readouterr().err
    assert main(["-c", str(tmp_path / "forage.toml"), "deals", "--json", "--state", "active"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    listed = json.loads(line)
    assert (listed["deal_id"], listed["provider"], listed["piece_cid"], listed["state"]) == (
        str(deal_id),
        "f04001",
        a.piece_cid,
        "active",
    )
    assert main(["-c", str(tmp_path / "forage.toml"), "pieces", "--json"]) == 0
    pieces = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {p["piece_cid"]: p["active_deals"] for p in pieces} == {
        world.pieces[0].piece_cid: 1,
        world.pieces[1].piece_cid: 0,
    }
    (tmp_path / "forage.toml").write_text(f'[database]\nurl = "{migrated_url}"\n')
    assert main(["-c", str(tmp_path / "forage.toml"), "deals", "sync"]) == 2
    assert "no deal source" in capsys.readouterr().err
