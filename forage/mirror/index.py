"""What the archive holds for the mirror, read from Forage's index and blockstore.

Rows come from the index (``Package -> Version -> Artifact (+ digests) -> Archive``, see
:mod:`forage.db.models`) as the plain values of :mod:`indexers.mirror.rows`; bytes from the
blockstore through :func:`storage.read_file`, whose blocks are each checked against their CID.
The first time a process serves an archive, the whole file is read into a
:class:`~indexers.mirror.spool.Spool` and checked again against the digests the *registry*
published (npm sha512/sha1, PyPI sha256, plus the size, and each ecosystem's whole-file checks
such as Go's ``h1:``): a file that fails is :class:`~indexers.errors.ArchiveInvalid` and is
never served. Later reads of it skip the hashing (a verified file never changes; the scheduled
``reverify`` marks a damaged archive failed, and the index then stops offering it), as do
reads of the archives a pull-through (:mod:`forage.mirror.keep`) wrote. :class:`IndexArchive` offers
all of it to the mirror as its :class:`~indexers.mirror.registry.ArchiveIndex`.

Queries are plain functions over a ``Session`` returning frozen values, run in a thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from multiformats import CID
from sqlalchemy.orm import Session, sessionmaker

from forage.db.models import Archive, ArchiveStatus, Artifact, ArtifactDigest, Package, Version
from forage.mirror.keep import PullThrough
from indexers import FILE_CHECKS
from indexers.digests import HASHERS, DigestVerifier
from indexers.errors import ArchiveInvalid, DigestMismatch, InvalidArchive, InvalidDigest
from indexers.mirror.rows import ArchivedFile, PackageRows, VersionRow, Withdrawn, hold_reason
from indexers.mirror.spool import Spool
from storage import Block, BlockSource, StorageError, parse_cid, read_file

T = TypeVar("T")

#: Archives remembered as verified (about 200 bytes each); past it the least recently served
#: are verified again when next served.
MAX_VERIFIED = 200_000
#: Verified archives up to this size are kept in memory once served (one leaf block at most)...
SMALL_FILE = 256 * 1024
#: ... up to this many bytes in all, the least recently served dropped first.
SMALL_FILES_MEMORY = 32 * 1024**2

log = logging.getLogger(__name__)


def _files_query(*, package: bool = True) -> sa.Select[Any]:
    """Archived files with what serving them needs (and, with ``package``, the columns their
    package's hold is read from)."""
    query: sa.Select[Any] = (
        sa.select(
            Artifact.id,
            Package.name,
            Version.number,
            Artifact.filename,
            Artifact.url,
            Archive.cid,
            Archive.size,
            Artifact.size.label("artifact_size"),
            sa.or_(
                Version.deleted,
                Package.deleted,
                Version.removed_at.is_not(None),
                Artifact.removed_at.is_not(None),
            ).label("removed"),
            Artifact.yanked,
            Artifact.yanked_reason,
            Artifact.requires_python,
            Artifact.uploaded_at,
            Version.published_at,
            Archive.verified_algorithm,
            Archive.verified_digest,
        )
        .join(Version, Artifact.version_id == Version.id)
        .join(Package, Version.package_id == Package.id)
        .join(Archive, Archive.artifact_id == Artifact.id)
        .where(Archive.status == ArchiveStatus.ARCHIVED)
    )
    return query.add_columns(Package.extra, Package.status) if package else query


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


#: The digests of one artifact (a prepared statement: built, and its cache key made, once).
_DIGESTS_OF = sa.select(ArtifactDigest.algorithm, ArtifactDigest.value).where(
    ArtifactDigest.artifact_id == sa.bindparam("artifact_id")
)


def _own_digest(row: Any) -> dict[str, str]:
    """For a file whose registry published no digest, the sha256 Forage recorded at its
    first download: what its archived and later upstream copies are held to."""
    if row.verified_algorithm in HASHERS and row.verified_digest:
        return {row.verified_algorithm: row.verified_digest}
    return {}


def _archived_file(row: Any, digests: dict[str, str], hold: str | None) -> ArchivedFile:
    return ArchivedFile(
        artifact_id=row.id,
        package=row.name,
        version=row.number,
        filename=row.filename,
        url=row.url,
        cid=row.cid,
        size=row.artifact_size if row.artifact_size is not None else row.size,
        digests=digests or _own_digest(row),
        removed=bool(row.removed),
        hold=hold,
        yanked=row.yanked,
        yanked_reason=row.yanked_reason,
        requires_python=row.requires_python,
        uploaded_at=row.uploaded_at,
        published_at=row.published_at,
    )


#: Every digest of every artifact of one package.
_PACKAGE_DIGESTS = (
    sa.select(ArtifactDigest.artifact_id, ArtifactDigest.algorithm, ArtifactDigest.value)
    .join(Artifact, ArtifactDigest.artifact_id == Artifact.id)
    .join(Version, Artifact.version_id == Version.id)
    .where(Version.package_id == sa.bindparam("package_id"))
)


def package_extra(session: Session, ecosystem: str, name: str) -> dict[str, Any] | None:
    """The registry metadata the index keeps for ``name`` (``None``: unknown package)."""
    extra = session.execute(
        sa.select(Package.extra).where(Package.ecosystem == ecosystem, Package.name == name)
    ).scalar_one_or_none()
    return None if extra is None else dict(extra)


def package_hold(session: Session, ecosystem: str, name: str) -> str | None:
    """Why the index says ``name`` must never be served (``None``: no hold, or unknown)."""
    row = session.execute(
        sa.select(Package.extra, Package.status).where(
            Package.ecosystem == ecosystem, Package.name == name
        )
    ).first()
    return None if row is None else hold_reason(row.extra or {}, row.status)


def package_withdrawn(session: Session, ecosystem: str, name: str) -> Withdrawn | None:
    """What the registry withdrew from ``name`` as the index recorded it: its hold, removed
    versions and removed files (``None``: unknown package). Two indexed reads."""
    package = session.execute(
        sa.select(Package.id, Package.extra, Package.status).where(
            Package.ecosystem == ecosystem, Package.name == name
        )
    ).first()
    if package is None:
        return None
    rows = session.execute(
        sa.select(Version.number, Version.removed_at.is_not(None), Artifact.filename)
        .outerjoin(
            Artifact, sa.and_(Artifact.version_id == Version.id, Artifact.removed_at.is_not(None))
        )
        .where(
            Version.package_id == package.id,
            sa.or_(Version.removed_at.is_not(None), Artifact.id.is_not(None)),
        )
    ).all()
    return Withdrawn(
        hold=hold_reason(package.extra or {}, package.status),
        versions=frozenset(number for number, removed, _ in rows if removed),
        files=frozenset(filename for _, _, filename in rows if filename is not None),
    )


@functools.cache
def _find_query(name: bool, filename: bool, version: bool, sha256: bool) -> sa.Select[Any]:
    """The :func:`find_file` statement for one combination of filters, built once with bound
    parameters: every file request runs it, and building a statement (and its SQL cache key)
    costs more than running it."""
    query = _files_query().where(Package.ecosystem == sa.bindparam("ecosystem"))
    if name:
        query = query.where(Package.name == sa.bindparam("name"))
    if filename:
        query = query.where(Artifact.filename == sa.bindparam("filename"))
    if version:
        query = query.where(Version.number == sa.bindparam("version"))
    if sha256:
        query = query.join(
            ArtifactDigest,
            sa.and_(
                ArtifactDigest.artifact_id == Artifact.id,
                ArtifactDigest.algorithm == "sha256",
                ArtifactDigest.value == sa.bindparam("sha256"),
            ),
        )
    return query.order_by(Artifact.id).limit(1)


def find_file(
    session: Session | sa.Connection,
    ecosystem: str,
    *,
    name: str | None = None,
    filename: str | None = None,
    version: str | None = None,
    sha256: str | None = None,
) -> ArchivedFile | None:
    """The archived file matching every filter given, or ``None``."""
    filters = {"name": name, "filename": filename, "version": version, "sha256": sha256}
    params = {key: value for key, value in filters.items() if value is not None}
    query = _find_query(*(value is not None for value in filters.values()))
    row = session.execute(query, {"ecosystem": ecosystem, **params}).first()
    if row is None:
        return None
    digests = session.execute(_DIGESTS_OF, {"artifact_id": row.id}).all()
    digests_of = {algorithm: value for algorithm, value in digests}
    return _archived_file(row, digests_of, hold_reason(row.extra or {}, row.status))


def indexed_digests(
    session: Session, ecosystem: str, *, name: str, version: str
) -> dict[str, str] | None:
    """The digests the index holds for the first file of ``name@version``, archived or not
    (``None``: no such file indexed)."""
    artifact_id = session.execute(
        sa.select(Artifact.id)
        .join(Version, Artifact.version_id == Version.id)
        .join(Package, Version.package_id == Package.id)
        .where(Package.ecosystem == ecosystem, Package.name == name, Version.number == version)
        .order_by(Artifact.id)
        .limit(1)
    ).scalar_one_or_none()
    return None if artifact_id is None else _digests(session, [artifact_id])[artifact_id]


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


def package_rows(session: Session | sa.Connection, ecosystem: str, name: str) -> PackageRows | None:
    """Everything a fallback listing of ``name`` needs, or ``None`` if the index lacks it.

    Four plain reads (package, versions, digests, files): a package with 10,000 versions has
    10,000 file rows, so its hold is read once, not once a row.
    """
    package = session.execute(
        sa.select(
            Package.id,
            Package.name,
            Package.display_name,
            Package.deleted,
            Package.extra,
            Package.status,
        ).where(Package.ecosystem == ecosystem, Package.name == name)
    ).first()
    if package is None:
        return None
    versions = session.execute(
        sa.select(
            Version.number,
            Version.published_at,
            Version.yanked,
            Version.deleted,
            Version.deprecated,
            Version.removal,
        ).where(Version.package_id == package.id)
    ).all()
    hold = hold_reason(package.extra or {}, package.status)
    digests: dict[int, dict[str, str]] = {}
    for artifact_id, algorithm, value in session.execute(
        _PACKAGE_DIGESTS, {"package_id": package.id}
    ):
        digests.setdefault(artifact_id, {})[algorithm] = value
    query = _files_query(package=False).where(Version.package_id == package.id)
    files = [
        _archived_file(row, digests.get(row.id, {}), hold)
        for row in session.execute(query.order_by(Artifact.id))
    ]
    return PackageRows(
        ecosystem=ecosystem,
        name=package.name,
        display_name=package.display_name or package.name,
        deleted=package.deleted,
        extra=dict(package.extra or {}),
        versions=tuple(VersionRow(*row) for row in versions),
        files=tuple(files),
        status=package.status,
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
    checks = {k: (FILE_CHECKS[k], v) for k, v in archived.digests.items() if k in FILE_CHECKS}
    if not byte_digests and not checks:
        raise ArchiveInvalid(archived.cid, "no upstream digest to verify the bytes against")
    try:
        verifier = DigestVerifier(f"archive:{archived.cid}", byte_digests, size=archived.size)
        for chunk in read_file(source, parse_cid(archived.cid)):
            verifier.update(chunk)
            spool.write(chunk)
        spool.finish()
        verifier.finish()
        for check, expected in checks.values():
            with spool.open() as reader:
                check(reader, expected, f"archive:{archived.cid}")
    except (DigestMismatch, InvalidArchive, InvalidDigest) as exc:
        raise ArchiveInvalid(archived.cid, f"fails its upstream digest: {exc}") from exc
    except StorageError as exc:
        raise ArchiveInvalid(archived.cid, f"cannot be read: {exc}") from exc


class _Trusted:
    """A block source that skips re-hashing where the store allows it (``get_trusted``)."""

    def __init__(self, source: BlockSource) -> None:
        self._get = getattr(source, "get_trusted", source.get)

    def get(self, cid: CID) -> Block:
        block: Block = self._get(cid)
        return block


def load_trusted(source: BlockSource, archived: ArchivedFile, spool: Spool) -> None:
    """Read an archive verified earlier in this process into ``spool`` without hashing it
    again (issue 16: a verified file never changes; ``reverify`` samples the store, and a
    damaged archive it finds leaves the index, so :func:`find_file` stops returning it)."""
    try:
        for chunk in read_file(_Trusted(source), parse_cid(archived.cid)):
            spool.write(chunk)
    except StorageError as exc:
        raise ArchiveInvalid(archived.cid, f"cannot be read: {exc}") from exc
    spool.finish()
    if spool.size != archived.size:
        raise ArchiveInvalid(archived.cid, f"holds {spool.size} bytes, not {archived.size}")


class Verified:
    """The archives (artifact id, CID) verified since the process started, the most recently
    used ``limit`` of them: one forgotten is simply verified again, so memory stays bounded."""

    def __init__(self, limit: int = MAX_VERIFIED) -> None:
        self.limit = limit
        self._seen: OrderedDict[tuple[int, str], None] = OrderedDict()

    def __contains__(self, key: tuple[int, str]) -> bool:
        if key not in self._seen:
            return False
        self._seen.move_to_end(key)
        return True

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: tuple[int, str]) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)


class SmallFiles:
    """The bytes of the small archives served most recently, verified (or read trusted) when
    they were read: a small file's request costs more in reading it from the blockstore (a
    worker thread, its CID parsed, its block found) than in sending it. ``limit`` bytes at
    most in all; a file over ``largest`` is never kept."""

    def __init__(self, limit: int = SMALL_FILES_MEMORY, largest: int = SMALL_FILE) -> None:
        self.limit = limit
        self.largest = largest
        self.used = 0
        self._held: OrderedDict[tuple[int, str], bytes] = OrderedDict()

    def get(self, key: tuple[int, str]) -> bytes | None:
        data = self._held.get(key)
        if data is not None:
            self._held.move_to_end(key)
        return data

    def put(self, key: tuple[int, str], data: bytes) -> None:
        if len(data) > self.largest or key in self._held:
            return
        self._held[key] = data
        self.used += len(data)
        while self.used > self.limit:
            _, dropped = self._held.popitem(last=False)
            self.used -= len(dropped)


class IndexArchive:
    """The mirror's :class:`~indexers.mirror.registry.ArchiveIndex` over Forage's database and
    blockstore: each read in a worker thread, in a short session of its own.

    ``verified`` holds the archives (artifact id, CID) whose bytes were checked against their
    upstream digests since the process started (read once, or written by a pull-through):
    they are served without hashing them again, and the small ones among them from memory
    (``small``). ``pull_through`` (set while the application runs) archives the files the
    mirror fetches; without it the mirror only reads.
    """

    def __init__(self, sessionmaker: sessionmaker[Session], blockstore: BlockSource) -> None:
        self.sessionmaker = sessionmaker
        self.blockstore = blockstore
        self.pull_through: PullThrough | None = None
        self.verified = Verified()
        self.small = SmallFiles()

    async def _query(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        def run() -> T:
            with self.sessionmaker() as session:
                return fn(session, *args, **kwargs)

        return await asyncio.to_thread(run)

    async def _read(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn`` over a bare connection, for the Core reads every file request makes (an ORM
        session costs a third of such a read)."""
        bind = self.sessionmaker.kw.get("bind")
        if not isinstance(bind, sa.Engine):
            return await self._query(fn, *args, **kwargs)
        engine = bind

        def run() -> T:
            with engine.connect() as connection:
                return fn(connection, *args, **kwargs)

        return await asyncio.to_thread(run)

    async def package_stamp(self, ecosystem: str, name: str) -> tuple[Any, ...] | None:
        return await self._query(package_stamp, ecosystem, name)

    async def package_rows(self, ecosystem: str, name: str) -> PackageRows | None:
        return await self._read(package_rows, ecosystem, name)

    async def package_extra(self, ecosystem: str, name: str) -> dict[str, Any] | None:
        return await self._query(package_extra, ecosystem, name)

    async def package_hold(self, ecosystem: str, name: str) -> str | None:
        return await self._query(package_hold, ecosystem, name)

    async def package_withdrawn(self, ecosystem: str, name: str) -> Withdrawn | None:
        return await self._query(package_withdrawn, ecosystem, name)

    async def package_names(self, ecosystem: str) -> list[str]:
        return await self._query(package_names, ecosystem)

    async def find_file(
        self,
        ecosystem: str,
        *,
        name: str | None = None,
        filename: str | None = None,
        version: str | None = None,
        sha256: str | None = None,
    ) -> ArchivedFile | None:
        return await self._read(
            find_file, ecosystem, name=name, filename=filename, version=version, sha256=sha256
        )

    async def indexed_digests(
        self, ecosystem: str, *, name: str, version: str
    ) -> dict[str, str] | None:
        return await self._query(indexed_digests, ecosystem, name=name, version=version)

    async def load_verified(self, file: ArchivedFile, spool: Spool) -> None:
        key = (file.artifact_id, file.cid)
        held = self.small.get(key) if key in self.verified else None
        if held is not None:
            spool.write(held)
            spool.finish()
            return
        if key in self.verified:
            await asyncio.to_thread(load_trusted, self.blockstore, file, spool)
        else:
            await asyncio.to_thread(load_verified, self.blockstore, file, spool)
            self.verified.add(key)
        if spool.in_memory and spool.size <= self.small.largest:
            self.small.put(key, spool.getvalue())

    async def keep(self, ecosystem: str, name: str, url: str, spool: Spool) -> str:
        if self.pull_through is None:
            return "not kept: the mirror has no writable archive"
        kept, artifact_id, cid = await self.pull_through.keep(
            ecosystem, name, url, spool.blocking_chunks()
        )
        if artifact_id is not None and cid is not None:
            self.verified.add((artifact_id, cid))
        return kept.value

    def chunks(self, cid: str) -> Iterator[bytes]:
        try:
            yield from read_file(self.blockstore, parse_cid(cid))
        except (StorageError, ValueError) as exc:
            raise ArchiveInvalid(cid, f"cannot be read: {exc}") from exc


__all__ = [
    "IndexArchive",
    "SmallFiles",
    "Verified",
    "find_file",
    "indexed_digests",
    "load_trusted",
    "load_verified",
    "package_extra",
    "package_hold",
    "package_names",
    "package_rows",
    "package_stamp",
    "package_withdrawn",
]
