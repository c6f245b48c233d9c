"""IPFS Cluster backend against the fake cluster: CAR upload through ``/add``, plain
``POST /pins/{cid}`` with options, folding of per-peer statuses, the streamed status query
and its fallbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from forage.fakes.cluster import FakeCluster
from forage.fakes.kubo import car_v1, raw_block
from indexers.fakeserver import RunningServer, serve
from storage import BackendRejected, BackendUnavailable
from storage.pinning import ClusterPinning, PinRef, PinState

ORIGIN = "/ip4/203.0.113.9/tcp/4001/p2p/12D3KooWHfYpcGJmCXXhmkNFwWYFYjUGNy3jL7ZfHyexnwQqrXdU"


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[FakeCluster, RunningServer]]:
    fake = FakeCluster()
    async with serve(fake.app()) as server:
        yield fake, server


async def stream(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 11):
        yield data[start : start + 11]


async def test_car_is_uploaded_through_add_with_pin_options(
    cluster: tuple[FakeCluster, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = cluster
    backend = ClusterPinning(http_client, server.url, replication_min=1, replication_max=2)
    cid, data = raw_block(b"cluster car\n")
    request = await backend.pin(
        cid, name="pkg:golang/x@v1", car=stream(car_v1([cid], [(cid, data)]))
    )
    assert request.status is PinState.QUEUED
    sent = fake.requests.seen[-1]
    assert (sent.method, sent.path) == ("POST", "/add")
    assert sent.query["format"] == "car"
    assert sent.query["stream-channels"] == "false"
    assert (sent.query["replication-min"], sent.query["replication-max"]) == ("1", "2")
    pin = fake.pins[cid]
    assert pin.name == "pkg:golang/x@v1"
    assert pin.allocations == list(fake.peers[:2])
    assert list(fake.blocks.values()) == [data]


async def test_pin_without_car_posts_pins_with_origins(
    cluster: tuple[FakeCluster, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = cluster
    backend = ClusterPinning(http_client, server.url, origins=[ORIGIN])
    cid, _ = raw_block(b"fetched by the cluster\n")
    request = await backend.pin(cid, name="n")
    assert request.created is not None
    sent = fake.requests.seen[-1]
    assert (sent.method, sent.path) == ("POST", f"/pins/{cid}")
    assert sent.query["origins"] == ORIGIN
    assert fake.pins[cid].origins == [ORIGIN]
    assert fake.blocks == {}


async def test_add_failure_is_visible_without_streaming(
    cluster: tuple[FakeCluster, RunningServer], http_client: httpx.AsyncClient
) -> None:
    """With ``stream-channels=false`` the adder's error comes back as a 500 body, not in an
    HTTP trailer httpx cannot read. Cluster answers 500 for every adder error, transient or
    not, so it is reported as ``BackendUnavailable`` carrying the cluster's message."""
    fake, server = cluster
    one, one_data = raw_block(b"one\n")
    two, two_data = raw_block(b"two\n")
    car = car_v1([one, two], [(one, one_data), (two, two_data)])
    with pytest.raises(BackendUnavailable, match="single root") as caught:
        await ClusterPinning(http_client, server.url).pin(one, car=stream(car))
    assert caught.value.status == 500
    assert fake.pins == {}


async def test_car_with_another_root_is_refused(
    cluster: tuple[FakeCluster, RunningServer], http_client: httpx.AsyncClient
) -> None:
    _, server = cluster
    cid, _ = raw_block(b"wanted\n")
    other, other_data = raw_block(b"sent instead\n")
    with pytest.raises(BackendRejected, match="is not"):
        await ClusterPinning(http_client, server.url).pin(
            cid, car=stream(car_v1([other], [(other, other_data)]))
        )


async def test_status_folds_peers_like_cluster_pinsvcapi(
    cluster: tuple[FakeCluster, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = cluster
    backend = ClusterPinning(http_client, server.url)
    good, _ = raw_block(b"good\n")
    bad, _ = raw_block(b"bad\n")
    fake.fail_cid(bad, "failed to fetch: context deadline exceeded")
    refs = [(await backend.pin(cid)).ref for cid in (good, bad)]
    timeline = []
    for _ in range(3):
        statuses = await backend.status(refs)
        timeline.append(tuple(statuses[ref.request_id].status for ref in refs))
        fake.advance()
    assert timeline == [
        (PinState.QUEUED, PinState.QUEUED),
        (PinState.PINNING, PinState.PINNING),
        (PinState.PINNED, PinState.FAILED),
    ]
    assert statuses[bad].details == "failed to fetch: context deadline exceeded"
    # One peer still pinning while another is done is "pinning", not "pinned".
    fake.pins[good].statuses[fake.peers[0]] = "pinning"
    assert (await backend.status(refs[:1]))[good].status is PinState.PINNING


async def test_status_asks_for_many_cids_in_one_streamed_request(
    cluster: tuple[FakeCluster, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = cluster
    backend = ClusterPinning(http_client, server.url, status_batch=20)
    refs = [(await backend.pin(raw_block(f"c{i}\n".encode())[0])).ref for i in range(30)]
    fake.requests.clear()
    assert len(await backend.status(refs)) == 30
    queries = [r.query for r in fake.requests.seen]
    assert [len(q["cids"].split(",")) for q in queries] == [20, 10]
    assert all(q["local"] == "false" for q in queries)


async def test_old_cluster_without_cids_filter_still_answers(
    http_client: httpx.AsyncClient,
) -> None:
    fake = FakeCluster(ignore_cids=True)
    async with serve(fake.app()) as server:
        backend = ClusterPinning(http_client, server.url)
        tracked, _ = raw_block(b"tracked\n")
        untracked, _ = raw_block(b"untracked\n")
        bystander, _ = raw_block(b"someone else's pin\n")
        await backend.pin(tracked)
        await backend.pin(bystander)
        fake.requests.clear()
        statuses = await backend.status([PinRef(tracked, tracked), PinRef(untracked, untracked)])
    assert list(statuses) == [tracked]
    assert statuses[tracked].status is PinState.QUEUED
    # The listing brought every pin; only the CID it did not mention was asked about alone.
    assert [r.path for r in fake.requests.seen] == ["/pins", f"/pins/{untracked}"]


async def test_empty_status_stream_is_204_and_means_not_held(
    http_client: httpx.AsyncClient,
) -> None:
    fake = FakeCluster(ignore_cids=True)
    async with serve(fake.app()) as server:
        cid, _ = raw_block(b"nothing tracked\n")
        raw = await http_client.get(f"{server.url}/pins")
        assert raw.status_code == 204
        assert await ClusterPinning(http_client, server.url).status([PinRef(cid, cid)]) == {}


async def test_unpin_deletes_and_404_counts_as_done(
    cluster: tuple[FakeCluster, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = cluster
    backend = ClusterPinning(http_client, server.url)
    cid, _ = raw_block(b"temporary\n")
    await backend.pin(cid)
    await backend.unpin(cid)
    assert cid not in fake.pins
    await backend.unpin(cid)
    last = await http_client.delete(f"{server.url}/pins/{cid}")
    assert (last.status_code, last.json()) == (
        404,
        {"code": 404, "message": "pin is not part of the pinset"},
    )
