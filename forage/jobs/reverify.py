"""Re-verification: read a random sample of archives back from the blockstore and check them.

The scheduler's ``reverify`` task (:func:`forage.jobs.tasks.enqueue_reverify`) queues a
``reverify`` job; its handler, :func:`reverify_job`, reads each sampled archive's blocks
back (:func:`verify_archive`: every block against its CID, the size, the digest verified at
archive time). A damaged archive loses its corrupt blocks, is marked failed and its
``archive`` job is queued to repair it (:func:`mark_damaged`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import Archive, ArchiveStatus
from forage.errors import PermanentJobError
from forage.jobs import queue as jobs
from forage.jobs.tasks import ARCHIVE

if TYPE_CHECKING:
    from multiformats import CID

    from forage.jobs.worker import JobContext
    from storage import Block, BlockSource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ArchiveSample:
    """What re-verification needs of one archive row."""

    id: int
    artifact_id: int
    cid: str
    size: int
    algorithm: str | None
    digest: str | None


def sample_archives(
    session: Session, count: int, *, rng: random.Random | None = None
) -> list[ArchiveSample]:
    """Up to ``count`` distinct archived archives picked at random.

    Each pick is an index probe (the first archived id at or after a random id), so the cost
    does not grow with the table, unlike ``ORDER BY random()``.
    """
    rng = rng or random.Random()
    archived = Archive.status == ArchiveStatus.ARCHIVED
    low, high = session.execute(
        sa.select(sa.func.min(Archive.id), sa.func.max(Archive.id)).where(archived)
    ).one()
    if low is None:
        return []
    columns = (
        Archive.id,
        Archive.artifact_id,
        Archive.cid,
        Archive.size,
        Archive.verified_algorithm,
        Archive.verified_digest,
    )
    total = session.execute(sa.select(sa.func.count()).where(archived)).scalar_one()
    if total <= count:
        rows = session.execute(sa.select(*columns).where(archived).order_by(Archive.id)).all()
    else:
        chosen: dict[int, Any] = {}
        for _ in range(count * 3):
            if len(chosen) >= count:
                break
            start = rng.randint(low, high)
            row = session.execute(
                sa.select(*columns)
                .where(archived, Archive.id >= start)
                .order_by(Archive.id)
                .limit(1)
            ).one_or_none()
            if row is not None:
                chosen[row.id] = row
        rows = sorted(chosen.values(), key=lambda row: row.id)
    return [ArchiveSample(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Damage:
    """What re-verification found wrong with an archive: the first ``problem``, and every
    block whose bytes no longer match its CID (to delete before the repair writes them
    again: a blockstore never overwrites a block it has)."""

    problem: str
    corrupt: tuple[CID, ...] = ()


class _Tolerant:
    """A block source that notes missing and corrupt blocks instead of stopping at the first,
    standing in an empty block for them (so a walk still reaches the rest of the DAG)."""

    def __init__(self, source: BlockSource) -> None:
        self.source = source
        self.corrupt: list[CID] = []

    def get(self, cid: CID) -> Block:
        from storage import Block, BlockNotFound, IntegrityError

        try:
            return self.source.get(cid)
        except IntegrityError:
            self.corrupt.append(cid)
        except BlockNotFound:
            pass
        return Block(cid, b"")


def verify_archive(source: BlockSource, archive: ArchiveSample) -> Damage | None:
    """Read an archive's file back from its blocks; return what is wrong, or ``None``.

    Every block is checked against its CID as it is read; the total size must be the
    archive's, and the bytes must hash to the digest verified at archive time (when it is a
    hash of the bytes: a whole-file digest such as Go's ``h1`` covers the unpacked module and
    was checked on download).
    """
    from indexers import FILE_CHECKS, DigestMismatch, DigestVerifier
    from storage import StorageError, read_file, walk_dag

    expected = {archive.algorithm: archive.digest} if archive.algorithm and archive.digest else {}
    expected = {k: v for k, v in expected.items() if k not in FILE_CHECKS}
    verifier = DigestVerifier(f"archive {archive.id}", expected, size=archive.size)
    try:
        for chunk in read_file(source, archive.cid):
            verifier.update(chunk)
        verifier.finish()
    except (StorageError, DigestMismatch) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    else:
        return None
    tolerant = _Tolerant(source)
    try:
        for _block in walk_dag(tolerant, archive.cid):
            pass
    except StorageError:
        log.debug("archive %d: DAG walk stopped early", archive.id, exc_info=True)
    return Damage(problem, tuple(tolerant.corrupt))


def mark_damaged(session: Session, archive: ArchiveSample, damage: Damage) -> int:
    """Record a failed re-verification and queue the artifact's archive job to repair it.

    The archive becomes ``failed`` with the reason and no CID, as a failed archive job
    leaves it (lookups stop offering the damaged bytes), and the archive job, finding no
    good archive, downloads and verifies the artifact again.
    """
    session.execute(
        sa.update(Archive)
        .where(Archive.id == archive.id, Archive.status == ArchiveStatus.ARCHIVED)
        .values(
            status=ArchiveStatus.FAILED,
            cid=None,
            size=None,
            verified_algorithm=None,
            verified_digest=None,
            error=f"re-verification of {archive.cid} failed: {damage.problem}",
        )
    )
    return jobs.enqueue(
        session,
        ARCHIVE,
        {"artifact_id": archive.artifact_id},
        dedup_key=f"{ARCHIVE}:{archive.artifact_id}",
    )


async def reverify_job(ctx: JobContext, job: jobs.Job) -> None:
    """Handler of ``reverify`` jobs ``{sample}``: check a random sample of archives against
    the blockstore; a damaged one loses its corrupt blocks, is marked failed and queued for
    repair."""
    store = ctx.blockstore
    if store is None:
        raise PermanentJobError("reverify needs a blockstore")
    count = int(job.payload.get("sample", ctx.config.schedule.reverify_sample))
    sample = await ctx.transaction(sample_archives, count)
    damaged = 0
    for archive in sample:
        damage = await asyncio.to_thread(verify_archive, store, archive)
        if damage is None:
            continue
        damaged += 1
        for cid in damage.corrupt:
            await asyncio.to_thread(store.delete, cid)
        repair = await ctx.transaction(mark_damaged, archive, damage)
        log.error(
            "archive %d (%s) failed re-verification: %s; %d corrupt blocks removed, "
            "repair queued as job %d",
            archive.id,
            archive.cid,
            damage.problem,
            len(damage.corrupt),
            repair,
            extra={"fields": {"archive": archive.id, "artifact": archive.artifact_id}},
        )
    log.info(
        "re-verified %d archives: %d damaged",
        len(sample),
        damaged,
        extra={"fields": {"checked": len(sample), "damaged": damaged}},
    )
