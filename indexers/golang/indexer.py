"""The Go modules indexer: the module index feed, a GOPROXY and the checksum database.

- Feed: ``<index>/index?since=<RFC 3339>&limit=<n>`` answers newline-delimited JSON objects
  ``{"Path", "Version", "Timestamp"}`` in Timestamp order, at most 2,000 a page; ``since`` is
  inclusive (https://index.golang.org/ and swh-lister's ``golang/lister.py``).
- Proxy: ``<proxy>/<escaped module>/@v/list``, ``@v/<escaped version>.info`` / ``.mod`` /
  ``.zip`` and ``/@latest`` (https://go.dev/ref/mod#goproxy-protocol).
- Checksum database: ``<sumdb>/lookup/<escaped module>@<escaped version>`` answers a record
  number, the two go.sum lines of that version and a signed tree note
  (https://go.dev/ref/mod#checksum-database, https://go.dev/design/25530-sumdb).

Path and version rules, case-encoding and the ``h1:`` hash live in :mod:`indexers.golang.gomod`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from indexers.base import expect, redact
from indexers.errors import FeedError, IndexerError, InvalidName, PackageNotFound
from indexers.golang.gomod import (
    ECOSYSTEM,
    check_path,
    check_version,
    compare_versions,
    escape_path,
    escape_version,
    is_prerelease,
    is_pseudo_version,
    is_semver,
    pseudo_version_time,
    sort_versions,
    split_path_version,
)
from indexers.golang.history import GoHistory
from indexers.types import Artifact, Change, PackageInfo, Page, Release

log = logging.getLogger(__name__)

#: The index answers at most this many entries a page.
MAX_PAGE_SIZE = 2000
#: The first timestamp of the public index: a cursor that starts here lists everything.
INDEX_EPOCH = "2019-04-10T19:08:52.997264Z"

_TIMESTAMP_RE = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})"
)
_H1_RE = re.compile(r"h1:[A-Za-z0-9+/]{43}=")
_TREE_NOTE = "go.sum database tree\n"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_ns(text: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (``None`` if malformed).

    Timestamps are compared as integers: the index prints Go's ``RFC3339Nano``, which drops
    trailing zeros, so its strings do not sort as text and Python's datetime keeps only
    microseconds.
    """
    match = _TIMESTAMP_RE.fullmatch(text)
    if match is None:
        return None
    base, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return seconds * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


def format_timestamp(moment: datetime | int) -> str:
    """Format an aware datetime or epoch nanoseconds as the index does (UTC, ``Z``, Go's
    ``RFC3339Nano``: no trailing zeros); the index rejects other offsets."""
    if isinstance(moment, datetime):
        moment = (moment - _EPOCH) // timedelta(microseconds=1) * 1000
    seconds, fraction = divmod(moment, 1_000_000_000)
    text = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


def _parse_time(text: str) -> datetime | None:
    nanos = timestamp_ns(text)
    if nanos is None:
        return None
    return _EPOCH + timedelta(microseconds=nanos // 1000)


@dataclass(frozen=True, slots=True)
class GoCursor:
    """Where the index feed resumes.

    ``since`` is the last Timestamp returned, exactly as the index printed it; ``seen`` the
    sorted ``path@version`` keys already returned *at that exact timestamp*, which the next
    (inclusive) request will list again and which must not be reported twice.
    """

    since: str
    seen: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One line of the index feed."""

    path: str
    version: str
    timestamp: str
    nanos: int

    @property
    def key(self) -> str:
        return f"{self.path}@{self.version}"


def parse_index_page(body: bytes, *, url: str) -> list[IndexEntry]:
    """Parse one NDJSON page; any line that is not ``{Path, Version, Timestamp}`` is a FeedError.

    Entries must be in non-decreasing Timestamp order, as the index documents.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FeedError(redact(url), f"index page is not UTF-8: {exc}") from exc
    entries: list[IndexEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise FeedError(redact(url), f"line {number} is not JSON: {exc}") from exc
        expect(isinstance(item, dict), url, f"line {number} is not a JSON object")
        fields = [item.get(key) for key in ("Path", "Version", "Timestamp")]
        expect(
            all(isinstance(value, str) for value in fields),
            url,
            f"line {number} lacks string Path, Version and Timestamp",
        )
        path, version, stamp = (str(value) for value in fields)
        nanos = timestamp_ns(stamp)
        if nanos is None:
            raise FeedError(redact(url), f"line {number} has a malformed Timestamp {stamp[:80]!r}")
        if entries:
            expect(nanos >= entries[-1].nanos, url, f"line {number} is out of Timestamp order")
        entries.append(IndexEntry(path, version, stamp, nanos))
    return entries


def next_page(
    cursor: GoCursor, entries: list[IndexEntry], *, limit: int, url: str
) -> Page[GoCursor]:
    """Turn one fetched page into changes and the next cursor (pure; see :class:`GoIndexer`)."""
    since = timestamp_ns(cursor.since)
    if since is None:
        raise FeedError(redact(url), f"cursor timestamp {cursor.since[:80]!r} is malformed")
    seen = set(cursor.seen)
    reported: set[str] = set()
    changes: list[Change] = []
    for entry in entries:
        if entry.nanos < since:
            raise FeedError(redact(url), f"entry {entry.key} is older than since={cursor.since}")
        if (entry.nanos == since and entry.key in seen) or entry.key in reported:
            continue
        reported.add(entry.key)
        try:
            check_version(entry.version, path=entry.path)
        except InvalidName as exc:
            log.warning("skipping invalid index entry %s: %s", entry.key[:300], exc.reason)
            continue
        changes.append(Change(name=entry.path, version=entry.version))
    if not entries:
        return Page(changes=(), cursor=cursor, done=True)
    last = entries[-1]
    at_last = {entry.key for entry in entries if entry.nanos == last.nanos}
    if last.nanos == since:
        at_last |= seen
    new = GoCursor(since=last.timestamp, seen=tuple(sorted(at_last)))
    stuck = new == cursor
    if stuck and len(entries) >= limit:
        log.warning(
            "index page at %s holds only entries already seen; more than %d entries share one "
            "timestamp and the index cannot page past them",
            cursor.since,
            limit,
        )
    return Page(changes=tuple(changes), cursor=new, done=stuck or len(entries) < limit)


@dataclass(frozen=True, slots=True)
class Retraction:
    """One ``retract`` directive: versions ``low`` to ``high`` inclusive, and the why."""

    low: str
    high: str
    rationale: str = ""

    def covers(self, version: str) -> bool:
        return compare_versions(self.low, version) <= 0 <= compare_versions(self.high, version)

    def note(self) -> str:
        """How a retracted release's removal is recorded: ``go: retracted [v1, v2]: why``."""
        span = self.low if self.low == self.high else f"[{self.low}, {self.high}]"
        return f"{ECOSYSTEM}: retracted {span}" + (f": {self.rationale}" if self.rationale else "")


def _strip_comment(line: str) -> tuple[str, str | None]:
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif not quoted and line.startswith("//", index):
            return line[:index].strip(), line[index + 2 :].strip()
    return line.strip(), None


def _interval(text: str, rationale: str) -> Retraction | None:
    tokens = [token.strip('"') for token in re.findall(r'"[^"]*"|[\[\],]|[^\s\[\],"]+', text)]
    if len(tokens) == 1:
        low = high = tokens[0]
    elif len(tokens) == 5 and tokens[0] == "[" and tokens[2] == "," and tokens[4] == "]":
        low, high = tokens[1], tokens[3]
    else:
        return None
    if not (is_semver(low) and is_semver(high)):
        return None
    return Retraction(low=low, high=high, rationale=rationale)


def parse_retractions(gomod: str) -> tuple[Retraction, ...]:
    """The ``retract`` directives of a go.mod file, with rationale comments (``modfile``).

    A directive's rationale is the comment block right above it plus its line comment; an
    entry of a ``retract ( ... )`` block without one takes the block's. Malformed entries are
    skipped: retraction is advice, not something to fail an import over.
    """
    found: list[Retraction] = []
    above: list[str] = []
    block: str | None = None
    for raw in gomod.splitlines():
        line, comment = _strip_comment(raw)
        if not line:
            above = [*above, comment] if comment is not None else []
            continue
        own = "\n".join([*above, *([comment] if comment else [])])
        above = []
        words = line.split(None, 1)
        if block is not None:
            if line == ")":
                block = None
            elif (entry := _interval(line, own or block)) is not None:
                found.append(entry)
            continue
        if words[0] != "retract" or len(words) == 1:
            continue
        if words[1] == "(":
            block = own
        elif (entry := _interval(words[1], own)) is not None:
            found.append(entry)
    return tuple(found)


def parse_sumdb_lookup(text: str, path: str, version: str, *, url: str) -> tuple[str, str | None]:
    """Return the zip and go.mod ``h1:`` from a sumdb lookup answer (the note is not verified)."""
    head, blank, note = text.partition("\n\n")
    expect(blank == "\n\n" and note.startswith(_TREE_NOTE), url, "no signed tree note")
    lines = head.split("\n")
    expect(lines[0].isdigit(), url, "first line is not a record number")
    zip_h1: str | None = None
    mod_h1: str | None = None
    for line in lines[1:]:
        fields = line.split(" ")
        expect(len(fields) == 3 and fields[0] == path, url, f"unexpected line {line[:200]!r}")
        expect(bool(_H1_RE.fullmatch(fields[2])), url, f"malformed hash in {line[:200]!r}")
        if fields[1] == version:
            zip_h1 = fields[2]
        elif fields[1] == f"{version}/go.mod":
            mod_h1 = fields[2]
        else:
            raise FeedError(redact(url), f"line for another version: {line[:200]!r}")
    if zip_h1 is None:
        raise FeedError(redact(url), f"no h1 line for {path} {version}")
    return zip_h1, mod_h1


def zip_filename(path: str, version: str) -> str:
    """A safe, unique-per-release artifact name: ``<last element>@<version>.zip``.

    The major suffix is dropped first (``example.com/m/v2`` gives ``m@v2.0.0.zip``); module
    path elements and versions hold no ``/``, spaces or shell metacharacters.
    """
    split = split_path_version(path)
    prefix = split[0] if split else path
    return f"{prefix.rsplit('/', 1)[-1]}@{version}.zip"


def _retraction_source(versions: Iterable[str]) -> str | None:
    """The version whose go.mod states the retractions: the go command's ``latest``, roughly.

    Highest release (compatible before ``+incompatible``), else highest pre-release, else
    highest of all.
    """
    listed = list(versions)
    releases = [v for v in listed if not is_prerelease(v)]
    compatible = [v for v in releases if not v.endswith("+incompatible")]
    tagged = [v for v in listed if not is_pseudo_version(v)]
    for group in (compatible, releases, tagged, listed):
        if group:
            return sort_versions(group)[-1]
    return None


class GoIndexer(GoHistory[GoCursor]):
    """Go modules from the module index, a GOPROXY and (optionally) the checksum database.

    Feed semantics: ``since`` is **inclusive** and Timestamps are not unique, so a cursor is
    the last Timestamp plus the ``path@version`` keys already returned at it
    (:class:`GoCursor`); the next page asks again from that Timestamp and drops those keys, so
    a restart repeats nothing. Entries come in Timestamp order; one :class:`Change` per new
    ``(module, version)`` with ``version`` set. A page shorter than ``page_size`` reached the
    head (``done``). A page after which the cursor does not move also ends the run (swh's
    golang lister quirk: without it a watcher re-asks the same page forever); when more than
    ``page_size`` entries share one Timestamp the index offers no way past them, which is
    logged. An empty page means nothing new, cursor unchanged.

    ``package(path, change=...)`` lists ``@v/list`` (tagged versions only) plus the change's
    ``version`` (the index names pseudo-versions that no list shows), or ``@latest`` when both
    are empty; each version becomes a :class:`Release` with one ``.zip`` artifact whose
    ``digests`` hold the checksum database's ``h1:`` (absent when ``sumdb_url`` is ``None`` or
    the database answers 404/410, e.g. for a private module). The go.mod hashes go to
    ``extra["go_mod_h1"]``. Versions retracted by the latest version's go.mod are ``yanked``.

    The sumdb answer is parsed, **not verified**: its signed note and the tile inclusion proof
    are not checked, so a malicious sumdb or proxy could feed a wrong ``h1:``.

    Parameters: ``index_url`` (base, ``/index`` is appended), ``proxy_url`` (GOPROXY base),
    ``sumdb_url`` (base, ``/lookup/...`` appended, or ``None``), ``page_size`` (1..2000),
    ``start`` (timestamp a new watcher begins at; default: now), ``concurrency`` (requests in
    flight for one package).
    """

    ecosystem = ECOSYSTEM
    cursor_type = GoCursor
    release_removed = "listed but no longer served"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        index_url: str,
        proxy_url: str,
        sumdb_url: str | None,
        page_size: int = MAX_PAGE_SIZE,
        start: str | None = None,
        concurrency: int = 8,
    ) -> None:
        super().__init__(client)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}")
        start_ns = timestamp_ns(start) if start is not None else None
        if start is not None and start_ns is None:
            raise ValueError(f"start must be an RFC 3339 timestamp, got {start!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.index_url = index_url.rstrip("/")
        self.proxy_url = proxy_url.rstrip("/")
        self.sumdb_url = sumdb_url.rstrip("/") if sumdb_url else None
        self.page_size = page_size
        self.start = format_timestamp(start_ns) if start_ns is not None else None
        self.concurrency = concurrency

    async def start_cursor(self) -> GoCursor:
        return GoCursor(since=self.start or format_timestamp(datetime.now(UTC)))

    def cursor_from_dict(self, data: Mapping[str, Any]) -> GoCursor:
        since, seen = data.get("since"), data.get("seen", ())
        if not isinstance(since, str) or timestamp_ns(since) is None:
            raise FeedError("feed_cursors", f"stored Go cursor has a bad since: {since!r}")
        if not isinstance(seen, list | tuple) or not all(isinstance(k, str) for k in seen):
            raise FeedError("feed_cursors", "stored Go cursor has a bad seen list")
        return GoCursor(since=since, seen=tuple(sorted(seen)))

    async def changes(self, cursor: GoCursor) -> Page[GoCursor]:
        """One index page, dated by the Timestamp its cursor stands at (``position_at``).

        The index has no head document: a page that reached the head (``done``) says the
        newest Timestamp is its cursor's; other pages leave ``head`` unknown.
        """
        url = f"{self.index_url}/index"
        response = await self.get(url, params={"since": cursor.since, "limit": self.page_size})
        entries = parse_index_page(response.content, url=url)
        page = next_page(cursor, entries, limit=self.page_size, url=url)
        log.debug(
            "go index since=%s: %d lines, %d new, done=%s",
            cursor.since,
            len(entries),
            len(page.changes),
            page.done,
        )
        return Page(
            changes=page.changes,
            cursor=page.cursor,
            done=page.done,
            head=page.cursor.since if page.done else None,
            position_at=_parse_time(page.cursor.since),
        )

    @staticmethod
    def normalize_name(name: str) -> str:
        """Module paths are case-sensitive: the canonical spelling is the path itself."""
        return check_path(name)

    def _url(self, path: str, suffix: str) -> str:
        return f"{self.proxy_url}/{escape_path(path)}/{suffix}"

    async def list_versions(self, path: str) -> list[str]:
        """The proxy's ``@v/list``: tagged versions, invalid lines skipped with a warning."""
        url = self._url(path, "@v/list")
        response = await self.get(url, not_found=(ECOSYSTEM, path))
        versions: list[str] = []
        for line in response.content.decode("utf-8", "replace").splitlines():
            version = line.strip()
            if not version:
                continue
            try:
                versions.append(check_version(version, path=path))
            except InvalidName as exc:
                log.warning("%s: skipping listed version: %s", path, exc)
        return versions

    async def _info(self, url: str, path: str, version: str | None) -> tuple[str, datetime | None]:
        data = await self.get_json(url, not_found=(ECOSYSTEM, path))
        expect(isinstance(data, dict), url, ".info is not a JSON object")
        found = data.get("Version")
        expect(isinstance(found, str), url, ".info has no Version")
        if version is not None:
            expect(found == version, url, f".info names {found!r}, not {version}")
        try:
            checked = check_version(str(found), path=path)
        except InvalidName as exc:
            raise FeedError(redact(url), f".info Version is invalid: {exc.reason}") from exc
        stamp = data.get("Time")
        when = _parse_time(stamp) if isinstance(stamp, str) else None
        expect(stamp is None or when is not None, url, f".info Time {stamp!r} is malformed")
        if when is None and is_pseudo_version(checked):
            when = pseudo_version_time(checked)
        return checked, when

    async def latest(self, path: str) -> str:
        """The proxy's ``@latest`` version (a pseudo-version for an untagged module)."""
        version, _ = await self._info(self._url(path, "@latest"), path, None)
        return version

    async def checksums(self, path: str, version: str) -> tuple[str | None, str | None]:
        """The sumdb's zip and go.mod ``h1:`` of one version; ``(None, None)`` if it has none."""
        if self.sumdb_url is None:
            return None, None
        url = f"{self.sumdb_url}/lookup/{escape_path(path)}@{escape_version(version)}"
        try:
            response = await self.get(url, not_found=(ECOSYSTEM, path))
        except PackageNotFound:
            log.info("sumdb has no record of %s@%s", path, version)
            return None, None
        try:
            text = response.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FeedError(redact(url), "sumdb answer is not UTF-8") from exc
        return parse_sumdb_lookup(text, path, version, url=url)

    async def retractions(self, path: str, version: str) -> tuple[Retraction, ...]:
        """The ``retract`` directives in ``version``'s go.mod (none if the proxy lacks it)."""
        url = self._url(path, f"@v/{escape_version(version)}.mod")
        try:
            response = await self.get(url, not_found=(ECOSYSTEM, path))
        except PackageNotFound:
            return ()
        return parse_retractions(response.content.decode("utf-8", "replace"))

    async def release(
        self, path: str, version: str, *, retractions: Iterable[Retraction] = ()
    ) -> Release:
        """One version as a Release, for a single index entry; PackageNotFound if not served."""
        release, _ = await self._release(path, version, retractions=retractions)
        return release

    async def _release(
        self, path: str, version: str, *, retractions: Iterable[Retraction]
    ) -> tuple[Release, str | None]:
        check_version(version, path=path)
        info_url = self._url(path, f"@v/{escape_version(version)}.info")
        try:
            _, when = await self._info(info_url, path, version)
        except PackageNotFound as exc:
            raise PackageNotFound(ECOSYSTEM, path, version, answer=exc.answer) from exc
        zip_h1, mod_h1 = await self.checksums(path, version)
        retracted = next((r for r in retractions if r.covers(version)), None)
        artifact = Artifact(
            filename=zip_filename(path, version),
            url=self._url(path, f"@v/{escape_version(version)}.zip"),
            size=None,
            digests={"h1": zip_h1} if zip_h1 else {},
            kind="zip",
            yanked=retracted is not None,
            yanked_reason=(retracted.rationale or None) if retracted else None,
            uploaded_at=when,
        )
        release = Release(
            version=version,
            artifacts=(artifact,),
            published_at=when,
            yanked=retracted is not None,
            removal=retracted.note() if retracted else None,
        )
        return release, mod_h1

    async def package(self, name: str, *, change: Change | None = None) -> PackageInfo:
        """Every version of module ``name``, plus the one the index ``change`` announced.

        A listed version whose ``.info`` is gone (404/410) becomes a ``deleted`` release.
        """
        path = self.normalize_name(name)
        announced = change.version if change is not None else None
        wanted = {check_version(announced, path=path)} if announced else set()
        wanted.update(await self.list_versions(path))
        if not wanted:
            wanted.add(await self.latest(path))
        ordered = sort_versions(wanted)
        source = _retraction_source(ordered)
        retractions = await self.retractions(path, source) if source else ()
        gate = asyncio.Semaphore(self.concurrency)

        async def one(version: str) -> tuple[Release, str | None]:
            async with gate:
                try:
                    return await self._release(path, version, retractions=retractions)
                except PackageNotFound:
                    log.info("%s@%s is listed but gone", path, version)
                    return Release(version=version, artifacts=(), deleted=True), None

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(version)) for version in ordered]
        except ExceptionGroup as failed:
            first = failed.exceptions[0]
            if isinstance(first, IndexerError):
                raise first from None
            raise
        results = [task.result() for task in tasks]
        return PackageInfo(
            ecosystem=ECOSYSTEM,
            name=path,
            display_name=path,
            releases=tuple(release for release, _ in results),
            extra={
                "go_mod_h1": {r.version: mod for r, mod in results if mod is not None},
                "retractions": [
                    {"low": r.low, "high": r.high, "rationale": r.rationale} for r in retractions
                ],
            },
        )


__all__ = [
    "INDEX_EPOCH",
    "MAX_PAGE_SIZE",
    "GoCursor",
    "GoIndexer",
    "IndexEntry",
    "Retraction",
    "format_timestamp",
    "next_page",
    "parse_index_page",
    "parse_retractions",
    "parse_sumdb_lookup",
    "timestamp_ns",
    "zip_filename",
]
