"""Deal sources against loopback fakes: the Lotus JSON-RPC client (chain head, genesis, one
deal, the streamed market state, errors and auth), the deal-making service client (paging,
payload matching, on-chain state), both under the one ``DealSource`` contract; epoch dates."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from forage.fakes.dealservice import FakeDealService
from forage.fakes.lotus import FakeLotus, fake_piece_cid
from indexers.fakeserver import RunningServer, serve
from storage import (
    MAINNET_GENESIS,
    BackendRejected,
    BackendUnavailable,
    DealInfo,
    DealService,
    DealSource,
    LotusClient,
    epoch_time,
    parse_market_deal,
    time_epoch,
)

TOKEN = "lotus-jwt-5f1e"
PIECE = fake_piece_cid(b"ours")
OTHER_PIECE = fake_piece_cid(b"theirs")
PAYLOAD = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
OTHER_PAYLOAD = "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@pytest.fixture
async def lotus() -> AsyncIterator[tuple[FakeLotus, RunningServer]]:
    fake = FakeLotus(token=TOKEN, height=4_100_000)
    async with serve(fake.app()) as server:
        yield fake, server


@pytest.fixture
async def service() -> AsyncIterator[tuple[FakeDealService, RunningServer]]:
    fake = FakeDealService(token="svc-key")
    async with serve(fake.app()) as server:
        yield fake, server


def client_of(server: RunningServer, http: httpx.AsyncClient, **options: object) -> LotusClient:
    return LotusClient(http, server.url + "/rpc/v1", token=TOKEN, **options)  # type: ignore[arg-type]


def test_epoch_dates_count_30_seconds_from_mainnet_genesis() -> None:
    assert epoch_time(0) == datetime(2020, 8, 24, 22, 0, tzinfo=UTC)
    assert epoch_time(2880) == datetime(2020, 8, 25, 22, 0, tzinfo=UTC)  # 2880 epochs a day
    assert time_epoch(datetime(2020, 8, 25, 22, 0, 29, tzinfo=UTC)) == 2880
    assert epoch_time(10, genesis=1_667_326_380) == datetime.fromtimestamp(1_667_326_680, UTC)


async def test_chain_head_and_genesis(
    lotus: tuple[FakeLotus, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = lotus
    client = client_of(server, http_client)
    head = await client.chain_head()
    assert head.height == 4_100_000
    assert datetime.fromtimestamp(head.timestamp, UTC) == epoch_time(head.height)
    assert len(head.cids) == 2 and all(cid.startswith("bafy") for cid in head.cids)
    assert await client.genesis_timestamp() == MAINNET_GENESIS
    assert fake.calls == ["Filecoin.ChainHead", "Filecoin.ChainGetGenesis"]
    seen = fake.requests.seen[-1]
    assert (seen.method, seen.path, seen.headers["authorization"]) == (
        "POST",
        "/rpc/v1",
        f"Bearer {TOKEN}",
    )


async def test_market_deal_maps_proposal_and_state(
    lotus: tuple[FakeLotus, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = lotus
    deal_id = fake.add_deal(
        PIECE, 1 << 20, provider="f01234", client="f0999", label=PAYLOAD, verified=True
    )
    client = client_of(server, http_client)
    published = await client.market_deal(deal_id)
    assert published == DealInfo(
        deal_id=deal_id,
        provider="f01234",
        piece_cid=PIECE,
        piece_size=1 << 20,
        client="f0999",
        verified=True,
        label=PAYLOAD,
        start_epoch=4_100_000 + 2880,
        end_epoch=4_100_000 + 2880 + 518_400,
        activation_epoch=None,  # SectorStartEpoch -1: not sealed yet
        slash_epoch=None,
        on_chain=True,
    )
    fake.activate(deal_id, epoch=4_101_000)
    fake.slash(deal_id, epoch=4_200_000)
    sealed = await client.market_deal(deal_id)
    assert sealed is not None
    assert (sealed.activation_epoch, sealed.slash_epoch) == (4_101_000, 4_200_000)


async def test_market_deal_absent_from_state_is_none(
    lotus: tuple[FakeLotus, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = lotus
    deal_id = fake.add_deal(PIECE, 2048, start_epoch=4_100_010)
    fake.set_height(4_100_011)  # start epoch passed without activation: the deal is gone
    assert await client_of(server, http_client).market_deal(deal_id) is None
    assert await client_of(server, http_client).market_deal(7) is None


async def test_market_deals_streams_only_wanted_pieces(
    lotus: tuple[FakeLotus, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = lotus
    ours = [fake.add_deal(PIECE, 4096, provider=f"f0{i}") for i in range(1, 4)]
    for i in range(300):
        fake.add_deal(fake_piece_cid(f"noise {i}".encode()), 2048)
    client = client_of(server, http_client)
    found = [deal async for deal in client.market_deals(piece_cids={PIECE})]
    assert [deal.deal_id for deal in found] == ours
    assert {deal.provider for deal in found} == {"f01", "f02", "f03"}
    everything = [deal async for deal in client.market_deals()]
    assert len(everything) == 303
    assert fake.calls == ["Filecoin.StateMarketDeals"] * 2


async def test_market_deals_skips_a_malformed_entry(
    lotus: tuple[FakeLotus, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = lotus
    broken = fake.add_deal(PIECE, 4096)
    good = fake.add_deal(PIECE, 4096)
    fake.deals[broken].provider = ""  # a proposal without a provider cannot be used
    found = [d async for d in client_of(server, http_client).market_deals(piece_cids={PIECE})]
    assert [deal.deal_id for deal in found] == [good]


async def test_lotus_errors_are_translated(
    lotus: tuple[FakeLotus, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = lotus
    client = client_of(server, http_client)
    with pytest.raises(BackendRejected, match="-32601"):  # unknown method: a request error
        await client.call("Filecoin.NoSuchMethod", [])
    fake.faults.fail(503)
    with pytest.raises(BackendUnavailable, match="HTTP 503"):
        await client.chain_head()
    fake.faults.malformed()
    with pytest.raises(BackendUnavailable, match="malformed JSON"):
        [deal async for deal in client.market_deals()]
    fake.faults.malformed()
    with pytest.raises(BackendUnavailable, match="malformed"):
        await client.chain_head()


async def test_lotus_wrong_token_is_rejected_without_echoing_it(
    lotus: tuple[FakeLotus, RunningServer], http_client: httpx.AsyncClient
) -> None:
    _, server = lotus
    client = LotusClient(http_client, server.url + "/rpc/v1", token="wrong-token-77")
    with pytest.raises(BackendRejected) as caught:
        await client.chain_head()
    assert caught.value.status == 401
    assert "wrong-token-77" not in str(caught.value) and "wrong-token-77" not in repr(client)


async def test_service_pages_and_matches_payloads(
    service: tuple[FakeDealService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = service
    ours = fake.add_content(PAYLOAD, size=5000)
    fake.add_deal(ours, "f01000", deal_id=501)
    fake.add_deal(ours, "f02000", deal_id=502, failed=True)
    fake.add_deal(ours, "f03000")  # proposed, no chain deal id yet: skipped
    fake.set_on_chain(ours, 501, sector_start=4_000_100)
    for i in range(4):
        other = fake.add_content(f"{OTHER_PAYLOAD[:-1]}{'abcd'[i]}")
        fake.add_deal(other, "f09999", deal_id=900 + i)
    client = DealService(http_client, server.url, token="svc-key", page_size=2)
    found = [d async for d in client.find_deals(piece_cids=(), payload_cids={PAYLOAD})]
    assert found == [
        DealInfo(
            deal_id=501,
            provider="f01000",
            payload_cid=PAYLOAD,
            verified=True,
            activation_epoch=4_000_100,
        ),
        DealInfo(deal_id=502, provider="f02000", payload_cid=PAYLOAD, verified=True, failed=True),
    ]
    listed = [r.query for r in fake.requests.seen if r.path == "/content/deals"]
    assert [q["offset"] for q in listed] == ["0", "2", "4"]  # 5 contents, pages of 2
    statuses = [r.path for r in fake.requests.seen if r.path.startswith("/content/status/")]
    assert statuses == [f"/content/status/{ours}"]  # others' statuses are never fetched


async def test_service_slashed_deal_and_errors(
    service: tuple[FakeDealService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = service
    content = fake.add_content(PAYLOAD)
    fake.add_deal(content, "f01000", deal_id=601)
    fake.set_on_chain(content, 601, sector_start=4_000_000, slash=4_050_000)
    client = DealService(http_client, server.url, token="svc-key")
    (deal,) = [d async for d in client.find_deals(piece_cids=(), payload_cids={PAYLOAD})]
    assert (deal.activation_epoch, deal.slash_epoch, deal.failed) == (4_000_000, 4_050_000, False)
    with pytest.raises(BackendRejected, match="invalid or missing API key"):
        [d async for d in DealService(http_client, server.url, token="nope").contents()]
    fake.faults.fail(502, path="/content/status/")
    with pytest.raises(BackendUnavailable, match="HTTP 502"):
        [d async for d in client.find_deals(piece_cids=(), payload_cids={PAYLOAD})]


def test_parse_market_deal_refuses_a_proposal_without_piece() -> None:
    with pytest.raises(ValueError, match="deal 9: the proposal has no Provider or PieceCID"):
        parse_market_deal(9, {"Proposal": {"Provider": "f01"}, "State": {}})


@pytest.mark.parametrize("kind", ["lotus", "dealservice"])
async def test_deal_source_conformance(
    kind: str,
    lotus: tuple[FakeLotus, RunningServer],
    service: tuple[FakeDealService, RunningServer],
    http_client: httpx.AsyncClient,
) -> None:
    """Each source satisfies ``DealSource``: same signature, yields a deal of a wanted piece or
    payload as a ``DealInfo`` named by the chain deal id, and nothing for an unwanted one."""
    (fake_lotus, lotus_server), (fake_service, service_server) = lotus, service
    source: DealSource
    if kind == "lotus":
        deal_id = fake_lotus.add_deal(PIECE, 4096)
        fake_lotus.add_deal(OTHER_PIECE, 4096)
        source = client_of(lotus_server, http_client)
    else:
        deal_id = 700
        fake_service.add_deal(fake_service.add_content(PAYLOAD), "f01000", deal_id=deal_id)
        fake_service.add_deal(fake_service.add_content(OTHER_PAYLOAD), "f01000", deal_id=701)
        source = DealService(http_client, service_server.url, token="svc-key")
    assert isinstance(source, DealSource)
    assert source.name == kind
    assert str(inspect.signature(type(source).find_deals)) == str(
        inspect.signature(DealSource.find_deals)
    )
    found = [d async for d in source.find_deals(piece_cids={PIECE}, payload_cids={PAYLOAD})]
    assert [(d.deal_id, type(d)) for d in found] == [(deal_id, DealInfo)]
    none = [d async for d in source.find_deals(piece_cids=set(), payload_cids=set())]
    assert none == []
