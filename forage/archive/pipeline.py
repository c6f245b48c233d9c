"""Archive jobs: download an artifact once, verify it, content-address it, keep its blocks.

One streaming pass per artifact (DESIGN.md, "The way data flows"; issue 4):

1. The artifact's row, upstream digests and registry are loaded in one transaction; an
   artifact already archived is left alone (jobs are idempotent).
2. Downloads go through :func:`forage.archive.download.open_download` under that registry's
   :class:`~forage.archive.download.HostPolicy`: only ``registries.<name>.download_hosts`` (which
   defaults to the hosts of the registry's own endpoint URLs, so a hostile packument cannot
   make Forage fetch an internal address), every redirect checked, a declared size over
   ``max_download_size`` refused before a byte is read.
3. The body is read as sent (never decoded) and gathered into 1 MiB segments. Each segment
   goes to worker threads (hashlib releases the GIL) that feed the
   :class:`indexers.DigestVerifier` (npm sha512 and sha1, PyPI sha256, the size when known)
   and, in parallel, the :class:`~storage.unixfs.UnixFSImporter` (CIDv1, raw leaves, 256 KiB
   chunks, as ``ipfs add --cid-version=1``) whose blocks are staged in a blockstore batch.
   An artifact of at most ``INLINE_SIZE`` bytes (most of a registry) is hashed on the event
   loop instead, and its block stays in the batch's memory until the commit. Go module
   zips are also spooled to an unnamed temporary file under ``<data.dir>/spool``
   (``O_TMPFILE``: gone on close and on SIGKILL alike) so :func:`indexers.verify_go_zip` can
   check the ``h1:`` over the zip's files. The next segment downloads while the last one is
   hashed; at most two segments are held, so memory is flat whatever the artifact's size.
4. After the last byte every digest is compared. A mismatch discards the staged blocks and
   records a ``failed`` archive with the reason and no CID; the job is dead at once.
5. Otherwise the batch commits (the blocks are durable in the store when it returns; batches
   of concurrent archives share the blockstore's syncs), then :func:`record_archived` writes
   the ``archived`` row in one transaction: the one place where work that follows a
   successful archive is queued. :func:`archive_many` (``forage archive``) loads rows a page
   per transaction and writes the rows of archives that finish together in one
   (:func:`record_archived_many`), so the per-artifact cost stays small.

Crash safety: blocks become visible only after every digest matched, and the row only after
the blocks; a kill in between leaves verified blocks and no row, and the job's next run
finishes it (blocks already stored are not written twice). Staging directories of killed
writers are removed when a blockstore is next opened; a failure of ours (disk full
included) removes them at once. Every failed attempt records a ``failed`` row with its
reason; transient ones (network, 5xx, full disk) raise so the queue retries the job,
permanent ones (digest or size mismatch, host refused, 4xx, bad zip) end it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import tempfile
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import sqlalchemy as sa
from multiformats import CID
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from forage.archive.download import HostPolicy, iter_body, open_download
from forage.db.engine import is_sqlite, utcnow
from forage.db.models import Archive, ArchiveStatus, Artifact, ArtifactDigest, Package, Version
from forage.errors import ConfigError, InvalidKey, JobError, NotFound, PermanentJobError
from forage.index.registries import INDEXER_CLASSES
from forage.jobs.queue import Job, describe_error, is_permanent
from forage.jobs.worker import JobContext
from forage.lookup.keys import Key, parse_key
from forage.pins.service import enqueue_pins
from indexers import DigestCheck, DigestMismatch, DigestVerifier, verify_go_zip
from storage import BlockSink, Blockstore, UnixFSImporter

log = logging.getLogger(__name__)

#: Bytes gathered from the network before a segment is handed to the hashing threads: a
#: multiple of the 256 KiB UnixFS chunk, large enough to amortize the hand-over.
SEGMENT_SIZE = 1024 * 1024
#: Artifacts up to this size are hashed on the event loop (a few dozen microseconds, less
#: than handing them to threads) and their one block stays in the batch's memory until the
#: commit writes it; most registry artifacts are this small.
INLINE_SIZE = 64 * 1024
#: Artifacts whose rows ``archive_many`` reads in one transaction.
LOAD_PAGE = 100
#: Where Go module zips are spooled for the ``h1:`` check, under ``data.dir``.
SPOOL_DIR = "spool"
#: Digest algorithms that are not a hash of the byte stream (checked over a spooled copy).
H1 = "h1"

OnBytes = Callable[[int], None]


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


# -- rows ------------------------------------------------------------------------------------


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


def _ensure_row(session: Session, artifact_id: int) -> None:
    """Insert a ``pending`` archive row unless one exists (a race ends in one row)."""
    insert = (sqlite.insert if is_sqlite(session) else postgresql.insert)(
        cast(sa.Table, Archive.__table__)
    )
    session.execute(
        insert.values(artifact_id=artifact_id, status=ArchiveStatus.PENDING).on_conflict_do_nothing(
            index_elements=["artifact_id"]
        )
    )


#: Columns an ``archived`` result sets.
_ARCHIVED_COLUMNS = (
    "status",
    "cid",
    "size",
    "verified_algorithm",
    "verified_digest",
    "error",
    "archived_at",
    "updated_at",
)


@functools.cache
def _archived_upsert(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (artifact_id) DO UPDATE ... WHERE status != 'archived'
    RETURNING artifact_id, id``, built once per dialect: a row comes back only for the
    artifacts this statement moved to ``archived``. Run with many parameter sets, SQLAlchemy
    sends it as multi-row INSERTs."""
    table = cast(sa.Table, Archive.__table__)
    insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)
    return insert.on_conflict_do_update(
        index_elements=[table.c.artifact_id],
        set_={name: insert.excluded[name] for name in _ARCHIVED_COLUMNS},
        where=table.c.status != ArchiveStatus.ARCHIVED,
    ).returning(table.c.artifact_id, table.c.id)


def record_archived(
    session: Session, artifact_id: int, result: ArchiveResult, *, pin: bool = True
) -> int | None:
    """Mark the artifact archived; return the archive id, or ``None`` if it already was.

    Only the call that moves the row to ``archived`` gets an id, so follow-up work is queued
    exactly once, here, in this transaction: a pin job when ``pin`` (some pinning backend is
    configured; archives made without one are picked up by the pin check once one is).
    """
    return record_archived_many(session, [(artifact_id, result)], pin=pin)[0]


def record_archived_many(
    session: Session, results: Sequence[tuple[int, ArchiveResult]], *, pin: bool = True
) -> list[int | None]:
    """:func:`record_archived` for several ``(artifact_id, result)`` pairs in one transaction
    and one upsert (concurrent archives share it: group commit); one id or ``None`` per pair,
    in order (a repeated artifact gets its id once)."""
    now = utcnow()
    rows: dict[int, dict[str, Any]] = {}
    for artifact_id, result in results:
        rows.setdefault(
            artifact_id,
            {
                "artifact_id": artifact_id,
                "status": ArchiveStatus.ARCHIVED,
                "cid": result.cid,
                "size": result.size,
                "verified_algorithm": result.verified_algorithm,
                "verified_digest": result.verified_digest,
                "error": None,
                "archived_at": now,
                "created_at": now,
                "updated_at": now,
            },
        )
    if not rows:
        return []
    connection = session.connection()
    moved = dict(
        connection.execute(_archived_upsert(connection.dialect.name), list(rows.values())).all()
    )
    archive_ids: list[int | None] = []
    for artifact_id, _ in results:
        archive_id = moved.pop(artifact_id, None)
        archive_ids.append(archive_id)
        if archive_id is not None and pin:
            enqueue_pins(session, archive_id)
    return archive_ids


def record_failed(session: Session, artifact_id: int, error: str) -> None:
    """Record a failed attempt and its reason, unless the artifact is archived meanwhile."""
    _ensure_row(session, artifact_id)
    session.execute(
        sa.update(Archive)
        .where(Archive.artifact_id == artifact_id, Archive.status != ArchiveStatus.ARCHIVED)
        .values(
            status=ArchiveStatus.FAILED,
            cid=None,
            size=None,
            verified_algorithm=None,
            verified_digest=None,
            error=error,
        )
    )


def _not_archived() -> Any:
    archived = sa.select(Archive.artifact_id).where(
        Archive.artifact_id == Artifact.id, Archive.status == ArchiveStatus.ARCHIVED
    )
    return ~sa.exists(archived)


def count_unarchived(session: Session, *, exclude: Collection[int] = ()) -> int:
    """How many artifacts (not in ``exclude``) have no ``archived`` row: never tried,
    pending or failed."""
    query = sa.select(sa.func.count()).select_from(Artifact).where(_not_archived())
    if exclude:
        query = query.where(Artifact.id.not_in(list(exclude)))
    return int(session.execute(query).scalar_one())


def unarchived_ids(
    session: Session, *, after: int = 0, limit: int = 1000, exclude: Collection[int] = ()
) -> list[int]:
    """One page of ids of artifacts (not in ``exclude``) with no ``archived`` row, ascending
    from ``after``."""
    query = (
        sa.select(Artifact.id)
        .where(Artifact.id > after, _not_archived())
        .order_by(Artifact.id)
        .limit(limit)
    )
    if exclude:
        query = query.where(Artifact.id.not_in(list(exclude)))
    return list(session.execute(query).scalars())


def _normalize(ecosystem: str, name: str) -> str:
    indexer = INDEXER_CLASSES.get(ecosystem)
    if indexer is None:
        raise InvalidKey(
            f"{ecosystem}:{name}", f"no registry {ecosystem!r}; known: {', '.join(INDEXER_CLASSES)}"
        )
    return indexer.normalize_name(name)


def artifact_ids_for_key(session: Session, key: str) -> list[int]:
    """The artifacts a purl or Forage key names (every version's when it has none).

    Raises ``InvalidKey`` for a malformed key and ``NotFound`` when the index has no match.
    """
    parsed = parse_key(key, normalize=_normalize)
    query = (
        sa.select(Artifact.id)
        .join(Version, Artifact.version_id == Version.id)
        .join(Package, Version.package_id == Package.id)
        .where(Package.ecosystem == parsed.ecosystem, Package.name == parsed.name)
        .order_by(Artifact.id)
    )
    if parsed.version is not None:
        query = query.where(Version.number == parsed.version)
    ids = list(session.execute(query).scalars())
    if not ids:
        raise NotFound(f"no artifact in the index for {key}")
    return ids


# -- the streaming pass ----------------------------------------------------------------------


def host_policy(ctx: JobContext, ecosystem: str) -> HostPolicy:
    """The download policy of a configured registry (``ConfigError`` if it is not)."""
    registry = ctx.config.registry(ecosystem)
    return HostPolicy.of(
        registry.download_hosts,
        max_size=registry.max_download_size,
        allow_http=registry.allow_http,
    )


class _Pass:
    """The synchronous half of one pass: hash, import, stage, spool (run in threads)."""

    def __init__(self, target: ArchiveTarget, batch: BlockSink, spool: IO[bytes] | None) -> None:
        self.target = target
        self.verifier = DigestVerifier(target.url, target.digests, size=target.size)
        self.importer = UnixFSImporter()
        self.batch = batch
        self.spool = spool
        self.received = 0

    @property
    def small(self) -> bool:
        """Whether everything so far may be handled on the event loop (see ``INLINE_SIZE``)."""
        return self.received <= INLINE_SIZE and self.spool is None

    def both(self, segment: bytes | bytearray) -> None:
        """Hash-and-verify then import-and-stage, in the calling thread."""
        self.verify(segment)
        self.store(segment)

    def verify(self, segment: bytes | bytearray) -> None:
        self.verifier.update(segment)  # type: ignore[arg-type]  # any buffer hashes

    def store(self, segment: bytes | bytearray) -> None:
        for block in self.importer.update(segment):
            self.batch.put(block)
        if self.spool is not None:
            self.spool.write(segment)

    def finish(self) -> ArchiveResult:
        """Close the DAG and compare every digest (raises ``DigestMismatch``)."""
        for block in self.importer.finalize():
            self.batch.put(block)
        computed: dict[str, str] = {}
        expected_h1 = self.target.digests.get(H1)
        if expected_h1 is not None and self.spool is not None:
            self.spool.flush()
            computed[H1] = verify_go_zip(self.spool, expected_h1, url=self.target.url)
        check = self.verifier.finish(computed=computed)
        return _result(self.importer, check, self.target)


def _cid_text(cid: CID) -> str:
    """A CIDv1 as multibase base32 text, as ``str(cid)`` spells it, without multiformats'
    per-character encoder (a twentieth of a small artifact's CPU)."""
    return "b" + base64.b32encode(bytes(cid)).decode("ascii").lower().rstrip("=")


def _result(importer: UnixFSImporter, check: DigestCheck, target: ArchiveTarget) -> ArchiveResult:
    if not check.verified:
        log.warning("%s %s: the index holds no digest to verify", target.purl, target.filename)
    strongest = check.verified[0] if check.verified else None
    return ArchiveResult(
        cid=_cid_text(importer.result.cid),
        size=importer.result.size,
        verified_algorithm=strongest,
        verified_digest=check.actual[strongest] if strongest else None,
    )


async def _settle(task: asyncio.Future[Any] | None) -> None:
    """Wait until a hashing task's thread has returned, whatever it raised."""
    if task is None:
        return
    if not task.done():
        await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved: the error that matters is already propagating


async def _both(work: _Pass, segment: bytes | bytearray) -> None:
    """Hash-and-verify and import-and-stage one segment in two threads at once; return only
    when both threads have (so no thread outlives a failure), raising the first error."""
    results = await asyncio.gather(
        asyncio.to_thread(work.verify, segment),
        asyncio.to_thread(work.store, segment),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _hand_over(work: _Pass, segment: bytes | bytearray) -> asyncio.Future[Any]:
    return asyncio.ensure_future(_both(work, segment))


async def _stream(
    ctx: JobContext, target: ArchiveTarget, work: _Pass, on_bytes: OnBytes | None
) -> ArchiveResult:
    client = ctx.http.get(target.ecosystem)
    if client is None:
        raise ConfigError(f"registries.{target.ecosystem}", "no HTTP client for this registry")
    policy = host_policy(ctx, target.ecosystem)
    inflight: asyncio.Future[Any] | None = None
    try:
        async with open_download(
            client, target.url, policy=policy, expected_size=target.size
        ) as response:
            segments = iter_body(response, policy=policy, gather=SEGMENT_SIZE, on_bytes=on_bytes)
            async for segment in segments:
                if inflight is not None:
                    await asyncio.shield(inflight)
                    inflight = None
                work.received += len(segment)
                if work.small:
                    work.both(segment)
                else:
                    inflight = _hand_over(work, segment)
        if inflight is not None:
            await asyncio.shield(inflight)
    finally:
        # A thread may still be staging blocks: let it return before the batch is cleaned up.
        await _settle(inflight)
    if work.small:
        return work.finish()
    return await asyncio.to_thread(work.finish)


def _spool(ctx: JobContext, target: ArchiveTarget) -> IO[bytes] | None:
    """An unnamed temporary file for a Go module zip (``None`` when no ``h1`` is expected)."""
    if H1 not in target.digests:
        return None
    directory = Path(ctx.config.data.dir) / SPOOL_DIR
    directory.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=directory)


async def fetch_and_store(
    ctx: JobContext, target: ArchiveTarget, *, on_bytes: OnBytes | None = None
) -> ArchiveResult:
    """Download, verify, import and store one artifact's bytes; return its CID and digest.

    Blocks reach the store only when every digest matched; on any exception nothing staged
    or spooled is left behind.
    """
    blockstore: Blockstore | None = ctx.blockstore
    if blockstore is None:
        raise JobError("archive jobs need a blockstore in the job context")
    spool = _spool(ctx, target)
    try:
        staging = blockstore.batch()
        batch = staging.__enter__()  # no I/O: a batch touches the disk when blocks arrive
        try:
            result = await _stream(ctx, target, _Pass(target, batch, spool), on_bytes)
        except BaseException as exc:
            staging.__exit__(type(exc), exc, exc.__traceback__)  # discards the staged blocks
            raise
        await asyncio.to_thread(staging.__exit__, None, None, None)  # moves them into place
    finally:
        if spool is not None:
            spool.close()
    return result


# -- entry points ----------------------------------------------------------------------------


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt may succeed (a digest mismatch is final, like a 404)."""
    return not (is_permanent(error) or isinstance(error, DigestMismatch))


async def _load(ctx: JobContext, artifact_id: int) -> ArchiveTarget:
    target = await ctx.transaction(load_target, artifact_id)
    if target is None:
        raise NotFound(f"no artifact {artifact_id}")
    return target


_Record = Callable[[int, ArchiveResult], Awaitable[int | None]]


async def _run(
    ctx: JobContext, target: ArchiveTarget, on_bytes: OnBytes | None, record: _Record | None = None
) -> ArchiveOutcome:
    """Archive ``target`` unless it already is; record a failure, then raise it.

    ``record`` writes the ``archived`` row (default: a transaction of its own)."""
    if target.archived_cid is not None:
        log.debug("%s %s already archived as %s", target.purl, target.filename, target.archived_cid)
        return ArchiveOutcome(
            target.artifact_id,
            target.purl,
            target.filename,
            ArchiveStatus.ARCHIVED,
            cid=target.archived_cid,
            skipped=True,
        )
    try:
        result = await fetch_and_store(ctx, target, on_bytes=on_bytes)
    except Exception as exc:
        retryable = is_retryable(exc)
        await ctx.transaction(record_failed, target.artifact_id, describe_error(exc))
        log.warning(
            "archive of %s %s failed (%s): %s",
            target.purl,
            target.filename,
            "will retry" if retryable else "permanent",
            exc,
        )
        if not retryable and not is_permanent(exc):
            raise PermanentJobError(describe_error(exc)) from exc
        raise
    if record is None:
        archive_id = await ctx.transaction(
            record_archived, target.artifact_id, result, pin=bool(ctx.config.pinning.backends)
        )
    else:
        archive_id = await record(target.artifact_id, result)
    log.info(
        "archived %s %s as %s (%d bytes, %s verified, archive %s)",
        target.purl,
        target.filename,
        result.cid,
        result.size,
        result.verified_algorithm or "nothing",
        archive_id,
    )
    return ArchiveOutcome(
        target.artifact_id,
        target.purl,
        target.filename,
        ArchiveStatus.ARCHIVED,
        cid=result.cid,
        size=result.size,
    )


async def archive_artifact(
    ctx: JobContext, artifact_id: int, *, on_bytes: OnBytes | None = None
) -> ArchiveOutcome:
    """Archive one artifact now, unless it is already archived.

    ``on_bytes(n)`` is called as bytes arrive (progress bars). A failure is recorded as a
    ``failed`` row with its reason, then raised: transient errors as they are (the queue
    retries them), a digest mismatch as ``PermanentJobError``. ``NotFound`` if the row is gone.
    """
    return await _run(ctx, await _load(ctx, artifact_id), on_bytes)


async def archive_job(ctx: JobContext, job: Job) -> None:
    """Handler of ``archive`` jobs: payload ``{"artifact_id": N}``."""
    artifact_id = int(job.payload["artifact_id"])
    try:
        await archive_artifact(ctx, artifact_id)
    except NotFound:
        log.info("job %d: artifact %d is gone; nothing to archive", job.id, artifact_id)


def _reason(error: BaseException) -> str:
    cause = error.__cause__
    if isinstance(error, PermanentJobError) and isinstance(cause, DigestMismatch):
        return describe_error(cause)
    return describe_error(error)


class _Targets:
    """Targets of ``archive_many``'s ids, loaded a page per transaction as the lanes reach
    them (only the current and next pages are kept)."""

    def __init__(self, ctx: JobContext, ids: Sequence[int]) -> None:
        self._ctx = ctx
        self._ids = ids
        self._pages: dict[int, asyncio.Future[dict[int, ArchiveTarget]]] = {}

    async def get(self, index: int) -> ArchiveTarget:
        """The target of ``ids[index]``; ``NotFound`` if its artifact is gone."""
        page = index // LOAD_PAGE
        if page not in self._pages:
            for old in [p for p in self._pages if p < page - 1]:
                del self._pages[old]
            chunk = self._ids[page * LOAD_PAGE : (page + 1) * LOAD_PAGE]
            self._pages[page] = asyncio.ensure_future(self._ctx.transaction(load_targets, chunk))
        targets = await asyncio.shield(self._pages[page])
        artifact_id = self._ids[index]
        if artifact_id not in targets:
            raise NotFound(f"no artifact {artifact_id}")
        return targets[artifact_id]

    def close(self) -> None:
        for future in self._pages.values():
            future.cancel()


class _Recorder:
    """Writes the ``archived`` rows of concurrent lanes in shared transactions: results that
    finish while one transaction runs go in the next (group commit, as the blockstore does
    for its syncs). A row is written only after its blocks' commit returned."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self._waiting: list[tuple[int, ArchiveResult, asyncio.Future[int | None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, artifact_id: int, result: ArchiveResult) -> int | None:
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((artifact_id, result, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                pairs = [(artifact_id, result) for artifact_id, result, _ in group]
                try:
                    archive_ids = await self._ctx.transaction(
                        record_archived_many, pairs, pin=bool(self._ctx.config.pinning.backends)
                    )
                except Exception as exc:
                    for *_, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (*_, future), archive_id in zip(group, archive_ids, strict=True):
                    if not future.done():
                        future.set_result(archive_id)
        finally:
            self._writer = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()


async def archive_many(
    ctx: JobContext,
    artifact_ids: Iterable[int],
    *,
    concurrency: int,
    on_bytes: OnBytes | None = None,
    on_outcome: Callable[[ArchiveOutcome], None] | None = None,
) -> list[ArchiveOutcome]:
    """Archive artifacts now, ``concurrency`` at a time; one outcome each, in input order.

    Failures are outcomes here rather than exceptions (each is also recorded on its row).
    Rows are read a page per transaction and ``archived`` rows written in shared ones.
    """
    if concurrency < 1:
        raise ConfigError("--concurrency", f"must be >= 1, got {concurrency}")
    ids = list(artifact_ids)
    outcomes: dict[int, ArchiveOutcome] = {}
    pending = iter(enumerate(ids))
    targets = _Targets(ctx, ids)
    recorder = _Recorder(ctx)

    async def one(index: int, artifact_id: int) -> ArchiveOutcome:
        try:
            target = await targets.get(index)
        except NotFound as exc:
            label = f"artifact {artifact_id}"
            return ArchiveOutcome(artifact_id, label, "", ArchiveStatus.FAILED, error=str(exc))
        try:
            return await _run(ctx, target, on_bytes, recorder.record)
        except Exception as exc:
            return ArchiveOutcome(
                artifact_id,
                target.purl,
                target.filename,
                ArchiveStatus.FAILED,
                error=_reason(exc),
                retryable=is_retryable(exc),
            )

    async def lane() -> None:
        for index, artifact_id in pending:
            outcome = await one(index, artifact_id)
            outcomes[index] = outcome
            if on_outcome is not None:
                on_outcome(outcome)

    try:
        await asyncio.gather(*(lane() for _ in range(min(concurrency, len(ids)))))
    finally:
        targets.close()
        recorder.close()
    return [outcomes[index] for index in range(len(ids))]
