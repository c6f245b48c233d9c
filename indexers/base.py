"""The contract every registry indexer implements, and the HTTP plumbing they share.

An indexer is a small class over an ``httpx.AsyncClient`` that the caller owns (tests aim it
at a loopback fake; ``forage`` shares one pool per registry). It persists nothing: the caller
stores the cursor (a frozen dataclass, round-tripped through :meth:`Indexer.cursor_to_dict`
and :meth:`Indexer.cursor_from_dict`) in the same transaction as the rows a page produced.

To add a registry, subclass :class:`Indexer` and implement:

- :meth:`start_cursor` -- where a new watcher begins (usually the feed's current head);
- :meth:`changes` -- one page of changed package names after a cursor, with the next cursor;
  the docstring must say whether the cursor is inclusive, how entries are ordered and what an
  empty page means;
- :meth:`package` -- everything the registry says about one package, mapped to
  :class:`~indexers.types.PackageInfo` by a pure function of its documents; when the call
  answers a feed entry, the caller passes that :class:`~indexers.types.Change` and the
  indexer uses whatever freshness hint its registry puts there (a revision, a serial, a
  version the feed named);
- :meth:`normalize_name` -- the registry's canonical name, raising
  :class:`~indexers.errors.InvalidName` for anything that is not a valid name;
- :meth:`is_prerelease` -- whether a version string is a pre-release in the registry's rules;
- :meth:`cursor_at` -- the cursor that walks the feed from a chosen point of its history
  (``"origin"``, a serial, a time), so a bootstrap archives what was published before;
- :meth:`inventory` (and :meth:`inventory_start`) -- the registry's own listing of what it
  holds, page by page, so a reconcile sweep finds what the feed never announced.

Raise :class:`~indexers.errors.UpstreamUnavailable` for transient failures (with
``retry_after`` when the server sent one), :class:`~indexers.errors.PackageNotFound` when the
registry says the package does not exist, :class:`~indexers.errors.FeedError` when a feed
document has an unexpected shape. Never retry in a loop here: the caller's job queue does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Generic
from urllib.parse import urlsplit

import httpx

from indexers.errors import FeedError, InvalidPosition, PackageNotFound, UpstreamUnavailable
from indexers.types import Change, CursorT, Inventory, PackageInfo, Page

log = logging.getLogger(__name__)

USER_AGENT = "forage-indexer/0.1 (+https://github.com/foragepm)"

#: Status codes that mean "try again later" rather than "this request is wrong".
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Return the server's ``Retry-After`` in seconds (delta or HTTP date), if it sent one."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    date = response.headers.get("date")
    now = parsedate_to_datetime(date) if date else None
    if now is None:
        return None
    return max(0.0, (when - now).total_seconds())


def redact(url: str | httpx.URL) -> str:
    """Drop credentials and the query string from a URL before it goes into a log or error."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class Indexer(ABC, Generic[CursorT]):
    """Base of one registry's indexer; see the module docstring for the contract."""

    #: The purl type of the registry (``npm``, ``pypi``, ``golang``).
    ecosystem: ClassVar[str]
    #: The cursor dataclass this indexer pages with.
    cursor_type: ClassVar[type[Any]]
    #: How often a watcher should poll the feed unless configured otherwise.
    default_interval: ClassVar[timedelta] = timedelta(minutes=5)
    #: How the registry names what the index sees leave it by absence (a release, a file no
    #: longer listed; a package answering 404): stored as ``"<ecosystem>: <note>"``, so a
    #: removal says how it happened in the registry's own words (PyPI's changelog actions).
    release_removed: ClassVar[str] = "release no longer listed"
    file_removed: ClassVar[str] = "file no longer listed"
    package_removed: ClassVar[str] = "package removed"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @abstractmethod
    async def start_cursor(self) -> CursorT:
        """Return the cursor a new watcher starts from."""

    @abstractmethod
    async def changes(self, cursor: CursorT) -> Page[CursorT]:
        """Return the page of changes after ``cursor`` and the cursor that follows it."""

    @abstractmethod
    async def package(self, name: str, *, change: Change | None = None) -> PackageInfo:
        """Return what the registry says about ``name`` (already normalized).

        ``change`` is the feed entry that prompted the call, if any: an answer older than it
        raises :class:`~indexers.errors.StaleMetadata` (retry later) rather than hiding what
        the feed announced. Its ``name`` is not compared with ``name``.
        """

    @staticmethod
    @abstractmethod
    def normalize_name(name: str) -> str:
        """Return the registry's canonical spelling of ``name``; raise ``InvalidName``.

        A static method: naming rules need no network, so callers (key parsing) use it
        without building an indexer.
        """

    @staticmethod
    @abstractmethod
    def is_prerelease(version: str) -> bool:
        """Whether ``version`` is a pre-release by the registry's own version rules.

        Static, like :meth:`normalize_name`: selection applies it without a network.
        """

    async def cursor_at(self, position: str) -> CursorT:
        """The cursor that reads the feed from ``position``: ``"origin"`` (its beginning), a
        serial for numbered feeds, an RFC 3339 time for time-ordered ones.

        A bootstrap sets the watcher's cursor here so its next runs walk the registry's
        history; raise :class:`~indexers.errors.InvalidPosition` for what the feed cannot take.
        """
        raise InvalidPosition(self.ecosystem, position, "this feed cannot be repositioned")

    def inventory_start(self, feed: CursorT | None) -> str | None:
        """The token a reconcile sweep starts its :meth:`inventory` from, given the watcher's
        cursor (``None`` if it has none); ``None``: the beginning of the listing."""
        return None

    async def inventory(self, after: str | None) -> Inventory:
        """One page of what the registry holds, after the opaque token ``after``.

        Each entry names a package with the registry's version stamp, or a release; a sweep
        compares them with the index to find what the feed missed. Registries without a
        listing raise :class:`~indexers.errors.FeedError`.
        """
        raise FeedError(self.ecosystem, "this registry offers no inventory to reconcile with")

    def cursor_to_dict(self, cursor: CursorT) -> dict[str, Any]:
        """Serialize a cursor for the caller to store as JSON."""
        return dataclasses.asdict(cursor)  # type: ignore[call-overload,no-any-return]

    def cursor_from_dict(self, data: Mapping[str, Any]) -> CursorT:
        """Rebuild a cursor stored by :meth:`cursor_to_dict`."""
        return self.cursor_type(**data)  # type: ignore[no-any-return]

    @classmethod
    def cursor_position(cls, data: Mapping[str, Any]) -> Any:
        """The feed position a stored cursor stands at, comparable with ``Page.head``.

        By convention the cursor dataclass's first field (a seq, a serial, a timestamp), so
        status reports can show cursor and head side by side without knowing the registry.
        """
        return data.get(dataclasses.fields(cls.cursor_type)[0].name)

    async def get(
        self,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        not_found: tuple[str, str] | None = None,
    ) -> httpx.Response:
        """GET ``url`` and translate transport errors and status codes to indexer errors.

        ``not_found`` is ``(ecosystem, name)``: a 404 or 410 then raises ``PackageNotFound``.
        """
        return await self.request("GET", url, params=params, headers=headers, not_found=not_found)

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        not_found: tuple[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request (``POST`` for XML-RPC) with the same translation as :meth:`get`."""
        sent = {"user-agent": USER_AGENT, **(headers or {})}
        try:
            response = await self.client.request(
                method, url, params=params, headers=sent, content=content
            )
        except httpx.TimeoutException as exc:
            raise UpstreamUnavailable(redact(url), f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(redact(url), f"transport error: {exc!r}") from exc
        if response.status_code in (404, 410) and not_found is not None:
            raise PackageNotFound(*not_found, answer=registry_answer(response, url))
        if response.status_code in TRANSIENT_STATUS:
            raise UpstreamUnavailable(
                redact(url),
                f"HTTP {response.status_code}",
                retry_after=retry_after_seconds(response),
            )
        if response.status_code >= 400:
            raise FeedError(redact(url), f"unexpected HTTP {response.status_code}")
        return response

    async def get_json(
        self,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        not_found: tuple[str, str] | None = None,
    ) -> Any:
        """GET ``url`` and decode its JSON body; a body that is not JSON is a ``FeedError``."""
        response = await self.get(url, params=params, headers=headers, not_found=not_found)
        try:
            return json.loads(response.content)
        except ValueError as exc:
            raise FeedError(redact(url), f"body is not JSON: {exc}") from exc


#: The most characters of a registry's error body kept as its answer.
MAX_ANSWER_BODY = 200


def registry_answer(response: httpx.Response, url: str) -> str:
    """A registry's refusal as one line to record: status, URL (credentials redacted) and the
    start of the body, control characters dropped."""
    text = response.content[: MAX_ANSWER_BODY * 4].decode("utf-8", "replace")
    body = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    reason = f" {response.reason_phrase}" if response.reason_phrase else ""
    answer = f"HTTP {response.status_code}{reason} from {redact(url)}"
    return f"{answer}: {body[:MAX_ANSWER_BODY]}" if body else answer


def parse_time(value: Any) -> datetime | None:
    """Parse a registry's ISO 8601 timestamp (``Z`` allowed); naive values are taken as UTC.

    Anything else (absent, not a string, unparseable) is ``None``: a publish time is
    informative, never worth failing an import for.
    """
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        log.debug("unparseable time %r", value)
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


#: The position that names a feed's beginning in :meth:`Indexer.cursor_at`.
ORIGIN = "origin"


def parse_position(ecosystem: str, position: str) -> int | datetime | None:
    """Read a feed position: ``None`` for ``"origin"``, an ``int`` for a serial, an aware
    ``datetime`` for an RFC 3339 time; :class:`~indexers.errors.InvalidPosition` otherwise."""
    text = position.strip()
    if text.lower() == ORIGIN:
        return None
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in text.upper():
        raise InvalidPosition(
            ecosystem, position, "expected 'origin', a serial number or an RFC 3339 time"
        )
    return moment.astimezone(UTC)


def expect(condition: bool, url: str, reason: str) -> None:
    """Raise ``FeedError`` unless ``condition``: a document had an unexpected shape."""
    if not condition:
        raise FeedError(redact(url), reason)


__all__ = [
    "ORIGIN",
    "TRANSIENT_STATUS",
    "USER_AGENT",
    "Indexer",
    "expect",
    "parse_position",
    "parse_time",
    "redact",
    "retry_after_seconds",
]
