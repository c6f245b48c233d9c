"""Lookup answers rendered ahead of lookups, so that a lookup of an indexed version reads one
stored answer instead of computing it.

A lookup stores the answers it had to compute (:func:`forage.lookup.resolve` with
``rendered``), so without this module the first lookup of a version after it was indexed or
changed pays for the full read: on the benchmark's index of 1,000,000 files, 1,000 such keys
take about ten times as long as 1,000 stored ones (README, "Benchmarks"). The
``render_answers`` job pays that cost off the request path. It walks the versions in id order,
:data:`CHUNK` at a time on a read-only session, picks those whose answer is missing, retired
by a change (the triggers of migration 0003), past its ``valid_until``, or stored before
answers had a purl (migration 0004), computes them with the lookup's own code and stores
them where nothing changed in between (:func:`forage.lookup.store_answers`).

The scheduler queues the job every ``schedule.render_answers`` seconds (task
``render_answers``); a run stops after ``schedule.render_batch`` answers and the next run
goes on. ``forage db render-answers`` renders every stale answer at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from forage.db import utcnow
from forage.keys import Key
from forage.lookup import (
    AnswerFill,
    canonical_purl,
    read_only_sessionmaker,
    resolve,
    store_answers,
)
from forage.models import Package, Version, VersionAnswer

if TYPE_CHECKING:
    from forage import jobs
    from forage.worker import JobContext

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


def stale_versions(session: Session, *, after: int, now: datetime) -> StaleChunk:
    """The next versions after id ``after`` whose answer a lookup would have to compute."""
    answer = VersionAnswer
    stale = sa.or_(
        answer.version_id.is_(None),
        answer.body.is_(None),
        answer.purl.is_(None),
        answer.valid_until <= now,
    )
    rows = session.execute(
        sa.select(Version.id, Package.ecosystem, Package.name, Version.number)
        .join(Package, Package.id == Version.package_id)
        .outerjoin(answer, answer.version_id == Version.id)
        .where(Version.id > after, stale)
        .order_by(Version.id)
        .limit(CHUNK)
    ).all()
    purls = tuple(canonical_purl(Key(row.ecosystem, row.name, row.number)) for row in rows)
    return StaleChunk(purls, rows[-1].id if rows else after)


def compute_chunk(
    read: sessionmaker[Session], *, after: int, now: datetime
) -> tuple[tuple[AnswerFill, ...], int, bool]:
    """The answers of the next chunk of stale versions after id ``after`` (computed on a
    read-only session, to store with :func:`~forage.lookup.store_answers`), the last version
    id read, and whether that was the last chunk."""
    with read() as session, session.begin():
        chunk = stale_versions(session, after=after, now=now)
        fills = resolve(session, chunk.purls, now=now, rendered=True).fills if chunk.purls else ()
    return fills, chunk.last_id, len(chunk.purls) < CHUNK


def render_stale(
    write: sessionmaker[Session],
    *,
    limit: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Render stale answers until none is left (or about ``limit`` were), calling
    ``progress(count)`` after each chunk stored; returns how many were stored."""
    read, engine = read_only_sessionmaker(write)
    stored, after, done = 0, 0, False
    try:
        while not done and (limit is None or stored < limit):
            fills, after, done = compute_chunk(read, after=after, now=utcnow())
            if fills:
                with write.begin() as session:
                    count = store_answers(session, fills)
                stored += count
                if progress is not None:
                    progress(count)
    finally:
        if engine is not None:
            engine.dispose()
    return stored


async def render_answers_job(ctx: JobContext, job: jobs.Job) -> None:
    """Handler of ``render_answers`` jobs: render up to ``schedule.render_batch`` stale
    answers, computing a chunk per thread hop and storing it in the worker's transaction."""
    limit = int(job.payload.get("limit", ctx.config.schedule.render_batch))
    read, engine = read_only_sessionmaker(ctx.sessionmaker)
    stored, after, done = 0, 0, False
    try:
        while not done and stored < limit:
            fills, after, done = await asyncio.to_thread(
                compute_chunk, read, after=after, now=utcnow()
            )
            if fills:
                stored += await ctx.transaction(store_answers, fills)
    finally:
        if engine is not None:
            engine.dispose()
    log.info(
        "stored %d lookup answers%s",
        stored,
        "" if done else "; more next run",
        extra={"fields": {"stored": stored, "complete": done}},
    )
