"""The server's error middleware: JSON errors before a response starts, a cut connection
after, never internals in a body."""

from __future__ import annotations

import logging

import httpx
import pytest
from aiohttp import web

from forage.errors import NotFound
from forage.server.app import error_middleware
from indexers.fakeserver import serve


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internal detail")


async def _missing(request: web.Request) -> web.Response:
    raise NotFound("no such package: npm/left-pad")


async def _cut_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": "100"})
    await response.prepare(request)
    await response.write(b"x" * 10)
    raise RuntimeError("disk went away mid-stream")


def _app() -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/boom", _boom)
    app.router.add_get("/missing", _missing)
    app.router.add_get("/cut", _cut_stream)
    return app


async def test_unexpected_error_is_a_json_500_without_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serve(_app()) as server, httpx.AsyncClient(base_url=server.url) as client:
        with caplog.at_level(logging.ERROR, logger="forage.server.app"):
            response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error": {"status": 500, "message": "internal server error"}}
    assert "secret internal detail" not in response.text
    assert "secret internal detail" in caplog.text


async def test_not_found_and_unknown_routes_are_json_404s() -> None:
    async with serve(_app()) as server, httpx.AsyncClient(base_url=server.url) as client:
        missing = await client.get("/missing")
        unrouted = await client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "no such package: npm/left-pad"
    assert unrouted.status_code == 404
    assert unrouted.json()["error"]["status"] == 404


async def test_error_after_the_response_started_cuts_the_connection() -> None:
    # A second response written into a started stream would look like body bytes to the
    # client; instead the connection closes and the client sees a short body.
    async with serve(_app()) as server, httpx.AsyncClient(base_url=server.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/cut")
        # The server still answers the next request normally.
        assert (await client.get("/missing")).status_code == 404
