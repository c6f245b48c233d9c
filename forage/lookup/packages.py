"""A package and all its versions, with how many files of each are archived: the view
behind ``/api/v1/packages/{ecosystem}/{name}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import Archive, ArchiveStatus, Artifact, Package, Version
from forage.lookup.keys import Key
from forage.lookup.normalize import canonical_purl, normalize_name
from forage.lookup.views import _iso


@dataclass(frozen=True, slots=True)
class VersionSummary:
    """One version of a package with how many of its files are archived."""

    number: str
    published_at: datetime | None
    yanked: bool
    deleted: bool
    removed_at: datetime | None
    removal: str | None
    deprecated: str | None
    artifacts: int
    archived: int

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.number,
            "published_at": _iso(self.published_at),
            "yanked": self.yanked,
            "deleted": self.deleted,
            "removed_at": _iso(self.removed_at),
            "removal": self.removal,
            "deprecated": self.deprecated,
            "artifacts": self.artifacts,
            "archived": self.archived,
        }


@dataclass(frozen=True, slots=True)
class PackageView:
    """A package and all its versions, newest first."""

    ecosystem: str
    name: str
    display_name: str | None
    deleted: bool
    last_synced: datetime | None
    versions: tuple[VersionSummary, ...]
    status: str | None = None
    status_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "purl": canonical_purl(Key(self.ecosystem, self.name, None)),
            "ecosystem": self.ecosystem,
            "name": self.name,
            "display_name": self.display_name,
            "deleted": self.deleted,
            "status": self.status,
            "status_reason": self.status_reason,
            "last_synced": _iso(self.last_synced),
            "versions": [version.to_json() for version in self.versions],
        }


def package_view(session: Session, ecosystem: str, name: str) -> PackageView | None:
    """The package ``name`` (normalized here) of ``ecosystem``, or ``None``."""
    name = normalize_name(ecosystem, name)
    package = session.execute(
        sa.select(Package).where(Package.ecosystem == ecosystem, Package.name == name)
    ).scalar_one_or_none()
    if package is None:
        return None
    archived = sa.case((Archive.status == ArchiveStatus.ARCHIVED, 1), else_=0)
    rows = session.execute(
        sa.select(
            Version.number,
            Version.published_at,
            Version.yanked,
            Version.deleted,
            Version.removed_at,
            Version.removal,
            Version.deprecated,
            sa.func.count(Artifact.id),
            sa.func.coalesce(sa.func.sum(archived), 0),
        )
        .outerjoin(Artifact, Artifact.version_id == Version.id)
        .outerjoin(Archive, Archive.artifact_id == Artifact.id)
        .where(Version.package_id == package.id)
        .group_by(Version.id)
        .order_by(Version.published_at.desc().nulls_last(), Version.number.desc())
    )
    versions = tuple(VersionSummary(*row) for row in rows)
    return PackageView(
        package.ecosystem,
        package.name,
        package.display_name,
        package.deleted,
        package.last_synced,
        versions,
        package.status,
        package.status_reason,
    )
