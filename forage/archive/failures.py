"""Failed archives with their reasons: what ``forage archive --failed``,
``GET /api/v1/archives/failed`` and the ``/failed`` page list.

A ``failed`` archive row keeps the last attempt's reason (``Type: message``, as
:func:`~forage.jobs.queue.describe_error` writes it) and how many attempts since the last
success had bytes that failed verification (:mod:`forage.archive.job`). Each is listed with
its release and file and the state of its latest ``archive`` job: queued with the time of its
next attempt, or dead once retrying stopped. Newest failures first, a page at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import (
    Archive,
    ArchiveStatus,
    Artifact,
    JobRecord,
    JobState,
    Package,
    Version,
)
from forage.index.ingest import ARCHIVE
from forage.lookup.keys import Key
from forage.lookup.query import _id_set
from forage.lookup.views import _iso

#: Error types meaning the bytes served failed verification (:data:`~forage.archive.job.BAD_BYTES`).
BAD_BYTES_ERRORS = frozenset({"DigestMismatch", "InvalidArchive"})
#: The most rows one page may ask for.
MAX_PER_PAGE = 500
_ERROR_TYPE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*): ")


@dataclass(frozen=True, slots=True)
class FailedArchive:
    """One failed archive: the file, why its last attempt failed, and what happens next."""

    artifact_id: int
    ecosystem: str
    name: str
    version: str
    filename: str
    url: str
    error: str
    mismatches: int
    failed_at: datetime
    job_id: int | None = None
    job_state: str | None = None
    job_attempts: int | None = None
    next_attempt_at: datetime | None = None

    @property
    def purl(self) -> str:
        return Key(self.ecosystem, self.name, self.version).purl()

    @property
    def error_type(self) -> str | None:
        """The exception type the reason names (``DigestMismatch``...), if it names one."""
        match = _ERROR_TYPE.match(self.error)
        return match.group(1) if match else None

    @property
    def bad_bytes(self) -> bool:
        """Whether the last attempt's bytes failed verification (a digest mismatch...)."""
        return self.error_type in BAD_BYTES_ERRORS

    def to_json(self) -> dict[str, Any]:
        job = None
        if self.job_id is not None:
            job = {
                "id": self.job_id,
                "state": self.job_state,
                "attempts": self.job_attempts,
                "next_attempt_at": _iso(self.next_attempt_at),
            }
        return {
            "artifact_id": self.artifact_id,
            "purl": self.purl,
            "ecosystem": self.ecosystem,
            "name": self.name,
            "version": self.version,
            "filename": self.filename,
            "url": self.url,
            "error": self.error,
            "error_type": self.error_type,
            "bad_bytes": self.bad_bytes,
            "mismatches": self.mismatches,
            "failed_at": _iso(self.failed_at),
            "job": job,
        }


@dataclass(frozen=True, slots=True)
class FailedPage:
    """One page of failed archives, newest failure first, and how many there are in all."""

    total: int
    page: int
    per_page: int
    archives: tuple[FailedArchive, ...]

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "page": self.page,
            "per_page": self.per_page,
            "pages": self.pages,
            "archives": [failure.to_json() for failure in self.archives],
        }


def failed_archives(session: Session, *, page: int = 1, per_page: int = 50) -> FailedPage:
    """Page ``page`` (from 1) of the failed archives, ``per_page`` (1 to
    :data:`MAX_PER_PAGE`) at a time; ``ValueError`` for numbers out of range."""
    if page < 1:
        raise ValueError(f"page must be at least 1, got {page}")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"per_page must be from 1 to {MAX_PER_PAGE}, got {per_page}")
    failed = Archive.status == ArchiveStatus.FAILED
    total = session.execute(sa.select(sa.func.count()).select_from(Archive).where(failed))
    rows = session.execute(
        sa.select(
            Archive.artifact_id,
            Package.ecosystem,
            Package.name,
            Version.number,
            Artifact.filename,
            Artifact.url,
            Archive.error,
            Archive.mismatches,
            Archive.updated_at,
        )
        .join(Artifact, Artifact.id == Archive.artifact_id)
        .join(Version, Version.id == Artifact.version_id)
        .join(Package, Package.id == Version.package_id)
        .where(failed)
        .order_by(Archive.updated_at.desc(), Archive.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    jobs = _latest_jobs(session, [row.artifact_id for row in rows])
    archives = []
    for row in rows:
        job = jobs.get(row.artifact_id)
        next_at = job.run_after if job is not None and job.state == JobState.QUEUED else None
        archives.append(
            FailedArchive(
                artifact_id=row.artifact_id,
                ecosystem=row.ecosystem,
                name=row.name,
                version=row.number,
                filename=row.filename,
                url=row.url,
                error=row.error or "",
                mismatches=row.mismatches,
                failed_at=row.updated_at,
                job_id=job.id if job is not None else None,
                job_state=JobState(job.state).value if job is not None else None,
                job_attempts=job.attempts if job is not None else None,
                next_attempt_at=next_at,
            )
        )
    return FailedPage(int(total.scalar_one()), page, per_page, tuple(archives))


def _latest_jobs(session: Session, artifact_ids: list[int]) -> dict[int, Any]:
    """Each artifact's ``archive`` job that is not done (its dedup key names the artifact):
    the queued one, else the newest running or dead one. Queued jobs are read through the
    queue's partial index on their dedup key, the others through the state index."""
    if not artifact_ids:
        return {}
    keys = {f"{ARCHIVE}:{artifact_id}": artifact_id for artifact_id in artifact_ids}
    columns = (JobRecord.id, JobRecord.dedup_key, JobRecord.state, JobRecord.attempts)
    in_keys = _id_set(session, JobRecord.dedup_key, list(keys), text=True)
    found: dict[int, Any] = {}
    for row in session.execute(
        sa.select(*columns, JobRecord.run_after)
        .where(JobRecord.state.in_([JobState.RUNNING, JobState.DEAD]), in_keys)
        .where(JobRecord.kind == ARCHIVE)
        .order_by(JobRecord.id)
    ):
        found[keys[row.dedup_key]] = row
    for row in session.execute(
        sa.select(*columns, JobRecord.run_after).where(JobRecord.state == JobState.QUEUED, in_keys)
    ):
        found[keys[row.dedup_key]] = row
    return found
