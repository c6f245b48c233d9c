"""Archive statistics: counts of packages, versions, artifacts, archives, pins, pieces
and deals for ``/api/v1/stats`` and the home page, and each registry's feed and counts
(:mod:`forage.index.status`) for ``/api/v1/stats``.
"""

from __future__ import annotations

import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import (
    Archive,
    ArchiveStatus,
    Artifact,
    Deal,
    DealState,
    Package,
    Piece,
    Pin,
    PinStatus,
    Version,
)
from forage.index.status import registry_status


def archive_stats(session: Session) -> dict[str, Any]:
    """Counts for ``/api/v1/stats`` and the home page: rows, archived bytes, pins and deals
    by status, pieces and their bytes."""

    def by(column: Any, states: type[enum.Enum]) -> dict[str, int]:
        counts = dict.fromkeys((str(member.value) for member in states), 0)
        for value, count in session.execute(sa.select(column, sa.func.count()).group_by(column)):
            counts[str(states(value).value)] = int(count)
        return counts

    scalar = session.execute
    packages = dict(
        scalar(sa.select(Package.ecosystem, sa.func.count()).group_by(Package.ecosystem)).all()
    )
    archived_bytes = scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Archive.size), 0)).where(
            Archive.status == ArchiveStatus.ARCHIVED
        )
    ).scalar_one()
    pieces, piece_bytes = scalar(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(Piece.car_size), 0))
    ).one()
    return {
        "packages": sum(packages.values()),
        "packages_by_ecosystem": {key: int(value) for key, value in sorted(packages.items())},
        "versions": scalar(sa.select(sa.func.count()).select_from(Version)).scalar_one(),
        "artifacts": scalar(sa.select(sa.func.count()).select_from(Artifact)).scalar_one(),
        "archives": by(Archive.status, ArchiveStatus),
        "archived_bytes": int(archived_bytes or 0),
        "pins": by(Pin.status, PinStatus),
        "pieces": int(pieces),
        "piece_bytes": int(piece_bytes),
        "deals": by(Deal.state, DealState),
    }


def api_stats(session: Session) -> dict[str, Any]:
    """``/api/v1/stats``: :func:`archive_stats` plus ``registries``, each registry's feed
    (head, cursor, lag in seconds) and counts, as ``forage status --json`` shows them."""
    registries = {name: row.to_dict() for name, row in registry_status(session).items()}
    return {**archive_stats(session), "registries": registries}
