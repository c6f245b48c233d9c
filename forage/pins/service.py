"""Pin archives on the configured pinning backends, and keep their pin rows true.

The backends are ``storage.pinning``'s clients for Kubo RPC, IPFS Cluster and the IPFS Pinning
Service API (https://ipfs.github.io/pinning-services-api-spec/), one per
``[pinning.backends.<name>]`` table (:class:`~forage.config.PinBackendConfig`). Two job kinds:

- ``pin`` ``{"archive_id": A}`` (queued by :func:`enqueue_pins` in the transaction that marks
  the archive archived) creates a ``pins`` row per configured backend and asks each backend to
  pin the archive's CID; ``{"archive_id": A, "backend": B}`` does it for one backend (a
  re-pin). Kubo and Cluster receive the archive's blocks as a CARv1 streamed from the
  blockstore in constant memory; a Pinning Service fetches them from its ``origins``. The
  backend's request id is recorded with the state it reports. A job that runs again (after a
  kill) requests only rows that have none recorded: a request is repeated only when the kill
  fell between the backend's answer and the commit that records it.
- ``pin_check`` asks every backend about its unfinished pins (and about pinned ones not
  confirmed for ``recheck_interval``) ``batch_size`` pins per status call: the client turns
  that into as few requests as its API allows (the Pinning Service API lists up to 10 CIDs
  per ``GET /pins``, Kubo's ``pin/ls`` and Cluster's ``GET /pins?cids=`` take many). It then
  queues pins for archives that have no row on some backend yet (a backend added to the
  configuration), and schedules itself again: ``check_interval`` later while anything is in
  flight, else when the oldest confirmation falls due.

A pin that fails (the backend reports ``failed``, no longer holds it, or refused it at once)
is marked ``failed`` with the backend's reason and re-queued as a one-backend ``pin`` job, at
most ``max_repins`` times, ``check_interval * 2**(n-1)`` seconds after its n-th failure. The
count is the number of such jobs in the queue's history (their ``dedup_key`` is
``pin:<archive>:<backend>``), so pruning finished jobs starts it again. Errors: a backend that
is unavailable (``BackendUnavailable``) leaves the row queued with the error noted and the job
retried by the queue (after the server's ``Retry-After`` when it sent one; on the job's last
attempt the row is marked failed); a refusal (``BackendRejected``: bad token, 4xx) or an
archive whose blocks are gone from the blockstore marks the row failed and the job dead.
Tokens reach the clients only; their messages are scrubbed of them, and so is everything
recorded here.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from forage.archive.blocks import open_blockstore
from forage.config import Config, PinBackendConfig, PinningConfig
from forage.db.engine import utcnow
from forage.db.models import Archive, ArchiveStatus, Artifact, JobRecord, Pin, PinStatus
from forage.errors import PermanentJobError
from forage.jobs import queue as jobs
from forage.jobs.queue import Job
from forage.jobs.worker import USER_AGENT, JobContext
from storage import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    BlockFormatError,
    BlockNotFound,
    BlockSource,
    BlockstoreError,
    CarWriter,
    ClusterPinning,
    InvalidCID,
    KuboPinning,
    PinningBackend,
    PinningService,
    PinRef,
    PinRequest,
    parse_cid,
    walk_dag,
)
from storage import IntegrityError as BlockIntegrityError

__all__ = [
    "PIN",
    "PIN_CHECK",
    "BackendCheck",
    "FailedPin",
    "car_stream",
    "check_pins",
    "enqueue_pins",
    "failed_pins",
    "open_backends",
    "pin_archive",
    "pin_check_job",
    "pin_counts",
    "pin_job",
    "schedule_check",
]

log = logging.getLogger(__name__)

PIN = "pin"
PIN_CHECK = "pin_check"
#: Backend types that receive the archive's blocks as a CAR with the pin request.
UPLOADING_TYPES = frozenset({"kubo", "cluster"})
UNFINISHED = (PinStatus.QUEUED, PinStatus.PINNING)
#: The reason recorded when a backend no longer holds a pin it had accepted.
GONE = "the backend no longer holds this pin"


def _pin_key(archive_id: int, backend: str | None = None) -> str:
    return f"pin:{archive_id}" if backend is None else f"pin:{archive_id}:{backend}"


def enqueue_pins(session: Session, archive_id: int, *, now: datetime | None = None) -> int:
    """Queue the pinning of a freshly archived archive on every configured backend.

    Call it in the transaction that marks the archive ``archived``; it needs no configuration
    (the job reads the backends when it runs). Returns the job's id.
    """
    return jobs.enqueue(
        session, PIN, {"archive_id": archive_id}, dedup_key=_pin_key(archive_id), now=now
    )


def schedule_check(session: Session, *, delay: float = 0.0, now: datetime | None = None) -> int:
    """Queue the batched status check ``delay`` seconds from now (or sooner, if one is
    already queued for earlier: there is only ever one waiting)."""
    now = now or utcnow()
    return jobs.enqueue(
        session,
        PIN_CHECK,
        {},
        dedup_key=PIN_CHECK,
        run_after=now + timedelta(seconds=delay),
        now=now,
    )


# -- backends ---------------------------------------------------------------------------------


def _make_backend(config: PinBackendConfig, client: httpx.AsyncClient) -> PinningBackend:
    token = config.token.reveal() if config.token is not None else None
    if config.type == "kubo":
        return KuboPinning(client, config.url, token=token, name=config.name)
    if config.type == "cluster":
        return ClusterPinning(
            client,
            config.url,
            token=token,
            name=config.name,
            replication_min=config.replication_min,
            replication_max=config.replication_max,
            origins=config.origins,
        )
    return PinningService(
        client, config.url, token=token or "", name=config.name, origins=config.origins
    )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every pinning client: loading the CA bundle costs ~0.1 s, too much
    to pay per job."""
    return httpx.create_ssl_context()


@asynccontextmanager
async def open_backends(
    config: PinningConfig, names: Iterable[str] | None = None
) -> AsyncIterator[dict[str, PinningBackend]]:
    """The configured backends (or those in ``names``), each with its own HTTP client.

    An unknown name raises ``ConfigError`` listing the configured ones.
    """
    chosen = [config.backend(name) for name in names] if names is not None else config.backends
    async with AsyncExitStack() as stack:
        backends: dict[str, PinningBackend] = {}
        for backend in chosen:
            client = httpx.AsyncClient(
                headers={"User-Agent": USER_AGENT},
                timeout=httpx.Timeout(backend.timeout),
                follow_redirects=False,
                verify=_tls_context(),
            )
            await stack.enter_async_context(client)
            backends[backend.name] = _make_backend(backend, client)
        yield backends


async def car_stream(source: BlockSource, cid: str) -> AsyncIterator[bytes]:
    """The DAG under ``cid`` as a CARv1 byte stream, depth-first, one block at a time.

    Blocks are read (and verified) in a thread; memory holds one block whatever the DAG's
    size. A missing or corrupt block raises ``BlockNotFound``/``IntegrityError`` mid-stream.
    """
    root = parse_cid(cid)
    buffer = io.BytesIO()
    writer = CarWriter(buffer, [root])
    blocks = walk_dag(source, root)
    yield _take(buffer)
    while (block := await asyncio.to_thread(next, blocks, None)) is not None:
        writer.put(block)
        yield _take(buffer)


def _take(buffer: io.BytesIO) -> bytes:
    data = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return data


# -- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """One (archive, backend) pin to request, as loaded before the request."""

    pin_id: int
    archive_id: int
    backend: str
    cid: str
    name: str
    request_id: str | None


def _insert_missing_pins(session: Session, archive_id: int, backends: Sequence[str]) -> None:
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    for backend in backends:
        session.execute(
            dialect.insert(Pin.__table__)
            .values(archive_id=archive_id, backend=backend, status=PinStatus.QUEUED)
            .on_conflict_do_nothing(index_elements=["archive_id", "backend"])
        )


def _prepare(
    session: Session, archive_id: int, backends: Sequence[str], *, repin: bool
) -> list[_Target] | None:
    """Make sure each backend has a row for the archive; return the rows to request.

    ``None`` when the archive is gone or not archived. A row is requested when it has no
    request yet; a re-pin (``repin``) also requests a failed one.
    """
    archive = session.execute(
        sa.select(Archive.id, Archive.cid, Archive.status, Artifact.filename)
        .join(Artifact, Artifact.id == Archive.artifact_id)
        .where(Archive.id == archive_id)
    ).one_or_none()
    if archive is None or archive.status != ArchiveStatus.ARCHIVED or archive.cid is None:
        return None
    _insert_missing_pins(session, archive_id, backends)
    rows = session.execute(
        sa.select(Pin.id, Pin.backend, Pin.request_id, Pin.status)
        .where(Pin.archive_id == archive_id, Pin.backend.in_(backends))
        .order_by(Pin.id)
    ).all()
    return [
        _Target(
            pin_id=row.id,
            archive_id=archive_id,
            backend=row.backend,
            cid=archive.cid,
            name=f"{archive_id}-{archive.filename}",
            request_id=row.request_id,
        )
        for row in rows
        if (row.status == PinStatus.QUEUED and row.request_id is None)
        or (repin and row.status == PinStatus.FAILED)
    ]


def _requeue(
    session: Session,
    failures: Iterable[tuple[int, str]],
    *,
    pinning: PinningConfig,
    now: datetime,
) -> int:
    """Queue a re-pin for each failed (archive, backend) with re-pins left; return how many."""
    keys = {
        _pin_key(archive_id, backend): (archive_id, backend) for archive_id, backend in failures
    }
    if not keys or pinning.max_repins == 0:
        return 0
    counts: dict[str, int] = dict(
        session.execute(
            sa.select(JobRecord.dedup_key, sa.func.count())
            .where(JobRecord.kind == PIN, JobRecord.dedup_key.in_(sorted(keys)))
            .group_by(JobRecord.dedup_key)
        ).all()
    )
    queued = 0
    for key, (archive_id, backend) in keys.items():
        done = counts.get(key, 0)
        if done >= pinning.max_repins:
            log.warning(
                "pin of archive %d on %s failed after %d re-pins; giving up",
                archive_id,
                backend,
                done,
            )
            continue
        delay = pinning.check_interval * 2**done
        jobs.enqueue(
            session,
            PIN,
            {"archive_id": archive_id, "backend": backend},
            dedup_key=key,
            run_after=now + timedelta(seconds=delay),
            now=now,
        )
        log.info(
            "pin of archive %d on %s re-queued (%d of %d) in %.0f s",
            archive_id,
            backend,
            done + 1,
            pinning.max_repins,
            delay,
        )
        queued += 1
    return queued


def _record_result(
    session: Session,
    target: _Target,
    result: PinRequest,
    *,
    pinning: PinningConfig,
    now: datetime,
) -> None:
    """Store what the backend answered to a pin request; re-queue it if it failed."""
    status = PinStatus(result.status.value)
    session.execute(
        sa.update(Pin)
        .where(Pin.id == target.pin_id)
        .values(
            request_id=result.request_id,
            status=status,
            error=(result.details or "the backend could not pin it")
            if status == PinStatus.FAILED
            else None,
            pinned_at=now if status == PinStatus.PINNED else None,
            checked_at=now,
            updated_at=now,
        )
    )
    if status == PinStatus.FAILED:
        _requeue(session, [(target.archive_id, target.backend)], pinning=pinning, now=now)
    delay = pinning.recheck_interval if status == PinStatus.PINNED else pinning.check_interval
    schedule_check(session, delay=delay, now=now)


def _record_error(
    session: Session,
    target: _Target,
    error: str,
    *,
    failed: bool,
    requeue: bool,
    pinning: PinningConfig,
    now: datetime,
) -> None:
    """Note an error on the row; ``failed`` marks it failed (and maybe re-queues it)."""
    values: dict[str, Any] = {"error": error, "updated_at": now}
    if failed:
        values["status"] = PinStatus.FAILED
        values["pinned_at"] = None
    session.execute(sa.update(Pin).where(Pin.id == target.pin_id).values(**values))
    if failed and requeue:
        _requeue(session, [(target.archive_id, target.backend)], pinning=pinning, now=now)


# -- the pin job ------------------------------------------------------------------------------


async def pin_archive(
    ctx: JobContext,
    archive_id: int,
    *,
    backend: str | None = None,
    last_attempt: bool = False,
) -> dict[str, PinStatus]:
    """Request the pins of one archive (on ``backend``, or on every configured backend).

    Returns the state each requested backend reported. Each backend is handled on its own; if
    some failed, the first transient error is raised afterwards (so the job is retried and
    only those are asked again), else the first refusal. ``last_attempt`` marks rows whose
    backend is still unavailable as failed.
    """
    pinning = ctx.config.pinning
    if backend is not None and backend not in pinning.backend_names:
        log.warning(
            "archive %d: backend %s is no longer configured; not pinning", archive_id, backend
        )
        return {}
    names = [backend] if backend is not None else list(pinning.backend_names)
    if not names:
        log.debug("archive %d: no pinning backend configured", archive_id)
        return {}
    targets = await ctx.transaction(_prepare, archive_id, names, repin=backend is not None)
    if targets is None:
        log.info("archive %d is gone or not archived; nothing to pin", archive_id)
        return {}
    if not targets:
        return {}
    source = ctx.blockstore or open_blockstore(ctx.config)
    outcome: dict[str, PinStatus] = {}
    transient: list[BaseException] = []
    refused: list[BaseException] = []
    async with open_backends(pinning, [t.backend for t in targets]) as clients:
        for target in targets:
            kind = pinning.backend(target.backend).type
            try:
                status = await _submit(ctx, clients[target.backend], kind, target, source)
            except (BackendUnavailable, BlockstoreError) as exc:
                transient.append(exc)
                await ctx.transaction(
                    _record_error,
                    target,
                    jobs.describe_error(exc),
                    failed=last_attempt,
                    requeue=True,
                    pinning=pinning,
                    now=utcnow(),
                )
                log.warning("archive %d: %s unavailable: %s", archive_id, target.backend, exc)
            except (BackendRejected, InvalidCID, PermanentJobError) as exc:
                refused.append(exc)
                await ctx.transaction(
                    _record_error,
                    target,
                    jobs.describe_error(exc),
                    failed=True,
                    requeue=False,
                    pinning=pinning,
                    now=utcnow(),
                )
                log.error("archive %d: %s cannot pin it: %s", archive_id, target.backend, exc)
            else:
                outcome[target.backend] = status
    if transient or refused:
        raise (transient or refused)[0]
    return outcome


async def _submit(
    ctx: JobContext,
    client: PinningBackend,
    kind: str,
    target: _Target,
    source: BlockSource,
) -> PinStatus:
    """Send one pin request and record the answer; return the state the backend reported."""
    car = car_stream(source, target.cid) if kind in UPLOADING_TYPES else None
    try:
        result = await client.pin(target.cid, name=target.name, car=car)
    except (BlockNotFound, BlockIntegrityError, BlockFormatError) as exc:
        raise PermanentJobError(
            f"archive {target.archive_id} ({target.cid}) cannot be read from the blockstore: "
            f"{exc}; archive it again"
        ) from exc
    pinning = ctx.config.pinning
    await ctx.transaction(_record_result, target, result, pinning=pinning, now=utcnow())
    log.info(
        "archive %d: %s has pin %s as %s (%s)",
        target.archive_id,
        target.backend,
        target.cid,
        result.request_id,
        result.status.value,
    )
    if target.request_id is not None and target.request_id != result.request_id:
        try:
            await client.unpin(target.request_id)
        except BackendError as exc:
            log.warning(
                "%s: could not remove the replaced request %s: %s",
                target.backend,
                target.request_id,
                exc,
            )
    return PinStatus(result.status.value)


async def pin_job(ctx: JobContext, job: Job) -> None:
    """Handler of ``pin`` jobs: ``{"archive_id": A}`` or ``{"archive_id": A, "backend": B}``."""
    archive_id = int(job.payload["archive_id"])
    backend = job.payload.get("backend")
    await pin_archive(
        ctx,
        archive_id,
        backend=str(backend) if backend is not None else None,
        last_attempt=job.attempt >= job.max_attempts,
    )


# -- the status check -------------------------------------------------------------------------


@dataclass(slots=True)
class BackendCheck:
    """What one status check did on one backend.

    ``checked`` pins were asked about in ``batches`` status calls; ``states`` counts the
    states they are in now; ``gone`` were no longer held by the backend (now failed);
    ``requeued`` failed pins were queued again; ``queued`` archives without a pin on this
    backend got a pin job. ``error`` is why the check of this backend stopped early.
    """

    backend: str
    checked: int = 0
    batches: int = 0
    states: dict[str, int] = field(default_factory=dict)
    gone: int = 0
    requeued: int = 0
    queued: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "checked": self.checked,
            "batches": self.batches,
            "states": dict(self.states),
            "gone": self.gone,
            "requeued": self.requeued,
            "queued": self.queued,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class _Due:
    pin_id: int
    archive_id: int
    request_id: str
    cid: str
    status: PinStatus
    pinned_at: datetime | None


def _due(
    session: Session,
    backend: str,
    *,
    after: int,
    limit: int,
    recheck_before: datetime,
) -> list[_Due]:
    """The next ``limit`` pins of ``backend`` (by id, after ``after``) whose state to ask."""
    rows = session.execute(
        sa.select(Pin.id, Pin.archive_id, Pin.request_id, Archive.cid, Pin.status, Pin.pinned_at)
        .join(Archive, Archive.id == Pin.archive_id)
        .where(
            Pin.backend == backend,
            Pin.id > after,
            Pin.request_id.is_not(None),
            Archive.cid.is_not(None),
            sa.or_(
                Pin.status.in_(UNFINISHED),
                sa.and_(
                    Pin.status == PinStatus.PINNED,
                    sa.or_(Pin.checked_at.is_(None), Pin.checked_at < recheck_before),
                ),
            ),
        )
        .order_by(Pin.id)
        .limit(limit)
    ).all()
    return [_Due(*row) for row in rows]


_apply = (
    sa.update(Pin.__table__)
    .where(
        Pin.__table__.c.id == sa.bindparam("b_id"),
        Pin.__table__.c.request_id == sa.bindparam("b_request_id"),
        Pin.__table__.c.status == sa.bindparam("b_old_status"),
    )
    .values(
        status=sa.bindparam("b_status"),
        error=sa.bindparam("b_error"),
        pinned_at=sa.bindparam("b_pinned_at"),
        checked_at=sa.bindparam("b_now"),
        updated_at=sa.bindparam("b_now"),
    )
)


def _apply_statuses(
    session: Session,
    backend: str,
    batch: Sequence[_Due],
    answers: Mapping[str, PinRequest],
    *,
    pinning: PinningConfig,
    now: datetime,
    report: BackendCheck,
) -> None:
    """Write a batch's new states in one statement; re-queue the pins that failed.

    A row changed since it was read (a re-pin recorded a new request meanwhile, another check
    got there first) is left as is, and only rows this call moved to ``failed`` (their
    ``checked_at`` is this check's ``now``) are re-queued.
    """
    params = []
    failed: list[int] = []
    for due in batch:
        answer = answers.get(due.request_id)
        if answer is None:
            status, error = PinStatus.FAILED, GONE
            report.gone += 1
        else:
            status = PinStatus(answer.status.value)
            error = (
                (answer.details or "the backend could not pin it")
                if status == PinStatus.FAILED
                else None
            )
        if status == PinStatus.FAILED:
            failed.append(due.pin_id)
        pinned_at = (due.pinned_at or now) if status == PinStatus.PINNED else None
        report.states[status.value] = report.states.get(status.value, 0) + 1
        params.append(
            {
                "b_id": due.pin_id,
                "b_request_id": due.request_id,
                "b_old_status": due.status,
                "b_status": status,
                "b_error": error,
                "b_pinned_at": pinned_at,
                "b_now": now,
            }
        )
    if params:
        session.execute(_apply, params)
    if failed:
        mine = session.execute(
            sa.select(Pin.archive_id, Pin.backend).where(
                Pin.id.in_(failed), Pin.status == PinStatus.FAILED, Pin.checked_at == now
            )
        ).all()
        report.requeued += _requeue(session, [tuple(row) for row in mine], pinning=pinning, now=now)


def _queue_unpinned(session: Session, backend: str, *, limit: int) -> int:
    """Queue pin jobs for archived archives with no row on ``backend``; return how many."""
    missing = ~sa.exists().where(Pin.archive_id == Archive.id, Pin.backend == backend)
    ids = session.execute(
        sa.select(Archive.id)
        .where(Archive.status == ArchiveStatus.ARCHIVED, missing)
        .order_by(Archive.id)
        .limit(limit)
    ).scalars()
    count = 0
    for archive_id in ids:
        enqueue_pins(session, archive_id)
        count += 1
    return count


def _schedule_next(session: Session, backends: Sequence[str], *, pinning: PinningConfig) -> None:
    """Queue the next check: soon while pins are in flight, else when confirmations fall due."""
    if not backends:
        return
    mine = Pin.backend.in_(backends)
    in_flight = session.execute(
        sa.select(sa.exists().where(mine, Pin.status.in_(UNFINISHED), Pin.request_id.is_not(None)))
    ).scalar_one()
    if in_flight:
        schedule_check(session, delay=pinning.check_interval)
        return
    oldest = session.execute(
        sa.select(sa.func.min(Pin.checked_at)).where(mine, Pin.status == PinStatus.PINNED)
    ).scalar_one_or_none()
    if oldest is None:
        return
    due = (oldest + timedelta(seconds=pinning.recheck_interval) - utcnow()).total_seconds()
    schedule_check(session, delay=max(pinning.check_interval, due))


async def check_pins(
    config: Config,
    sessions: sessionmaker[Session],
    *,
    backend: str | None = None,
) -> list[BackendCheck]:
    """Run the batched status check now (on ``backend``, or on every configured backend).

    A backend that fails is reported (``error``) and the others are still checked; the next
    check is queued either way.
    """

    async def transaction(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            with sessions.begin() as session:
                return fn(session, *args, **kwargs)

        return await asyncio.to_thread(run)

    pinning = config.pinning
    now = utcnow()
    names = [backend] if backend is not None else list(pinning.backend_names)
    reports: list[BackendCheck] = []
    async with open_backends(pinning, names) as clients:
        for name, client in clients.items():
            report = BackendCheck(name)
            reports.append(report)
            after = 0
            recheck_before = now - timedelta(seconds=pinning.recheck_interval)
            while True:
                batch = await transaction(
                    _due, name, after=after, limit=pinning.batch_size, recheck_before=recheck_before
                )
                if not batch:
                    break
                after = batch[-1].pin_id
                refs = [PinRef(due.request_id, due.cid) for due in batch]
                try:
                    answers = await client.status(refs)
                except BackendError as exc:
                    report.error = str(exc)
                    log.error("pin check of %s stopped: %s", name, exc)
                    break
                report.batches += 1
                report.checked += len(batch)
                await transaction(
                    _apply_statuses, name, batch, answers, pinning=pinning, now=now, report=report
                )
            report.queued = await transaction(_queue_unpinned, name, limit=pinning.batch_size)
            log.info(
                "pin check of %s: %d pins in %d batches, now %s; %d gone, %d re-queued, "
                "%d archives queued",
                name,
                report.checked,
                report.batches,
                report.states,
                report.gone,
                report.requeued,
                report.queued,
            )
    await transaction(_schedule_next, list(pinning.backend_names), pinning=pinning)
    return reports


async def pin_check_job(ctx: JobContext, job: Job) -> None:
    """Handler of ``pin_check`` jobs: the batched status check of every backend."""
    await check_pins(ctx.config, ctx.sessionmaker)


# -- reports ----------------------------------------------------------------------------------


def pin_counts(session: Session, config: Config) -> dict[str, dict[str, Any]]:
    """Per backend (configured ones, and any other with rows): pins by state, and how many
    archived archives have no pin row there yet."""
    archived = session.execute(
        sa.select(sa.func.count()).where(Archive.status == ArchiveStatus.ARCHIVED)
    ).scalar_one()
    rows = session.execute(
        sa.select(Pin.backend, Pin.status, sa.func.count()).group_by(Pin.backend, Pin.status)
    ).all()
    with_rows: dict[str, int] = dict(
        session.execute(
            sa.select(Pin.backend, sa.func.count())
            .join(Archive, Archive.id == Pin.archive_id)
            .where(Archive.status == ArchiveStatus.ARCHIVED)
            .group_by(Pin.backend)
        ).all()
    )
    report: dict[str, dict[str, Any]] = {}
    configured = {b.name: b for b in config.pinning.backends}
    for name in [*configured, *sorted({r.backend for r in rows} - set(configured))]:
        entry = configured.get(name)
        report[name] = {
            "type": entry.type if entry else None,
            "configured": entry is not None,
            "states": {state.value: 0 for state in PinStatus},
            "not_queued": max(0, archived - with_rows.get(name, 0)) if entry else 0,
        }
    for backend, status, count in rows:
        report[backend]["states"][PinStatus(status).value] = int(count)
    return report


@dataclass(frozen=True, slots=True)
class FailedPin:
    """A failed pin as ``forage pins --failed`` lists it."""

    archive_id: int
    backend: str
    cid: str | None
    filename: str
    request_id: str | None
    error: str | None
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive_id": self.archive_id,
            "backend": self.backend,
            "cid": self.cid,
            "filename": self.filename,
            "request_id": self.request_id,
            "error": self.error,
            "updated_at": self.updated_at.isoformat(),
        }


def failed_pins(
    session: Session, *, backend: str | None = None, limit: int = 100
) -> list[FailedPin]:
    """Failed pins, most recently changed first."""
    query = (
        sa.select(
            Pin.archive_id,
            Pin.backend,
            Archive.cid,
            Artifact.filename,
            Pin.request_id,
            Pin.error,
            Pin.updated_at,
        )
        .join(Archive, Archive.id == Pin.archive_id)
        .join(Artifact, Artifact.id == Archive.artifact_id)
        .where(Pin.status == PinStatus.FAILED)
        .order_by(Pin.updated_at.desc(), Pin.id.desc())
        .limit(limit)
    )
    if backend is not None:
        query = query.where(Pin.backend == backend)
    return [FailedPin(*row) for row in session.execute(query).all()]
