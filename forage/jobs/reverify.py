"""Re-verification: read a random sample of archives back from the blockstore and check them.

The scheduler's ``reverify`` task (:func:`forage.jobs.tasks.enqueue_reverify`) queues a
``reverify`` job; its handler, :func:`reverify_job`, reads each sampled archive's blocks
back (:func:`verify_archive`: every block against its CID, the size, the digest verified at
archive time). A damaged archive is first repaired from the network
(:mod:`forage.archive.repair`: its missing and corrupt blocks fetched, verified, from the
pinning backends and trustless gateways) and verified again; it stays archived when that
works. Otherwise it loses its corrupt blocks, is marked failed and its ``archive`` job is
queued to download it again from its registry (:func:`mark_damaged`).
:func:`check_archive` is that whole step for one archive; ``forage archive --repair`` runs it
for the archives an operator names (:func:`archives_named`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.archive.repair import RepairReport, TolerantSource, repair_dag
from forage.archive.sources import RepairSource, open_repair_sources
from forage.db.models import Archive, ArchiveStatus
from forage.errors import InvalidKey, NotFound, PermanentJobError
from forage.jobs import queue as jobs
from forage.jobs.tasks import ARCHIVE

if TYPE_CHECKING:
    from multiformats import CID

    from forage.jobs.worker import JobContext
    from storage import BlockSource, Blockstore

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


#: The archive columns an :class:`ArchiveSample` is made of, in its field order.
_COLUMNS = (
    Archive.id,
    Archive.artifact_id,
    Archive.cid,
    Archive.size,
    Archive.verified_algorithm,
    Archive.verified_digest,
)


def sample_archives(
    session: Session, count: int, *, rng: random.Random | None = None
) -> list[ArchiveSample]:
    """Up to ``count`` distinct archived archives picked at random.

    Each pick is an index probe (the first archived id at or after a random id), so the cost
    does not grow with the table, unlike ``ORDER BY random()``.
    """
    rng = rng or random.Random()
    archived = Archive.status == ArchiveStatus.ARCHIVED
    # One aggregate a statement, and a count that stops past ``count``: each an index probe
    # (``archives (status, id)``), where both together and a full count read every archive.
    low = session.execute(sa.select(sa.func.min(Archive.id)).where(archived)).scalar_one()
    if low is None:
        return []
    high = session.execute(sa.select(sa.func.max(Archive.id)).where(archived)).scalar_one()
    some = sa.select(Archive.id).where(archived).order_by(Archive.id).limit(count + 1).subquery()
    total = session.execute(sa.select(sa.func.count()).select_from(some)).scalar_one()
    if total <= count:
        rows = session.execute(sa.select(*_COLUMNS).where(archived).order_by(Archive.id)).all()
    else:
        chosen: dict[int, Any] = {}
        for _ in range(count * 3):
            if len(chosen) >= count:
                break
            start = rng.randint(low, high)
            row = session.execute(
                sa.select(*_COLUMNS)
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
    tolerant = TolerantSource(source)
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


def archives_named(session: Session, name: str) -> list[ArchiveSample]:
    """The archived archives ``name`` names: a CID, or a purl or Forage key (every version's
    archives when it has none).

    Raises ``InvalidKey`` for a malformed key and ``NotFound`` when nothing archived matches.
    """
    from forage.archive.records import artifact_ids_for_key
    from storage import InvalidCID, parse_cid

    archived = Archive.status == ArchiveStatus.ARCHIVED
    if ":" in name:
        ids = artifact_ids_for_key(session, name)
        query = sa.select(*_COLUMNS).where(archived, Archive.artifact_id.in_(ids))
    else:
        try:
            cid = parse_cid(name)
        except InvalidCID as exc:
            raise InvalidKey(name, "neither a key (pkg:TYPE/NAME@VERSION) nor a CID") from exc
        if cid.version == 0:  # archives are named by CIDv1, the same DAG as its Qm... CIDv0
            cid = parse_cid(cid.set(version=1))
        query = sa.select(*_COLUMNS).where(archived, Archive.cid == str(cid))
    rows = session.execute(query.order_by(Archive.id)).all()
    if not rows:
        raise NotFound(f"no archived copy of {name} to check")
    return [ArchiveSample(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one archive checked: intact (no ``damage``), repaired from the network
    (``repair`` fetched blocks and ``requeued`` is ``None``), or queued for a fresh download
    from its registry as job ``requeued``."""

    archive: ArchiveSample
    damage: Damage | None = None
    repair: RepairReport | None = None
    requeued: int | None = None

    @property
    def repaired(self) -> bool:
        return self.damage is not None and self.requeued is None


async def check_archive(
    ctx: JobContext, store: Blockstore, archive: ArchiveSample, sources: list[RepairSource]
) -> Outcome:
    """Verify one archive; repair a damaged one from ``sources`` and verify it again; when
    that fails, mark it damaged and queue its download from the registry."""
    damage = await asyncio.to_thread(verify_archive, store, archive)
    if damage is None:
        return Outcome(archive)
    fields = {"archive": archive.id, "artifact": archive.artifact_id}
    report = None
    if sources:
        report = await repair_dag(
            store, archive.cid, sources, size=archive.size, config=ctx.config.repair
        )
        if report.fetched and await asyncio.to_thread(verify_archive, store, archive) is None:
            log.warning(
                "archive %d (%s) failed re-verification (%s) and was restored from the network: %s",
                archive.id,
                archive.cid,
                damage.problem,
                report.describe(),
                extra={"fields": {**fields, "repaired_from": _by_source(report)}},
            )
            return Outcome(archive, damage, report)
    if report is None:  # (a repair deleted the corrupt blocks itself, then stored good ones)
        for cid in damage.corrupt:
            await asyncio.to_thread(store.delete, cid)
    requeued = await ctx.transaction(mark_damaged, archive, damage)
    tried = f"; network repair: {report.shortfall()}" if report is not None else ""
    log.error(
        "archive %d (%s) failed re-verification: %s; %d corrupt blocks removed%s; "
        "download queued as job %d",
        archive.id,
        archive.cid,
        damage.problem,
        len(damage.corrupt),
        tried,
        requeued,
        extra={"fields": fields},
    )
    return Outcome(archive, damage, report, requeued)


def _by_source(report: RepairReport) -> dict[str, dict[str, int]]:
    return {
        label: {"blocks": supplied.blocks, "bytes": supplied.bytes}
        for label, supplied in report.supplied.items()
        if supplied.blocks
    }


async def reverify_job(ctx: JobContext, job: jobs.Job) -> None:
    """Handler of ``reverify`` jobs ``{sample}``: check a random sample of archives against
    the blockstore; a damaged one is repaired from the network, or else loses its corrupt
    blocks, is marked failed and queued for a fresh download."""
    store = ctx.blockstore
    if store is None:
        raise PermanentJobError("reverify needs a blockstore")
    count = int(job.payload.get("sample", ctx.config.schedule.reverify_sample))
    sample = await ctx.transaction(sample_archives, count)
    damaged = repaired = 0
    supplied: dict[str, dict[str, int]] = {}
    async with open_repair_sources(ctx.config) as sources:
        for archive in sample:
            outcome = await check_archive(ctx, store, archive, sources)
            damaged += outcome.damage is not None
            repaired += outcome.repaired
            if outcome.repaired and outcome.repair is not None:
                for label, counts in _by_source(outcome.repair).items():
                    total = supplied.setdefault(label, {"blocks": 0, "bytes": 0})
                    total["blocks"] += counts["blocks"]
                    total["bytes"] += counts["bytes"]
    log.info(
        "re-verified %d archives: %d damaged, %d restored from the network, %d queued for "
        "download from their registries",
        len(sample),
        damaged,
        repaired,
        damaged - repaired,
        extra={
            "fields": {
                "checked": len(sample),
                "damaged": damaged,
                "repaired": repaired,
                "requeued": damaged - repaired,
                "repaired_from": supplied,
            }
        },
    )
