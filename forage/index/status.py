"""Per-registry status: where each watcher is, how far behind, what is known and waiting."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.config import Config
from forage.db.models import FeedCursor, JobRecord, JobState, Package, Version
from forage.index.ingest import IMPORT
from indexers import ECOSYSTEMS


def registry_status(session: Session, config: Config) -> dict[str, dict[str, Any]]:
    """One entry per known registry: cursor, lag, head, packages, versions, imports by state."""
    cursors = {row.feed: row for row in session.scalars(sa.select(FeedCursor))}
    packages: dict[str, int] = dict(
        session.execute(
            sa.select(Package.ecosystem, sa.func.count()).group_by(Package.ecosystem)
        ).all()
    )
    versions: dict[str, int] = dict(
        session.execute(
            sa.select(Package.ecosystem, sa.func.count())
            .select_from(Version)
            .join(Package)
            .group_by(Package.ecosystem)
        ).all()
    )
    ecosystem = JobRecord.payload["ecosystem"].as_string()
    imports: dict[tuple[str, JobState], int] = {
        (eco, state): count
        for eco, state, count in session.execute(
            sa.select(ecosystem, JobRecord.state, sa.func.count())
            .where(JobRecord.kind == IMPORT)
            .group_by(ecosystem, JobRecord.state)
        )
    }
    report: dict[str, dict[str, Any]] = {}
    for name in ECOSYSTEMS:
        cursor = cursors.get(name)
        report[name] = {
            "configured": name in config.configured_registries(),
            "cursor": cursor.cursor if cursor else None,
            "head": (cursor.head or {}).get("head") if cursor else None,
            "lag": cursor.lag if cursor else None,
            "updated_at": cursor.updated_at.isoformat() if cursor else None,
            "packages": packages.get(name, 0),
            "versions": versions.get(name, 0),
            "imports_pending": imports.get((name, JobState.QUEUED), 0)
            + imports.get((name, JobState.RUNNING), 0),
            "imports_dead": imports.get((name, JobState.DEAD), 0),
        }
    return report
