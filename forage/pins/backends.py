"""The pinning backends' clients, and the CAR stream that uploads an archive to them.

The backends are ``storage.pinning``'s clients for Kubo RPC, IPFS Cluster and the IPFS Pinning
Service API (https://ipfs.github.io/pinning-services-api-spec/), one per
``[pinning.backends.<name>]`` table (:class:`~forage.config.PinBackendConfig`). Kubo and
Cluster receive the archive's blocks as a CARv1 streamed from the blockstore in constant
memory (:func:`car_stream`); a Pinning Service fetches them from its ``origins``. Tokens reach
the clients only; their messages are scrubbed of them.
"""

from __future__ import annotations

import asyncio
import functools
import io
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx

from forage.config import PinBackendConfig, PinningConfig
from forage.jobs.worker import USER_AGENT
from storage import (
    BlockSource,
    CarWriter,
    ClusterPinning,
    KuboPinning,
    PinningBackend,
    PinningService,
    parse_cid,
    walk_dag,
)

__all__ = [
    "car_stream",
    "open_backends",
]

#: Backend types that receive the archive's blocks as a CAR with the pin request.
UPLOADING_TYPES = frozenset({"kubo", "cluster"})


def _make_backend(config: PinBackendConfig, client: httpx.AsyncClient) -> PinningBackend:
    token = config.token.reveal() if config.token is not None else None
    if config.type == "kubo":
        return KuboPinning(client, config.url, token=token, name=config.name)
    if config.type == "cluster":
        return ClusterPinning(
            client,
            config.url,
            token=token,
            name=config.name,
            replication_min=config.replication_min,
            replication_max=config.replication_max,
            origins=config.origins,
        )
    return PinningService(
        client, config.url, token=token or "", name=config.name, origins=config.origins
    )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every pinning client: loading the CA bundle costs ~0.1 s, too much
    to pay per job."""
    return httpx.create_ssl_context()


@asynccontextmanager
async def open_backends(
    config: PinningConfig, names: Iterable[str] | None = None
) -> AsyncIterator[dict[str, PinningBackend]]:
    """The configured backends (or those in ``names``), each with its own HTTP client.

    An unknown name raises ``ConfigError`` listing the configured ones.
    """
    chosen = [config.backend(name) for name in names] if names is not None else config.backends
    async with AsyncExitStack() as stack:
        backends: dict[str, PinningBackend] = {}
        for backend in chosen:
            client = httpx.AsyncClient(
                headers={"User-Agent": USER_AGENT},
                timeout=httpx.Timeout(backend.timeout),
                follow_redirects=False,
                verify=_tls_context(),
            )
            await stack.enter_async_context(client)
            backends[backend.name] = _make_backend(backend, client)
        yield backends


async def car_stream(source: BlockSource, cid: str) -> AsyncIterator[bytes]:
    """The DAG under ``cid`` as a CARv1 byte stream, depth-first, one block at a time.

    Blocks are read (and verified) in a thread; memory holds one block whatever the DAG's
    size. A missing or corrupt block raises ``BlockNotFound``/``IntegrityError`` mid-stream.
    """
    root = parse_cid(cid)
    buffer = io.BytesIO()
    writer = CarWriter(buffer, [root])
    blocks = walk_dag(source, root)
    yield _take(buffer)
    while (block := await asyncio.to_thread(next, blocks, None)) is not None:
        writer.put(block)
        yield _take(buffer)


def _take(buffer: io.BytesIO) -> bytes:
    data = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return data
