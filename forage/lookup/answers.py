"""Lookup answers rendered ahead of lookups, so that a lookup of an indexed version reads one
stored answer instead of computing it.

A lookup stores the answers it had to compute (:func:`forage.lookup.resolve.resolve` with
``rendered``), so without this module the first lookup of a version after it was indexed or
changed pays for the full read: on the benchmark's index of 1,000,000 files, 1,000 such keys
take about ten times as long as 1,000 stored ones (README, "Benchmarks"). The
``render_answers`` job pays that cost off the request path. It reads, :data:`CHUNK` at a time
in version id order on a read-only session, the versions whose answer was retired by a
change or by their insert (the triggers of migration 0003), is past its ``valid_until``, or
was stored before answers had a purl (migration 0004), from indexes of those rows only (so a
run with nothing to do reads next to nothing), computes them with the lookup's own code and
stores them where nothing changed in between (:func:`forage.lookup.resolve.store_answers`).

The scheduler queues the job every ``schedule.render_answers`` seconds (task
``render_answers``); a run stops after ``schedule.render_batch`` answers and the next run
goes on. ``forage db render-answers`` renders every stale answer at once. Both refresh the
planner's statistics after storing :data:`forage.db.statistics.BULK` answers or more, since
those taken while answers had no purl make lookups scan (:mod:`forage.db.statistics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from forage.db import statistics
from forage.db.engine import utcnow
from forage.db.models import Package, Version, VersionAnswer
from forage.lookup.keys import Key
from forage.lookup.normalize import canonical_purl
from forage.lookup.resolve import AnswerFill, resolve, store_answers
from forage.lookup.sessions import read_only_sessionmaker

if TYPE_CHECKING:
    from forage.jobs import queue as jobs
    from forage.jobs.worker import JobContext

log = logging.getLogger(__name__)

#: The job kind (and the scheduler task's name).
RENDER_ANSWERS = "render_answers"
#: Versions read, computed and stored together: one lookup's worth.
CHUNK = 1000


@dataclass(frozen=True, slots=True)
class StaleChunk:
    """Up to :data:`CHUNK` versions without a current answer, and the last version id read."""

    purls: tuple[str, ...]
    last_id: int


def stale_ids(*, after: int, now: datetime, limit: int | None = None) -> sa.CompoundSelect:
    """Ids after ``after`` of the versions whose answer is retired or has no purl (the rows
    of a partial index) or is past ``valid_until`` (an index too). With ``limit``, the retired
    part stops at its first ``limit`` ids, so that a chunk reads that many, where the union
    of every retired id (millions after a bulk import) was built for each chunk; expired
    answers are few (deals ending), read through their index in any order."""
    answer = VersionAnswer
    retired = sa.select(answer.version_id).where(
        sa.or_(answer.body.is_(None), answer.purl.is_(None)), answer.version_id > after
    )
    if limit is not None:
        first = retired.order_by(answer.version_id).limit(limit).subquery()
        retired = sa.select(first.c.version_id)
    expired = sa.select(answer.version_id).where(
        answer.valid_until <= now, answer.version_id > after
    )
    return sa.union(retired, expired)


def stale_versions(
    session: Session, *, after: int, now: datetime, limit: int = CHUNK
) -> StaleChunk:
    """The next ``limit`` versions after id ``after`` whose answer a lookup would have to
    compute (:func:`stale_ids`; every version has an answer row from its insert on,
    migration 0004)."""
    stale = stale_ids(after=after, now=now, limit=limit).subquery("stale")
    rows = session.execute(
        sa.select(Version.id, Package.ecosystem, Package.name, Version.number)
        .select_from(stale)
        .join(Version, Version.id == stale.c.version_id)
        .join(Package, Package.id == Version.package_id)
        .order_by(Version.id)
        .limit(limit)
    ).all()
    purls = tuple(canonical_purl(Key(row.ecosystem, row.name, row.number)) for row in rows)
    return StaleChunk(purls, rows[-1].id if rows else after)


def stale_answers(write: sessionmaker[Session]) -> Iterator[tuple[AnswerFill, ...]]:
    """The answers of the stale versions, a non-empty chunk at a time in version id order,
    each computed on a read-only session at the time it is read (to store with
    :func:`~forage.lookup.resolve.store_answers`). Close it to release its reader."""
    read, engine = read_only_sessionmaker(write)
    after = 0
    try:
        while True:
            now = utcnow()
            with read() as session, session.begin():
                chunk = stale_versions(session, after=after, now=now)
                fills = resolve(session, chunk.purls, now=now, rendered=True).fills
            if fills:
                yield fills
            if len(chunk.purls) < CHUNK:
                return
            after = chunk.last_id
    finally:
        if engine is not None:
            engine.dispose()


def render_stale(
    write: sessionmaker[Session],
    *,
    limit: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Render stale answers until none is left (or about ``limit`` were), calling
    ``progress(count)`` after each chunk stored; returns how many were stored."""
    stored = 0
    with contextlib.closing(stale_answers(write)) as chunks:
        for fills in chunks:
            with write.begin() as session:
                count = store_answers(session, fills)
            stored += count
            if progress is not None:
                progress(count)
            if limit is not None and stored >= limit:
                break
    return stored


async def render_answers_job(ctx: JobContext, job: jobs.Job) -> None:
    """Handler of ``render_answers`` jobs: render up to ``schedule.render_batch`` stale
    answers, computing a chunk per thread hop and storing it in the worker's transaction."""
    limit = int(job.payload.get("limit", ctx.config.schedule.render_batch))
    stored, fills = 0, None
    with contextlib.closing(stale_answers(ctx.sessionmaker)) as chunks:
        while stored < limit and (fills := await asyncio.to_thread(next, chunks, None)):
            stored += await ctx.transaction(store_answers, fills)
    log.info(
        "stored %d lookup answers%s",
        stored,
        "" if fills is None else "; more next run",
        extra={"fields": {"stored": stored, "complete": fills is None}},
    )
    if stored >= statistics.BULK:
        # Many answers gained purls: statistics taken before would make lookups scan.
        refreshed = await ctx.transaction(statistics.refresh_session)
        log.info("statistics refreshed", extra={"fields": refreshed.summary()})
