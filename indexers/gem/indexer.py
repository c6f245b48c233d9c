"""RubyGems: the compact index's ``/versions`` file as the change feed, ``/info`` per gem.

Sources (read them before changing behaviour):

- ``rubygems/guides: rubygems-org-compact-index-api.md``: ``/versions`` is append-only
  between rewrites and meant to be fetched with ``Range: bytes=<size>-``; responses carry
  ``Repr-Digest`` (``sha-256`` of the *whole* file, even on a 206; the older ``Digest``
  header is deprecated) and an ``ETag``; the file is recomputed now and then (yanks
  compacted out, a new ``created_at``), which invalidates every client's offset;
- ``rubygems/compact_index`` (the server side: ``VersionsFile``, ``GemInfo``) and Bundler's
  ``compact_index_client`` (``updater.rb``: a ranged request answered 200 replaces the
  copy, a digest mismatch refetches it whole) for the line formats (:mod:`.compact`);
- ``rubygems/guides: rubygems-org-api.md`` for ``/api/v1/versions/NAME.json`` (``number``,
  ``platform``, ``created_at``, ``sha``, ``prerelease``): the compact index has no publish
  times, so only they come from the JSON API.

The change signal, and why: the compact index ``/versions`` file. Every push and yank
appends a line naming the gem, so a byte offset is an exact, cheap cursor (one ranged GET
per poll, as Bundler does), where the JSON API's ``timeframe_versions`` needs overlapping
time windows of 30 entries a page and ``activity/just_updated`` is a lossy top 50. The
indexer keeps no copy of the file, so it cannot check the whole-file ``Repr-Digest`` of a
206; instead each ranged request starts :data:`OVERLAP` bytes before the cursor and the
cursor keeps the SHA-256 of those bytes: a rewritten file fails that check (or answers
416, being shorter, or 200 to a range), and the walk starts again from byte 0 -- every gem
of the rewritten file becomes a change, which imports deduplicate. A whole-file 200 is
checked against its ``Repr-Digest``/``Digest`` when the server sends one.

Cursor (:class:`GemCursor`): exclusive byte offset into ``/versions`` (the bytes before it
were read) plus that overlap digest; a page is at most ``page_bytes`` of whole lines, in
file order (oldest first); an empty page means caught up and returns the same cursor.
Each gem named on a page is one change (yanks too: the import finds the version gone from
``/info`` and records it as ``"gem: version yanked"``). ``head`` is the file's size.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from indexers.base import (
    TRANSIENT_STATUS,
    USER_AGENT,
    Indexer,
    parse_position,
    parse_time,
    redact,
    retry_after_seconds,
)
from indexers.errors import (
    FeedError,
    InvalidName,
    InvalidPosition,
    PackageNotFound,
    UpstreamUnavailable,
)
from indexers.gem.compact import (
    RUBY,
    InfoEntry,
    body_lines,
    gem_filename,
    parse_info,
    parse_versions,
)
from indexers.types import (
    Artifact,
    Change,
    Inventory,
    InventoryEntry,
    PackageInfo,
    Page,
    Release,
)

log = logging.getLogger(__name__)

ECOSYSTEM = "gem"
#: Bytes re-read before the cursor to prove the file was not rewritten under it.
OVERLAP = 256
#: rubygems.org's longest name (``Gemcutter::MAX_FIELD_LENGTH``).
MAX_NAME_LENGTH = 255
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LETTER = re.compile(r"[A-Za-z]")
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+)")


def validate_name(name: str) -> str:
    """Return ``name`` if RubyGems could have published it; raise ``InvalidName``.

    rubygems.org's ``Rubygem`` rules: letters, digits, ``.``, ``-``, ``_``; at least one
    letter; at most 255 characters. Names are compared case-insensitively for new pushes but
    spelled as pushed (``Rack`` and ``rack`` are URLs of their own), so case is kept.
    """
    if not name:
        raise InvalidName(ECOSYSTEM, name, "empty name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(ECOSYSTEM, name[:100], f"longer than {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidName(ECOSYSTEM, name, "only letters, digits, '.', '-' and '_', first alnum")
    if not _LETTER.search(name):
        raise InvalidName(ECOSYSTEM, name, "a gem name needs a letter")
    return name


def _tail(data: bytes) -> str:
    return hashlib.sha256(data[-OVERLAP:] if data else b"").hexdigest()


@dataclass(frozen=True, slots=True)
class GemCursor:
    """Bytes of ``/versions`` read (exclusive offset) and the SHA-256 of the up to
    :data:`OVERLAP` bytes before it."""

    offset: int
    tail: str


#: Where a walk of the whole file starts.
ORIGIN_CURSOR = GemCursor(0, _tail(b""))


def parse_digest_header(value: str) -> dict[str, bytes]:
    """``Repr-Digest: sha-256=:B64:`` (RFC 9530), the older quoted or bare forms and
    ``Digest: sha-256=B64`` (RFC 3230): algorithm (lower case) -> raw digest."""
    found: dict[str, bytes] = {}
    for item in value.split(","):
        algorithm, sep, encoded = item.strip().partition("=")
        if not sep:
            continue
        encoded = encoded.strip().strip(':"')
        try:
            found[algorithm.strip().lower()] = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
    return found


def check_whole_file(response: httpx.Response, url: str) -> None:
    """A whole ``/versions`` body must match the server's SHA-256 when it states one."""
    for header in ("repr-digest", "digest"):
        expected = parse_digest_header(response.headers.get(header, "")).get("sha-256")
        if expected is not None:
            if hashlib.sha256(response.content).digest() != expected:
                raise UpstreamUnavailable(redact(url), f"body does not match its {header}")
            return


def _changes(lines_text: bytes, url: str, *, header: bool) -> tuple[Change, ...]:
    try:
        text = lines_text.decode()
    except UnicodeDecodeError as exc:
        raise FeedError(redact(url), "versions file is not UTF-8") from exc
    seen: dict[str, Change] = {}
    for line in parse_versions(text, url, header=header):
        try:
            validate_name(line.name)
        except InvalidName as exc:
            log.warning("skipping gem versions line: %s", exc)
            continue
        seen.pop(line.name, None)
        seen[line.name] = Change(name=line.name)
    return tuple(seen.values())


def map_info(
    name: str, entries: list[InfoEntry], *, base_url: str, times: Mapping[str, datetime]
) -> PackageInfo:
    """``/info`` entries as releases: one per version, one artifact per platform gem.

    ``times`` maps ``V[-PLATFORM]`` to its push time (JSON API). The info lines are kept in
    ``extra["info"]`` so the mirror can render ``/info`` and gemspecs from the index alone.
    """
    by_version: dict[str, list[InfoEntry]] = {}
    for entry in entries:
        by_version.setdefault(entry.version, []).append(entry)
    releases = []
    for version, platforms in by_version.items():
        artifacts = []
        for entry in platforms:
            filename = gem_filename(name, entry.version, entry.platform)
            if entry.checksum is None:
                log.warning("gem %s has no checksum in /info; not archived", filename)
                continue
            artifacts.append(
                Artifact(
                    filename=filename,
                    url=f"{base_url}/gems/{filename}",
                    size=None,
                    digests={"sha256": entry.checksum},
                    kind="gem" if entry.platform == RUBY else f"gem-{entry.platform}",
                    uploaded_at=times.get(entry.key),
                )
            )
        pushed = [t for e in platforms if (t := times.get(e.key)) is not None]
        published = min(pushed) if pushed else None
        releases.append(
            Release(version=version, artifacts=tuple(artifacts), published_at=published)
        )
    return PackageInfo(
        ecosystem=ECOSYSTEM,
        name=name,
        display_name=name,
        releases=tuple(releases),
        extra={"info": {entry.key: entry.line() for entry in entries}},
    )


def push_times(doc: Any) -> dict[str, datetime]:
    """``V[-PLATFORM]`` -> ``created_at`` from ``/api/v1/versions/NAME.json``."""
    times: dict[str, datetime] = {}
    for item in doc if isinstance(doc, list) else ():
        if not isinstance(item, dict) or not isinstance(item.get("number"), str):
            continue
        platform = item.get("platform") or RUBY
        when = parse_time(item.get("created_at"))
        if when is not None and isinstance(platform, str):
            key = item["number"] if platform == RUBY else f"{item['number']}-{platform}"
            times[key] = when
    return times


class GemIndexer(Indexer[GemCursor]):
    """Follow a RubyGems registry's compact index (``registry_url`` serves ``/versions``,
    ``/info/NAME``, ``/names``, ``/gems/FILE.gem`` and ``/api/v1``); see the module
    docstring for the cursor."""

    ecosystem = ECOSYSTEM
    cursor_type = GemCursor
    default_interval = timedelta(minutes=1)
    release_removed = "version yanked"
    file_removed = "platform gem yanked"
    package_removed = "gem removed"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        registry_url: str,
        page_bytes: int = 1 << 20,
        names_page: int = 10_000,
    ) -> None:
        super().__init__(client)
        if page_bytes < 1024:
            raise ValueError(f"page_bytes must be >= 1024, got {page_bytes}")
        self.registry_url = registry_url.rstrip("/")
        self.page_bytes = page_bytes
        self.names_page = names_page

    @staticmethod
    def normalize_name(name: str) -> str:
        return validate_name(name)

    @staticmethod
    def is_prerelease(version: str) -> bool:
        """``Gem::Version#prerelease?``: any letter (``1.0.0.rc1``, ``2.0.pre``)."""
        return bool(_LETTER.search(version))

    @property
    def versions_url(self) -> str:
        return f"{self.registry_url}/versions"

    async def _ranged(self, byte_range: str) -> httpx.Response:
        """GET ``/versions`` with ``Range``; 200, 206 and 416 are answers, not errors."""
        url = self.versions_url
        headers = {"user-agent": USER_AGENT, "range": byte_range, "accept-encoding": "identity"}
        try:
            response = await self.client.get(url, headers=headers)
        except httpx.TimeoutException as exc:
            raise UpstreamUnavailable(redact(url), f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(redact(url), f"transport error: {exc!r}") from exc
        if response.status_code in TRANSIENT_STATUS:
            raise UpstreamUnavailable(
                redact(url),
                f"HTTP {response.status_code}",
                retry_after=retry_after_seconds(response),
            )
        if response.status_code not in (200, 206, 416):
            raise FeedError(redact(url), f"unexpected HTTP {response.status_code}")
        return response

    def _content_range(self, response: httpx.Response) -> tuple[int | None, int]:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
        if match is None:
            raise FeedError(redact(self.versions_url), "a ranged answer without Content-Range")
        start = int(match.group(1)) if match.group(1) is not None else None
        return start, int(match.group(3))

    async def start_cursor(self) -> GemCursor:
        """The file's end: its size and the digest of its last bytes."""
        response = await self._ranged(f"bytes=-{OVERLAP}")
        if response.status_code == 200:
            check_whole_file(response, self.versions_url)
            return GemCursor(len(response.content), _tail(response.content))
        if response.status_code == 416:
            return ORIGIN_CURSOR
        _, size = self._content_range(response)
        return GemCursor(size, _tail(response.content))

    async def cursor_at(self, position: str) -> GemCursor:
        """Only ``origin``: byte offsets and times are not positions a user can name."""
        if parse_position(ECOSYSTEM, position) is not None:
            raise InvalidPosition(ECOSYSTEM, position, "the versions file walks from 'origin'")
        return ORIGIN_CURSOR

    def _page(self, data: bytes, cursor: GemCursor, size: int, prefix: bytes) -> Page[GemCursor]:
        """The whole lines of ``data`` (the file from ``cursor.offset``), at most a page."""
        window = data[: self.page_bytes]
        at_end = cursor.offset + len(data) >= size and len(window) == len(data)
        cut = window.rfind(b"\n") + 1
        if cut == 0 and window and not at_end:
            raise FeedError(redact(self.versions_url), f"a line longer than {self.page_bytes}")
        consumed = window[:cut]
        changes = _changes(consumed, self.versions_url, header=cursor.offset == 0)
        offset = cursor.offset + len(consumed)
        following = GemCursor(offset, _tail(prefix + consumed) if consumed else cursor.tail)
        return Page(changes=changes, cursor=following, done=offset >= size, head=size)

    def _rewritten(self, size: int) -> Page[GemCursor]:
        log.warning("gem versions file was rewritten; walking it again from the start")
        return Page(changes=(), cursor=ORIGIN_CURSOR, done=False, head=size)

    async def changes(self, cursor: GemCursor) -> Page[GemCursor]:
        overlap = min(OVERLAP, cursor.offset)
        start = cursor.offset - overlap
        response = await self._ranged(f"bytes={start}-{cursor.offset + self.page_bytes - 1}")
        if response.status_code == 416:
            _, size = self._content_range(response)
            if size < cursor.offset:
                return self._rewritten(size)
            return Page(changes=(), cursor=cursor, done=True, head=size)
        body = response.content
        if response.status_code == 200:
            check_whole_file(response, self.versions_url)
            before = body[start : cursor.offset]
            if len(body) < cursor.offset or _tail(before) != cursor.tail:
                return self._rewritten(len(body))
            return self._page(body[cursor.offset :], cursor, len(body), before)
        first, size = self._content_range(response)
        if first != start or _tail(body[:overlap]) != cursor.tail:
            return self._rewritten(size)
        return self._page(body[overlap:], cursor, size, body[:overlap])

    async def package(self, name: str, *, change: Change | None = None) -> PackageInfo:
        """``/info/NAME`` mapped to releases, with push times from the JSON API."""
        validate_name(name)
        url = f"{self.registry_url}/info/{name}"
        response = await self.get(url, not_found=(ECOSYSTEM, name))
        try:
            entries = parse_info(response.content.decode(), url)
        except UnicodeDecodeError as exc:
            raise FeedError(redact(url), "info is not UTF-8") from exc
        try:
            doc = await self.get_json(
                f"{self.registry_url}/api/v1/versions/{name}.json", not_found=(ECOSYSTEM, name)
            )
        except PackageNotFound:
            doc = []
        return map_info(name, entries, base_url=self.registry_url, times=push_times(doc))

    async def inventory(self, after: str | None) -> Inventory:
        """``/names`` (sorted), ``names_page`` names after ``after`` a page; no stamps, so a
        sweep finds gems the index lacks (new versions come from the feed)."""
        url = f"{self.registry_url}/names"
        response = await self.get(url)
        names = sorted(
            line
            for line in body_lines(response.content.decode(errors="replace"))
            if after is None or line > after
        )
        entries = []
        for name in names[: self.names_page]:
            try:
                entries.append(InventoryEntry(Change(name=validate_name(name))))
            except InvalidName:
                continue
        last = names[: self.names_page][-1] if names else after
        return Inventory(tuple(entries), last, done=len(names) <= self.names_page)


__all__ = [
    "ECOSYSTEM",
    "OVERLAP",
    "GemCursor",
    "GemIndexer",
    "check_whole_file",
    "map_info",
    "parse_digest_header",
    "push_times",
    "validate_name",
]
