"""HTTP plumbing the three pinning clients share: requests, error translation, uploads, CIDs.

``HttpBackend`` sends every request through one place, which turns ``httpx`` transport
errors and HTTP error statuses into ``BackendUnavailable`` / ``BackendRejected`` (the
``httpx._transports.default.map_httpcore_exceptions`` idea), reads ``Retry-After`` (RFC 9110
§10.2.3: delay-seconds or an HTTP-date) and keeps the access token out of every message.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from multiformats import CID

from storage.errors import BackendError, BackendRejected, BackendUnavailable, InvalidCID

log = logging.getLogger(__name__)

#: The longest pin name sent: Kubo refuses more than 255 bytes, the Pinning Service API 255
#: characters. Names are informational, so a longer one is cut rather than refused.
MAX_NAME_BYTES = 255
#: How much of a server's error text goes into an exception message.
MAX_MESSAGE = 300

CidKey = tuple[int, bytes]
T = TypeVar("T")

Params = Sequence[tuple[str, str]] | Mapping[str, str]


def cid_key(text: str) -> CidKey:
    """Parse ``text`` as a CID and return what identifies its content: (codec, multihash).

    CIDv0 and CIDv1 of the same dag-pb block share a key, and the multibase does not matter,
    so a backend that answers in another spelling still matches. Raises ``InvalidCID``.
    """
    if not isinstance(text, str) or not text:
        raise InvalidCID(text, "expected a non-empty CID string")
    try:
        cid = CID.decode(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidCID(text, str(exc)) from exc
    return cid.codec.code, bytes(cid.digest)


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Yield consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pin_name(name: str | None) -> str | None:
    """Cut ``name`` to ``MAX_NAME_BYTES`` UTF-8 bytes without splitting a character."""
    if name is None:
        return None
    return name.encode()[:MAX_NAME_BYTES].decode(errors="ignore")


def parse_time(value: object) -> datetime | None:
    """Parse an RFC 3339 timestamp; ``None`` for absent, malformed or Go's zero time."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.year <= 1:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or HTTP-date), or ``None``."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_payload(response: httpx.Response) -> Any:
    """The JSON value of a read error body, or ``None`` when it is not JSON."""
    try:
        return json.loads(response.content) if response.content.strip() else None
    except ValueError:
        return None


def _public_url(url: str) -> str:
    """``url`` without user info, for reprs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def multipart_file(
    chunks: AsyncIterable[bytes], *, boundary: str, filename: str
) -> AsyncIterator[bytes]:
    """Frame one ``file`` form part around ``chunks`` without holding them in memory.

    httpx's own multipart encoder needs a synchronous file; this streams an async iterator,
    as Kubo's ``dag/import`` and Cluster's ``/add`` read a ``multipart/form-data`` body.
    """
    yield (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{quote(filename)}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    async for chunk in chunks:
        if chunk:
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def multipart_upload(
    chunks: AsyncIterable[bytes], *, filename: str
) -> tuple[AsyncIterator[bytes], dict[str, str]]:
    """Return the streamed body and the ``Content-Type`` header for one uploaded file."""
    boundary = secrets.token_hex(16)
    body = multipart_file(chunks, boundary=boundary, filename=filename)
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class HttpBackend:
    """Shared state and request path of the pinning clients.

    Holds the caller's ``httpx.AsyncClient`` (its timeouts and pool apply), the base URL and
    the optional access token, which is sent per request as ``Authorization: Bearer`` and is
    kept out of ``repr``, logs and exception messages.
    """

    default_name: ClassVar[str]

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        token: str | None = None,
        name: str | None = None,
    ) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._token = token or None
        self._name = name or self.default_name

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self._name!r}, base_url={_public_url(self._base_url)!r})"
        )

    def _scrub(self, text: str) -> str:
        """Remove the token from text a server sent back (some echo the header they refuse)."""
        if self._token:
            text = text.replace(self._token, "***")
        return text

    def _server_message(self, payload: Any, text: str) -> str:
        """The human part of an error body; subclasses know their API's error shape."""
        return text

    def _transient(self, status: int, payload: Any) -> bool:
        """Whether an error status (with its parsed body) is worth retrying as is."""
        return status in (408, 429) or status >= 500

    def _error(self, method: str, path: str, response: httpx.Response) -> BackendError:
        """Translate an HTTP error status (body already read) into a storage exception."""
        status = response.status_code
        text = response.text.strip()
        payload = error_payload(response)
        detail = self._server_message(payload, text)[:MAX_MESSAGE] or response.reason_phrase
        message = self._scrub(f"{method} {path}: HTTP {status}: {detail}")
        if self._transient(status, payload):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return BackendUnavailable(self._name, message, status=status, retry_after=retry_after)
        return BackendRejected(self._name, message, status=status)

    @asynccontextmanager
    async def _open(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json_body: object = None,
        content: AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: Iterable[int] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send a request and yield the streamed response; errors come out translated.

        Statuses in ``ok`` are yielded as they are (for "not found is fine" cases); any
        other status of 400 or more is raised through ``_error``.
        """
        request_headers = {"Accept": "application/json"}
        if self._token:
            request_headers["Authorization"] = f"Bearer {self._token}"
        request_headers.update(headers or {})
        query: list[tuple[str, str | int | float | bool | None]] = list(
            params.items() if isinstance(params, Mapping) else params or ()
        )
        request = self._client.build_request(
            method,
            self._base_url + path,
            params=query,
            json=json_body,
            content=content,
            headers=request_headers,
        )
        log.debug("%s: %s %s", self._name, method, path)
        allowed = set(ok or ())
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(self._name, f"{method} {path}: timed out") from exc
        except httpx.TransportError as exc:
            reason = self._scrub(str(exc)) or type(exc).__name__
            raise BackendUnavailable(self._name, f"{method} {path}: {reason}") from exc
        try:
            if response.status_code >= 400 and response.status_code not in allowed:
                await response.aread()
                raise self._error(method, path, response)
            yield response
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(self._name, f"{method} {path}: timed out reading") from exc
        except httpx.TransportError as exc:
            reason = self._scrub(str(exc)) or type(exc).__name__
            raise BackendUnavailable(self._name, f"{method} {path}: {reason}") from exc
        finally:
            await response.aclose()

    async def _json(self, response: httpx.Response, method: str, path: str) -> Any:
        """Read a whole JSON body; a body that does not parse is a transient fault."""
        body = await response.aread()
        try:
            return json.loads(body) if body.strip() else None
        except ValueError as exc:
            raise BackendUnavailable(
                self._name, f"{method} {path}: malformed JSON response", status=response.status_code
            ) from exc

    async def _ndjson(self, response: httpx.Response, method: str, path: str) -> AsyncIterator[Any]:
        """Yield one JSON value per line of a streamed body, in constant memory."""
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise BackendUnavailable(
                    self._name,
                    f"{method} {path}: malformed NDJSON line",
                    status=response.status_code,
                ) from exc

    def _shape_error(self, method: str, path: str, what: str) -> BackendRejected:
        """A well-formed answer of the wrong shape: retrying will not change it."""
        return BackendRejected(self._name, f"{method} {path}: unexpected response: {what}")
