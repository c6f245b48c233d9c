"""One contract, three backends: every ``PinningBackend`` is checked against its loopback fake
with the same tests (the swh-scheduler ``test_interface`` idea): signatures match the
Protocol, pin -> status -> unpin works, status is batched, errors are translated the same
way, and tokens stay out of errors, reprs and logs."""

from __future__ import annotations

import inspect
import logging
import math
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from forage.fakes.cluster import FakeCluster
from forage.fakes.kubo import FakeKubo, car_v1, raw_block
from forage.fakes.pinning_service import FakePinningService
from indexers.fakeserver import Faults, RequestLog, serve
from storage import BackendRejected, BackendUnavailable, InvalidCID
from storage.pinning import (
    ClusterPinning,
    KuboPinning,
    PinningBackend,
    PinningService,
    PinRef,
    PinState,
)

TOKEN = "tok-3f9a1c0b7d2e"
BACKENDS = ["kubo", "cluster", "service"]


@dataclass
class Harness:
    """A backend aimed at its fake, and the few fake knobs the shared tests need."""

    kind: str
    backend: PinningBackend
    fake: FakeKubo | FakeCluster | FakePinningService

    @property
    def faults(self) -> Faults:
        return self.fake.faults

    @property
    def requests(self) -> RequestLog:
        return self.fake.requests

    def settle(self) -> None:
        """Let every pending pin finish (Kubo pins synchronously)."""
        if isinstance(self.fake, FakeCluster | FakePinningService):
            self.fake.advance()
            self.fake.advance()

    def fail(self, cid: str, message: str) -> None:
        if isinstance(self.fake, FakeKubo):
            self.fake.fail_pin(cid, message)
        else:
            self.fake.fail_cid(cid, message)

    def status_requests(self) -> int:
        if isinstance(self.fake, FakeKubo):
            return len(self.fake.pin_ls_args)
        if isinstance(self.fake, FakeCluster):
            return self.fake.status_requests()
        return sum(1 for r in self.fake.requests.seen if r.method == "GET")


def make_backend(kind: str, http_client: httpx.AsyncClient, url: str, token: str) -> PinningBackend:
    if kind == "kubo":
        return KuboPinning(http_client, url, token=token)
    if kind == "cluster":
        return ClusterPinning(http_client, url, token=token)
    return PinningService(http_client, url, token=token)


def make_fake(kind: str, **options: object) -> FakeKubo | FakeCluster | FakePinningService:
    if kind == "kubo":
        return FakeKubo(token=TOKEN, **options)  # type: ignore[arg-type]
    if kind == "cluster":
        return FakeCluster(token=TOKEN, **options)  # type: ignore[arg-type]
    return FakePinningService(tokens=frozenset({TOKEN}), **options)  # type: ignore[arg-type]


@pytest.fixture(params=BACKENDS)
async def harness(
    request: pytest.FixtureRequest, http_client: httpx.AsyncClient
) -> AsyncIterator[Harness]:
    fake = make_fake(request.param)
    async with serve(fake.app()) as server:
        yield Harness(
            request.param, make_backend(request.param, http_client, server.url, TOKEN), fake
        )


async def car_stream(car: bytes, *, piece: int = 40) -> AsyncIterator[bytes]:
    """Hand the CAR over in small pieces, as a blockstore reader would."""
    for start in range(0, len(car), piece):
        yield car[start : start + piece]


def block(label: str) -> tuple[str, bytes]:
    return raw_block(f"forage pinning test {label}\n".encode())


async def pin_block(h: Harness, label: str, *, name: str | None = None) -> PinRef:
    cid, data = block(label)
    request = await h.backend.pin(cid, name=name, car=car_stream(car_v1([cid], [(cid, data)])))
    return request.ref


def test_implementations_match_the_protocol_signatures() -> None:
    for cls in (KuboPinning, ClusterPinning, PinningService):
        for method in ("pin", "status", "unpin"):
            expected = inspect.signature(getattr(PinningBackend, method))
            actual = inspect.signature(getattr(cls, method))
            assert actual == expected, f"{cls.__name__}.{method}{actual} != {expected}"
            assert inspect.iscoroutinefunction(getattr(cls, method))
        assert isinstance(cls.name, property)


async def test_backend_is_a_pinning_backend(harness: Harness) -> None:
    assert isinstance(harness.backend, PinningBackend)
    assert harness.backend.name == {"kubo": "kubo", "cluster": "cluster"}.get(
        harness.kind, "pinning-service"
    )


async def test_pin_status_unpin_round_trip(harness: Harness) -> None:
    cid, data = block("round trip")
    car = car_v1([cid], [(cid, data)])
    request = await harness.backend.pin(cid, name="pkg:npm/left-pad@1.3.0", car=car_stream(car))
    assert request.cid == cid
    assert request.status in {PinState.QUEUED, PinState.PINNED}
    assert request.request_id

    harness.settle()
    statuses = await harness.backend.status([request.ref])
    assert list(statuses) == [request.request_id]
    assert statuses[request.request_id].status is PinState.PINNED
    assert statuses[request.request_id].cid == cid

    await harness.backend.unpin(request.request_id)
    assert await harness.backend.status([request.ref]) == {}
    # Unpinning what is already gone is not an error.
    await harness.backend.unpin(request.request_id)


async def test_pending_pins_are_reported_before_they_finish(harness: Harness) -> None:
    ref = await pin_block(harness, "pending")
    statuses = await harness.backend.status([ref])
    expected = PinState.PINNED if harness.kind == "kubo" else PinState.QUEUED
    assert statuses[ref.request_id].status is expected


async def test_a_failed_pin_reports_failed_with_the_reason(harness: Harness) -> None:
    cid, data = block("doomed")
    harness.fail(cid, "disk quota exceeded")
    request = await harness.backend.pin(cid, car=car_stream(car_v1([cid], [(cid, data)])))
    harness.settle()
    status = (await harness.backend.status([request.ref])).get(request.request_id, request)
    assert status.status is PinState.FAILED
    assert status.details is not None and "disk quota exceeded" in status.details


async def test_status_of_an_unknown_pin_is_absent(harness: Harness) -> None:
    cid, _ = block("never pinned")
    request_id = cid if harness.kind != "service" else "no-such-request"
    assert await harness.backend.status([PinRef(request_id, cid)]) == {}


async def test_status_of_many_pins_is_batched(harness: Harness) -> None:
    refs = [await pin_block(harness, f"batch {i}") for i in range(25)]
    harness.settle()
    before = harness.status_requests()
    statuses = await harness.backend.status(refs)
    assert {ref.request_id for ref in refs} == set(statuses)
    assert all(s.status is PinState.PINNED for s in statuses.values())
    # Kubo and Cluster take them all in one request; the Pinning Service API caps the cid
    # filter at 10 CIDs per query.
    expected = math.ceil(25 / 10) if harness.kind == "service" else 1
    assert harness.status_requests() - before == expected


async def test_status_of_nothing_sends_nothing(harness: Harness) -> None:
    assert await harness.backend.status([]) == {}
    assert harness.requests.seen == []


async def test_malformed_cid_is_refused_before_any_request(harness: Harness) -> None:
    with pytest.raises(InvalidCID):
        await harness.backend.pin("not-a-cid/../../admin")
    with pytest.raises(InvalidCID):
        await harness.backend.status([PinRef("x", "bafy-nope")])
    assert harness.requests.seen == []


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_unavailable_with_retry_after(
    harness: Harness, status: int
) -> None:
    cid, _ = block("server error")
    harness.faults.fail(status, retry_after="7")
    with pytest.raises(BackendUnavailable) as caught:
        await harness.backend.status([PinRef(cid, cid)])
    assert caught.value.status == status
    assert caught.value.retry_after == 7.0
    assert caught.value.backend == harness.backend.name


async def test_rate_limit_with_http_date_retry_after(harness: Harness) -> None:
    cid, data = block("rate limited")
    later = datetime.now(UTC) + timedelta(seconds=120)
    harness.faults.fail(429, retry_after=format_datetime(later, usegmt=True))
    with pytest.raises(BackendUnavailable) as caught:
        await harness.backend.pin(cid, car=car_stream(car_v1([cid], [(cid, data)])))
    assert caught.value.status == 429
    assert caught.value.retry_after is not None and 100 < caught.value.retry_after <= 120


async def test_reset_connection_is_unavailable(harness: Harness) -> None:
    cid, _ = block("reset")
    harness.faults.reset()
    with pytest.raises(BackendUnavailable) as caught:
        await harness.backend.unpin(cid if harness.kind != "service" else "some-request")
    assert caught.value.retry_after is None


async def test_malformed_response_is_unavailable(harness: Harness) -> None:
    ref = await pin_block(harness, "malformed")
    harness.faults.malformed()
    with pytest.raises(BackendUnavailable, match="malformed"):
        await harness.backend.status([ref])


@pytest.mark.parametrize("kind", BACKENDS)
async def test_connection_refused_is_unavailable(kind: str, http_client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = make_backend(kind, http_client, f"http://127.0.0.1:{port}", TOKEN)
    cid, _ = block("refused")
    with pytest.raises(BackendUnavailable) as caught:
        await backend.status([PinRef(cid, cid)])
    assert caught.value.status is None
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_timeout_is_unavailable(kind: str) -> None:
    fake = make_fake(kind)
    fake.faults.slow(0.4)
    async with serve(fake.app()) as server, httpx.AsyncClient(timeout=0.1) as http:
        backend = make_backend(kind, http, server.url, TOKEN)
        cid, _ = block("slow")
        with pytest.raises(BackendUnavailable, match="timed out"):
            await backend.status([PinRef(cid, cid)])


@pytest.mark.parametrize("kind", BACKENDS)
async def test_wrong_token_is_rejected_and_never_leaked(
    kind: str, http_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-4be1d9e77f0c"
    options = {"echo_token": True} if kind == "service" else {}
    fake = make_fake(kind, **options)
    caplog.set_level(logging.DEBUG)
    async with serve(fake.app()) as server:
        backend = make_backend(kind, http_client, server.url, wrong)
        cid, data = block("auth")
        with pytest.raises(BackendRejected) as caught:
            await backend.pin(cid, car=car_stream(car_v1([cid], [(cid, data)])))
    expected_status = 403 if kind == "kubo" else 401
    assert caught.value.status == expected_status
    assert wrong not in str(caught.value)
    assert wrong not in repr(backend)
    assert all(wrong not in record.getMessage() for record in caplog.records)
    if kind == "service":
        # The fake quoted the token back; the http_client replaced it.
        assert "***" in str(caught.value)
    # The token did reach the server, so the check above is not vacuous.
    assert fake.requests.seen[-1].headers["authorization"] == f"Bearer {wrong}"


@pytest.mark.parametrize("kind", BACKENDS)
async def test_repr_names_backend_without_credentials(
    kind: str, http_client: httpx.AsyncClient
) -> None:
    backend = make_backend(kind, http_client, "http://user:pw@127.0.0.1:9/x/", TOKEN)
    text = repr(backend)
    assert "127.0.0.1:9/x" in text
    assert TOKEN not in text and "pw" not in text
