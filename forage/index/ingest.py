"""Recording what registries publish: package imports and the feed watchers that queue them.

Two halves, both idempotent (DESIGN.md, "The way data flows"):

- :func:`record_package` writes one registry answer (:class:`indexers.PackageInfo`) as
  package / version / artifact / digest rows, flags versions the registry deleted or yanked,
  and queues an ``archive`` job for every new artifact, all in the caller's transaction.
  ``import`` jobs (:func:`import_job`) fetch the answer and record it.
- :func:`watch_feed` follows a registry's change feed. Each page's changes become ``import``
  jobs **in the same transaction** that moves the cursor, so a kill at any moment resumes
  without loss or duplicates; the cursor row is updated only where its ``version`` is the
  one read (compare-and-set), so two watchers of one feed cannot both advance it. A feed
  that keeps failing or changes shape stops the run with the cursor where it was. One bad
  package never blocks the feed: its import job retries and is then parked as dead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from forage.db.engine import is_sqlite, utcnow
from forage.db.models import Artifact, ArtifactDigest, FeedCursor, Package, Version
from forage.errors import ForageError
from forage.index import misses
from forage.index.registries import make_indexer
from forage.index.removals import record_removals, release_removal, remove_package
from forage.index.selection import PackageExcluded, selection_for
from forage.jobs import queue as jobs
from indexers import (
    ECOSYSTEMS,
    Change,
    Indexer,
    PackageInfo,
    PackageNotFound,
    Page,
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    from forage.jobs.worker import JobContext  # the job machinery: only its type here

log = logging.getLogger(__name__)

IMPORT = "import"
ARCHIVE = "archive"

#: How often a watcher retries a feed page that failed transiently before it stops loudly.
FEED_ATTEMPTS = 5
FEED_BACKOFF_CAP = 60.0


class CursorConflict(ForageError):
    """Another watcher moved this feed's cursor since we read it; this run stops."""


@dataclass(frozen=True, slots=True)
class RecordStats:
    """What one :func:`record_package` call changed."""

    package_id: int
    new_versions: int = 0
    new_artifacts: int = 0
    updated_versions: int = 0


@dataclass(slots=True)
class WatchStats:
    """What one run of a watcher did."""

    pages: int = 0
    changes: int = 0
    rescanned: int = 0
    cursor: dict[str, Any] = dataclasses.field(default_factory=dict)


def _insert(session: Session, table: Any) -> Any:
    return (sqlite.insert if is_sqlite(session) else postgresql.insert)(table)


# Core tables: statements on them skip the ORM's per-statement bookkeeping.
_packages = cast(sa.Table, Package.__table__)
_versions = cast(sa.Table, Version.__table__)
_artifacts = cast(sa.Table, Artifact.__table__)
_digests = cast(sa.Table, ArtifactDigest.__table__)


@dataclass(frozen=True, slots=True)
class _Statements:
    """The statements of :func:`record_package`, built once with bind parameters so each
    call only binds values (no construction, cache key or compilation per call)."""

    upsert_package: Any
    known_versions: Any
    insert_versions: Any
    known_artifacts: Any
    insert_artifacts: Any
    insert_digests: Any


@functools.cache
def _statements(dialect: str) -> _Statements:
    insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(_packages)
    refreshed = (
        *("display_name", "deleted", "extra", "last_synced", "last_serial", "updated_at"),
        *("status", "status_reason"),
    )
    return _Statements(
        upsert_package=insert.on_conflict_do_update(
            index_elements=["ecosystem", "name"],
            set_={column: insert.excluded[column] for column in refreshed},
        ).returning(_packages.c.id),
        known_versions=sa.select(
            _versions.c.id,
            _versions.c.number,
            _versions.c.yanked,
            _versions.c.deleted,
            _versions.c.deprecated,
            _versions.c.removal,
            _versions.c.removed_at,
        ).where(_versions.c.package_id == sa.bindparam("package_id")),
        # Rows come back keyed by their natural key, so they need not come back in order
        # (asking for order makes SQLAlchemy send SQLite one INSERT per row).
        insert_versions=sa.insert(_versions).returning(_versions.c.id, _versions.c.number),
        known_artifacts=sa.select(
            _artifacts.c.id,
            _artifacts.c.version_id,
            _artifacts.c.filename,
            _artifacts.c.url,
            _artifacts.c.yanked,
        ).where(_artifacts.c.version_id.in_(sa.bindparam("version_ids", expanding=True))),
        insert_artifacts=sa.insert(_artifacts).returning(
            _artifacts.c.id, _artifacts.c.version_id, _artifacts.c.filename
        ),
        # RETURNING makes SQLAlchemy send one multi-row INSERT ("insertmanyvalues"); without
        # it psycopg pipelines one INSERT per row.
        insert_digests=sa.insert(_digests).returning(_digests.c.artifact_id),
    )


def newest_releases(info: PackageInfo, count: int) -> PackageInfo:
    """Keep the ``count`` most recently published releases (unknown dates count as oldest)."""
    oldest = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(info.releases, key=lambda r: r.published_at or oldest, reverse=True)
    return dataclasses.replace(info, releases=tuple(ordered[:count]), complete=False)


def record_package(session: Session, info: PackageInfo, *, archive: bool = True) -> RecordStats:
    """Write ``info`` as rows; queue an archive job per new artifact when ``archive``.

    Versions and files the registry stopped offering are recorded as removed, with when and
    how, and cleared when it offers them again (:mod:`forage.index.removals`).

    A handful of statements whatever the package's size: one upsert of the package, one read
    of its known versions (and of their artifacts), one multi-row insert each for new
    versions, artifacts, digests and archive jobs, and an update per changed flag.
    """
    connection = session.connection()
    statements = _statements(connection.dialect.name)
    now = utcnow()
    package_id = connection.execute(
        statements.upsert_package,
        {
            "ecosystem": info.ecosystem,
            "name": info.name,
            "display_name": info.display_name,
            "deleted": info.deleted,
            "extra": dict(info.extra),
            "last_synced": now,
            "last_serial": info.serial,
            "updated_at": now,
            "status": info.status,
            "status_reason": info.status_reason,
        },
    ).scalar_one()
    known = {
        row.number: row
        for row in connection.execute(statements.known_versions, {"package_id": package_id})
    }
    new_rows = [
        {
            "package_id": package_id,
            "number": release.version,
            "published_at": release.published_at,
            "yanked": release.yanked,
            "deleted": release.deleted,
            "deprecated": release.deprecated,
            "removal": (removal := release_removal(info.ecosystem, release)),
            "removed_at": now if removal else None,
        }
        for release in info.releases
        if release.version not in known
    ]
    version_ids = {number: row.id for number, row in known.items()}
    if new_rows:
        inserted = connection.execute(statements.insert_versions, new_rows)
        version_ids.update({row.number: row.id for row in inserted})
    updated = 0
    for release in info.releases:
        row = known.get(release.version)
        flags = (release.yanked, release.deleted, release.deprecated)
        if row is not None and (row.yanked, row.deleted, row.deprecated) != flags:
            connection.execute(
                sa.update(_versions)
                .where(_versions.c.id == row.id)
                .values(
                    yanked=release.yanked, deleted=release.deleted, deprecated=release.deprecated
                )
            )
            updated += 1
    if info.deleted:
        connection.execute(
            sa.update(_versions)
            .where(_versions.c.package_id == package_id, _versions.c.deleted.is_(False))
            .values(deleted=True)
        )
    known_ids = [row.id for row in known.values()]
    new_artifacts = _record_artifacts(
        session, connection, statements, info, version_ids, known_ids, archive=archive
    )
    updated += record_removals(connection, info, known, version_ids, now)
    log.info(
        "recorded %s/%s: %d new versions, %d new artifacts",
        info.ecosystem,
        info.name,
        len(new_rows),
        new_artifacts,
    )
    return RecordStats(package_id, len(new_rows), new_artifacts, updated)


def _record_artifacts(
    session: Session,
    connection: sa.Connection,
    statements: _Statements,
    info: PackageInfo,
    version_ids: Mapping[str, int],
    known_ids: list[int],
    *,
    archive: bool,
) -> int:
    """Insert the artifacts not yet recorded (only versions known before can have any)."""
    existing = (
        {
            (row.version_id, row.filename): row
            for row in connection.execute(statements.known_artifacts, {"version_ids": known_ids})
        }
        if known_ids
        else {}
    )
    rows: list[dict[str, Any]] = []
    digests: dict[tuple[int, str], Mapping[str, str]] = {}
    for release in info.releases:
        version_id = version_ids[release.version]
        for artifact in release.artifacts:
            old = existing.get((version_id, artifact.filename))
            if old is None:
                rows.append(
                    {
                        "version_id": version_id,
                        "filename": artifact.filename,
                        "url": artifact.url,
                        "size": artifact.size,
                        "kind": artifact.kind,
                        "yanked": artifact.yanked,
                        "yanked_reason": artifact.yanked_reason,
                        "requires_python": artifact.requires_python,
                        "uploaded_at": artifact.uploaded_at,
                    }
                )
                digests[version_id, artifact.filename] = artifact.digests
            elif (old.url, old.yanked) != (artifact.url, artifact.yanked):
                connection.execute(
                    sa.update(_artifacts)
                    .where(_artifacts.c.id == old.id)
                    .values(
                        url=artifact.url,
                        yanked=artifact.yanked,
                        yanked_reason=artifact.yanked_reason,
                    )
                )
    if not rows:
        return 0
    inserted = connection.execute(statements.insert_artifacts, rows).all()
    new_ids = sorted(row.id for row in inserted)
    digest_rows = [
        {"artifact_id": row.id, "algorithm": algorithm, "value": value}
        for row in inserted
        for algorithm, value in digests[row.version_id, row.filename].items()
    ]
    if digest_rows:
        connection.execute(statements.insert_digests, digest_rows)
    if archive:
        jobs.enqueue_many(
            session,
            ARCHIVE,
            {f"{ARCHIVE}:{artifact_id}": {"artifact_id": artifact_id} for artifact_id in new_ids},
        )
    return len(new_ids)


def mark_package_deleted(session: Session, ecosystem: str, name: str) -> bool:
    """Flag a package the registry no longer has, its versions and files removed with when and
    how (its archives stay); False if unknown."""
    package_id = session.execute(
        sa.select(Package.id).where(Package.ecosystem == ecosystem, Package.name == name)
    ).scalar_one_or_none()
    if package_id is None:
        return False
    remove_package(session, package_id, ecosystem, utcnow())
    return True


def _client(ctx: JobContext, ecosystem: str) -> Any:
    ctx.config.registry(ecosystem)  # raises ConfigError naming what to set
    return ctx.http[ecosystem]


async def import_package(
    ctx: JobContext,
    ecosystem: str,
    name: str,
    *,
    hints: Mapping[str, Any] | None = None,
    newest: int | None = None,
    archive: bool = True,
) -> RecordStats | None:
    """Fetch one package from its registry and record it; ``None`` if the registry lost it.

    ``hints`` are the freshness hints of the feed change that asked for it (an ``import``
    job's payload, :func:`change_payload`): an answer older than them is retried later.
    A registry without the package (never indexed), or without the version a lookup asked
    for, is recorded as a miss so the lookup ends (:mod:`forage.index.misses`).
    """
    indexer = make_indexer(ctx.config, ecosystem, _client(ctx, ecosystem))
    name = indexer.normalize_name(name)
    selection = selection_for(ctx.config, ecosystem)
    selection.admit(name)  # PackageExcluded: the configuration leaves it out
    try:
        info = await indexer.package(name, change=change_of(name, hints or {}))
    except PackageNotFound as exc:
        gone = await ctx.transaction(mark_package_deleted, ecosystem, name)
        if not gone:
            answer = misses.not_found_answer(exc)
            await ctx.transaction(misses.record_miss, ecosystem, name, None, answer)
        log.info("%s/%s is gone upstream (known: %s)", ecosystem, name, gone)
        return None
    info = selection.apply(info)
    if newest is not None:
        info = newest_releases(info, newest)
    if (asked := misses.asked_version(hints or {})) is None:
        return await ctx.transaction(record_package, info, archive=archive)
    info, missed = misses.asked_outcome(info, asked)
    stats = await ctx.transaction(record_package, info, archive=archive)
    await ctx.transaction(misses.settle_asked, ecosystem, info.name, asked, missed)
    return stats


async def import_job(ctx: JobContext, job: jobs.Job) -> None:
    """Handler of ``import`` jobs: payload ``{ecosystem, name, serial?, revision?, version?}``."""
    payload = job.payload
    try:
        await import_package(ctx, str(payload["ecosystem"]), str(payload["name"]), hints=payload)
    except PackageExcluded as exc:
        log.info("import skipped: %s", exc)


def change_payload(ecosystem: str, change: Change) -> dict[str, Any]:
    """The ``import`` job payload for one feed change (only the hints that are set)."""
    hints = {"serial": change.serial, "revision": change.revision, "version": change.version}
    payload: dict[str, Any] = {"ecosystem": ecosystem, "name": change.name}
    payload.update((key, value) for key, value in hints.items() if value is not None)
    if change.deleted:
        payload["deleted"] = True
    return payload


def change_of(name: str, hints: Mapping[str, Any]) -> Change:
    """The feed change an ``import`` payload (or any hints mapping) describes, for ``name``."""
    serial, revision, version = hints.get("serial"), hints.get("revision"), hints.get("version")
    return Change(
        name=name,
        serial=int(serial) if serial is not None else None,
        deleted=bool(hints.get("deleted", False)),
        revision=str(revision) if revision is not None else None,
        version=str(version) if version is not None else None,
    )


def _dedup_key(ecosystem: str, change: Change) -> str:
    unlisted = ECOSYSTEMS[ecosystem].unlisted_versions
    suffix = f"@{change.version}" if unlisted and change.version else ""
    return f"{IMPORT}:{ecosystem}:{change.name}{suffix}"


def enqueue_changes(session: Session, ecosystem: str, changes: Iterable[Change]) -> int:
    """Queue one ``import`` job per change, in one statement; returns how many changes.

    A change already queued is absorbed by its queued job; of two changes to one package in
    one page, the later one's hints are kept (feeds list entries oldest first).
    """
    payloads: dict[str, dict[str, Any]] = {}
    count = 0
    for change in changes:
        key = _dedup_key(ecosystem, change)
        payloads.pop(key, None)
        payloads[key] = change_payload(ecosystem, change)
        count += 1
    jobs.enqueue_many(session, IMPORT, payloads)
    return count


def _load_cursor(session: Session, feed: str) -> tuple[dict[str, Any], int] | None:
    row = session.get(FeedCursor, feed)
    return None if row is None else (dict(row.cursor), row.version)


def create_cursor(
    session: Session, feed: str, cursor: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    session.execute(
        _insert(session, FeedCursor.__table__)
        .values(feed=feed, cursor=cursor, version=1)
        .on_conflict_do_nothing(index_elements=["feed"])
    )
    loaded = _load_cursor(session, feed)
    assert loaded is not None
    return loaded


def commit_page(
    session: Session,
    *,
    feed: str,
    ecosystem: str,
    expected_version: int,
    page: Page[Any],
    cursor: dict[str, Any],
) -> int:
    """Queue the page's imports and move the cursor, or raise ``CursorConflict``.

    Also records what the feed's lag is computed from (:mod:`forage.index.status`): whether
    the page reached the head (and then when), the head it reported and the date of the
    cursor's position; a page that does not know the head or the date keeps those stored.
    """
    enqueue_changes(session, ecosystem, page.changes)
    now = utcnow()
    values: dict[str, Any] = {
        "cursor": cursor,
        "at_head": page.done,
        "version": expected_version + 1,
        "updated_at": now,
    }
    if page.done:
        values["caught_up_at"] = now
    if page.head is not None:
        values["head"] = {"head": page.head}
    if page.position_at is not None:
        values["position_at"] = page.position_at
    result = session.execute(
        sa.update(FeedCursor)
        .where(FeedCursor.feed == feed, FeedCursor.version == expected_version)
        .values(**values)
        .returning(FeedCursor.version)
    )
    if result.scalar_one_or_none() is None:
        raise CursorConflict(f"feed {feed}: cursor moved by another watcher; stopping this run")
    return expected_version + 1


async def _page(indexer: Indexer[Any], cursor: Any, *, sleep: Callable[[float], Any]) -> Page[Any]:
    """Read one feed page, retrying transient failures ``FEED_ATTEMPTS`` times in all."""
    attempt = 1
    while True:
        try:
            return await indexer.changes(cursor)
        except UpstreamUnavailable as exc:
            if attempt == FEED_ATTEMPTS:
                raise
            delay = min(FEED_BACKOFF_CAP, exc.retry_after or 2.0**attempt)
            log.warning(
                "feed %s unavailable (%s); retry %d in %.0fs",
                indexer.ecosystem,
                exc,
                attempt,
                delay,
            )
            await sleep(delay)
            attempt += 1


async def watch_feed(
    ctx: JobContext,
    ecosystem: str,
    *,
    max_pages: int | None = None,
    on_page: Callable[[WatchStats], None] | None = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> WatchStats:
    """Follow ``ecosystem``'s feed from its stored cursor until caught up (or ``max_pages``)."""
    indexer = make_indexer(ctx.config, ecosystem, _client(ctx, ecosystem))
    feed = ecosystem
    stats = WatchStats()
    stored = await ctx.transaction(_load_cursor, feed)
    if stored is None:
        start = indexer.cursor_to_dict(await indexer.start_cursor())
        stored = await ctx.transaction(create_cursor, feed, start)
        log.info("feed %s starts at %s", feed, stored[0])
    cursor_dict, version = stored
    cursor = indexer.cursor_from_dict(cursor_dict)
    window = ECOSYSTEMS[ecosystem].rescan_window
    select = selection_for(ctx.config, ecosystem).changes
    if window and hasattr(cursor, "rewind"):
        start = cursor.rewind(window)
        stats.rescanned = await _rescan(ctx, indexer, cursor, start, select=select, sleep=sleep)
    while True:
        page = await _page(indexer, cursor, sleep=sleep)
        page = dataclasses.replace(page, changes=select(page.changes))
        next_dict = indexer.cursor_to_dict(page.cursor)
        version = await ctx.transaction(
            commit_page,
            feed=feed,
            ecosystem=ecosystem,
            expected_version=version,
            page=page,
            cursor=next_dict,
        )
        stats.pages += 1
        stats.changes += len(page.changes)
        stats.cursor = next_dict
        if on_page is not None:
            on_page(stats)
        if page.done or page.cursor == cursor or (max_pages and stats.pages >= max_pages):
            return stats
        cursor = page.cursor


async def _rescan(
    ctx: JobContext,
    indexer: Indexer[Any],
    stored: Any,
    start: Any,
    *,
    select: Callable[[Iterable[Change]], tuple[Change, ...]],
    sleep: Callable[[float], Any],
) -> int:
    """Re-read the window behind the stored cursor, queueing imports for late entries."""
    seen = 0
    cursor = start
    while dataclasses.astuple(cursor) < dataclasses.astuple(stored):
        page = await _page(indexer, cursor, sleep=sleep)
        changes = select(page.changes)
        await ctx.transaction(enqueue_changes, indexer.ecosystem, changes)
        seen += len(changes)
        if page.done or page.cursor == cursor:
            break
        cursor = page.cursor
    return seen
