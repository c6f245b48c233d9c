"""crates.io: the crates listing by recent updates as the change signal, the sparse index as
the metadata.

crates.io has no replication feed. What production followers use instead, and why this
indexer reads the API's crate listing sorted by ``recent-updates``:

- ``GET /api/v1/summary`` (``just_updated``, ``new_crates``: ten crates each) is what
  libraries.io's depper (``librariesio/depper:ingestors/cargo.go``, every 5 minutes) and
  OpenSSF's package-feeds (``ossf/package-feeds:pkg/feeds/crates``) poll. Ten entries per
  poll lose whatever an interval holds beyond them; package-feeds says so ("lossy feed").
- ``GET /api/v1/crates?sort=recent-updates`` is the same ordering, complete and paged:
  crates ordered by ``(updated_at desc, id desc)`` with keyset ("seek") pagination through
  ``meta.next_page`` (``rust-lang/crates.io:src/controllers/krate/search.rs``, ``Seek::
  RecentUpdates``), so a walk down the listing skips nothing while crates move to the top.
  ``updated_at`` moves on every publish and on every yank or unyank: the ``touch_crate``
  trigger on ``versions`` sets it whenever a version row is inserted or updated
  (crates.io's schema, ``touch_crate_on_version_modified``). This indexer follows it.
- The git index (``rust-lang/crates.io-index``, one commit per publish or yank) is what
  full mirrors such as Panamax read, but its history is squashed periodically
  (``rust-lang/crates.io`` PR #3592; the Rust blog, 2022-02-14), and a clone is gigabytes.
- The daily database dump (``https://static.crates.io/db-dump.tar.gz``, CSVs with
  ``versions.checksum``, ``yanked``, ``updated_at``) is what Software Heritage's lister
  reads (``swh/lister/crates/lister.py``): a day of latency and a GB download per run.
- The RSS feeds (``/rss/updates.xml``, crates.io PR #8908) keep the latest 100 publishes
  and no yanks.

One walk reads the listing from the top down to the cursor's time, a page per call, so each
page's changes are committed with the cursor that resumes after them; a walk from
``origin`` reads the whole listing (the bootstrap, about 2,000 pages of 100 for crates.io).
crates.io's crawler policy allows one request a second; the default poll is every 5 minutes,
one request when nothing changed. Metadata comes from the sparse index (``index.crates.io``,
a CDN, no API budget): every line of the crate's file is a version with its ``cksum`` (the
sha256 of the ``.crate``), ``yanked``, dependencies and features; the ``.crate`` URL is
``config.json``'s ``dl`` template. A yank is crates.io's way of withdrawing a version that
stays installable when pinned: the release is recorded ``yanked`` with the removal
``"cargo: yanked"``, cleared again on an unyank. The reconcile inventory is the same listing
in name order (``sort=alphabetical``, seek pages), each crate stamped with ``num_versions``,
compared with the number of lines its index file had at the last import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from indexers.base import Indexer, expect, parse_position, parse_time, redact
from indexers.cargo.sparse import (
    ECOSYSTEM,
    canonical,
    crate_filename,
    download_url,
    index_path,
    is_sha256,
    parse_lines,
)
from indexers.errors import FeedError, InvalidName, InvalidPosition
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

#: crates.io's largest ``per_page``.
MAX_PAGE_SIZE = 100
#: The removal note of a yanked version.
YANKED = f"{ECOSYSTEM}: yanked"


@dataclass(frozen=True, slots=True)
class CargoCursor:
    """Where the recent-updates walk stands.

    ``since`` is the ``updated_at`` (as crates.io prints it; ``""`` for the beginning) at and
    before which every crate was announced. A walk in progress also holds ``top``, the newest
    ``updated_at`` when it began (the next ``since``), and ``seek``, the listing's token for
    the next page down; both are empty between walks.
    """

    since: str
    top: str = ""
    seek: str = ""


def _moment(text: str) -> datetime | None:
    return parse_time(text) if text else None


def _seek_of(meta: Any, url: str) -> str:
    """The ``seek`` token of ``meta.next_page`` (``"?seek=...&per_page=..."``), ``""``: none."""
    expect(isinstance(meta, dict), url, "listing has no 'meta' object")
    following = meta.get("next_page")
    if not following:
        return ""
    expect(isinstance(following, str), url, "meta.next_page is not a string")
    seeks = parse_qs(urlsplit(following).query).get("seek")
    expect(bool(seeks), url, "meta.next_page has no seek token")
    return str(seeks[0]) if seeks else ""


def _crates(doc: Any, url: str) -> list[dict[str, Any]]:
    expect(isinstance(doc, dict), url, "listing is not an object")
    crates = doc.get("crates")
    expect(isinstance(crates, list), url, "listing has no 'crates' list")
    for entry in crates:
        expect(isinstance(entry, dict) and isinstance(entry.get("name"), str), url, "bad crate")
        expect(isinstance(entry.get("updated_at"), str), url, "a crate has no updated_at")
    return list(crates)


def map_index(body: bytes, *, name: str, dl: str, url: str) -> PackageInfo:
    """Map a crate's index file to :class:`PackageInfo`, keeping its lines by version in
    ``extra["lines"]`` (the mirror serves them when the upstream cannot).

    Lines that are not objects with a ``vers`` and a sha256 ``cksum`` are skipped with a
    warning (cargo ignores what it cannot read too); a line naming another crate is a
    ``FeedError``. Releases keep the file's order, which is publication order.
    """
    lines: dict[str, dict[str, Any]] = {}
    display = name
    for line in parse_lines(body):
        version = line.get("vers") if line is not None else None
        if line is None or not isinstance(version, str) or not is_sha256(line.get("cksum")):
            log.warning("cargo %s: skipping an index line without vers and cksum", name)
            continue
        spelled = line.get("name")
        expect(isinstance(spelled, str), url, f"line {version} has no name")
        try:
            expect(canonical(str(spelled)) == name, url, f"line names another crate: {spelled}")
        except InvalidName as exc:
            raise FeedError(redact(url), f"line {version}: {exc}") from exc
        display = str(spelled)
        lines.pop(version, None)
        lines[version] = line
    releases = []
    for version, line in lines.items():
        yanked = line.get("yanked") is True
        spelled = str(line["name"])
        artifact = Artifact(
            filename=crate_filename(spelled, version),
            url=download_url(dl, spelled, version, line["cksum"]),
            size=None,
            digests={"sha256": line["cksum"]},
            kind="crate",
            yanked=yanked,
        )
        releases.append(
            Release(
                version=version,
                artifacts=(artifact,),
                yanked=yanked,
                removal=YANKED if yanked else None,
            )
        )
    return PackageInfo(
        ecosystem=ECOSYSTEM,
        name=name,
        display_name=display,
        releases=tuple(releases),
        serial=len(lines),
        extra={"lines": lines},
    )


class CargoIndexer(Indexer[CargoCursor]):
    """Follow crates.io's recent-updates listing; read crates from the sparse index.

    ``index_url`` is the sparse index root (``https://index.crates.io``, holding
    ``config.json``); ``api_url`` the web API's origin (``https://crates.io``, config.json's
    ``api``). ``page_size`` is the listing's ``per_page``.

    Cursor semantics (:class:`CargoCursor`): exclusive ``since`` (crates updated after it are
    changes); entries come newest first, a page at a time down to ``since``, and each page is
    returned oldest first. A page that reaches ``since`` or the listing's end finishes the
    walk (``done``; the cursor's ``since`` becomes the walk's ``top``, reported as ``head``);
    an empty ``done`` page means nothing changed.
    """

    ecosystem = ECOSYSTEM
    cursor_type = CargoCursor
    default_interval = timedelta(minutes=5)
    release_removed = "version deleted"
    package_removed = "crate deleted"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        index_url: str,
        api_url: str,
        page_size: int = MAX_PAGE_SIZE,
    ) -> None:
        super().__init__(client)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be in 1..{MAX_PAGE_SIZE}, got {page_size}")
        self.index_url = index_url.rstrip("/")
        self.api_url = api_url.rstrip("/")
        self.page_size = page_size
        self._dl: str | None = None

    @staticmethod
    def normalize_name(name: str) -> str:
        return canonical(name)

    @staticmethod
    def is_prerelease(version: str) -> bool:
        """SemVer: a ``-`` before any ``+build`` part (``1.0.0-beta.1``)."""
        return "-" in version.split("+", 1)[0]

    async def _listing(self, sort: str, seek: str) -> tuple[list[dict[str, Any]], str]:
        url = f"{self.api_url}/api/v1/crates"
        params: dict[str, str | int] = {"sort": sort, "per_page": self.page_size}
        if seek:
            params["seek"] = seek
        doc = await self.get_json(url, params=params)
        crates = _crates(doc, url)
        return crates, _seek_of(doc.get("meta"), url)

    async def start_cursor(self) -> CargoCursor:
        """Start at the newest ``updated_at``: what came before is the bootstrap's."""
        crates, _ = await self._listing("recent-updates", "")
        return CargoCursor(str(crates[0]["updated_at"]) if crates else "")

    async def cursor_at(self, position: str) -> CargoCursor:
        """``origin`` walks the whole listing; an RFC 3339 time walks what changed after it."""
        where = parse_position(ECOSYSTEM, position)
        if isinstance(where, int):
            raise InvalidPosition(ECOSYSTEM, position, "the listing is ordered by time")
        if where is None:
            return CargoCursor("")
        return CargoCursor(where.isoformat().replace("+00:00", "Z"))

    async def changes(self, cursor: CargoCursor) -> Page[CargoCursor]:
        """One page of the walk down the recent-updates listing (see the class docstring)."""
        crates, seek = await self._listing("recent-updates", cursor.seek)
        since = _moment(cursor.since)
        top = cursor.top or (str(crates[0]["updated_at"]) if crates else cursor.since)
        url = f"{self.api_url}/api/v1/crates"
        changes: list[Change] = []
        reached = False
        for entry in crates:
            moment = parse_time(entry["updated_at"])
            expect(moment is not None, url, f"unreadable updated_at {entry['updated_at']!r}")
            if since is not None and moment is not None and moment <= since:
                reached = True
                break
            try:
                changes.append(Change(name=canonical(entry["name"])))
            except InvalidName as exc:
                log.warning("skipping a crates.io listing entry: %s", exc)
        changes.reverse()
        if reached or not seek:
            return Page(
                tuple(changes), CargoCursor(top), done=True, head=top, position_at=_moment(top)
            )
        walking = CargoCursor(cursor.since, top, seek)
        return Page(tuple(changes), walking, done=False, position_at=since)

    async def inventory(self, after: str | None) -> Inventory:
        """A page of every crate by name (crates.io's alphabetical seek pages), each stamped
        with its ``num_versions``; ``after`` is the listing's seek token."""
        crates, seek = await self._listing("alphabetical", after or "")
        entries = []
        for entry in crates:
            try:
                name = canonical(entry["name"])
            except InvalidName:
                continue
            count = entry.get("num_versions")
            stamp = count if isinstance(count, int) and not isinstance(count, bool) else None
            entries.append(InventoryEntry(Change(name=name), stamp))
        return Inventory(tuple(entries), seek or after, done=not seek)

    async def download_template(self) -> str:
        """``config.json``'s ``dl``, read once per indexer."""
        if self._dl is None:
            url = f"{self.index_url}/config.json"
            doc = await self.get_json(url)
            dl = doc.get("dl") if isinstance(doc, dict) else None
            expect(isinstance(dl, str) and bool(dl), url, "config.json has no 'dl'")
            self._dl = str(dl)
        return self._dl

    async def package(self, name: str, *, change: Change | None = None) -> PackageInfo:
        """Read and map ``name``'s index file (a 404 or 410: the crate does not exist)."""
        dl = await self.download_template()
        url = f"{self.index_url}/{index_path(name)}"
        response = await self.get(url, not_found=(ECOSYSTEM, name))
        return map_index(response.content, name=name, dl=dl, url=url)


def listing_time(value: datetime) -> str:
    """A time as crates.io prints ``updated_at`` (UTC, microseconds, ``Z``)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


__all__ = [
    "MAX_PAGE_SIZE",
    "YANKED",
    "CargoCursor",
    "CargoIndexer",
    "listing_time",
    "map_index",
]
