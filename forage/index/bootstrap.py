"""Bootstrap: walk a registry's history from a chosen point, so the archive holds what was
published before its watcher existed.

``forage watch ECO --from origin|TIME|SERIAL`` asks the registry's indexer for the cursor at
that position (:meth:`indexers.Indexer.cursor_at`: npm seq 0, PyPI serial 0, the Go index's
first day; a serial; a time) and stores it as the watcher's own cursor. The watcher then walks
forward from there as it always does: each page's import jobs are written in the transaction
that moves the cursor (:func:`forage.index.ingest.commit_page`), so a kill at any moment
resumes at the last page written, losing and repeating nothing, whether the walk is picked up
by ``forage watch``, the next ``--from`` of the same position, or the scheduled watcher.

A marker row ``<ecosystem>:bootstrap`` in ``feed_cursors`` remembers the position asked for
until a watcher run (``forage watch`` or the scheduled ``watch`` job) ends caught up with the
head (:func:`finish`): asking again for the same position meanwhile resumes instead of
starting over; a different position starts a new walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.engine import utcnow
from forage.db.models import FeedCursor
from forage.index.registries import make_indexer
from forage.jobs.worker import JobContext


def marker_feed(ecosystem: str) -> str:
    """The ``feed_cursors`` row that remembers a bootstrap in progress."""
    return f"{ecosystem}:bootstrap"


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Where a bootstrap walk stands: the position asked for, the watcher's cursor now, and
    whether an earlier walk from that position was resumed rather than started."""

    position: str
    cursor: dict[str, Any]
    resumed: bool


def place_cursor(
    session: Session, ecosystem: str, position: str, cursor: dict[str, Any]
) -> Bootstrap:
    """Point the watcher of ``ecosystem`` at ``cursor`` unless a walk from ``position`` is
    already under way (then it resumes where it stands).

    The cursor's ``version`` moves on, so a watcher still running from the old cursor stops
    with a ``CursorConflict`` instead of writing over the new one; the feed is no longer at
    its head and its lag is unknown until the walk's first page is written.
    """
    marker = session.get(FeedCursor, marker_feed(ecosystem), with_for_update=True)
    current = session.get(FeedCursor, ecosystem, with_for_update=True)
    if marker is not None and marker.cursor.get("from") == position and current is not None:
        return Bootstrap(position, dict(current.cursor), resumed=True)
    now = utcnow()
    if current is None:
        session.add(FeedCursor(feed=ecosystem, cursor=cursor, version=1, updated_at=now))
    else:
        current.cursor = cursor
        current.version += 1
        current.updated_at = now
        current.at_head = False
        current.caught_up_at = None
        current.position_at = None
    state = {"from": position, "start": cursor, "started_at": now.isoformat()}
    if marker is None:
        session.add(FeedCursor(feed=marker_feed(ecosystem), cursor=state, updated_at=now))
    else:
        marker.cursor = state
        marker.version += 1
        marker.updated_at = now
    return Bootstrap(position, cursor, resumed=False)


def finish(session: Session, ecosystem: str) -> bool:
    """Forget the bootstrap marker once the watcher reached the head; False if none."""
    deleted = session.execute(
        sa.delete(FeedCursor)
        .where(FeedCursor.feed == marker_feed(ecosystem))
        .returning(FeedCursor.feed)
    )
    return deleted.first() is not None


async def start(ctx: JobContext, ecosystem: str, position: str) -> Bootstrap:
    """Set (or resume) a bootstrap of ``ecosystem`` from ``position``; the caller then runs
    :func:`forage.index.ingest.watch_feed`. Raises ``InvalidPosition`` for a position the
    registry's feed cannot take."""
    ctx.config.registry(ecosystem)  # ConfigError naming what to set
    indexer = make_indexer(ctx.config, ecosystem, ctx.http[ecosystem])
    cursor = indexer.cursor_to_dict(await indexer.cursor_at(position))
    return await ctx.transaction(place_cursor, ecosystem, position.strip().lower(), cursor)


__all__ = ["Bootstrap", "finish", "marker_feed", "place_cursor", "start"]
