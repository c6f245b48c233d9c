"""Kubo RPC backend against the fake node: CAR import (a multi-MiB archive too), pin
confirmation, batched ``pin/ls`` with its all-or-nothing failure, command errors, and the fake's
own wire behaviour."""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from multiformats import CID

from forage.fakes.kubo import FakeKubo, car_v1, dag_pb_node, raw_block, read_car
from indexers.fakeserver import RunningServer, serve
from storage import BackendRejected, BackendUnavailable, MemoryBlockstore, export_car, import_file
from storage.pinning import KuboPinning, PinRef, PinState


@pytest.fixture
async def kubo() -> AsyncIterator[tuple[FakeKubo, RunningServer]]:
    fake = FakeKubo()
    async with serve(fake.app()) as server:
        yield fake, server


async def stream(data: bytes, piece: int = 5) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


def file_dag(label: str) -> tuple[str, list[tuple[str, bytes]]]:
    """A two-leaf dag-pb file: (root CID, blocks root first)."""
    leaves = [raw_block(f"{label} part {i}\n".encode()) for i in range(2)]
    root = dag_pb_node([(cid, len(data)) for cid, data in leaves], b"\x08\x02")
    return root[0], [root, *leaves]


async def test_car_upload_imports_every_block_and_pins_the_root(
    kubo: tuple[FakeKubo, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = kubo
    root, blocks = file_dag("left-pad")
    backend = KuboPinning(http_client, server.url)
    request = await backend.pin(root, name="ignored on import", car=stream(car_v1([root], blocks)))
    assert request.status is PinState.PINNED
    assert request.request_id == root
    assert fake.is_pinned(root)
    assert len(fake.blocks) == 3
    # Imported with pin-roots, then confirmed with one keyed pin/ls, never with pin/add.
    assert [r.path for r in fake.requests.seen] == ["/api/v0/dag/import", "/api/v0/pin/ls"]
    assert fake.requests.seen[0].query["pin-roots"] == "true"
    assert fake.requests.seen[0].headers["content-type"].startswith("multipart/form-data")
    assert fake.pin_ls_args == [[root]]


async def test_a_multi_mib_archive_is_imported_whole(
    kubo: tuple[FakeKubo, RunningServer], http_client: httpx.AsyncClient
) -> None:
    # Real Kubo sets no limit on dag/import; the fake must not refuse what it would take.
    data = random.Random(15).randbytes(6 * 1024 * 1024 + 12_345)
    blocks = MemoryBlockstore()
    root = import_file(data, sink=blocks).cid
    out = io.BytesIO()
    export_car(blocks, root, out)
    car = out.getvalue()
    assert len(car) > 6 * 1024 * 1024
    fake, server = kubo
    request = await KuboPinning(http_client, server.url).pin(
        str(root), car=stream(car, piece=64 * 1024)
    )
    assert request.status is PinState.PINNED, request.details
    assert fake.is_pinned(str(root))
    assert len(fake.blocks) == len(blocks) == 26  # 25 leaves of 256 KiB and the root
    assert fake.requests.paths() == ["/api/v0/dag/import", "/api/v0/pin/ls"]


async def test_car_missing_a_leaf_is_a_failed_pin(
    kubo: tuple[FakeKubo, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = kubo
    root, blocks = file_dag("partial")
    car = car_v1([root], blocks[:2])  # the second leaf is left out
    request = await KuboPinning(http_client, server.url).pin(root, car=stream(car))
    assert request.status is PinState.FAILED
    assert request.details is not None and blocks[2][0] in request.details
    assert not fake.is_pinned(root)


async def test_cid_that_is_not_a_car_root_is_pinned_from_the_imported_blocks(
    kubo: tuple[FakeKubo, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = kubo
    root, blocks = file_dag("aggregate member")
    other, other_data = raw_block(b"an unrelated root\n")
    car = car_v1([other], [*blocks, (other, other_data)])
    request = await KuboPinning(http_client, server.url).pin(
        root, name="pkg:npm/x@1", car=stream(car)
    )
    assert request.status is PinState.PINNED
    assert fake.pins[root] == "pkg:npm/x@1"
    assert fake.requests.paths()[-1] == "/api/v0/pin/add"


async def test_corrupt_car_is_rejected_with_kubos_message(
    kubo: tuple[FakeKubo, RunningServer], http_client: httpx.AsyncClient
) -> None:
    _, server = kubo
    cid, data = raw_block(b"honest bytes\n")
    car = bytearray(car_v1([cid], [(cid, data)]))
    car[-2] ^= 0xFF
    with pytest.raises(BackendRejected, match="does not match the CID") as caught:
        await KuboPinning(http_client, server.url).pin(cid, car=stream(bytes(car)))
    assert caught.value.status == 500


async def test_pin_without_car_uses_pin_add(
    kubo: tuple[FakeKubo, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = kubo
    root, blocks = file_dag("already local")
    backend = KuboPinning(http_client, server.url)
    missing = await backend.pin(root)
    assert missing.status is PinState.FAILED
    assert missing.details is not None and "could not find" in missing.details
    fake.add_blocks(blocks)
    pinned = await backend.pin(root, name="x" * 300)
    assert pinned.status is PinState.PINNED
    assert fake.pins[root] == "x" * 255  # cut to Kubo's 255-byte limit instead of refused
    assert fake.requests.seen[-1].query == {
        "arg": root,
        "recursive": "true",
        "name": "x" * 255,
    }


async def test_status_batches_pin_ls_and_falls_back_to_one_listing(
    kubo: tuple[FakeKubo, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = kubo
    blocks = [raw_block(f"release {i}\n".encode()) for i in range(25)]
    fake.add_blocks(blocks)
    backend = KuboPinning(http_client, server.url, status_batch=10)
    for cid, _ in blocks[:20]:
        await backend.pin(cid)
    pinned_refs = [PinRef(cid, cid) for cid, _ in blocks[:20]]
    fake.pin_ls_args.clear()

    statuses = await backend.status(pinned_refs)
    assert set(statuses) == {ref.request_id for ref in pinned_refs}
    assert [len(args) for args in fake.pin_ls_args] == [10, 10]

    # One unpinned CID makes a keyed pin/ls fail outright; the http_client then lists every
    # recursive pin once instead of asking CID by CID.
    fake.pin_ls_args.clear()
    all_refs = [PinRef(cid, cid) for cid, _ in blocks]
    statuses = await backend.status(all_refs)
    assert set(statuses) == {ref.request_id for ref in pinned_refs}
    assert [len(args) for args in fake.pin_ls_args] == [10, 10, 5, 0]
    assert fake.requests.seen[-1].query == {"type": "recursive", "stream": "true"}


async def test_status_matches_cids_across_spellings(
    kubo: tuple[FakeKubo, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = kubo
    cid, data = raw_block(b"spelled twice\n")
    fake.add_blocks([(cid, data)])
    backend = KuboPinning(http_client, server.url)
    await backend.pin(cid)
    base58 = str(CID.decode(cid).set(base="base58btc"))
    statuses = await backend.status([PinRef("row-7", base58)])
    assert statuses["row-7"].status is PinState.PINNED
    assert statuses["row-7"].cid == base58


async def test_command_errors_are_rejected_unless_transient(http_client: httpx.AsyncClient) -> None:
    answers = iter(
        [
            ({"Message": "invalid type 'x'", "Code": 0, "Type": "error"}, 500),
            ({"Message": 'argument "ipfs-path" is required', "Code": 1, "Type": "error"}, 400),
            ({"Message": "rate limited", "Code": 3, "Type": "error"}, 500),
        ]
    )

    async def handler(request: web.Request) -> web.Response:
        body, status = next(answers)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/api/v0/pin/rm", handler)
    async with serve(app) as server:
        backend = KuboPinning(http_client, server.url)
        cid, _ = raw_block(b"x")
        with pytest.raises(BackendRejected, match="invalid type 'x'") as first:
            await backend.unpin(cid)
        assert first.value.status == 500
        with pytest.raises(BackendRejected, match="is required") as second:
            await backend.unpin(cid)
        assert second.value.status == 400
        with pytest.raises(BackendUnavailable, match="rate limited"):
            await backend.unpin(cid)


async def test_fake_speaks_kubo_http_rules(
    kubo: tuple[FakeKubo, RunningServer], http_client: httpx.AsyncClient
) -> None:
    _, server = kubo
    get = await http_client.get(f"{server.url}/api/v0/pin/ls")
    assert get.status_code == 405
    assert get.text == "405 - Method Not Allowed\n"
    unknown = await http_client.post(f"{server.url}/api/v0/pin/nonsense")
    assert unknown.status_code == 404
    cid, _ = raw_block(b"not here\n")
    error = await http_client.post(f"{server.url}/api/v0/pin/ls", params={"arg": cid})
    assert error.status_code == 500
    assert error.json() == {"Message": f"path '{cid}' is not pinned", "Code": 0, "Type": "error"}


async def test_fake_token_check_answers_403(http_client: httpx.AsyncClient) -> None:
    fake = FakeKubo(token="t0k")
    async with serve(fake.app()) as server:
        denied = await http_client.post(f"{server.url}/api/v0/version")
        allowed = await http_client.post(
            f"{server.url}/api/v0/version", headers={"Authorization": "Bearer t0k"}
        )
    assert denied.status_code == 403 and "Access Denied" in denied.text
    assert allowed.status_code == 200


def test_car_helpers_round_trip_and_match_the_spec_example() -> None:
    cid, data = raw_block(b"hello world\n")
    assert cid == "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    car = car_v1([cid], [(cid, data)])
    # The 108-byte CAR of the research note's worked example (header 0x3a = 58 bytes).
    assert len(car) == 108 and car[:3] == b"\x3a\xa2\x65"
    assert read_car(car) == ([cid], [(cid, data)])


async def test_unpin_removes_and_tolerates_repeats(
    kubo: tuple[FakeKubo, RunningServer], http_client: httpx.AsyncClient
) -> None:
    fake, server = kubo
    cid, data = raw_block(b"short lived\n")
    fake.add_blocks([(cid, data)])
    backend = KuboPinning(http_client, server.url)
    await backend.pin(cid)
    await backend.unpin(cid)
    assert not fake.is_pinned(cid)
    await backend.unpin(cid)
    assert fake.requests.paths()[-2:] == ["/api/v0/pin/rm", "/api/v0/pin/rm"]
