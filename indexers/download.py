"""Stream an artifact from its registry, refusing anything but the registry's own hosts.

A packument or simple page is upstream-controlled text: its URLs (and every redirect they
answer with) may point anywhere, including internal addresses. ``open_download`` follows
redirects itself and checks each hop against the hosts configured for that registry
(``download_hosts``), refuses credentials in URLs, refuses a declared size over the cap before
reading the body, and ``iter_body`` stops reading once the cap is passed, so a lying
``Content-Length`` cannot fill the disk. Transport failures become ``DownloadUnavailable``
(retry later); a refusal of ours becomes ``DownloadRefused`` (retrying cannot help). Both
functions work over any httpx transport: the worker's registry clients run httpx over
aiohttp's pool (``forage``'s worker does), which reports a refused connection as
``ConnectTimeout``; either way it is retryable. The archive job and the package mirror share
it: one policy for every byte Forage takes from a registry.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from indexers.base import TRANSIENT_STATUS, redact, retry_after_seconds
from indexers.errors import DownloadRefused, DownloadUnavailable

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which hosts one registry's downloads may touch, and how large a download may be.

    ``hosts`` entries are ``name`` (any port on that name) or ``name:port``; ``max_size`` is in
    bytes. Plain ``http`` is allowed only when ``allow_http`` is set (loopback fakes, private
    mirrors).
    """

    hosts: frozenset[str]
    max_size: int
    allow_http: bool = False

    @classmethod
    def of(cls, hosts: Iterable[str], *, max_size: int, allow_http: bool = False) -> HostPolicy:
        """Build a policy from configuration values (case-insensitive host names)."""
        return cls(frozenset(h.lower() for h in hosts), max_size, allow_http)

    def check(self, url: httpx.URL) -> None:
        """Raise ``DownloadRefused`` unless ``url`` may be fetched under this policy."""
        shown = redact(url)
        if url.scheme not in ("https", "http") or (url.scheme == "http" and not self.allow_http):
            raise DownloadRefused(shown, f"scheme {url.scheme!r} is not allowed")
        if url.userinfo:
            raise DownloadRefused(shown, "credentials in the URL are not allowed")
        host = url.host.lower()
        port = url.port or (443 if url.scheme == "https" else 80)
        if host not in self.hosts and f"{host}:{port}" not in self.hosts:
            raise DownloadRefused(shown, f"host {host!r} is not a configured download host")


@asynccontextmanager
async def open_download(
    client: httpx.AsyncClient, url: str, *, policy: HostPolicy, expected_size: int | None = None
) -> AsyncIterator[httpx.Response]:
    """Open ``url`` (following allowed redirects) and yield the response, body unread."""
    if expected_size is not None and expected_size > policy.max_size:
        raise DownloadRefused(redact(url), f"size {expected_size} exceeds cap {policy.max_size}")
    current = httpx.URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        policy.check(current)
        try:
            request = client.build_request("GET", current, headers={"accept-encoding": "identity"})
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.TimeoutException as exc:
            raise DownloadUnavailable(redact(current), f"timeout ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise DownloadUnavailable(redact(current), f"transport error: {exc!r}") from exc
        try:
            if response.is_redirect:
                location = response.headers.get("location", "")
                current = httpx.URL(urljoin(str(current), location))
                continue
            _check_status(response, current)
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > policy.max_size:
                raise DownloadRefused(
                    redact(current), f"Content-Length {declared} exceeds cap {policy.max_size}"
                )
            yield response
            return
        finally:
            await response.aclose()
    raise DownloadRefused(redact(url), f"more than {MAX_REDIRECTS} redirects")


def _check_status(response: httpx.Response, url: httpx.URL) -> None:
    status = response.status_code
    if status in TRANSIENT_STATUS:
        raise DownloadUnavailable(
            redact(url), f"HTTP {status}", retry_after=retry_after_seconds(response)
        )
    if status != 200:
        raise DownloadRefused(redact(url), f"HTTP {status}")


async def iter_body(
    response: httpx.Response,
    *,
    policy: HostPolicy,
    gather: int = 0,
    on_bytes: Callable[[int], None] | None = None,
) -> AsyncIterator[bytes | bytearray]:
    """Yield the body as sent, in chunks, enforcing the size cap and turning cuts into errors.

    The bytes are never decoded: an upstream digest covers the file, and some servers label
    ``.tar.gz`` files ``Content-Encoding: gzip`` (pip reads those raw for the same reason).
    Reading raw also skips httpx's decoder layer, a sixth of the download's CPU. With
    ``gather``, network chunks are joined into pieces of at least that many bytes (the last
    may be shorter), each a new ``bytearray`` the caller may keep; ``on_bytes(n)`` is called
    as chunks arrive (progress bars).
    """
    received = 0
    piece = bytearray()
    try:
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > policy.max_size:
                raise DownloadRefused(redact(response.url), f"body exceeds cap {policy.max_size}")
            if on_bytes is not None:
                on_bytes(len(chunk))
            if not gather:
                yield chunk
                continue
            piece += chunk
            if len(piece) >= gather:
                yield piece
                piece = bytearray()
    except httpx.TimeoutException as exc:
        raise DownloadUnavailable(redact(response.url), "timeout while reading body") from exc
    except httpx.TransportError as exc:
        raise DownloadUnavailable(
            redact(response.url), f"body cut short after {received} bytes: {exc!r}"
        ) from exc
    if piece:
        yield piece


__all__ = [
    "MAX_REDIRECTS",
    "DownloadRefused",
    "DownloadUnavailable",
    "HostPolicy",
    "iter_body",
    "open_download",
]
