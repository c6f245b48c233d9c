"""A burst of identical requests through the mirror makes one upstream fetch, even against a
fast loopback upstream that answers before the burst has all arrived."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from indexers.golang.fake import GoFake
from tests.forage.mirror.conftest import forage_mirror

MODULE = "example.com/burst"
CLIENTS = 25


async def test_25_concurrent_clients_make_one_upstream_fetch_per_request(
    tmp_path: Path, db_url: str
) -> None:
    fake = GoFake()
    fake.add_version(
        MODULE, "v1.0.0", files={"go.mod": f"module {MODULE}\n", "a.go": "package a\n"}
    )
    settings = {"metadata_ttl": 300.0}  # the default: FAST turns the metadata cache off
    async with (
        fake,
        forage_mirror(tmp_path, db_url, golang=fake.endpoints, mirror=settings) as forage,
    ):
        await forage.ingest("golang", MODULE)  # its h1 is known, so the zip is verified
        fake.requests.clear()
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            for suffix, body in (
                ("@v/v1.0.0.zip", fake.modules[MODULE]["v1.0.0"].zip),
                ("@latest", None),  # (an archived version's .info comes from the archive)
                ("@v/list", b"v1.0.0\n"),
            ):
                url = f"{forage.url}/go/{MODULE}/{suffix}"
                answers = await asyncio.gather(*(client.get(url) for _ in range(CLIENTS)))
                assert [a.status_code for a in answers] == [200] * CLIENTS
                assert len({a.content for a in answers}) == 1
                assert body is None or answers[0].content == body
                assert fake.requests.paths().count(f"/proxy/{MODULE}/{suffix}") == 1, suffix
