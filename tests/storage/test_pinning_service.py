"""Pinning Service API backend against the fake service: request body, origins and meta,
the status lifecycle, the 10-CID filter, pagination, and the spec's error bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from forage.fakes.kubo import raw_block
from forage.fakes.pinning_service import DEFAULT_DELEGATE, FakePinningService
from indexers.fakeserver import RunningServer, serve
from storage import BackendRejected
from storage.pinning import PinningService, PinRef, PinState

TOKEN = "psa-token-81c2"
ORIGIN = "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWHfYpcGJmCXXhmkNFwWYFYjUGNy3jL7ZfHyexnwQqrXdU"


@pytest.fixture
async def service() -> AsyncIterator[tuple[FakePinningService, RunningServer]]:
    fake = FakePinningService(tokens=frozenset({TOKEN}))
    async with serve(fake.app()) as server:
        yield fake, server


def cids(count: int, label: str = "psa") -> list[str]:
    return [raw_block(f"{label} {i}\n".encode())[0] for i in range(count)]


async def test_pin_sends_cid_name_origins_and_meta(
    service: tuple[FakePinningService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = service
    backend = PinningService(
        http_client, server.url, token=TOKEN, origins=[ORIGIN], meta={"app_id": "forage"}
    )
    (cid,) = cids(1)
    request = await backend.pin(cid, name="pkg:pypi/requests@2.31.0")
    stored = fake.pins[request.request_id]
    assert (stored.cid, stored.name, stored.origins, stored.meta) == (
        cid,
        "pkg:pypi/requests@2.31.0",
        [ORIGIN],
        {"app_id": "forage"},
    )
    assert request.status is PinState.QUEUED
    assert request.delegates == (DEFAULT_DELEGATE,)
    assert request.created is not None and request.created.tzinfo is not None
    assert fake.requests.seen[-1].headers["authorization"] == f"Bearer {TOKEN}"


async def test_no_origins_or_meta_means_fields_left_out(
    service: tuple[FakePinningService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = service
    (cid,) = cids(1)
    request = await PinningService(http_client, server.url, token=TOKEN).pin(cid)
    stored = fake.pins[request.request_id]
    assert stored.origins == [] and stored.meta == {} and stored.name is None


async def test_status_follows_queued_pinning_pinned(
    service: tuple[FakePinningService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = service
    backend = PinningService(http_client, server.url, token=TOKEN)
    (cid,) = cids(1)
    ref = (await backend.pin(cid)).ref
    seen = []
    for _ in range(3):
        status = (await backend.status([ref]))[ref.request_id]
        seen.append((status.status, status.details))
        fake.advance()
    assert seen == [
        (PinState.QUEUED, None),
        (PinState.PINNING, "fetching from origins"),
        (PinState.PINNED, None),
    ]
    # Every list query asked for all four statuses: the spec's default is "pinned" only.
    queries = [r.query for r in fake.requests.seen if r.method == "GET"]
    assert all(q["status"] == "queued,pinning,pinned,failed" for q in queries)


async def test_cid_filter_never_exceeds_ten(
    service: tuple[FakePinningService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = service
    backend = PinningService(http_client, server.url, token=TOKEN)
    refs = [(await backend.pin(cid)).ref for cid in cids(23)]
    statuses = await backend.status(refs)
    assert set(statuses) == {ref.request_id for ref in refs}
    sizes = [len(r.query["cid"].split(",")) for r in fake.requests.seen if r.method == "GET"]
    assert sizes == [10, 10, 3]


async def test_fake_refuses_more_than_ten_cids(
    service: tuple[FakePinningService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    _, server = service
    response = await http_client.get(
        f"{server.url}/pins",
        params={"cid": ",".join(cids(11))},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["reason"] == "BAD_REQUEST"


async def test_pages_through_results_with_before(
    service: tuple[FakePinningService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = service
    backend = PinningService(http_client, server.url, token=TOKEN, page_limit=10)
    (cid,) = cids(1, "popular")
    refs = [(await backend.pin(cid)).ref for _ in range(25)]
    fake.requests.clear()
    statuses = await backend.status(refs)
    assert set(statuses) == {ref.request_id for ref in refs}
    lists = [r.query for r in fake.requests.seen]
    assert [q.get("before") is None for q in lists] == [True, False, False]
    assert all(r.method == "GET" and r.path == "/pins" for r in fake.requests.seen)


async def test_request_ids_of_other_pins_of_the_same_cid_are_ignored(
    service: tuple[FakePinningService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    _, server = service
    backend = PinningService(http_client, server.url, token=TOKEN)
    (cid,) = cids(1, "shared")
    mine = (await backend.pin(cid)).ref
    other = (await backend.pin(cid)).ref
    assert mine.request_id != other.request_id
    assert list(await backend.status([mine])) == [mine.request_id]


async def test_deleted_request_is_absent_after_a_lookup_by_id(
    service: tuple[FakePinningService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = service
    backend = PinningService(http_client, server.url, token=TOKEN)
    (cid,) = cids(1, "deleted")
    ref = (await backend.pin(cid)).ref
    await backend.unpin(ref.request_id)
    assert ref.request_id not in fake.pins
    fake.requests.clear()
    assert await backend.status([ref]) == {}
    assert [(r.method, r.path) for r in fake.requests.seen] == [
        ("GET", "/pins"),
        ("GET", f"/pins/{ref.request_id}"),
    ]


async def test_insufficient_funds_is_rejected_with_reason(
    service: tuple[FakePinningService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = service
    fake.insufficient_funds = True
    (cid,) = cids(1)
    with pytest.raises(BackendRejected, match="INSUFFICIENT_FUNDS") as caught:
        await PinningService(http_client, server.url, token=TOKEN).pin(cid)
    assert caught.value.status == 409


async def test_missing_token_gets_401_from_the_fake(
    service: tuple[FakePinningService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    _, server = service
    response = await http_client.get(f"{server.url}/pins")
    assert response.status_code == 401
    assert response.json() == {
        "error": {"reason": "UNAUTHORIZED", "details": "Access token is missing or invalid"}
    }


async def test_constructor_refuses_bad_configuration(http_client: httpx.AsyncClient) -> None:
    http = http_client
    with pytest.raises(ValueError, match="access token"):
        PinningService(http, "http://127.0.0.1:1", token="")
    with pytest.raises(ValueError, match="/p2p/"):
        PinningService(http, "http://127.0.0.1:1", token="t", origins=["/ip4/1.2.3.4/tcp/1"])
    with pytest.raises(ValueError, match="at most 20"):
        PinningService(http, "http://127.0.0.1:1", token="t", origins=[ORIGIN] * 21)
    with pytest.raises(ValueError, match="page_limit"):
        PinningService(http, "http://127.0.0.1:1", token="t", page_limit=1001)


async def test_malformed_pin_status_is_a_shape_error(http_client: httpx.AsyncClient) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"requestid": "r1", "status": "offloaded", "pin": {}}, status=202)

    app = web.Application()
    app.router.add_post("/pins", handler)
    async with serve(app) as server:
        (cid,) = cids(1)
        with pytest.raises(BackendRejected, match="offloaded"):
            await PinningService(http_client, server.url, token=TOKEN).pin(cid)


async def test_status_refs_from_stored_rows(
    service: tuple[FakePinningService, RunningServer], http_client: httpx.AsyncClient
) -> None:
    """A caller rebuilds ``PinRef`` from its own rows (request id + CID) and gets answers."""
    fake, server = service
    backend = PinningService(http_client, server.url, token=TOKEN)
    (cid,) = cids(1, "row")
    request = await backend.pin(cid)
    fake.set_status(request.request_id, "failed", "no provider found")
    status = (await backend.status([PinRef(request.request_id, cid)]))[request.request_id]
    assert (status.status, status.details) == (PinState.FAILED, "no provider found")
