"""Where an archive's blocks can be read back from, and reading a CAR as it arrives.

Sources (:func:`open_repair_sources`), in the order :mod:`forage.archive.repair` asks them:

- every Kubo pinning backend, through its RPC: ``POST /api/v0/dag/export`` (a CARv1) and
  ``/api/v0/block/get``, both with ``offline=true``, so a node without the block says so at
  once instead of searching the network (https://docs.ipfs.tech/reference/kubo/rpc/);
- every pinning backend with a ``gateway``: an IPFS Pinning Service API has no read method,
  nor has the Cluster REST API, so their provider's trustless gateway is read instead
  (without one they are not sources);
- the ``[repair] gateways``, IPFS trustless gateways: ``GET /ipfs/{cid}?format=car`` with
  ``Accept: application/vnd.ipld.car; version=1; order=dfs; dups=n`` and
  ``?format=raw`` with ``Accept: application/vnd.ipld.raw``
  (https://specs.ipfs.tech/http-gateways/trustless-gateway/).

Every response is bounded in size (the caller's limit; a body past it is refused) and time
(``[repair] timeout`` per request); redirects are not followed, so bytes come only from the
hosts in the configuration. :func:`car_blocks` turns a CAR byte stream into blocks, each
verified against its CID, one section in memory at a time.
"""

from __future__ import annotations

import functools
import io
import ssl
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import ClassVar
from urllib.parse import urlsplit

import httpx
from multiformats import CID

from forage.config import Config
from forage.jobs.worker import USER_AGENT
from storage import (
    BackendRejected,
    BackendUnavailable,
    Block,
    BlockNotFound,
    CarFormatError,
    CarTruncated,
    read_car,
)

__all__ = [
    "GatewaySource",
    "KuboSource",
    "RepairSource",
    "car_blocks",
    "open_repair_sources",
    "source_labels",
]

#: Bytes a CAR section may add to its block: the binary CID (a multihash is at most 128).
MAX_CID_BYTES = 160
RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"


class RepairSource(ABC):
    """Somewhere blocks can be read back from over HTTP: a CAR of a DAG, or one block.

    Subclasses build the two requests; this class sends them through the shared client and
    translates failures into ``storage`` errors: ``BlockNotFound`` (the source lacks it),
    ``BackendUnavailable`` (refused, reset, timed out, 5xx, 429), ``BackendRejected`` (any
    other refusal, a redirect, a response over its size bound or of the wrong type).
    """

    kind: ClassVar[str]

    def __init__(
        self, client: httpx.AsyncClient, base_url: str, *, name: str, token: str | None = None
    ) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._token = token or None
        self.name = name

    @property
    def label(self) -> str:
        """How logs and the CLI name this source."""
        return f"{self.name} ({self.kind})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self._base_url!r})"

    @abstractmethod
    def car_request(self, root: CID) -> httpx.Request:
        """The request for a CARv1 of the DAG under ``root``."""

    @abstractmethod
    def block_request(self, cid: CID) -> httpx.Request:
        """The request for the bytes of the block ``cid``."""

    def _check(self, response: httpx.Response, cid: CID, what: str, *, car: bool) -> None:
        """Raise for a response that does not carry what was asked for."""
        status = response.status_code
        if status == 404:
            raise BlockNotFound(cid)
        if 300 <= status < 400:
            where = response.headers.get("Location", "?")
            raise BackendRejected(
                self.name, f"{what}: redirect to {where} not followed (hosts come from config)"
            )
        if status in (408, 429) or status >= 500:
            raise BackendUnavailable(self.name, f"{what}: HTTP {status}", status=status)
        if status != 200:
            raise BackendRejected(self.name, f"{what}: HTTP {status}", status=status)

    @asynccontextmanager
    async def _send(
        self, request: httpx.Request, cid: CID, *, limit: int, car: bool
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Send ``request``; yield its body as chunks, cut off past ``limit`` bytes."""
        what = f"CAR of {cid}" if car else f"block {cid}"
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(self.name, f"{what}: timed out") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(self.name, f"{what}: {_reason(exc)}") from exc
        try:
            if response.status_code != 200:
                await response.aread()
            self._check(response, cid, what, car=car)
            async with aclosing(self._bounded(response, what, limit)) as body:
                yield body
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(self.name, f"{what}: timed out reading") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(self.name, f"{what}: cut short: {_reason(exc)}") from exc
        finally:
            await response.aclose()

    async def _bounded(
        self, response: httpx.Response, what: str, limit: int
    ) -> AsyncGenerator[bytes, None]:
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > limit:
                raise BackendRejected(self.name, f"{what}: response over {limit} bytes")
            yield chunk

    @asynccontextmanager
    async def car(self, root: CID, *, limit: int) -> AsyncIterator[AsyncIterator[bytes]]:
        """The CAR of ``root``'s DAG as a byte stream of at most ``limit`` bytes."""
        async with self._send(self.car_request(root), root, limit=limit, car=True) as body:
            yield body

    async def block(self, cid: CID, *, limit: int) -> bytes:
        """The bytes served for block ``cid`` (at most ``limit``), not yet verified."""
        async with self._send(self.block_request(cid), cid, limit=limit, car=False) as body:
            return b"".join([chunk async for chunk in body])


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class GatewaySource(RepairSource):
    """An IPFS trustless gateway: ``/ipfs/{cid}`` as a CAR or a raw block."""

    kind = "gateway"

    def car_request(self, root: CID) -> httpx.Request:
        accept = f"{CAR_TYPE}; version=1; order=dfs; dups=n"
        return self._client.build_request(
            "GET",
            f"{self._base_url}/ipfs/{root}",
            params={"format": "car", "dag-scope": "all"},
            headers={"Accept": accept},
        )

    def block_request(self, cid: CID) -> httpx.Request:
        return self._client.build_request(
            "GET",
            f"{self._base_url}/ipfs/{cid}",
            params={"format": "raw"},
            headers={"Accept": RAW_TYPE},
        )

    def _check(self, response: httpx.Response, cid: CID, what: str, *, car: bool) -> None:
        super()._check(response, cid, what, car=car)
        served = response.headers.get("Content-Type", "").split(";")[0].strip()
        if car and served != CAR_TYPE:
            raise BackendRejected(self.name, f"{what}: answered {served or 'no type'}, not a CAR")


class KuboSource(RepairSource):
    """A Kubo node's RPC: ``dag/export`` and ``block/get``, offline (its own blocks only)."""

    kind = "Kubo RPC"

    def _command(self, command: str, cid: CID) -> httpx.Request:
        return self._client.build_request(
            "POST",
            f"{self._base_url}/api/v0/{command}",
            params={"arg": str(cid), "offline": "true"},
        )

    def car_request(self, root: CID) -> httpx.Request:
        return self._command("dag/export", root)

    def block_request(self, cid: CID) -> httpx.Request:
        return self._command("block/get", cid)

    def _check(self, response: httpx.Response, cid: CID, what: str, *, car: bool) -> None:
        if response.status_code == 500 and (
            "not found" in response.text or "could not find" in response.text
        ):
            raise BlockNotFound(cid)  # go-ipfs-cmds' error body for a block the node lacks
        super()._check(response, cid, what, car=car)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every repair client (loading the CA bundle costs ~0.1 s)."""
    return httpx.create_ssl_context()


def _specs(config: Config) -> list[tuple[type[RepairSource], str, str, str | None]]:
    """(class, name, base URL, token) of every configured source, in the order asked."""
    specs: list[tuple[type[RepairSource], str, str, str | None]] = []
    for backend in config.pinning.backends:
        token = backend.token.reveal() if backend.token is not None else None
        if backend.type == "kubo":
            specs.append((KuboSource, backend.name, backend.url, token))
        if backend.gateway:
            specs.append((GatewaySource, backend.name, backend.gateway, None))
    for url in config.repair.gateways:
        specs.append((GatewaySource, urlsplit(url).netloc, url, None))
    return specs


def source_labels(config: Config) -> list[str]:
    """The sources :func:`open_repair_sources` opens, named as logs name them."""
    return [f"{name} ({cls.kind})" for cls, name, _url, _token in _specs(config)]


@asynccontextmanager
async def open_repair_sources(config: Config) -> AsyncIterator[list[RepairSource]]:
    """The configured repair sources, in the order they are asked, sharing one client."""
    repair = config.repair
    async with httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(repair.timeout),
        follow_redirects=False,
        verify=_tls_context(),
    ) as client:
        yield [cls(client, url, name=name, token=token) for cls, name, url, token in _specs(config)]


# -- reading a CAR as it arrives ---------------------------------------------------------------


class _Frames:
    """Cuts an async byte stream into the varint-framed parts of a CARv1 (header, sections)."""

    def __init__(self, chunks: AsyncIterator[bytes], max_frame: int) -> None:
        self._chunks = chunks
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._ended = False

    async def _fill(self, size: int) -> bool:
        """Buffer at least ``size`` bytes; ``False`` when the stream ends first."""
        while len(self._buffer) < size:
            if self._ended:
                return False
            chunk = await anext(self._chunks, None)
            if chunk is None:
                self._ended = True
                return False
            self._buffer += chunk
        return True

    async def next(self) -> bytes | None:
        """The next frame with its length prefix, or ``None`` at a clean end of stream."""
        length = shift = pos = 0
        while True:
            if not await self._fill(pos + 1):
                if pos == 0:
                    return None
                raise CarTruncated("CAR stream ended inside a length")
            byte = self._buffer[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if pos >= 9:
                raise CarFormatError("CAR: varint longer than 9 bytes")
        if length > self._max_frame:
            raise CarFormatError(
                f"CAR: a {length}-byte section is over the {self._max_frame} limit"
            )
        if not await self._fill(pos + length):
            raise CarTruncated(f"CAR stream ended inside a {length}-byte section")
        frame = bytes(self._buffer[: pos + length])
        del self._buffer[: pos + length]
        return frame


def _refill(buffer: io.BytesIO, frame: bytes) -> None:
    buffer.seek(0)
    buffer.truncate()
    buffer.write(frame)
    buffer.seek(0)


async def car_blocks(
    chunks: AsyncIterator[bytes], *, max_block_size: int
) -> AsyncGenerator[Block, None]:
    """The blocks of a CARv1 byte stream, each verified against its CID, as they arrive.

    ``storage.car``'s reader does the parsing and checking, fed one whole frame at a time, so
    memory holds one section. Raises ``CarFormatError``/``CarTruncated`` for a malformed or
    cut stream and ``IntegrityError`` for a block whose bytes do not match its CID. The
    header's roots are not used (the gateway specification leaves them unspecified).
    """
    frames = _Frames(chunks, max_block_size + MAX_CID_BYTES)
    header = await frames.next()
    if header is None:
        raise CarTruncated("CAR stream is empty")
    buffer = io.BytesIO()
    _refill(buffer, header)
    sections = iter(read_car(buffer, max_section_size=max_block_size + MAX_CID_BYTES))
    while (frame := await frames.next()) is not None:
        _refill(buffer, frame)
        yield next(sections)
