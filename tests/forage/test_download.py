"""Downloads touch only configured hosts, respect the size cap, classify failures and keep
the bytes as sent, over httpx's own transport and over the worker's (httpx on aiohttp)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from forage.jobs.worker import registry_client
from indexers.download import (
    MAX_REDIRECTS,
    DownloadRefused,
    DownloadUnavailable,
    HostPolicy,
    iter_body,
    open_download,
)
from indexers.fakeserver import serve

BODY = bytes(range(256)) * 4096  # 1 MiB
GZIPPED = gzip.compress(BODY)


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

    async def tarball(request: web.Request) -> web.Response:
        # A .tar.gz labelled as gzip-encoded, as some static servers do.
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/x-tar"}
        return web.Response(body=GZIPPED, headers=headers)

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
    app.router.add_get("/pkg.tar.gz", tarball)
    app.router.add_get("/liar", liar)
    app.router.add_get("/truncated", truncated)
    return app


@pytest.fixture(params=["httpcore", "aiohttp"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """Every test runs over httpx's default transport and over the worker's registry client."""
    if request.param == "httpcore":
        made = httpx.AsyncClient(timeout=5)
    else:
        made = registry_client(max_connections=4)
    async with made:
        yield made


async def fetch(
    client: httpx.AsyncClient, url: str, policy: HostPolicy, *, expected_size: int | None = None
) -> bytes:
    async with open_download(client, url, policy=policy, expected_size=expected_size) as resp:
        return b"".join([chunk async for chunk in iter_body(resp, policy=policy)])


def local(port: int, *, max_size: int = 1 << 22) -> HostPolicy:
    return HostPolicy.of([f"127.0.0.1:{port}"], max_size=max_size, allow_http=True)


async def test_allowed_host_streams_the_body(client: httpx.AsyncClient) -> None:
    async with serve(make_app()) as fake:
        assert await fetch(client, fake.url + "/blob", local(fake.port)) == BODY


async def test_redirect_within_allowed_hosts_is_followed(client: httpx.AsyncClient) -> None:
    async with serve(make_app()) as fake:
        url = f"{fake.url}/redirect?to={fake.url}/blob"
        assert await fetch(client, url, local(fake.port)) == BODY


async def test_redirect_to_another_host_is_refused_before_connecting(
    client: httpx.AsyncClient,
) -> None:
    async with serve(make_app()) as fake, serve(make_app()) as internal:
        url = f"{fake.url}/redirect?to={internal.url}/blob"
        with pytest.raises(DownloadRefused, match="not a configured download host"):
            await fetch(client, url, local(fake.port))


async def test_unlisted_host_is_refused(client: httpx.AsyncClient) -> None:
    policy = HostPolicy.of(["registry.example"], max_size=100)
    for url in ["https://169.254.169.254/latest", "https://registry.example.evil/x"]:
        with pytest.raises(DownloadRefused, match="not a configured download host"):
            await fetch(client, url, policy)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://registry.example/x", "scheme 'http'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("https://user:secret@registry.example/x", "credentials"),
    ],
)
async def test_schemes_and_credentials_are_refused(
    client: httpx.AsyncClient, url: str, reason: str
) -> None:
    policy = HostPolicy.of(["registry.example"], max_size=100)
    with pytest.raises(DownloadRefused, match=reason) as info:
        await fetch(client, url, policy)
    assert "secret" not in str(info.value)


async def test_a_body_labelled_gzip_is_kept_as_sent(client: httpx.AsyncClient) -> None:
    """The bytes a registry's digest covers are the file's: a .tar.gz served with
    Content-Encoding: gzip is not decompressed on the way to the hashers."""
    async with serve(make_app()) as fake:
        assert await fetch(client, fake.url + "/pkg.tar.gz", local(fake.port)) == GZIPPED


async def test_redirect_loop_is_refused(client: httpx.AsyncClient) -> None:
    async with serve(make_app()) as fake:
        with pytest.raises(DownloadRefused, match=f"more than {MAX_REDIRECTS} redirects"):
            await fetch(client, fake.url + "/loop", local(fake.port))


async def test_declared_size_over_cap_is_refused_before_download(client: httpx.AsyncClient) -> None:
    async with serve(make_app()) as fake:
        with pytest.raises(DownloadRefused, match="exceeds cap"):
            await fetch(
                client, fake.url + "/blob", local(fake.port, max_size=1000), expected_size=2000
            )
        with pytest.raises(DownloadRefused, match="Content-Length 1048576 exceeds cap 1000"):
            await fetch(client, fake.url + "/blob", local(fake.port, max_size=1000))


async def test_body_without_length_is_cut_at_the_cap(client: httpx.AsyncClient) -> None:
    async with serve(make_app()) as fake:
        with pytest.raises(DownloadRefused, match="body exceeds cap"):
            await fetch(client, fake.url + "/liar", local(fake.port, max_size=3 * len(BODY)))


async def test_transient_failures_are_retryable_with_retry_after(client: httpx.AsyncClient) -> None:
    async with serve(make_app()) as fake:
        with pytest.raises(DownloadUnavailable) as info:
            await fetch(client, fake.url + "/unavailable", local(fake.port))
        assert info.value.retry_after == 12
        with pytest.raises(DownloadUnavailable, match="cut short"):
            await fetch(client, fake.url + "/truncated", local(fake.port))
        with pytest.raises(DownloadRefused, match="HTTP 404"):
            await fetch(client, fake.url + "/gone", local(fake.port))


async def test_connection_refused_is_retryable(client: httpx.AsyncClient) -> None:
    """Retryable over either transport (httpx-aiohttp calls a refusal ConnectTimeout), with
    the refusal itself in the cause chain."""
    async with serve(make_app()) as fake:
        port = fake.port
    await asyncio.sleep(0)
    with pytest.raises(DownloadUnavailable, match=f"download http://127.0.0.1:{port}/blob: "):
        try:
            await fetch(client, f"http://127.0.0.1:{port}/blob", local(port))
        except DownloadUnavailable as exc:
            causes = []
            cause: BaseException | None = exc
            while cause is not None:
                causes.append(cause)
                cause = cause.__cause__ or cause.__context__
            assert any(isinstance(c, ConnectionRefusedError) for c in causes), causes
            raise
