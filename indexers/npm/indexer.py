"""npm: the replication ``_changes`` feed and full packuments, mapped to releases.

Sources (read them before changing behaviour):

- packument shape: ``npm/registry:docs/responses/package-metadata.md`` (full document:
  ``versions``, ``time``, ``dist.tarball``/``integrity``/``shasum``, per-version ``deprecated``);
- the 2025 replication API: GitHub changelog 2025-02-27 "Changes and deprecation notice for npm
  replication APIs" and github.com/orgs/community/discussions/152515 (``_changes?since&limit``
  with names and seqs only, no ``include_docs``, ``limit`` capped at 10,000; root document with
  ``update_seq``), with the guarantees it does *not* give documented in
  ``cdklabs/construct-hub:docs/npm-sync-protocol.md`` (late insertion, lost events, laggy
  packuments, head regression);
- name rules: ``npm/validate-npm-package-name`` and ``npm/npm-package-arg`` (``@scope%2fname``).

The replicate endpoint (feed) and the registry (packuments) are separate base URLs. Every
version in a packument's ``versions`` becomes a :class:`~indexers.types.Release` (the 2021
Forage kept only the newest); versions still listed in ``time`` but gone from ``versions`` were
unpublished one by one and become ``deleted`` releases without artifacts, so the archive keeps
their tombstones.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from indexers.base import Indexer, expect, parse_position, parse_time, redact
from indexers.digests import normalize_hex, parse_sri
from indexers.errors import FeedError, InvalidDigest, InvalidName, InvalidPosition, StaleMetadata
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

ECOSYSTEM = "npm"

#: npm's own cap on ``limit`` for ``_changes`` (the default is 1,000).
MAX_PAGE_SIZE = 10_000

#: Longest name the registry accepts (validate-npm-package-name).
MAX_NAME_LENGTH = 214

#: Characters ``encodeURIComponent`` leaves alone: the only ones a (legacy) npm name part may use.
_NAME_PART = re.compile(r"[A-Za-z0-9._~!*'()-]+")

#: Names the registry refuses outright.
_RESERVED = frozenset({"node_modules", "favicon.ico"})

#: ``time`` keys that are not versions.
_TIME_META = frozenset({"created", "modified", "unpublished"})

_FULL_PACKUMENT = {"accept": "application/json"}


def validate_name(name: str) -> str:
    """Return ``name`` unchanged if npm could have published it; raise ``InvalidName``.

    Legacy names with capitals exist (``JSONStream``), so case is kept, not folded. Rejected:
    empty or over 214 characters, control characters (NUL included), surrounding spaces,
    ``..`` anywhere, a ``/`` other than the one after ``@scope``, a name part starting with
    ``.`` or ``_``, and characters ``encodeURIComponent`` would escape (``%``, ``:``, spaces...).
    """

    def bad(reason: str) -> InvalidName:
        return InvalidName(ECOSYSTEM, name, reason)

    if not name:
        raise bad("empty name")
    if len(name) > MAX_NAME_LENGTH:
        raise bad(f"longer than {MAX_NAME_LENGTH} characters")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise bad("control character")
    if name != name.strip():
        raise bad("leading or trailing whitespace")
    if ".." in name:
        raise bad("'..' is not allowed")
    if name.startswith("@"):
        scope, sep, rest = name[1:].partition("/")
        if not sep or not scope or not rest:
            raise bad("a scoped name must look like @scope/name")
        if "/" in rest:
            raise bad("more than one '/'")
        if scope.startswith("."):
            raise bad("scope starts with '.'")
        parts: tuple[str, ...] = (scope, rest)
    elif "/" in name:
        raise bad("'/' is only allowed after an @scope")
    else:
        parts = (name,)
    if parts[-1][0] in "._":
        raise bad("name starts with '.' or '_'")
    for part in parts:
        if not _NAME_PART.fullmatch(part):
            raise bad("characters that are not URL-safe")
    if name.lower() in _RESERVED:
        raise bad("reserved name")
    return name


def escape_name(name: str) -> str:
    """Spell a name for a packument URL the way npm does: ``@scope/name`` -> ``@scope%2fname``."""
    return name.replace("/", "%2f")


def revision_generation(rev: str) -> int | None:
    """Return the numeric prefix of a CouchDB revision (``"12-abc"`` -> 12), if it has one."""
    head, sep, _ = rev.partition("-")
    return int(head) if sep and head.isdigit() else None


def _seq(value: Any, url: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise FeedError(redact(url), f"seq {value!r} is not a number")


@dataclass(frozen=True, slots=True)
class NpmCursor:
    """The last replicate-feed ``seq`` consumed; the next page asks for entries after it.

    ``since`` is exclusive: the feed returns entries with ``seq > since``, in ascending order,
    and at most one entry per package (a newer change replaces the older one at a new seq).
    Seqs are sparse and may jump by millions. :meth:`rewind` moves the cursor back so a run can
    re-scan a trailing window and pick up entries inserted late behind it.
    """

    seq: int

    def rewind(self, count: int) -> NpmCursor:
        """Return a cursor ``count`` seqs earlier (never below 0), to re-scan a window."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return NpmCursor(max(0, self.seq - count))


def parse_changes(doc: Any, *, since: int, url: str) -> tuple[tuple[Change, ...], int, int]:
    """Map one ``_changes`` document to changes, the next seq and the number of raw entries.

    Names are validated (design documents and hostile ids are skipped with a warning) and
    deduplicated, keeping each name's highest-seq entry. The next seq never goes below
    ``since``: a regressed ``last_seq`` leaves the cursor where it was.
    """
    expect(isinstance(doc, dict), url, "_changes body is not an object")
    results = doc.get("results")
    expect(isinstance(results, list), url, "_changes body has no 'results' list")
    latest: dict[str, Change] = {}
    next_seq = since
    for entry in results:
        expect(isinstance(entry, dict), url, "a _changes entry is not an object")
        seq = _seq(entry.get("seq"), url)
        next_seq = max(next_seq, seq)
        name = entry.get("id")
        expect(isinstance(name, str), url, f"entry at seq {seq} has no string 'id'")
        try:
            validate_name(name)
        except InvalidName as exc:
            log.warning("skipping npm feed entry at seq %d: %s", seq, exc)
            continue
        revs = entry.get("changes") or []
        rev = revs[-1].get("rev") if revs and isinstance(revs[-1], dict) else None
        change = Change(
            name=name,
            serial=seq,
            deleted=entry.get("deleted") is True,
            revision=rev if isinstance(rev, str) else None,
        )
        previous = latest.get(name)
        if previous is None or (previous.serial or 0) < seq:
            latest[name] = change
    if "last_seq" in doc:
        next_seq = max(next_seq, _seq(doc["last_seq"], url))
    ordered = tuple(sorted(latest.values(), key=lambda change: change.serial or 0))
    return ordered, next_seq, len(results)


def _digests(dist: Mapping[str, Any], where: str) -> dict[str, str]:
    digests: dict[str, str] = {}
    integrity = dist.get("integrity")
    if isinstance(integrity, str) and integrity:
        try:
            digests.update(parse_sri(integrity))
        except InvalidDigest as exc:
            log.warning("npm %s: dropping dist.integrity: %s", where, exc)
    shasum = dist.get("shasum")
    if isinstance(shasum, str) and shasum:
        try:
            sha1 = normalize_hex("sha1", shasum)
        except InvalidDigest as exc:
            log.warning("npm %s: dropping dist.shasum: %s", where, exc)
        else:
            if digests.setdefault("sha1", sha1) != sha1:
                log.warning("npm %s: dist.shasum disagrees with the sha1 in dist.integrity", where)
    return digests


def _artifact(name: str, version: str, manifest: Mapping[str, Any]) -> Artifact | None:
    dist = manifest.get("dist")
    tarball = dist.get("tarball") if isinstance(dist, dict) else None
    if not isinstance(dist, dict) or not isinstance(tarball, str) or not tarball:
        log.warning("npm %s@%s has no dist.tarball", name, version)
        return None
    filename = unquote(urlsplit(tarball).path.rsplit("/", 1)[-1])
    return Artifact(
        filename=filename,
        url=tarball,
        size=None,
        digests=_digests(dist, f"{name}@{version}"),
        kind="tarball",
    )


def package_status(releases: list[Release], unpublished: Any) -> tuple[str | None, str | None]:
    """The package's status: ``unpublished`` for a stub (``time.unpublished``, no versions),
    ``deprecated`` when every published version is (the newest one's message as the reason),
    else ``None`` -- the rules ecosyste.ms applies to packuments."""
    if isinstance(unpublished, dict):
        when = unpublished.get("time")
        return "unpublished", f"unpublished {when}" if isinstance(when, str) else None
    live = [r for r in releases if not r.deleted]
    if live and all(r.deprecated for r in live):
        return "deprecated", live[-1].deprecated
    return None, None


def map_packument(doc: Any, *, name: str, url: str) -> PackageInfo:
    """Map a full packument to :class:`PackageInfo`: every version, plus unpublished tombstones.

    Tombstones (``deleted`` releases) are versions in ``time`` or ``time.unpublished.versions``
    that ``versions`` no longer lists. A stub with ``time.unpublished`` and no versions is an
    unpublished package (``deleted``).

    Releases are ordered by publish time (versions without one last, then by string).
    """
    expect(isinstance(doc, dict), url, "packument is not an object")
    versions = doc.get("versions") or {}
    times = doc.get("time") or {}
    expect(isinstance(versions, dict), url, "'versions' is not an object")
    expect(isinstance(times, dict), url, "'time' is not an object")
    releases: list[Release] = []
    for version, manifest in versions.items():
        expect(isinstance(manifest, dict), url, f"version {version!r} is not an object")
        artifact = _artifact(name, version, manifest)
        deprecated = manifest.get("deprecated")
        releases.append(
            Release(
                version=version,
                artifacts=(artifact,) if artifact else (),
                published_at=parse_time(times.get(version)),
                deprecated=deprecated if isinstance(deprecated, str) and deprecated else None,
            )
        )
    unpublished = times.get("unpublished")
    listed = unpublished.get("versions") if isinstance(unpublished, dict) else None
    gone = [key for key in times if key not in _TIME_META and key not in versions]
    gone += [v for v in listed or () if isinstance(v, str) and v not in times and v not in versions]
    releases.extend(
        Release(
            version=version,
            artifacts=(),
            published_at=parse_time(times.get(version)),
            deleted=True,
            removal=f"{ECOSYSTEM}: version unpublished",
        )
        for version in gone
    )
    never = datetime.min.replace(tzinfo=UTC)
    releases.sort(key=lambda r: (r.published_at is None, r.published_at or never, r.version))
    rev = doc.get("_rev")
    display = doc.get("name")
    status, reason = package_status(releases, unpublished if not versions else None)
    return PackageInfo(
        ecosystem=ECOSYSTEM,
        name=name,
        display_name=display if isinstance(display, str) else name,
        releases=tuple(releases),
        deleted=bool(unpublished) and not versions,
        status=status,
        status_reason=reason,
        serial=revision_generation(rev) if isinstance(rev, str) else None,
        extra={
            "rev": rev,
            "dist_tags": dict(doc.get("dist-tags") or {}),
            "modified": times.get("modified"),
            "unpublished": unpublished if isinstance(unpublished, dict) else None,
        },
    )


class NpmIndexer(Indexer[NpmCursor]):
    """Follow npm's replicate ``_changes`` feed and read full packuments from the registry.

    ``registry_url`` serves packuments (``<registry>/<name>``, ``<registry>/@scope%2fname``);
    ``replicate_url`` is the replication database (``<replicate>/`` has ``update_seq``,
    ``<replicate>/_changes?since=N&limit=M`` the feed). ``page_size`` is the ``limit`` sent.

    Cursor semantics (:class:`NpmCursor`): exclusive ``since``, ascending seqs, one entry per
    package per page. A page shorter than ``page_size`` reached the head (``done``); an empty
    page means caught up and returns the same cursor, which ends the run. Entries are hints:
    they may arrive behind the cursor, twice, or never, so the watcher re-scans a window with
    :meth:`NpmCursor.rewind` and diffs each packument against what it holds. Each change
    carries its ``rev``; pass the change as ``package(name, change=...)`` to detect a
    packument that lags the feed.
    """

    ecosystem = ECOSYSTEM
    cursor_type = NpmCursor
    default_interval = timedelta(minutes=1)
    release_removed = "version unpublished"
    package_removed = "package deleted"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        registry_url: str,
        replicate_url: str,
        page_size: int = 1000,
    ) -> None:
        super().__init__(client)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be in 1..{MAX_PAGE_SIZE}, got {page_size}")
        self.registry_url = registry_url.rstrip("/")
        self.replicate_url = replicate_url.rstrip("/")
        self.page_size = page_size

    @staticmethod
    def normalize_name(name: str) -> str:
        return validate_name(name)

    def packument_url(self, name: str) -> str:
        """Return the packument URL of a (valid) name."""
        return f"{self.registry_url}/{escape_name(validate_name(name))}"

    async def head(self) -> int:
        """Return the feed's newest seq (``update_seq`` of the replicate root document)."""
        url = f"{self.replicate_url}/"
        doc = await self.get_json(url)
        expect(isinstance(doc, dict) and "update_seq" in doc, url, "root has no 'update_seq'")
        return _seq(doc["update_seq"], url)

    async def start_cursor(self) -> NpmCursor:
        """Start at the current head, as npm staff recommend for a new follower."""
        return NpmCursor(await self.head())

    @staticmethod
    def is_prerelease(version: str) -> bool:
        """Semver: a ``-`` before any ``+build`` part (``1.0.0-beta.1``)."""
        return "-" in version.split("+", 1)[0]

    async def cursor_at(self, position: str) -> NpmCursor:
        """``origin`` is seq 0, a number is that seq; seqs are not dated, so no time."""
        where = parse_position(ECOSYSTEM, position)
        if isinstance(where, datetime):
            raise InvalidPosition(ECOSYSTEM, position, "the replicate feed is ordered by seq")
        return NpmCursor(where or 0)

    async def inventory(self, after: str | None) -> Inventory:
        """A page of the replica's ``_all_docs`` (CouchDB: rows ``{id, key, value: {rev}}`` in
        id order, ``startkey`` inclusive), after document id ``after``; design documents and
        ids npm would refuse are skipped. Each entry carries the document's revision."""
        url = f"{self.replicate_url}/_all_docs"
        params: dict[str, str | int] = {"limit": self.page_size + 1}
        if after is not None:
            params["startkey"] = json.dumps(after)
        doc = await self.get_json(url, params=params)
        rows = doc.get("rows") if isinstance(doc, dict) else None
        if not isinstance(rows, list):
            raise FeedError(redact(url), "_all_docs body has no 'rows' list")
        entries: list[InventoryEntry] = []
        last = after
        for row in rows[: self.page_size + (after is not None)]:
            expect(isinstance(row, dict) and isinstance(row.get("id"), str), url, "bad row")
            name, value = row["id"], row.get("value")
            if name == after:
                continue
            last = name
            rev = value.get("rev") if isinstance(value, dict) else None
            try:
                validate_name(name)
            except InvalidName:
                continue
            revision = rev if isinstance(rev, str) else None
            change = Change(name=name, revision=revision)
            generation = revision_generation(revision) if revision else None
            entries.append(InventoryEntry(change, generation))
        return Inventory(tuple(entries), last, done=len(rows) <= self.page_size)

    async def changes(self, cursor: NpmCursor) -> Page[NpmCursor]:
        """One ``_changes`` page; its ``head`` is the root's ``update_seq``, read after it.

        Seqs are not dated, so the page has no ``position_at``.
        """
        url = f"{self.replicate_url}/_changes"
        doc = await self.get_json(url, params={"since": cursor.seq, "limit": self.page_size})
        changes, next_seq, count = parse_changes(doc, since=cursor.seq, url=url)
        log.debug("npm feed since %d: %d entries, next %d", cursor.seq, count, next_seq)
        return Page(
            changes=changes,
            cursor=NpmCursor(next_seq),
            done=count < self.page_size,
            head=await self.head(),
        )

    async def package(self, name: str, *, change: Change | None = None) -> PackageInfo:
        """Fetch and map ``name``'s full packument.

        With a ``change`` carrying a ``revision`` (the feed entry's ``rev``), a packument whose
        ``_rev`` generation is lower raises ``StaleMetadata``: the registry has not caught up
        with the feed yet. A packument without ``_rev`` cannot be checked and is accepted.
        """
        min_revision = change.revision if change is not None else None
        url = self.packument_url(name)
        doc = await self.get_json(url, headers=_FULL_PACKUMENT, not_found=(ECOSYSTEM, name))
        info = map_packument(doc, name=name, url=url)
        wanted = revision_generation(min_revision) if min_revision else None
        if wanted is not None and info.serial is not None and info.serial < wanted:
            raise StaleMetadata(redact(url), wanted, info.serial)
        return info


__all__ = [
    "ECOSYSTEM",
    "MAX_PAGE_SIZE",
    "NpmCursor",
    "NpmIndexer",
    "escape_name",
    "map_packument",
    "package_status",
    "parse_changes",
    "revision_generation",
    "validate_name",
]
