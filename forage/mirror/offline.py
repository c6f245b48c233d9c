"""Offline and air-gapped use: prime the archive from a lockfile, carry it as one CAR.

- :func:`prime` imports every package a lockfile (or SBOM) names from its registry and
  archives exactly the named releases now (:func:`~forage.archive.runner.archive_many`), so the
  mirror can serve them when the registry is gone.
- :func:`export_bundle` writes those releases' archives to one CARv1
  (https://ipld.io/specs/transport/car/carv1/) together with the index rows the mirror needs
  (package, version, artifact with upstream digests, archive): a JSON *manifest*, stored as a
  UnixFS file whose CID is the CAR's only root. The archives' blocks follow, each DAG
  depth-first.
- :func:`import_bundle` loads such a CAR into another Forage with no network: every block is
  checked against its CID as it is read, the manifest's names go through each registry's own
  name rules, every archive is re-verified against the manifest's upstream digests before its
  row is written, and rows are recorded with :func:`forage.index.ingest.record_package` (no archive
  jobs queued: the bytes are already here).

The manifest format (``format`` = :data:`BUNDLE_FORMAT`, ``version`` 1)::

    {"format": "forage-mirror-bundle", "version": 1,
     "packages": [{"ecosystem", "name", "display_name", "deleted", "extra",
                   "versions": [{"number", "published_at", "yanked", "deleted", "deprecated",
                                 "artifacts": [{"filename", "url", "size", "kind", "yanked",
                                                "yanked_reason", "requires_python",
                                                "uploaded_at", "digests",
                                                "archive": {"cid", "size", "own_digest"?}}]}]}]}

``own_digest`` (``{"sha256": hex}``) is the digest Forage recorded at the first download of
a file whose registry published none: the import holds the bytes to it instead.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from forage.db.engine import utcnow
from forage.db.models import Archive, ArchiveStatus, Artifact, ArtifactDigest, Package, Version
from forage.errors import BundleError, ForageError, InvalidKey
from forage.lookup.keys import Key, parse_key, registered_name
from forage.mirror.index import load_verified
from indexers import ECOSYSTEMS, IndexerError, LockEntry, PackageInfo, Release
from indexers import Artifact as ArtifactInfo
from indexers.digests import HASHERS, normalize_hex
from indexers.errors import ArchiveInvalid, InvalidDigest
from indexers.mirror.rows import ArchivedFile
from indexers.mirror.spool import Spool
from storage import (
    Blockstore,
    CarWriter,
    MemoryBlockstore,
    StorageError,
    import_file,
    parse_cid,
    read_car,
    read_file,
    walk_dag,
)

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "forage-mirror-bundle"
BUNDLE_VERSION = 1
#: Largest manifest read back from a bundle.
MAX_MANIFEST_SIZE = 512 * 1024**2


@dataclass(slots=True)
class KeyProblems:
    """Keys read from a lockfile, and the entries that gave none (with why)."""

    keys: list[Key] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def lockfile_keys(entries: Iterable[LockEntry]) -> KeyProblems:
    """Parse and normalize the keys of lockfile entries; collect what cannot be used."""
    found = KeyProblems()
    seen: set[Key] = set()
    for entry in entries:
        if entry.key is None:
            found.problems.append((entry.source, entry.problem or "no key"))
            continue
        try:
            key = parse_key(entry.key, normalize=registered_name)
        except InvalidKey as exc:
            found.problems.append((entry.source, str(exc)))
            continue
        if key.version is None:
            found.problems.append((entry.source, f"{entry.key} names no version"))
        elif key not in seen:
            seen.add(key)
            found.keys.append(key)
    return found


# -- prime -------------------------------------------------------------------------------------


@dataclass(slots=True)
class PrimeReport:
    """What :func:`prime` did: releases archived (or already), and what failed, with why."""

    archived: int = 0
    already: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def release_artifacts(session: Session, keys: Sequence[Key]) -> dict[Key, list[int]]:
    """The artifact ids of each named release (an empty list when the index lacks it), only
    the files a key's qualifiers name (``?platform=java``)."""
    found: dict[Key, list[int]] = {key: [] for key in keys}
    for key in keys:
        found[key] = [
            artifact_id
            for artifact_id, filename in session.execute(
                sa.select(Artifact.id, Artifact.filename)
                .join(Version, Artifact.version_id == Version.id)
                .join(Package, Version.package_id == Package.id)
                .where(
                    Package.ecosystem == key.ecosystem,
                    Package.name == key.name,
                    Version.number == key.version,
                )
                .order_by(Artifact.id)
            )
            if key.wants(filename)
        ]
    return found


async def prime(ctx: Any, keys: Sequence[Key], *, concurrency: int = 4) -> PrimeReport:
    """Import each named package from its registry and archive the named releases now.

    ``ctx`` is a :class:`forage.jobs.worker.JobContext` (registries configured, blockstore open).
    """
    from forage.archive.runner import archive_many
    from forage.index.ingest import import_package

    report = PrimeReport()
    packages: dict[tuple[str, str], list[Key]] = defaultdict(list)
    for key in keys:
        packages[(key.ecosystem, key.name)].append(key)
    for (ecosystem, name), named in packages.items():
        unlisted = ECOSYSTEMS[ecosystem].unlisted_versions
        hints = [{"version": k.version} for k in named] if unlisted else [{}]
        for hint in hints:
            try:
                await import_package(ctx, ecosystem, name, hints=hint)
            except (ForageError, IndexerError) as exc:
                for key in named:
                    report.failed.append((key.purl(), f"import failed: {exc}"))
                break
    failed = {purl for purl, _ in report.failed}
    wanted = [key for key in keys if key.purl() not in failed]
    ids = await ctx.transaction(release_artifacts, wanted)
    for key, artifact_ids in ids.items():
        if not artifact_ids:
            report.failed.append((key.purl(), "the registry does not list this release"))
    every = list(dict.fromkeys(artifact_id for found in ids.values() for artifact_id in found))
    for outcome in await archive_many(ctx, every, concurrency=concurrency):
        if outcome.status is not ArchiveStatus.ARCHIVED:
            report.failed.append((outcome.purl, f"{outcome.filename}: {outcome.error}"))
        elif outcome.skipped:
            report.already += 1
        else:
            report.archived += 1
    return report


# -- export ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ExportReport:
    """What :func:`export_bundle` wrote: the root CID, archives, bytes, and missing releases."""

    root: str = ""
    archives: int = 0
    size: int = 0
    missing: list[str] = field(default_factory=list)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def bundle_manifest(session: Session, keys: Sequence[Key]) -> tuple[dict[str, Any], list[str]]:
    """The manifest of the archived artifacts of ``keys`` and the keys with none archived."""
    packages: dict[int, dict[str, Any]] = {}
    versions: dict[int, dict[str, Any]] = {}
    missing: list[str] = []
    taken: set[int] = set()
    for key in keys:
        rows = session.execute(
            sa.select(Package, Version, Artifact, Archive)
            .join(Version, Version.package_id == Package.id)
            .join(Artifact, Artifact.version_id == Version.id)
            .join(Archive, Archive.artifact_id == Artifact.id)
            .where(
                Package.ecosystem == key.ecosystem,
                Package.name == key.name,
                Version.number == key.version,
                Archive.status == ArchiveStatus.ARCHIVED,
            )
            .order_by(Artifact.id)
        ).all()
        rows = [row for row in rows if key.wants(row.Artifact.filename)]
        if not rows:
            missing.append(key.purl())
            continue
        for package, version, artifact, archive in rows:
            if artifact.id in taken:
                continue
            taken.add(artifact.id)
            entry = packages.setdefault(
                package.id,
                {
                    "ecosystem": package.ecosystem,
                    "name": package.name,
                    "display_name": package.display_name,
                    "deleted": package.deleted,
                    "extra": package.extra or {},
                    "versions": [],
                },
            )
            if version.id not in versions:
                versions[version.id] = {
                    "number": version.number,
                    "published_at": _iso(version.published_at),
                    "yanked": version.yanked,
                    "deleted": version.deleted,
                    "deprecated": version.deprecated,
                    "artifacts": [],
                }
                entry["versions"].append(versions[version.id])
            digests = {
                row.algorithm: row.value
                for row in session.execute(
                    sa.select(ArtifactDigest).where(ArtifactDigest.artifact_id == artifact.id)
                ).scalars()
            }
            versions[version.id]["artifacts"].append(
                {
                    "filename": artifact.filename,
                    "url": artifact.url,
                    "size": artifact.size,
                    "kind": artifact.kind,
                    "yanked": artifact.yanked,
                    "yanked_reason": artifact.yanked_reason,
                    "requires_python": artifact.requires_python,
                    "uploaded_at": _iso(artifact.uploaded_at),
                    "digests": digests,
                    "archive": {"cid": archive.cid, "size": archive.size, **_own(archive, digests)},
                }
            )
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "packages": list(packages.values()),
    }
    return manifest, missing


def _own(archive: Archive, digests: Mapping[str, str]) -> dict[str, Any]:
    """``{"own_digest": ...}`` for an archive whose registry published no digest."""
    if digests or not archive.verified_algorithm or not archive.verified_digest:
        return {}
    return {"own_digest": {archive.verified_algorithm: archive.verified_digest}}


def _own_digest(archive: Mapping[str, Any]) -> dict[str, str]:
    """A bundle's ``own_digest``, checked: one hashlib algorithm and its hex value."""
    own = archive.get("own_digest")
    if own is None:
        return {}
    _expect(isinstance(own, dict) and len(own) == 1, "own_digest is not one digest")
    ((algorithm, value),) = own.items()
    _expect(algorithm in HASHERS and isinstance(value, str), "own_digest is not a hash")
    try:
        return {algorithm: normalize_hex(algorithm, value)}
    except InvalidDigest as exc:
        raise BundleError(f"bundle manifest: {exc}") from exc


def export_bundle(
    manifest: Mapping[str, Any], blockstore: Blockstore, out: IO[bytes]
) -> ExportReport:
    """Write ``manifest`` (as the root UnixFS file) and every archive it names as one CAR."""
    staging = MemoryBlockstore()
    body = json.dumps(manifest, sort_keys=True).encode()
    root = import_file(body, sink=staging).cid
    writer = CarWriter(out, [root])
    for block in walk_dag(staging, root):
        writer.put(block)
    report = ExportReport(root=str(root))
    for package in manifest["packages"]:
        for version in package["versions"]:
            for artifact in version["artifacts"]:
                for block in walk_dag(blockstore, parse_cid(artifact["archive"]["cid"])):
                    writer.put(block)
                report.archives += 1
    report.size = writer.size
    return report


# -- import ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ImportReport:
    """What :func:`import_bundle` loaded: blocks, packages, archives new or already held."""

    blocks: int = 0
    packages: int = 0
    archives: int = 0
    already: int = 0


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _expect(condition: bool, reason: str) -> None:
    if not condition:
        raise BundleError(f"bundle manifest: {reason}")


def package_info(entry: Any) -> PackageInfo:
    """Turn one manifest package into a :class:`PackageInfo`, checking names and shapes."""
    _expect(isinstance(entry, dict), "a package is not an object")
    ecosystem = entry.get("ecosystem")
    raw_name = entry.get("name")
    _expect(isinstance(ecosystem, str) and isinstance(raw_name, str), "package without a name")
    try:
        name = registered_name(ecosystem, raw_name)
    except (InvalidKey, IndexerError) as exc:
        raise BundleError(f"bundle manifest: {exc}") from exc
    _expect(name == raw_name, f"{raw_name!r} is not its registry's canonical spelling")
    releases = []
    for version in entry.get("versions") or []:
        _expect(isinstance(version, dict) and isinstance(version.get("number"), str), "version")
        artifacts = []
        for artifact in version.get("artifacts") or []:
            _expect(isinstance(artifact, dict), "an artifact is not an object")
            filename, digests = artifact.get("filename"), artifact.get("digests")
            _expect(isinstance(filename, str) and bool(filename), "artifact without a filename")
            _expect(isinstance(digests, dict), f"{filename}: no digests")
            artifacts.append(
                ArtifactInfo(
                    filename=filename,
                    url=str(artifact.get("url") or ""),
                    size=artifact.get("size") if isinstance(artifact.get("size"), int) else None,
                    digests={str(k): str(v) for k, v in digests.items()},
                    kind=artifact.get("kind"),
                    yanked=bool(artifact.get("yanked")),
                    yanked_reason=artifact.get("yanked_reason"),
                    requires_python=artifact.get("requires_python"),
                    uploaded_at=_time(artifact.get("uploaded_at")),
                )
            )
        releases.append(
            Release(
                version=version["number"],
                artifacts=tuple(artifacts),
                published_at=_time(version.get("published_at")),
                yanked=bool(version.get("yanked")),
                deleted=bool(version.get("deleted")),
                deprecated=version.get("deprecated"),
            )
        )
    extra = entry.get("extra")
    return PackageInfo(
        ecosystem=ecosystem,
        name=name,
        display_name=str(entry.get("display_name") or name),
        releases=tuple(releases),
        deleted=bool(entry.get("deleted")),
        extra=extra if isinstance(extra, dict) else {},
        complete=False,  # a bundle holds what a lockfile named, not every release
    )


def _record(session: Session, info: PackageInfo, manifest_entry: Mapping[str, Any]) -> list[Any]:
    """Record the package's rows; return ``(artifact_id, cid, size)`` of archives to add."""
    from forage.index.ingest import record_package

    record_package(session, info, archive=False)
    pending = []
    for version in manifest_entry["versions"]:
        for artifact in version["artifacts"]:
            row = session.execute(
                sa.select(Artifact.id, Archive.status)
                .join(Version, Artifact.version_id == Version.id)
                .join(Package, Version.package_id == Package.id)
                .outerjoin(Archive, Archive.artifact_id == Artifact.id)
                .where(
                    Package.ecosystem == info.ecosystem,
                    Package.name == info.name,
                    Version.number == version["number"],
                    Artifact.filename == artifact["filename"],
                )
            ).one()
            archive = artifact.get("archive") or {}
            _expect(isinstance(archive, dict), "archive is not an object")
            own = _own_digest(archive)
            pending.append((row.id, row.status, archive.get("cid"), archive.get("size"), own))
    return pending


def _digests_of(session: Session, artifact_id: int) -> dict[str, str]:
    return {
        row.algorithm: row.value
        for row in session.execute(
            sa.select(ArtifactDigest).where(ArtifactDigest.artifact_id == artifact_id)
        ).scalars()
    }


def _store_archive(
    session: Session,
    artifact_id: int,
    cid: str,
    size: int,
    algorithm: str | None,
    own: Mapping[str, str],
) -> None:
    existing = session.execute(
        sa.select(Archive).where(Archive.artifact_id == artifact_id)
    ).scalar_one_or_none()
    digest_value = None
    if algorithm is not None:
        digest_value = (_digests_of(session, artifact_id) or own).get(algorithm)
    values = {
        "cid": cid,
        "size": size,
        "status": ArchiveStatus.ARCHIVED,
        "error": None,
        "verified_algorithm": algorithm if digest_value else None,
        "verified_digest": digest_value,
        "archived_at": utcnow(),
    }
    if existing is None:
        session.add(Archive(artifact_id=artifact_id, **values))
    else:
        for name, value in values.items():
            setattr(existing, name, value)
    session.flush()


def import_bundle(
    stream: IO[bytes], *, blockstore: Blockstore, sessions: sessionmaker[Session]
) -> ImportReport:
    """Load a bundle CAR (see the module docstring); ``BundleError`` if it is not one."""
    report = ImportReport()
    try:
        car = read_car(stream)
        _expect(len(car.roots) == 1, f"{len(car.roots)} roots, expected the manifest alone")
        with blockstore.batch() as batch:
            for block in car:
                batch.put(block)
                report.blocks += 1
        body = bytearray()
        for chunk in read_file(blockstore, car.roots[0]):
            body += chunk
            _expect(len(body) <= MAX_MANIFEST_SIZE, "manifest too large")
        manifest = json.loads(body)
    except StorageError as exc:
        raise BundleError(f"not a readable bundle: {exc}") from exc
    except ValueError as exc:
        raise BundleError(f"bundle manifest is not JSON: {exc}") from exc
    _expect(isinstance(manifest, dict), "not an object")
    _expect(manifest.get("format") == BUNDLE_FORMAT, "not a Forage mirror bundle")
    _expect(
        manifest.get("version") == BUNDLE_VERSION,
        f"unsupported version {manifest.get('version')!r}",
    )
    for entry in manifest.get("packages") or []:
        info = package_info(entry)
        with sessions.begin() as session:
            pending = _record(session, info, entry)
        report.packages += 1
        for artifact_id, status, cid, size, own in pending:
            if status is ArchiveStatus.ARCHIVED:
                report.already += 1
                continue
            _expect(isinstance(cid, str) and isinstance(size, int), "archive without cid/size")
            with sessions() as session:
                digests = _digests_of(session, artifact_id) or own
            checked = ArchivedFile(
                artifact_id=artifact_id,
                package=info.name,
                version="",
                filename="",
                url="",
                cid=cid,
                size=size,
                digests=digests,
            )
            try:
                load_verified(blockstore, checked, Spool(memory=1 << 20))
            except ArchiveInvalid as exc:
                raise BundleError(f"{info.name}: {exc}") from exc
            strongest = next((a for a in ("sha512", "sha256", "h1", "sha1") if a in digests), None)
            with sessions.begin() as session:
                _store_archive(session, artifact_id, cid, size, strongest, own)
            report.archives += 1
    log.info(
        "imported bundle: %d blocks, %d packages, %d archives (%d already held)",
        report.blocks,
        report.packages,
        report.archives,
        report.already,
    )
    return report


__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "ExportReport",
    "ImportReport",
    "KeyProblems",
    "PrimeReport",
    "bundle_manifest",
    "export_bundle",
    "import_bundle",
    "lockfile_keys",
    "package_info",
    "prime",
    "release_artifacts",
]
