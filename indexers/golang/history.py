"""The Go module index read as history: where a bootstrap starts and what a reconcile re-reads.

The index (https://index.golang.org/) lists every ``(module, version)`` the proxy saw, in
Timestamp order, from its first day (2019-04-10); ``since`` is inclusive and accepts any RFC
3339 time. So a bootstrap positions the watcher's cursor at a time (``origin`` is the index's
first day), and a reconcile sweep re-reads a window of the index *before* the watcher's
cursor, where entries the watcher never saw (it started later, or lost a page) are found by
comparing each ``(module, version)`` with the index Forage keeps.

:class:`GoHistory` holds those methods for :class:`~indexers.golang.indexer.GoIndexer`; it
builds and reads cursors only through ``cursor_from_dict``/``cursor_to_dict``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from indexers.base import Indexer, expect, parse_position
from indexers.errors import FeedError, InvalidPosition
from indexers.golang.gomod import ECOSYSTEM, is_prerelease
from indexers.types import CursorT, Inventory, InventoryEntry

#: The public index's first day: ``origin`` for a bootstrap.
ORIGIN_TIME = datetime(2019, 4, 10, tzinfo=UTC)
#: How far before the watcher's cursor a reconcile sweep re-reads the index.
RECONCILE_WINDOW = timedelta(days=7)

_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def format_time(moment: datetime) -> str:
    """An index ``since`` for ``moment`` (UTC, microseconds, ``Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """An index Timestamp (up to nanoseconds) as an aware datetime, to the microsecond."""
    match = _STAMP.fullmatch(text)
    if match is None:
        raise FeedError("feed_cursors", f"not an index timestamp: {text[:80]!r}")
    base, fraction, zone = match.groups()
    moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return moment + timedelta(microseconds=int((fraction or "0")[:6].ljust(6, "0")))


class GoHistory(Indexer[CursorT]):
    """Bootstrap positions, pre-releases and the reconcile inventory of the Go index."""

    @staticmethod
    def is_prerelease(version: str) -> bool:
        """Semver pre-releases (``v1.0.0-rc.1``), pseudo-versions included when they have one."""
        return is_prerelease(version)

    async def cursor_at(self, position: str) -> CursorT:
        """``origin`` is the index's first day, an RFC 3339 time that time; the index has no
        serials."""
        where = parse_position(ECOSYSTEM, position)
        if isinstance(where, int):
            raise InvalidPosition(ECOSYSTEM, position, "the module index is ordered by time")
        return self.cursor_from_dict({"since": format_time(where or ORIGIN_TIME), "seen": ()})

    def inventory_start(self, feed: CursorT | None) -> str | None:
        """The :data:`RECONCILE_WINDOW` before the watcher's cursor (before now without one),
        read up to that cursor."""
        until = parse_time(self.cursor_to_dict(feed)["since"]) if feed else datetime.now(UTC)
        since = format_time(until - RECONCILE_WINDOW)
        return json.dumps({"since": since, "seen": [], "until": format_time(until)})

    async def inventory(self, after: str | None) -> Inventory:
        """One index page of the window :meth:`inventory_start` set: every ``(module,
        version)`` listed, as entries naming that release."""
        token: Any = json.loads(after) if after else json.loads(self.inventory_start(None) or "")
        expect(isinstance(token, dict) and "until" in token, "inventory", "bad Go token")
        cursor = self.cursor_from_dict({"since": token["since"], "seen": token["seen"]})
        page = await self.changes(cursor)
        entries = tuple(InventoryEntry(change) for change in page.changes)
        following = self.cursor_to_dict(page.cursor)
        past = parse_time(following["since"]) > parse_time(token["until"])
        done = page.done or page.cursor == cursor or past
        following["until"] = token["until"]
        return Inventory(entries, json.dumps(following), done=done)


__all__ = ["ORIGIN_TIME", "RECONCILE_WINDOW", "GoHistory", "format_time", "parse_time"]
