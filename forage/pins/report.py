"""What ``forage pins`` reports: pins by state per backend, and the failed ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.config import Config
from forage.db.models import Archive, ArchiveStatus, Artifact, Pin, PinStatus

__all__ = [
    "FailedPin",
    "failed_pins",
    "pin_counts",
]


def pin_counts(session: Session, config: Config) -> dict[str, dict[str, Any]]:
    """Per backend (configured ones, and any other with rows): pins by state, and how many
    archived archives have no pin row there yet."""
    archived = session.execute(
        sa.select(sa.func.count()).where(Archive.status == ArchiveStatus.ARCHIVED)
    ).scalar_one()
    rows = session.execute(
        sa.select(Pin.backend, Pin.status, sa.func.count()).group_by(Pin.backend, Pin.status)
    ).all()
    with_rows: dict[str, int] = dict(
        session.execute(
            sa.select(Pin.backend, sa.func.count())
            .join(Archive, Archive.id == Pin.archive_id)
            .where(Archive.status == ArchiveStatus.ARCHIVED)
            .group_by(Pin.backend)
        ).all()
    )
    report: dict[str, dict[str, Any]] = {}
    configured = {b.name: b for b in config.pinning.backends}
    for name in [*configured, *sorted({r.backend for r in rows} - set(configured))]:
        entry = configured.get(name)
        report[name] = {
            "type": entry.type if entry else None,
            "configured": entry is not None,
            "states": {state.value: 0 for state in PinStatus},
            "not_queued": max(0, archived - with_rows.get(name, 0)) if entry else 0,
        }
    for backend, status, count in rows:
        report[backend]["states"][PinStatus(status).value] = int(count)
    return report


@dataclass(frozen=True, slots=True)
class FailedPin:
    """A failed pin as ``forage pins --failed`` lists it."""

    archive_id: int
    backend: str
    cid: str | None
    filename: str
    request_id: str | None
    error: str | None
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive_id": self.archive_id,
            "backend": self.backend,
            "cid": self.cid,
            "filename": self.filename,
            "request_id": self.request_id,
            "error": self.error,
            "updated_at": self.updated_at.isoformat(),
        }


def failed_pins(
    session: Session, *, backend: str | None = None, limit: int = 100
) -> list[FailedPin]:
    """Failed pins, most recently changed first."""
    query = (
        sa.select(
            Pin.archive_id,
            Pin.backend,
            Archive.cid,
            Artifact.filename,
            Pin.request_id,
            Pin.error,
            Pin.updated_at,
        )
        .join(Archive, Archive.id == Pin.archive_id)
        .join(Artifact, Artifact.id == Archive.artifact_id)
        .where(Pin.status == PinStatus.FAILED)
        .order_by(Pin.updated_at.desc(), Pin.id.desc())
        .limit(limit)
    )
    if backend is not None:
        query = query.where(Pin.backend == backend)
    return [FailedPin(*row) for row in session.execute(query).all()]
