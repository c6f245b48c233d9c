"""``forage archive``'s batch runner: archive many artifacts now, some at a time.

:func:`archive_many` runs ``concurrency`` lanes, each archiving one artifact at a time as an
archive job does (:mod:`forage.archive.job`). It loads rows a page per transaction
(``LOAD_PAGE``) and writes the rows of archives that finish together in one
(:func:`~forage.archive.records.record_archived_many`: group commit, as the blockstore does
for its syncs), so the per-artifact cost stays small. Failures are outcomes here rather than
exceptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

from forage.archive.job import BAD_BYTES, _run, is_retryable
from forage.archive.records import record_archived_many
from forage.archive.stream import OnBytes
from forage.archive.targets import ArchiveOutcome, ArchiveResult, ArchiveTarget, load_targets
from forage.db.models import ArchiveStatus
from forage.errors import ConfigError, JobError, NotFound
from forage.jobs.queue import describe_error
from forage.jobs.worker import JobContext

#: Artifacts whose rows ``archive_many`` reads in one transaction.
LOAD_PAGE = 100


def _reason(error: BaseException) -> str:
    """The failure as recorded on the archive row: bad bytes by their own error."""
    cause = error.__cause__
    if isinstance(error, JobError) and isinstance(cause, BAD_BYTES):
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
