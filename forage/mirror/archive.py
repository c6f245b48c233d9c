"""What the archive holds for the mirror: archived files with their upstream digests, re-verified.

Rows come from the index (``Package -> Version -> Artifact (+ digests) -> Archive``, see
:mod:`forage.db.models`); bytes from the blockstore through :func:`storage.read_file`, whose
blocks are each checked against their CID. Before a byte is served the whole file is read
into a :class:`~forage.mirror.spool.Spool` and checked again against the digests the
*registry* published (npm sha512/sha1, PyPI sha256, Go ``h1:`` over the module zip, plus the
size): a file that fails is :class:`~forage.errors.ArchiveInvalid` and is never served.

Serving rules the listings and file routes share (issue 7, "Fallback rules"):

- a version the registry removed (unpublished, deleted, gone) or a package it deleted is
  ``removed``: left out of listings, ``latest`` and dist-tags, its file served only to a
  request naming that exact file, marked ``Forage-Source: archive-removed``;
- a package under a hold (PEP 792 ``quarantined``, npm's ``-security`` placeholder, or an
  operator's ``security_hold`` in ``Package.extra``) is never served at all.

Queries are plain functions over a ``Session`` returning frozen values, run by the caller in a
thread.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import Archive, ArchiveStatus, Artifact, ArtifactDigest, Package, Version
from forage.errors import ArchiveInvalid
from forage.mirror.spool import Spool
from indexers import DigestMismatch, DigestVerifier, InvalidArchive, InvalidDigest, verify_go_zip
from indexers.digests import HASHERS
from storage import BlockSource, StorageError, parse_cid, read_file

log = logging.getLogger(__name__)

#: Largest ``package.json`` read out of an npm tarball for a fallback packument.
MAX_MANIFEST_SIZE = 4 * 1024**2


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    """One archived artifact, detached from the session: where its bytes are and what they
    must hash to."""

    artifact_id: int
    package: str
    version: str
    filename: str
    url: str
    cid: str
    size: int
    digests: Mapping[str, str]
    removed: bool = False
    hold: str | None = None
    yanked: bool = False
    yanked_reason: str | None = None
    requires_python: str | None = None
    uploaded_at: datetime | None = None
    published_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class VersionRow:
    """A version as listings need it."""

    number: str
    published_at: datetime | None
    yanked: bool
    deleted: bool
    deprecated: str | None


@dataclass(frozen=True, slots=True)
class PackageRows:
    """A package, its versions and its archived files, for a fallback listing."""

    ecosystem: str
    name: str
    display_name: str
    deleted: bool
    extra: Mapping[str, Any]
    versions: tuple[VersionRow, ...]
    files: tuple[ArchivedFile, ...]

    @property
    def hold(self) -> str | None:
        return hold_reason(self.extra)

    def listed_files(self) -> list[ArchivedFile]:
        """Files a listing may show: archived, of versions the registry has not removed."""
        return [f for f in self.files if not f.removed]

    def fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever anything a rendered listing shows changes."""
        return (
            self.display_name,
            self.deleted,
            json.dumps(self.extra, sort_keys=True, default=str),
            tuple((v.number, v.yanked, v.deleted, v.deprecated) for v in self.versions),
            tuple((f.artifact_id, f.cid, f.yanked) for f in self.files),
        )


def hold_reason(extra: Mapping[str, Any]) -> str | None:
    """Why a package must never be served, if it is held: PEP 792 quarantine, npm security
    placeholder, or an operator's ``security_hold``."""
    status = extra.get("project_status")
    if isinstance(status, Mapping) and status.get("status") == "quarantined":
        return "quarantined (PEP 792)"
    hold = extra.get("security_hold")
    if hold:
        return f"security hold: {hold}" if isinstance(hold, str) else "security hold"
    tags = extra.get("dist_tags")
    latest = tags.get("latest") if isinstance(tags, Mapping) else None
    if isinstance(latest, str) and latest.endswith("-security"):
        return "npm security holding package"
    return None


def _files_query() -> sa.Select[Any]:
    return (
        sa.select(
            Artifact.id,
            Package.name,
            Version.number,
            Artifact.filename,
            Artifact.url,
            Archive.cid,
            Archive.size,
            Artifact.size.label("artifact_size"),
            sa.or_(Version.deleted, Package.deleted).label("removed"),
            Artifact.yanked,
            Artifact.yanked_reason,
            Artifact.requires_python,
            Artifact.uploaded_at,
            Version.published_at,
            Package.extra,
        )
        .join(Version, Artifact.version_id == Version.id)
        .join(Package, Version.package_id == Package.id)
        .join(Archive, Archive.artifact_id == Artifact.id)
        .where(Archive.status == ArchiveStatus.ARCHIVED)
    )


def _digests(session: Session, ids: Sequence[int]) -> dict[int, dict[str, str]]:
    found: dict[int, dict[str, str]] = {i: {} for i in ids}
    for start in range(0, len(ids), 500):
        rows = session.execute(
            sa.select(
                ArtifactDigest.artifact_id, ArtifactDigest.algorithm, ArtifactDigest.value
            ).where(ArtifactDigest.artifact_id.in_(ids[start : start + 500]))
        )
        for artifact_id, algorithm, value in rows:
            found[artifact_id][algorithm] = value
    return found


def _files(session: Session, query: sa.Select[Any]) -> list[ArchivedFile]:
    rows = session.execute(query).all()
    digests = _digests(session, [row.id for row in rows])
    return [
        ArchivedFile(
            artifact_id=row.id,
            package=row.name,
            version=row.number,
            filename=row.filename,
            url=row.url,
            cid=row.cid,
            size=row.artifact_size if row.artifact_size is not None else row.size,
            digests=digests[row.id],
            removed=bool(row.removed),
            hold=hold_reason(row.extra or {}),
            yanked=row.yanked,
            yanked_reason=row.yanked_reason,
            requires_python=row.requires_python,
            uploaded_at=row.uploaded_at,
            published_at=row.published_at,
        )
        for row in rows
    ]


def package_extra(session: Session, ecosystem: str, name: str) -> dict[str, Any] | None:
    """The registry metadata the index keeps for ``name`` (``None``: unknown package)."""
    extra = session.execute(
        sa.select(Package.extra).where(Package.ecosystem == ecosystem, Package.name == name)
    ).scalar_one_or_none()
    return None if extra is None else dict(extra)


def package_hold(session: Session, ecosystem: str, name: str) -> str | None:
    """Why the index says ``name`` must never be served (``None``: no hold, or unknown)."""
    return hold_reason(package_extra(session, ecosystem, name) or {})


def find_file(
    session: Session,
    ecosystem: str,
    *,
    name: str | None = None,
    filename: str | None = None,
    version: str | None = None,
    sha256: str | None = None,
) -> ArchivedFile | None:
    """The archived file matching every filter given, or ``None``."""
    query = _files_query().where(Package.ecosystem == ecosystem)
    if name is not None:
        query = query.where(Package.name == name)
    if filename is not None:
        query = query.where(Artifact.filename == filename)
    if version is not None:
        query = query.where(Version.number == version)
    if sha256 is not None:
        query = query.join(
            ArtifactDigest,
            sa.and_(
                ArtifactDigest.artifact_id == Artifact.id,
                ArtifactDigest.algorithm == "sha256",
                ArtifactDigest.value == sha256,
            ),
        )
    files = _files(session, query.order_by(Artifact.id).limit(1))
    return files[0] if files else None


def package_stamp(session: Session, ecosystem: str, name: str) -> tuple[Any, ...] | None:
    """A cheap value that changes whenever a listing of ``name`` may change (``None``:
    unknown package): the package row's update time plus counts and latest update times of
    its versions, artifacts and archives."""
    package = session.execute(
        sa.select(Package.id, Package.updated_at, Package.deleted).where(
            Package.ecosystem == ecosystem, Package.name == name
        )
    ).first()
    if package is None:
        return None
    aggregates = session.execute(
        sa.select(
            sa.func.count(Version.id),
            sa.func.max(Version.updated_at),
            sa.func.count(Artifact.id),
            sa.func.max(Artifact.updated_at),
            sa.func.count(Archive.id),
            sa.func.max(Archive.updated_at),
        )
        .select_from(Version)
        .outerjoin(Artifact, Artifact.version_id == Version.id)
        .outerjoin(Archive, Archive.artifact_id == Artifact.id)
        .where(Version.package_id == package.id)
    ).one()
    return (package.id, package.updated_at, package.deleted, *aggregates)


def package_rows(session: Session, ecosystem: str, name: str) -> PackageRows | None:
    """Everything a fallback listing of ``name`` needs, or ``None`` if the index lacks it."""
    package = session.execute(
        sa.select(Package).where(Package.ecosystem == ecosystem, Package.name == name)
    ).scalar_one_or_none()
    if package is None:
        return None
    versions = session.execute(
        sa.select(
            Version.number,
            Version.published_at,
            Version.yanked,
            Version.deleted,
            Version.deprecated,
        ).where(Version.package_id == package.id)
    ).all()
    files = _files(session, _files_query().where(Package.id == package.id).order_by(Artifact.id))
    return PackageRows(
        ecosystem=ecosystem,
        name=package.name,
        display_name=package.display_name or package.name,
        deleted=package.deleted,
        extra=dict(package.extra or {}),
        versions=tuple(VersionRow(*row) for row in versions),
        files=tuple(files),
    )


def package_names(session: Session, ecosystem: str) -> list[str]:
    """The names of the ecosystem's packages the registry has not deleted, sorted."""
    return list(
        session.execute(
            sa.select(Package.name)
            .where(Package.ecosystem == ecosystem, Package.deleted.is_(False))
            .order_by(Package.name)
        ).scalars()
    )


def load_verified(source: BlockSource, archived: ArchivedFile, spool: Spool) -> None:
    """Read an archive into ``spool`` and check it against the upstream digests and size.

    Raises ``ArchiveInvalid`` when a block is missing or corrupt, when the bytes differ from
    any digest the registry published, or when no digest we can check exists.
    """
    byte_digests = {k: v for k, v in archived.digests.items() if k in HASHERS}
    h1 = archived.digests.get("h1")
    if not byte_digests and h1 is None:
        raise ArchiveInvalid(archived.cid, "no upstream digest to verify the bytes against")
    try:
        verifier = DigestVerifier(f"archive:{archived.cid}", byte_digests, size=archived.size)
        for chunk in read_file(source, parse_cid(archived.cid)):
            verifier.update(chunk)
            spool.write(chunk)
        spool.finish()
        verifier.finish()
        if h1 is not None:
            with spool.open() as reader:
                verify_go_zip(reader, h1, url=f"archive:{archived.cid}")
    except (DigestMismatch, InvalidArchive, InvalidDigest) as exc:
        raise ArchiveInvalid(archived.cid, f"fails its upstream digest: {exc}") from exc
    except StorageError as exc:
        raise ArchiveInvalid(archived.cid, f"cannot be read: {exc}") from exc


class _ChunkReader(io.RawIOBase):
    """A read-only stream over an iterator of byte chunks (for ``tarfile``'s stream mode)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def npm_manifest(source: BlockSource, cid: str) -> dict[str, Any]:
    """The ``package.json`` inside an archived npm tarball (its top directory's, any name).

    Used to rebuild version documents (dependencies, bin, engines) when the registry is down;
    raises ``ArchiveInvalid`` for an unreadable tarball or one without a manifest.
    """
    stream = io.BufferedReader(_ChunkReader(read_file(source, parse_cid(cid))))
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if len(parts) != 2 or parts[1] != "package.json" or not member.isfile():
                    continue
                if member.size > MAX_MANIFEST_SIZE:
                    raise ArchiveInvalid(cid, f"package.json of {member.size} bytes")
                handle = tar.extractfile(member)
                if handle is None:
                    break
                manifest = json.loads(handle.read())
                if not isinstance(manifest, dict):
                    raise ArchiveInvalid(cid, "package.json is not an object")
                return manifest
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, ValueError) as exc:
        raise ArchiveInvalid(cid, f"unreadable npm tarball: {exc}") from exc
    except StorageError as exc:
        raise ArchiveInvalid(cid, f"cannot be read: {exc}") from exc
    raise ArchiveInvalid(cid, "npm tarball without package.json")


__all__ = [
    "MAX_MANIFEST_SIZE",
    "ArchivedFile",
    "PackageRows",
    "VersionRow",
    "find_file",
    "hold_reason",
    "load_verified",
    "npm_manifest",
    "package_extra",
    "package_hold",
    "package_names",
    "package_rows",
    "package_stamp",
]
