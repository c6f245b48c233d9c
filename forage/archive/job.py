"""Archive jobs: download an artifact once, verify it, content-address it, keep its blocks.

One streaming pass per artifact (DESIGN.md, "The way data flows"; issue 4):

1. The artifact's row, upstream digests and registry are loaded in one transaction
   (:mod:`forage.archive.targets`); an artifact already archived is left alone (jobs are
   idempotent).
2. The artifact is downloaded under its registry's host policy, verified against every
   upstream digest and imported into blocks staged in a blockstore batch, in one pass in flat
   memory (:func:`~forage.archive.stream.fetch_and_store`).
3. A digest mismatch (or an unreadable archive) discards the staged blocks and records a
   ``failed`` archive with the reason and no CID. The bytes may be right again later (a CDN
   served wrong ones), so the job is retried on a long, growing backoff
   (``jobs.mismatch_backoff``) until ``jobs.mismatch_attempts`` attempts failed
   verification, then it is dead; the row stays ``failed`` with its reason in between.
4. Otherwise the batch commits, then :func:`~forage.archive.records.record_archived` writes
   the ``archived`` row in one transaction: the one place where work that follows a
   successful archive is queued. :func:`~forage.archive.runner.archive_many`
   (``forage archive``) archives many artifacts at a time in shared transactions.

Crash safety: blocks become visible only after every digest matched, and the row only after
the blocks; a kill in between leaves verified blocks and no row, and the job's next run
finishes it (blocks already stored are not written twice). Every failed attempt records a
``failed`` row with its reason; transient ones (network, 5xx, full disk) raise so the queue
retries the job, bad bytes (digest or size mismatch, bad zip) as above, permanent ones (host
refused, 4xx) end it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from forage.archive.records import record_archived, record_failed
from forage.archive.stream import OnBytes, fetch_and_store
from forage.archive.targets import ArchiveOutcome, ArchiveResult, ArchiveTarget, load_target
from forage.config import JobsConfig
from forage.db.models import ArchiveStatus
from forage.errors import JobError, NotFound, PermanentJobError, RetryLater
from forage.jobs.queue import Job, describe_error, is_permanent
from forage.jobs.worker import JobContext
from indexers import DigestMismatch, InvalidArchive

log = logging.getLogger(__name__)

#: Errors meaning the bytes served failed verification: retried on the long backoff.
BAD_BYTES: tuple[type[Exception], ...] = (DigestMismatch, InvalidArchive)


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt may succeed (for an error :func:`archive_artifact` raised:
    bad bytes are ``RetryLater`` until their attempts are used up)."""
    return not is_permanent(error)


def bad_bytes_error(jobs: JobsConfig, failures: int, reason: str) -> JobError:
    """What to raise after the ``failures``-th attempt whose bytes failed verification:
    ``RetryLater`` with the n-th backoff, or ``PermanentJobError`` once they are used up."""
    limit = jobs.mismatch_attempts
    if failures >= limit:
        return PermanentJobError(f"{reason} (verification failed {failures} of {limit} times)")
    delay = jobs.mismatch_backoff * 2 ** (max(failures, 1) - 1)
    return RetryLater(
        f"{reason} (verification failed {failures} of {limit} times; next try in {delay:.0f} s)",
        retry_after=delay,
    )


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
        bad = isinstance(exc, BAD_BYTES)
        reason = describe_error(exc)
        failures = await ctx.transaction(record_failed, target.artifact_id, reason, mismatch=bad)
        raised = bad_bytes_error(ctx.config.jobs, failures, reason) if bad else exc
        log.warning(
            "archive of %s %s failed (%s): %s",
            target.purl,
            target.filename,
            "will retry" if is_retryable(raised) else "permanent",
            raised,
        )
        if raised is not exc:
            raise raised from exc
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
    retries them), bad bytes as ``RetryLater`` (the long backoff) or, once
    ``jobs.mismatch_attempts`` attempts failed verification, ``PermanentJobError``.
    ``NotFound`` if the row is gone.
    """
    return await _run(ctx, await _load(ctx, artifact_id), on_bytes)


async def archive_job(ctx: JobContext, job: Job) -> None:
    """Handler of ``archive`` jobs: payload ``{"artifact_id": N}``."""
    artifact_id = int(job.payload["artifact_id"])
    try:
        await archive_artifact(ctx, artifact_id)
    except NotFound:
        log.info("job %d: artifact %d is gone; nothing to archive", job.id, artifact_id)
