"""Archive rows: record how an attempt ended, and find the artifacts still to archive.

:func:`record_archived` writes the ``archived`` row in one transaction, after the blocks'
commit returned: the one place where work that follows a successful archive is queued (a pin
job, :func:`forage.pins.kinds.enqueue_pins`). :func:`record_archived_many` writes the rows of
archives that finish together in one transaction and one upsert (group commit), so the
per-artifact cost stays small. :func:`record_failed` records a failed attempt with its
reason and no CID, counting the attempts whose bytes failed verification.
:func:`count_unarchived`, :func:`unarchived_ids` and :func:`artifact_ids_for_key` find the
artifacts ``forage archive`` works on.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from forage.archive.targets import ArchiveResult
from forage.db.engine import is_sqlite, utcnow
from forage.db.models import Archive, ArchiveStatus, Artifact, Package, Version
from forage.errors import NotFound
from forage.lookup.keys import parse_key, registered_name
from forage.pins.kinds import enqueue_pins


def _ensure_row(session: Session, artifact_id: int) -> None:
    """Insert a ``pending`` archive row unless one exists (a race ends in one row)."""
    insert = (sqlite.insert if is_sqlite(session) else postgresql.insert)(
        cast(sa.Table, Archive.__table__)
    )
    session.execute(
        insert.values(artifact_id=artifact_id, status=ArchiveStatus.PENDING).on_conflict_do_nothing(
            index_elements=["artifact_id"]
        )
    )


#: Columns an ``archived`` result sets.
_ARCHIVED_COLUMNS = (
    "status",
    "cid",
    "size",
    "verified_algorithm",
    "verified_digest",
    "error",
    "mismatches",
    "archived_at",
    "updated_at",
)


@functools.cache
def _archived_upsert(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (artifact_id) DO UPDATE ... WHERE status != 'archived'
    RETURNING artifact_id, id``, built once per dialect: a row comes back only for the
    artifacts this statement moved to ``archived``. Run with many parameter sets, SQLAlchemy
    sends it as multi-row INSERTs."""
    table = cast(sa.Table, Archive.__table__)
    insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)
    return insert.on_conflict_do_update(
        index_elements=[table.c.artifact_id],
        set_={name: insert.excluded[name] for name in _ARCHIVED_COLUMNS},
        where=table.c.status != ArchiveStatus.ARCHIVED,
    ).returning(table.c.artifact_id, table.c.id)


def record_archived(
    session: Session, artifact_id: int, result: ArchiveResult, *, pin: bool = True
) -> int | None:
    """Mark the artifact archived; return the archive id, or ``None`` if it already was.

    Only the call that moves the row to ``archived`` gets an id, so follow-up work is queued
    exactly once, here, in this transaction: a pin job when ``pin`` (some pinning backend is
    configured; archives made without one are picked up by the pin check once one is).
    """
    return record_archived_many(session, [(artifact_id, result)], pin=pin)[0]


def record_archived_many(
    session: Session, results: Sequence[tuple[int, ArchiveResult]], *, pin: bool = True
) -> list[int | None]:
    """:func:`record_archived` for several ``(artifact_id, result)`` pairs in one transaction
    and one upsert (concurrent archives share it: group commit); one id or ``None`` per pair,
    in order (a repeated artifact gets its id once)."""
    now = utcnow()
    rows: dict[int, dict[str, Any]] = {}
    for artifact_id, result in results:
        rows.setdefault(
            artifact_id,
            {
                "artifact_id": artifact_id,
                "status": ArchiveStatus.ARCHIVED,
                "cid": result.cid,
                "size": result.size,
                "verified_algorithm": result.verified_algorithm,
                "verified_digest": result.verified_digest,
                "error": None,
                "mismatches": 0,
                "archived_at": now,
                "created_at": now,
                "updated_at": now,
            },
        )
    if not rows:
        return []
    connection = session.connection()
    moved = dict(
        connection.execute(_archived_upsert(connection.dialect.name), list(rows.values())).all()
    )
    archive_ids: list[int | None] = []
    for artifact_id, _ in results:
        archive_id = moved.pop(artifact_id, None)
        archive_ids.append(archive_id)
        if archive_id is not None and pin:
            enqueue_pins(session, archive_id)
    return archive_ids


def record_failed(session: Session, artifact_id: int, error: str, *, mismatch: bool = False) -> int:
    """Record a failed attempt and its reason, unless the artifact is archived meanwhile;
    ``mismatch`` counts it among the attempts whose bytes failed verification. Returns that
    count (the archive's ``mismatches``; 0 if the artifact was archived meanwhile)."""
    _ensure_row(session, artifact_id)
    count = session.execute(
        sa.update(Archive)
        .where(Archive.artifact_id == artifact_id, Archive.status != ArchiveStatus.ARCHIVED)
        .values(
            status=ArchiveStatus.FAILED,
            cid=None,
            size=None,
            verified_algorithm=None,
            verified_digest=None,
            error=error,
            mismatches=Archive.mismatches + (1 if mismatch else 0),
        )
        .returning(Archive.mismatches)
    ).scalar_one_or_none()
    return count or 0


def _not_archived() -> Any:
    archived = sa.select(Archive.artifact_id).where(
        Archive.artifact_id == Artifact.id, Archive.status == ArchiveStatus.ARCHIVED
    )
    return ~sa.exists(archived)


def count_unarchived(session: Session, *, exclude: Collection[int] = ()) -> int:
    """How many artifacts (not in ``exclude``) have no ``archived`` row: never tried,
    pending or failed."""
    query = sa.select(sa.func.count()).select_from(Artifact).where(_not_archived())
    if exclude:
        query = query.where(Artifact.id.not_in(list(exclude)))
    return int(session.execute(query).scalar_one())


def unarchived_ids(
    session: Session, *, after: int = 0, limit: int = 1000, exclude: Collection[int] = ()
) -> list[int]:
    """One page of ids of artifacts (not in ``exclude``) with no ``archived`` row, ascending
    from ``after``."""
    query = (
        sa.select(Artifact.id)
        .where(Artifact.id > after, _not_archived())
        .order_by(Artifact.id)
        .limit(limit)
    )
    if exclude:
        query = query.where(Artifact.id.not_in(list(exclude)))
    return list(session.execute(query).scalars())


def artifact_ids_for_key(session: Session, key: str) -> list[int]:
    """The artifacts a purl or Forage key names (every version's when it has none).

    Raises ``InvalidKey`` for a malformed key and ``NotFound`` when the index has no match.
    """
    parsed = parse_key(key, normalize=registered_name)
    query = (
        sa.select(Artifact.id)
        .join(Version, Artifact.version_id == Version.id)
        .join(Package, Version.package_id == Package.id)
        .where(Package.ecosystem == parsed.ecosystem, Package.name == parsed.name)
        .order_by(Artifact.id)
    )
    if parsed.version is not None:
        query = query.where(Version.number == parsed.version)
    ids = list(session.execute(query).scalars())
    if not ids:
        raise NotFound(f"no artifact in the index for {key}")
    return ids
