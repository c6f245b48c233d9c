"""Per-registry status: where each watcher is, how far behind, what is known and archived.

One function, :func:`registry_status`, computes every figure; ``forage status``,
``GET /api/v1/stats`` (``registries``) and ``GET /metrics`` (``forage_registry_*`` and
``forage_feed_*``) all show what it returns, so they cannot disagree.

**Feed.** ``head`` is the feed's newest position as the registry last reported it and
``position`` the cursor's, in the registry's own spelling (:meth:`Indexer.cursor_position`:
a seq, a serial, a timestamp); ``cursor`` is the stored cursor itself.

**Lag**, in seconds for every feed: an upper bound on how long the oldest feed entry the
watcher has not read yet has been waiting. It is 0 while the last page the watcher wrote
reached the head (``at_head``), whatever the clock says. Otherwise every unread entry is
newer than both the last time a page reached the head (``caught_up_at``) and the registry's
date of the cursor's position where it dates entries (``position_at``: PyPI's journal, the Go
index), so the lag is ``now - max(caught_up_at, position_at)``; it is ``None`` (unknown)
before a watcher of a feed that dates nothing has ever reached the head. Entries published
between two runs of a caught-up watcher are not counted: the watcher's interval bounds them.

**Counts**, per registry: ``packages`` and ``versions`` known and removed (the registry no
longer has or lists them); ``files`` known, ``archived`` (an archived copy exists),
``failed`` (the archive failed: bad bytes or a permanent error), ``removed`` (the file or its
release left the registry, archived or not) and ``pending`` (no archived copy, not failed,
not removed: what archive jobs still have to fetch). ``imports`` are import jobs waiting or
running (``pending``) and given up (``dead``). The counts are a few aggregate queries per
registry, each reading only that registry's rows through indexes (:func:`_counts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.engine import utcnow
from forage.db.models import (
    Archive,
    ArchiveStatus,
    Artifact,
    FeedCursor,
    JobRecord,
    JobState,
    Package,
    Version,
)
from forage.index.ingest import IMPORT
from indexers import ECOSYSTEMS

#: The figures of ``packages`` and ``versions``.
ROW_STATES = ("known", "removed")
#: The figures of ``files``.
FILE_STATES = ("known", "archived", "pending", "failed", "removed")
#: The figures of ``imports``.
IMPORT_STATES = ("pending", "dead")


def feed_lag(
    *,
    at_head: bool,
    caught_up_at: datetime | None,
    position_at: datetime | None,
    now: datetime,
) -> float | None:
    """The lag in seconds as the module docstring defines it (``None``: not known yet)."""
    if at_head:
        return 0.0
    known = [moment for moment in (caught_up_at, position_at) if moment is not None]
    if not known:
        return None
    return max(0.0, (now - max(known)).total_seconds())


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """One watcher's position and lag (see the module docstring)."""

    head: Any
    position: Any
    cursor: Mapping[str, Any]
    lag_seconds: float | None
    at_head: bool
    caught_up_at: datetime | None
    position_at: datetime | None
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON values (dates in ISO 8601)."""

        def iso(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment is not None else None

        return {
            "head": self.head,
            "position": self.position,
            "cursor": dict(self.cursor),
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "at_head": self.at_head,
            "caught_up_at": iso(self.caught_up_at),
            "position_at": iso(self.position_at),
            "updated_at": iso(self.updated_at),
        }


#: The feed figures of a registry whose watcher never ran.
_NO_FEED: Mapping[str, Any] = {
    "head": None,
    "position": None,
    "cursor": None,
    "lag_seconds": None,
    "at_head": False,
    "caught_up_at": None,
    "position_at": None,
    "updated_at": None,
}


@dataclass(frozen=True, slots=True)
class RegistryStatus:
    """Everything :func:`registry_status` knows about one registry."""

    registry: str
    feed: FeedStatus | None
    packages: Mapping[str, int]
    versions: Mapping[str, int]
    files: Mapping[str, int]
    imports: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape ``forage status --json`` and ``/api/v1/stats`` share."""
        return {
            **(self.feed.to_dict() if self.feed else _NO_FEED),
            "packages": dict(self.packages),
            "versions": dict(self.versions),
            "files": dict(self.files),
            "imports": dict(self.imports),
        }


def _count(condition: Any) -> Any:
    return sa.func.count(sa.case((condition, 1)))


def _figures(
    session: Session, statement: sa.Select[Any], states: tuple[str, ...]
) -> dict[str, int]:
    row = session.execute(statement).one()
    return {state: int(n) for state, n in zip(states, row, strict=True)}


def _counts(session: Session, ecosystem: str) -> tuple[dict[str, int], ...]:
    """``packages``, ``versions`` and ``files`` of one registry: three counts, each walking
    the packages' ``(ecosystem, name)`` index, then versions, artifacts and archives through
    the unique indexes that lead with their foreign key (no scan of another registry's rows,
    no sort)."""
    in_registry = Package.ecosystem == ecosystem
    version_removed = sa.or_(Version.deleted.is_(True), Version.removed_at.is_not(None))
    file_removed = sa.or_(Artifact.removed_at.is_not(None), version_removed)
    unarchived = sa.or_(Archive.id.is_(None), Archive.status == ArchiveStatus.PENDING)
    versions = sa.select().select_from(Package).join(Version, Version.package_id == Package.id)
    files = versions.join(Artifact, Artifact.version_id == Version.id).outerjoin(
        Archive, Archive.artifact_id == Artifact.id
    )
    return (
        _figures(
            session,
            sa.select(sa.func.count(), _count(Package.deleted.is_(True))).where(in_registry),
            ROW_STATES,
        ),
        _figures(
            session,
            versions.add_columns(sa.func.count(), _count(version_removed)).where(in_registry),
            ROW_STATES,
        ),
        _figures(
            session,
            files.add_columns(
                sa.func.count(),
                _count(Archive.status == ArchiveStatus.ARCHIVED),
                _count(sa.and_(unarchived, sa.not_(file_removed))),
                _count(Archive.status == ArchiveStatus.FAILED),
                _count(file_removed),
            ).where(in_registry),
            FILE_STATES,
        ),
    )


def _imports(session: Session) -> dict[str, dict[str, int]]:
    ecosystem = JobRecord.payload["ecosystem"].as_string()
    imports: dict[str, dict[str, int]] = {}
    for name, state, n in session.execute(
        sa.select(ecosystem, JobRecord.state, sa.func.count())
        .where(
            JobRecord.kind == IMPORT,
            JobRecord.state.in_((JobState.QUEUED, JobState.RUNNING, JobState.DEAD)),
        )
        .group_by(ecosystem, JobRecord.state)
    ):
        figure = "dead" if state == JobState.DEAD else "pending"
        counts = imports.setdefault(str(name), dict.fromkeys(IMPORT_STATES, 0))
        counts[figure] += int(n)
    return imports


def _feeds(session: Session, now: datetime) -> dict[str, FeedStatus]:
    feeds: dict[str, FeedStatus] = {}
    for row in session.scalars(sa.select(FeedCursor).where(FeedCursor.feed.in_(ECOSYSTEMS))):
        feeds[row.feed] = FeedStatus(
            head=(row.head or {}).get("head"),
            position=ECOSYSTEMS[row.feed].indexer.cursor_position(row.cursor),
            cursor=row.cursor,
            lag_seconds=feed_lag(
                at_head=row.at_head,
                caught_up_at=row.caught_up_at,
                position_at=row.position_at,
                now=now,
            ),
            at_head=row.at_head,
            caught_up_at=row.caught_up_at,
            position_at=row.position_at,
            updated_at=row.updated_at,
        )
    return feeds


def registry_status(session: Session, *, now: datetime | None = None) -> dict[str, RegistryStatus]:
    """Every registered registry's feed, lag and counts, in registration order; ``now`` is
    the moment the lag is measured at (the clock by default)."""
    feeds = _feeds(session, now or utcnow())
    imports = _imports(session)
    report: dict[str, RegistryStatus] = {}
    for name in ECOSYSTEMS:
        packages, versions, files = _counts(session, name)
        report[name] = RegistryStatus(
            registry=name,
            feed=feeds.get(name),
            packages=packages,
            versions=versions,
            files=files,
            imports=imports.get(name, dict.fromkeys(IMPORT_STATES, 0)),
        )
    return report
