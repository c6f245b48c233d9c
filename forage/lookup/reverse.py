"""Reverse lookup: the artifacts whose archived bytes have a given CID
(``/api/v1/cids/{cid}``), each with the same view a lookup shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import Archive, ArchiveStatus, Artifact, Package, Version
from forage.lookup.keys import Key
from forage.lookup.normalize import canonical_purl
from forage.lookup.query import load_artifacts
from forage.lookup.views import ArtifactView


@dataclass(frozen=True, slots=True)
class CidMatch:
    """One artifact whose archived bytes have a given CID."""

    ecosystem: str
    name: str
    version: str
    artifact: ArtifactView

    def to_json(self) -> dict[str, Any]:
        key = Key(self.ecosystem, self.name, self.version)
        return {
            "purl": canonical_purl(key),
            "ecosystem": self.ecosystem,
            "name": self.name,
            "version": self.version,
            "artifact": self.artifact.to_json(),
        }


def artifacts_by_cid(session: Session, cid: str, *, now: datetime | None = None) -> list[CidMatch]:
    """Every artifact whose archive has CID ``cid`` (text as stored: CIDv1, base32)."""
    rows = session.execute(
        sa.select(Artifact.id, Artifact.version_id, Package.ecosystem, Package.name, Version.number)
        .join(Archive, Archive.artifact_id == Artifact.id)
        .join(Version, Version.id == Artifact.version_id)
        .join(Package, Package.id == Version.package_id)
        .where(Archive.cid == cid, Archive.status == ArchiveStatus.ARCHIVED)
        .order_by(Package.ecosystem, Package.name, Version.number, Artifact.filename)
    ).all()
    views = load_artifacts(session, artifact_ids=[row.id for row in rows], now=now)
    by_id = {view.id: view for group in views.values() for view in group}
    return [CidMatch(row.ecosystem, row.name, row.number, by_id[row.id]) for row in rows]
