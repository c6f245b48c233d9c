"""Packagist: the metadata change feed, Composer v2 metadata and the package list.

Change signal (the one Packagist offers mirrors; sources below):

- ``GET <api>/metadata/changes.json?since=T``, ``T`` in 1/10000 s, answers
  ``{"actions": [{"type": "update"|"delete", "package": NAME, "time": SECONDS}], "timestamp":
  NOW}``: every package whose metadata was dumped (``update``; ``NAME~dev`` for its dev
  branches' file) or deleted from ``T`` (inclusive) up to ``NOW - 1``, in one page; ``NOW`` is
  the newest change's stamp plus one, the next request's ``since``. A missing or invalid
  ``since`` gets HTTP 400 with ``{"error", "timestamp"}`` (where a new mirror starts); a
  ``since`` older than the log's retention gets the single action ``{"type": "resync",
  "package": "*"}`` -- the mirror must re-read everything. Source:
  ``composer/packagist:src/Controller/PackageController.php`` ``metadataChangesAction``, and
  https://packagist.org/apidoc ("Track package updates").
- Metadata: ``<repo>/packages.json`` names the Composer 2 ``metadata-url``
  (``/p2/%package%.json``; relative to the repository's host, as Composer's
  ``ComposerRepository::canonicalizeUrl`` resolves it), and for private repositories the
  ``available-packages`` / ``available-package-patterns`` it serves. Each package has
  ``p2/VENDOR/NAME.json`` (tagged releases) and ``p2/VENDOR/NAME~dev.json`` (dev branches),
  both minified (:func:`~indexers.composer.metadata.expand`); 404 means no such package.
- Listing: ``<api>/packages/list.json`` answers ``{"packageNames": [...]}``: the bootstrap
  walk and the reconcile sweep read it.

A ``resync`` answer (or a bootstrap from ``origin``) turns the cursor into a walk of the
package list, page by page, after which the feed is read again from the stamp the resync
answer gave, so nothing changed during the walk is lost.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from indexers.base import (
    TRANSIENT_STATUS,
    USER_AGENT,
    Indexer,
    expect,
    parse_position,
    redact,
    retry_after_seconds,
)
from indexers.composer.metadata import (
    ECOSYSTEM,
    map_package,
    p2_versions,
    stability,
    validate_name,
)
from indexers.errors import FeedError, InvalidName, PackageNotFound, UpstreamUnavailable
from indexers.types import Change, Inventory, InventoryEntry, PackageInfo, Page

log = logging.getLogger(__name__)

#: Stamps are in 1/10000 s.
TICKS = 10_000
#: The smallest ``since`` Packagist takes (its log began 2020-03-24).
FEED_EPOCH = 15850612240000


def stamp_of(moment: datetime) -> int:
    """A feed stamp (1/10000 s since the epoch) for an aware datetime."""
    return int(moment.timestamp() * TICKS)


def time_of(stamp: int) -> datetime:
    return datetime.fromtimestamp(stamp / TICKS, tz=UTC)


@dataclass(frozen=True, slots=True)
class ComposerCursor:
    """Where the watcher stands: the feed's next ``since`` (inclusive), and during a walk of
    the package list (after a ``resync``, or a bootstrap) the last name queued from it
    (``""`` before the first); ``None`` when no walk is under way."""

    since: int
    listed: str | None = None


def parse_actions(doc: Any, url: str) -> tuple[tuple[Change, ...], bool, int]:
    """Map a changes document to changes (one per package, ``~dev`` folded into the
    package, the later action winning), whether it asked for a resync, and its stamp."""
    expect(isinstance(doc, dict), url, "changes document is not an object")
    actions, stamp = doc.get("actions"), doc.get("timestamp")
    expect(isinstance(actions, list), url, "changes document has no 'actions' list")
    expect(isinstance(stamp, int) and not isinstance(stamp, bool), url, "no integer timestamp")
    latest: dict[str, Change] = {}
    resync = False
    for action in actions:
        expect(isinstance(action, dict), url, "an action is not an object")
        kind, package = action.get("type"), action.get("package")
        if kind == "resync":
            resync = True
            continue
        if kind not in ("update", "delete") or not isinstance(package, str):
            log.warning("composer feed: skipping action %r", action)
            continue
        try:
            name = validate_name(package.removesuffix("~dev"))
        except InvalidName as exc:
            log.warning("composer feed: skipping action: %s", exc)
            continue
        deleted = kind == "delete" and not package.endswith("~dev")
        latest.pop(name, None)
        latest[name] = Change(name=name, deleted=deleted)
    return tuple(latest.values()), resync, stamp


class ComposerIndexer(Indexer[ComposerCursor]):
    """Follow Packagist's metadata changes and read Composer v2 metadata.

    ``repo_url`` is the Composer repository (``packages.json``, ``p2/``); ``api_url`` serves
    ``metadata/changes.json`` and ``packages/list.json``. ``page_size`` bounds the names one
    page of a list walk queues.

    Cursor semantics (:class:`ComposerCursor`): ``since`` is inclusive; one feed page holds
    every change up to the registry's head, in no particular order, so it is always ``done``
    and an empty page returns the head it was asked at. A list walk pages in name order and is
    not ``done`` until the feed has been read again after it.
    """

    ecosystem = ECOSYSTEM
    cursor_type = ComposerCursor
    default_interval = timedelta(minutes=1)
    release_removed = "version deleted"
    package_removed = "package deleted"

    def __init__(
        self, client: httpx.AsyncClient, *, repo_url: str, api_url: str, page_size: int = 5000
    ) -> None:
        super().__init__(client)
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.repo_url = repo_url.rstrip("/")
        self.api_url = api_url.rstrip("/")
        self.page_size = page_size
        self._root: dict[str, Any] | None = None

    @staticmethod
    def normalize_name(name: str) -> str:
        return validate_name(name)

    @staticmethod
    def is_prerelease(version: str) -> bool:
        """Anything less stable than ``stable`` in Composer's rules (dev branches too)."""
        return stability(version) != "stable"

    # -- the repository -------------------------------------------------------------------

    async def root(self) -> dict[str, Any]:
        """The repository's ``packages.json`` (read once per indexer)."""
        if self._root is None:
            url = f"{self.repo_url}/packages.json"
            doc = await self.get_json(url)
            expect(isinstance(doc, dict), url, "packages.json is not an object")
            self._root = doc
        return self._root

    async def metadata_url(self, name: str) -> str:
        """Where the repository serves ``name``'s p2 file (``name~dev`` for dev branches)."""
        template = (await self.root()).get("metadata-url")
        if not isinstance(template, str) or "%package%" not in template:
            raise FeedError(redact(self.repo_url), "packages.json has no Composer 2 metadata-url")
        if template.startswith("/"):
            origin = httpx.URL(self.repo_url)
            template = f"{origin.scheme}://{origin.netloc.decode()}{template}"
        return template.replace("%package%", name)

    async def package(self, name: str, *, change: Change | None = None) -> PackageInfo:
        """Both p2 files of ``name``, expanded and mapped; a 404 on the tagged file is a
        deleted (or never published) package, on ``~dev`` a package without branches."""
        url = await self.metadata_url(name)
        tagged = p2_versions(await self.get_json(url, not_found=(ECOSYSTEM, name)), name, url)
        dev_url = await self.metadata_url(f"{name}~dev")
        try:
            dev = p2_versions(await self.get_json(dev_url, not_found=(ECOSYSTEM, name)), name, url)
        except PackageNotFound:
            dev = []
        return map_package(name, tagged, dev)

    # -- the feed -------------------------------------------------------------------------

    async def changes_document(self, since: int) -> tuple[dict[str, Any], bool]:
        """The feed's answer for ``since`` and whether Packagist refused the ``since`` (its
        400 answer, which still names the stamp to start from)."""
        url = f"{self.api_url}/metadata/changes.json"
        try:
            response = await self.client.get(
                url, params={"since": since}, headers={"user-agent": USER_AGENT}
            )
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
        if response.status_code not in (200, 400):
            raise FeedError(redact(url), f"unexpected HTTP {response.status_code}")
        try:
            doc = json.loads(response.content)
        except ValueError as exc:
            raise FeedError(redact(url), f"body is not JSON: {exc}") from exc
        expect(isinstance(doc, dict), url, "changes answer is not an object")
        stamp = doc.get("timestamp")
        expect(isinstance(stamp, int) and not isinstance(stamp, bool), url, "no timestamp")
        return doc, response.status_code == 400

    async def head(self) -> int:
        """The feed's current stamp: what it answers a ``since`` it refuses."""
        doc, _ = await self.changes_document(0)
        return int(doc["timestamp"])

    async def start_cursor(self) -> ComposerCursor:
        """Start at the head, as Packagist tells a new mirror to."""
        return ComposerCursor(await self.head())

    async def cursor_at(self, position: str) -> ComposerCursor:
        """``origin``: walk the whole package list, then follow the feed from now; a stamp
        or an RFC 3339 time: read the feed from there (a time the log no longer holds makes
        the feed ask for a resync, which walks the list)."""
        where = parse_position(ECOSYSTEM, position)
        if where is None:
            return ComposerCursor(await self.head(), listed="")
        if isinstance(where, datetime):
            return ComposerCursor(max(stamp_of(where), FEED_EPOCH))
        return ComposerCursor(max(where, FEED_EPOCH))

    async def changes(self, cursor: ComposerCursor) -> Page[ComposerCursor]:
        """One page: the list walk's next names while a walk is under way, else the feed."""
        if cursor.listed is not None:
            return await self._walk(cursor)
        url = f"{self.api_url}/metadata/changes.json"
        doc, refused = await self.changes_document(cursor.since)
        stamp = int(doc["timestamp"])
        if refused:
            raise FeedError(
                redact(url), f"the feed refused since={cursor.since}: {doc.get('error')}"
            )
        changes, resync, stamp = parse_actions(doc, url)
        if resync:
            log.warning(
                "composer feed: since=%d is too old, walking the package list", cursor.since
            )
            return Page((), ComposerCursor(stamp, listed=""), done=False, head=stamp)
        stamp = max(stamp, cursor.since)
        return Page(
            changes, ComposerCursor(stamp), done=True, head=stamp, position_at=time_of(stamp)
        )

    async def _walk(self, cursor: ComposerCursor) -> Page[ComposerCursor]:
        names = await self.package_names()
        after = cursor.listed or ""
        batch = [name for name in names if name > after][: self.page_size]
        if not batch:
            return Page((), ComposerCursor(cursor.since), done=False)
        changes = tuple(Change(name=name) for name in batch)
        return Page(changes, ComposerCursor(cursor.since, listed=batch[-1]), done=False)

    # -- the listing ----------------------------------------------------------------------

    async def package_names(self) -> list[str]:
        """Every package the registry lists, valid names only, sorted: the repository's own
        ``available-packages`` when it publishes them, else Packagist's package list."""
        available = (await self.root()).get("available-packages")
        if isinstance(available, list) and available:
            raw: list[Any] = available
        else:
            url = f"{self.api_url}/packages/list.json"
            doc = await self.get_json(url)
            listed = doc.get("packageNames") if isinstance(doc, dict) else None
            if not isinstance(listed, list):
                raise FeedError(redact(url), "package list has no 'packageNames' list")
            raw = listed
        names: set[str] = set()
        for name in raw:
            try:
                names.add(validate_name(str(name)))
            except InvalidName:
                log.debug("composer list: skipping %r", name)
        return sorted(names)

    async def inventory(self, after: str | None) -> Inventory:
        """A page of the package list after ``after``; entries carry no version stamp."""
        names = [name for name in await self.package_names() if after is None or name > after]
        page = names[: self.page_size]
        entries = tuple(InventoryEntry(Change(name=name)) for name in page)
        return Inventory(entries, page[-1] if page else after, done=len(names) <= self.page_size)


__all__ = ["FEED_EPOCH", "TICKS", "ComposerCursor", "ComposerIndexer", "parse_actions"]
