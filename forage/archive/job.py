"""Archive jobs: download an artifact once, verify it, content-address it, keep its blocks.

One streaming pass per artifact (DESIGN.md, "The way data flows"; issue 4):

1. The artifact's row, upstream digests and registry are loaded in one transaction
   (:mod:`forage.archive.targets`); an artifact already archived is left alone (jobs are
   idempotent).
2. The artifact is downloaded under its registry's host policy, verified against every
   upstream digest and imported into blocks staged in a blockstore batch, in one pass in flat
   memory (:func:`~forage.archive.stream.fetch_and_store`).
3. A digest mismatch discards the staged blocks and records a ``failed`` archive with the
   reason and no CID; the job is dead at once.
4. Otherwise the batch commits, then :func:`~forage.archive.records.record_archived` writes
   the ``archived`` row in one transaction: the one place where work that follows a
   successful archive is queued. :func:`~forage.archive.runner.archive_many`
   (``forage archive``) archives many artifacts at a time in shared transactions.

Crash safety: blocks become visible only after every digest matched, and the row only after
the blocks; a kill in between leaves verified blocks and no row, and the job's next run
finishes it (blocks already stored are not written twice). Every failed attempt records a
``failed`` row with its reason; transient ones (network, 5xx, full disk) raise so the queue
retries the job, permanent ones (digest or size mismatch, host refused, 4xx, bad zip) end it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from forage.archive.records import record_archived, record_failed
from forage.archive.stream import OnBytes, fetch_and_store
from forage.archive.targets import ArchiveOutcome, ArchiveResult, ArchiveTarget, load_target
from forage.db.models import ArchiveStatus
from forage.errors import NotFound, PermanentJobError
from forage.jobs.queue import Job, describe_error, is_permanent
from forage.jobs.worker import JobContext
from indexers import DigestMismatch

log = logging.getLogger(__name__)


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
