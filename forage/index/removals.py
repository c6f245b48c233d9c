"""Recording what a registry withdrew: versions and files it no longer lists, with when and how.

A registry answer (:class:`indexers.PackageInfo`) is compared with the rows the index holds
for the package. A version or file that leaves the registry gets ``removed_at`` (when Forage
first saw it gone) and ``removal`` (how, in the registry's words: ``"pypi: remove release"``,
``"npm: version unpublished"``, ``"go: retracted v1.2.1: why"``); its rows and archive stay,
so lookups can still say where the bytes are and the mirror can serve an exact request. One
the registry lists again is cleared. The notes come from the release itself
(:attr:`indexers.Release.removal`) or, for what disappeared from the listing, from the
ecosystem's indexer (:attr:`indexers.base.Indexer.release_removed` and friends), so a new
ecosystem gets removals by registering.

Absence only counts when the answer is :attr:`~indexers.PackageInfo.complete` and, for
versions, when the registry lists every version it serves (not Go, whose proxy serves
pseudo-versions it never lists).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import Artifact, Package, Version
from indexers import ECOSYSTEMS, PackageInfo, Release
from indexers.base import Indexer

_versions = cast(sa.Table, Version.__table__)
_artifacts = cast(sa.Table, Artifact.__table__)


def _indexer(ecosystem: str) -> type[Indexer[Any]]:
    eco = ECOSYSTEMS.get(ecosystem)
    return eco.indexer if eco is not None else Indexer


def note(ecosystem: str, what: str) -> str:
    """The removal note for ``what`` (``release``, ``file`` or ``package``) left ``ecosystem``."""
    indexer = _indexer(ecosystem)
    text = {
        "release": indexer.release_removed,
        "file": indexer.file_removed,
        "package": indexer.package_removed,
    }[what]
    return f"{ecosystem}: {text}"


def release_removal(ecosystem: str, release: Release) -> str | None:
    """How the registry withdrew a release it still names (``None``: it offers it)."""
    if release.removal:
        return release.removal
    return note(ecosystem, "release") if release.deleted else None


def _absence_counts(info: PackageInfo) -> bool:
    eco = ECOSYSTEMS.get(info.ecosystem)
    return info.complete and not (eco is not None and eco.unlisted_versions)


def record_removals(
    connection: sa.Connection,
    info: PackageInfo,
    known: Mapping[str, Any],
    version_ids: Mapping[str, int],
    now: datetime,
) -> int:
    """Set or clear ``removed_at``/``removal`` on the package's versions and files.

    ``known`` holds the version rows read before this answer was recorded (with ``removal``),
    ``version_ids`` every version's id by number. Returns how many versions changed.
    """
    targets: dict[int, str | None] = {}
    listed = {release.version: release for release in info.releases}
    for release in info.releases:
        targets[version_ids[release.version]] = release_removal(info.ecosystem, release)
    absent = note(info.ecosystem, "release")
    for number, row in known.items():
        if number not in listed and _absence_counts(info):
            targets[row.id] = row.removal or absent
    changed = 0
    for number, row in known.items():
        target = targets.get(row.id, row.removal)
        if target != row.removal:
            values: dict[str, Any] = {"removal": target, "removed_at": None}
            if target is not None:
                values["removed_at"] = row.removed_at or now
            if target is not None and number not in listed:
                values["deleted"] = True  # listed releases carry their own flag
            connection.execute(sa.update(_versions).where(_versions.c.id == row.id).values(values))
            changed += 1
    # New versions were inserted with their removal; their files may need it too.
    ids = [row.id for row in known.values()]
    ids += [i for n, i in version_ids.items() if n not in known and targets.get(i)]
    if ids:
        _record_file_removals(connection, info, listed, version_ids, targets, ids, now)
    return changed


def _record_file_removals(
    connection: sa.Connection,
    info: PackageInfo,
    listed: Mapping[str, Release],
    version_ids: Mapping[str, int],
    targets: Mapping[int, str | None],
    ids: Iterable[int],
    now: datetime,
) -> None:
    """Files follow their version's removal; a listed version's unlisted file is removed on
    its own (``pypi: remove file``), and one listed again is cleared."""
    offered = {
        (version_ids[number], artifact.filename)
        for number, release in listed.items()
        for artifact in release.artifacts
    }
    gone = note(info.ecosystem, "file")
    rows = connection.execute(
        sa.select(
            _artifacts.c.id,
            _artifacts.c.version_id,
            _artifacts.c.filename,
            _artifacts.c.removal,
            _artifacts.c.removed_at,
        ).where(_artifacts.c.version_id.in_(list(ids)))
    )
    for row in rows.all():
        if row.version_id not in targets:
            continue  # a version whose absence says nothing
        target = targets[row.version_id]
        if target is not None:
            target = row.removal or target  # the first note stands
        elif (row.version_id, row.filename) not in offered:
            target = (row.removal or gone) if info.complete else row.removal
        if target == row.removal:
            continue
        connection.execute(
            sa.update(_artifacts)
            .where(_artifacts.c.id == row.id)
            .values(removal=target, removed_at=(row.removed_at or now) if target else None)
        )


def remove_package(session: Session, package_id: int, ecosystem: str, now: datetime) -> None:
    """Record a package its registry no longer has (404/410): status ``removed``, and every
    version and file not removed yet removed with the ecosystem's note (``pypi: remove
    project``). Rows and archives stay."""
    how = note(ecosystem, "package")
    session.execute(
        sa.update(Package)
        .where(Package.id == package_id)
        .values(deleted=True, status="removed", status_reason=how, last_synced=now)
    )
    session.execute(
        sa.update(Version)
        .where(Version.package_id == package_id, Version.removed_at.is_(None))
        .values(removed_at=now, removal=how)
    )
    versions = sa.select(Version.id).where(Version.package_id == package_id)
    session.execute(
        sa.update(Artifact)
        .where(Artifact.version_id.in_(versions), Artifact.removed_at.is_(None))
        .values(removed_at=now, removal=how)
    )
    session.execute(sa.update(Version).where(Version.package_id == package_id).values(deleted=True))
