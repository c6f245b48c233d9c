"""Job handlers for worker tests, loaded by ``forage worker --handlers
tests.forage.job_handlers:handlers`` in subprocesses (and imported by in-process tests).

Each run writes a row to ``job_runs`` (its own table, created by the test from
:data:`metadata`): job id, attempt, process id and event, so a test can count executions
across processes and tell which worker ran what.

Kinds:
- ``record``: record ``finish``, after sleeping ``payload["sleep"]`` seconds (default 0);
- ``slow``: record ``start``, sleep ``payload["sleep"]`` seconds, record ``finish``;
- ``hang_first``: on attempt 1 record ``start`` and hang (until killed); later attempts
  record ``finish`` at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.jobs.queue import Job
from forage.jobs.worker import Handler, JobContext

metadata = sa.MetaData()
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.BigInteger, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
)


def _insert(session: Session, job: Job, event: str) -> None:
    session.execute(
        sa.insert(job_runs).values(job_id=job.id, attempt=job.attempt, pid=os.getpid(), event=event)
    )


async def record(ctx: JobContext, job: Job) -> None:
    await asyncio.sleep(float(job.payload.get("sleep", 0)))
    await ctx.transaction(_insert, job, "finish")


async def slow(ctx: JobContext, job: Job) -> None:
    await ctx.transaction(_insert, job, "start")
    await asyncio.sleep(float(job.payload.get("sleep", 1)))
    await ctx.transaction(_insert, job, "finish")


async def hang_first(ctx: JobContext, job: Job) -> None:
    if job.attempt == 1:
        await ctx.transaction(_insert, job, "start")
        await asyncio.sleep(3600)
    await ctx.transaction(_insert, job, "finish")


def handlers() -> Mapping[str, Handler]:
    return {"record": record, "slow": slow, "hang_first": hang_first}
