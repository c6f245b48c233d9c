"""Downloads touch only configured hosts, respect the size cap, and classify failures."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiohttp import web

from forage.download import (
    MAX_REDIRECTS,
    DownloadRefused,
    DownloadUnavailable,
    HostPolicy,
    iter_body,
    open_download,
)
from forage.fakes.server import serve

BODY = bytes(range(256)) * 4096  # 1 MiB


def make_app() -> web.Application:
    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=BODY)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "12"})

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def liar(request: web.Request) -> web.StreamResponse:
        # Declares no length and streams past any cap.
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(64):
            await response.write(BODY)
        return response

    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
        await response.prepare(request)
        await response.write(BODY[:1000])
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/blob", blob)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_get("/unavailable", unavailable)
    app.router.add_get("/gone", gone)
    app.router.add_get("/liar", liar)
    app.router.add_get("/truncated", truncated)
    return app


async def fetch(url: str, policy: HostPolicy, *, expected_size: int | None = None) -> bytes:
    async with (
        httpx.AsyncClient(timeout=5) as client,
        open_download(client, url, policy=policy, expected_size=expected_size) as resp,
    ):
        return b"".join([chunk async for chunk in iter_body(resp, policy=policy)])


def local(port: int, *, max_size: int = 1 << 22) -> HostPolicy:
    return HostPolicy.of([f"127.0.0.1:{port}"], max_size=max_size, allow_http=True)


async def test_allowed_host_streams_the_body() -> None:
    async with serve(make_app()) as fake:
        assert await fetch(fake.url + "/blob", local(fake.port)) == BODY


async def test_redirect_within_allowed_hosts_is_followed() -> None:
    async with serve(make_app()) as fake:
        url = f"{fake.url}/redirect?to={fake.url}/blob"
        assert await fetch(url, local(fake.port)) == BODY


async def test_redirect_to_another_host_is_refused_before_connecting() -> None:
    async with serve(make_app()) as fake, serve(make_app()) as internal:
        url = f"{fake.url}/redirect?to={internal.url}/blob"
        with pytest.raises(DownloadRefused, match="not a configured download host"):
            await fetch(url, local(fake.port))


async def test_unlisted_host_is_refused() -> None:
    policy = HostPolicy.of(["registry.example"], max_size=100)
    for url in ["https://169.254.169.254/latest", "https://registry.example.evil/x"]:
        with pytest.raises(DownloadRefused, match="not a configured download host"):
            await fetch(url, policy)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://registry.example/x", "scheme 'http'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("https://user:secret@registry.example/x", "credentials"),
    ],
)
async def test_schemes_and_credentials_are_refused(url: str, reason: str) -> None:
    policy = HostPolicy.of(["registry.example"], max_size=100)
    with pytest.raises(DownloadRefused, match=reason) as info:
        await fetch(url, policy)
    assert "secret" not in str(info.value)


async def test_redirect_loop_is_refused() -> None:
    async with serve(make_app()) as fake:
        with pytest.raises(DownloadRefused, match=f"more than {MAX_REDIRECTS} redirects"):
            await fetch(fake.url + "/loop", local(fake.port))


async def test_declared_size_over_cap_is_refused_before_download() -> None:
    async with serve(make_app()) as fake:
        with pytest.raises(DownloadRefused, match="exceeds cap"):
            await fetch(fake.url + "/blob", local(fake.port, max_size=1000), expected_size=2000)
        with pytest.raises(DownloadRefused, match="Content-Length 1048576 exceeds cap 1000"):
            await fetch(fake.url + "/blob", local(fake.port, max_size=1000))


async def test_body_without_length_is_cut_at_the_cap() -> None:
    async with serve(make_app()) as fake:
        with pytest.raises(DownloadRefused, match="body exceeds cap"):
            await fetch(fake.url + "/liar", local(fake.port, max_size=3 * len(BODY)))


async def test_transient_failures_are_retryable_with_retry_after() -> None:
    async with serve(make_app()) as fake:
        with pytest.raises(DownloadUnavailable) as info:
            await fetch(fake.url + "/unavailable", local(fake.port))
        assert info.value.retry_after == 12
        with pytest.raises(DownloadUnavailable, match="cut short"):
            await fetch(fake.url + "/truncated", local(fake.port))
        with pytest.raises(DownloadRefused, match="HTTP 404"):
            await fetch(fake.url + "/gone", local(fake.port))


async def test_connection_refused_is_retryable() -> None:
    async with serve(make_app()) as fake:
        port = fake.port
    await asyncio.sleep(0)
    with pytest.raises(DownloadUnavailable, match="transport error"):
        await fetch(f"http://127.0.0.1:{port}/blob", local(port))
