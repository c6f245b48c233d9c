"""What archiving one artifact reads and produces: its target, its result, its outcome.

The artifact's row, upstream digests and registry are loaded in one transaction
(:func:`load_target`; ``forage archive`` loads a page of them at a time with
:func:`load_targets`); a target whose ``archived_cid`` is set is already archived and is left
alone (jobs are idempotent).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import Archive, ArchiveStatus, Artifact, ArtifactDigest, Package, Version
from forage.lookup.keys import Key


@dataclass(frozen=True, slots=True)
class ArchiveTarget:
    """What archiving one artifact needs, read from its rows."""

    artifact_id: int
    ecosystem: str
    name: str
    version: str
    filename: str
    url: str
    size: int | None
    digests: Mapping[str, str]
    archived_cid: str | None

    @property
    def purl(self) -> str:
        """The artifact's release as a purl, for logs and messages."""
        return Key(self.ecosystem, self.name, self.version).purl()


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """A verified, stored artifact: root CID (CIDv1 base32), byte size, strongest digest."""

    cid: str
    size: int
    verified_algorithm: str | None
    verified_digest: str | None


@dataclass(frozen=True, slots=True)
class ArchiveOutcome:
    """How one archive attempt ended, for callers that report many (``forage archive``).

    ``status`` is ``archived`` (``skipped`` when it already was) or ``failed`` with ``error``;
    ``retryable`` tells a transient failure (network, full disk) from a permanent one.
    """

    artifact_id: int
    purl: str
    filename: str
    status: ArchiveStatus
    cid: str | None = None
    size: int | None = None
    error: str | None = None
    retryable: bool = False
    skipped: bool = False


def load_target(session: Session, artifact_id: int) -> ArchiveTarget | None:
    """The artifact's download facts and current archive CID; ``None`` if it is gone."""
    return load_targets(session, [artifact_id]).get(artifact_id)


def load_targets(session: Session, artifact_ids: Collection[int]) -> dict[int, ArchiveTarget]:
    """Several artifacts' targets in two queries, by id; ids that are gone are left out
    (``forage archive`` loads a page at a time rather than a transaction per artifact)."""
    if not artifact_ids:
        return {}
    rows = session.execute(
        sa.select(
            Artifact.id,
            Artifact.filename,
            Artifact.url,
            Artifact.size,
            Package.ecosystem,
            Package.name,
            Version.number,
            Archive.cid,
            Archive.status,
        )
        .join(Version, Artifact.version_id == Version.id)
        .join(Package, Version.package_id == Package.id)
        .outerjoin(Archive, Archive.artifact_id == Artifact.id)
        .where(Artifact.id.in_(list(artifact_ids)))
    ).all()
    digests: dict[int, dict[str, str]] = {row.id: {} for row in rows}
    for artifact_id, algorithm, value in session.execute(
        sa.select(ArtifactDigest.artifact_id, ArtifactDigest.algorithm, ArtifactDigest.value).where(
            ArtifactDigest.artifact_id.in_(list(digests))
        )
    ):
        digests[artifact_id][algorithm] = value
    return {
        row.id: ArchiveTarget(
            artifact_id=row.id,
            ecosystem=row.ecosystem,
            name=row.name,
            version=row.number,
            filename=row.filename,
            url=row.url,
            size=row.size,
            digests=digests[row.id],
            archived_cid=row.cid if row.status == ArchiveStatus.ARCHIVED else None,
        )
        for row in rows
    }
