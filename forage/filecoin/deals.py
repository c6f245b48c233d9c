"""Deal sync: which Filecoin deals hold Forage's pieces, checked against the chain.

Sources are ``storage.deals`` clients built from ``[filecoin]``: a Lotus node (source name
``lotus``) and a deal-making service (``dealservice``, Estuary's API shape). One sync:

1. reads the pieces Forage built (piece CID v1, CAR root);
2. asks Lotus for the chain head and genesis (without Lotus: the configured genesis and the
   clock), then scans the market state for deals of those piece CIDs (``lotus_scan``);
3. asks the deal service for the deals of its contents whose CID is one of our CAR roots.
   With Lotus configured, each such deal id is looked up on chain
   (``StateMarketStorageDeal``) and kept only if the chain's piece CID is the piece with that
   CAR root, and recorded as a ``lotus`` deal: facts come from the chain, and a deal both
   sources report is one row. Without Lotus, the service's word is recorded as a
   ``dealservice`` deal;
4. looks up, by id, every known ``lotus`` deal still live that the scan did not report; one
   absent from the market state has ended: ``slashed`` if a slash was seen or it ended
   before its end epoch, ``expired`` after it, ``proposal_expired`` if it never started;
5. writes every row in one transaction: deal id, provider, client, piece (and its padded
   size), start and end epochs and their dates, activation and slash epochs and dates,
   verified flag, state, ``last_seen``. Deals of pieces Forage does not know are ignored.

State, as Singularity's deal tracker derives it (``dealtracker.go``): slashed if a slash
epoch is set; else, not yet activated, ``published`` (``proposal_expired`` once the start
epoch has passed); else ``expired`` once the head is past the end epoch; else ``active``. A
deal the service gave up on before the chain is ``rejected``. Lotus API:
https://github.com/filecoin-project/lotus/blob/master/documentation/en/api-methods-v1-stable.md
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from forage import __version__
from forage.config import Config, FilecoinConfig
from forage.db.engine import utcnow
from forage.db.models import Deal, DealState, Piece
from forage.errors import ConfigError
from forage.jobs.queue import Job
from forage.jobs.worker import JobContext
from storage import DealInfo, DealService, LotusClient, epoch_time, time_epoch

log = logging.getLogger(__name__)

#: Job kind: sync deals from every configured source now (payload ``{}``).
SYNC_DEALS = "sync_deals"
#: States a deal never leaves.
FINAL_STATES = frozenset(
    {DealState.EXPIRED, DealState.PROPOSAL_EXPIRED, DealState.SLASHED, DealState.REJECTED}
)


def deal_state(info: DealInfo, *, head: int) -> DealState:
    """The state of a deal as its source reports it, at chain height ``head``."""
    if info.failed:
        return DealState.REJECTED
    if info.slash_epoch is not None:
        return DealState.SLASHED
    if info.activation_epoch is None:
        started = info.start_epoch is not None and head > info.start_epoch
        return DealState.PROPOSAL_EXPIRED if started else DealState.PUBLISHED
    if info.end_epoch is not None and head > info.end_epoch:
        return DealState.EXPIRED
    return DealState.ACTIVE


def ended_state(deal: Deal, *, head: int) -> DealState:
    """The state of a known deal that has left the market state."""
    if deal.slash_epoch is not None:
        return DealState.SLASHED
    if deal.activation_epoch is None:
        return DealState.PROPOSAL_EXPIRED
    if deal.end_epoch is not None and head >= deal.end_epoch:
        return DealState.EXPIRED
    return DealState.SLASHED  # terminated before its end: its sector was lost


@dataclass(frozen=True, slots=True)
class DealSources:
    """The configured deal sources and the chain's genesis (Unix seconds)."""

    lotus: LotusClient | None
    service: DealService | None
    genesis: int


@asynccontextmanager
async def open_sources(config: FilecoinConfig) -> AsyncIterator[DealSources]:
    """Build the configured sources on one HTTP client, closed afterwards."""
    if not config.lotus_url and not config.deal_service_url:
        raise ConfigError(
            "filecoin",
            "no deal source: set filecoin.lotus_url and/or filecoin.deal_service_url "
            "(FORAGE_FILECOIN_LOTUS_URL, FORAGE_FILECOIN_DEAL_SERVICE_URL)",
        )
    async with httpx.AsyncClient(
        headers={"User-Agent": f"forage/{__version__}"},
        timeout=httpx.Timeout(300.0, connect=15.0),
        follow_redirects=False,
    ) as client:
        lotus = service = None
        if config.lotus_url:
            token = config.lotus_token.reveal() if config.lotus_token else None
            lotus = LotusClient(client, config.lotus_url, token=token, scan=config.lotus_scan)
        if config.deal_service_url:
            token = config.deal_service_token.reveal() if config.deal_service_token else None
            service = DealService(client, config.deal_service_url, token=token)
        yield DealSources(lotus, service, config.genesis_timestamp)


@dataclass(frozen=True, slots=True)
class DealSyncReport:
    """What one sync did: deals ``recorded`` (new rows) and ``updated``, ``ended`` (known
    deals gone from the chain), ``ignored`` (on pieces Forage does not know, or whose chain
    piece differs from what the service claimed), at chain height ``head``."""

    recorded: int
    updated: int
    ended: int
    ignored: int
    head: int


@dataclass(frozen=True, slots=True)
class _Known:
    pieces: dict[str, tuple[int, int]]
    roots: dict[str, tuple[int, str]]
    live_lotus: dict[int, int]


def _known(session: Session, lotus_name: str) -> _Known:
    pieces, roots = {}, {}
    for piece_id, piece_cid, padded, root in session.execute(
        sa.select(Piece.id, Piece.piece_cid, Piece.padded_size, Piece.car_root)
    ):
        pieces[piece_cid] = (piece_id, padded)
        roots[root] = (piece_id, piece_cid)
    live = session.execute(
        sa.select(Deal.deal_id, Deal.id).where(
            Deal.source == lotus_name, Deal.state.not_in(sorted(FINAL_STATES))
        )
    ).all()
    return _Known(pieces, roots, {int(deal_id): row_id for deal_id, row_id in live})


def _row_values(
    info: DealInfo, piece_id: int, *, head: int, genesis: int, now: datetime
) -> dict[str, Any]:
    def when(epoch: int | None) -> datetime | None:
        return None if epoch is None else epoch_time(epoch, genesis=genesis)

    return {
        "piece_id": piece_id,
        "provider": info.provider,
        "client": info.client,
        "verified": info.verified,
        "piece_size": info.piece_size,
        "state": deal_state(info, head=head),
        "start_epoch": info.start_epoch,
        "end_epoch": info.end_epoch,
        "activation_epoch": info.activation_epoch,
        "slash_epoch": info.slash_epoch,
        "start_at": when(info.start_epoch),
        "end_at": when(info.end_epoch),
        "activated_at": when(info.activation_epoch),
        "slashed_at": when(info.slash_epoch),
        "last_seen": now,
    }


def _write(
    session: Session,
    found: dict[tuple[str, int], dict[str, Any]],
    ended: dict[int, int],
    *,
    head: int,
) -> tuple[int, int, int]:
    recorded = updated = 0
    for (source, deal_id), values in found.items():
        row = session.execute(
            sa.select(Deal).where(Deal.source == source, Deal.deal_id == str(deal_id))
        ).scalar_one_or_none()
        if row is None:
            session.add(Deal(deal_id=str(deal_id), source=source, **values))
            recorded += 1
            log.info("deal %s (%s) recorded: %s", deal_id, source, values["state"])
            continue
        if any(getattr(row, key) != value for key, value in values.items() if key != "last_seen"):
            updated += 1
            if row.state != values["state"]:
                log.info("deal %s (%s): %s -> %s", deal_id, source, row.state, values["state"])
        for key, value in values.items():
            setattr(row, key, value)
    for row_id in ended.values():
        deal = session.get(Deal, row_id)
        if deal is not None:
            deal.state = ended_state(deal, head=head)
            log.info("deal %s left the market state: %s", deal.deal_id, deal.state)
    return recorded, updated, len(ended)


async def sync_deals(
    sessionmaker: sessionmaker[Session], sources: DealSources, *, now: datetime | None = None
) -> DealSyncReport:
    """Read every source and record the deals of Forage's pieces (see the module docstring)."""
    now = now or utcnow()
    lotus, service = sources.lotus, sources.service
    lotus_name = lotus.name if lotus is not None else LotusClient.default_name

    def load() -> _Known:
        with sessionmaker() as session:
            return _known(session, lotus_name)

    known = await asyncio.to_thread(load)
    genesis, head = sources.genesis, time_epoch(now, genesis=sources.genesis)
    if lotus is not None:
        genesis = await lotus.genesis_timestamp()
        head = (await lotus.chain_head()).height
    found: dict[tuple[str, int], dict[str, Any]] = {}
    ignored = 0

    def keep(source: str, info: DealInfo, piece_id: int) -> None:
        found[(source, info.deal_id)] = _row_values(
            info, piece_id, head=head, genesis=genesis, now=now
        )

    if lotus is not None:
        async for info in lotus.find_deals(piece_cids=set(known.pieces), payload_cids=()):
            if info.piece_cid in known.pieces:
                keep(lotus_name, info, known.pieces[info.piece_cid][0])
            else:
                ignored += 1
    if service is not None:
        async for info in service.find_deals(piece_cids=(), payload_cids=set(known.roots)):
            piece = known.roots.get(info.payload_cid or "")
            if piece is None:
                ignored += 1
                continue
            piece_id, piece_cid = piece
            if lotus is None:
                padded = known.pieces[piece_cid][1]
                keep(service.name, replace(info, piece_cid=piece_cid, piece_size=padded), piece_id)
                continue
            if (lotus_name, info.deal_id) in found:
                continue
            chain = await lotus.market_deal(info.deal_id)
            if chain is None:
                log.info("deal %d (from %s) is not on chain", info.deal_id, service.name)
                if info.deal_id not in known.live_lotus:
                    padded = known.pieces[piece_cid][1]
                    keep(
                        service.name,
                        replace(info, piece_cid=piece_cid, piece_size=padded),
                        piece_id,
                    )
                    values = found[(service.name, info.deal_id)]
                    if values["state"] in (DealState.ACTIVE, DealState.PUBLISHED):
                        # Gone from the chain: it ran its course, or never started.
                        active = info.activation_epoch is not None
                        values["state"] = (
                            DealState.EXPIRED if active else DealState.PROPOSAL_EXPIRED
                        )
                continue
            if chain.piece_cid != piece_cid:
                log.warning(
                    "deal %d: %s says it holds piece %s, the chain says %s; ignored",
                    info.deal_id,
                    service.name,
                    piece_cid,
                    chain.piece_cid,
                )
                ignored += 1
                continue
            keep(lotus_name, chain, piece_id)
    ended: dict[int, int] = {}
    if lotus is not None:
        for deal_id, row_id in known.live_lotus.items():
            if (lotus_name, deal_id) in found:
                continue
            chain = await lotus.market_deal(deal_id)
            if chain is None:
                ended[deal_id] = row_id
            elif chain.piece_cid in known.pieces:
                keep(lotus_name, chain, known.pieces[chain.piece_cid][0])

    def write() -> tuple[int, int, int]:
        with sessionmaker.begin() as session:
            return _write(session, found, ended, head=head)

    recorded, updated, gone = await asyncio.to_thread(write)
    report = DealSyncReport(recorded, updated, gone, ignored, head)
    log.info("deal sync at epoch %d: %s", head, report)
    return report


async def sync_deals_job(ctx: JobContext, job: Job) -> None:
    """Handler of ``sync_deals`` jobs."""
    async with open_sources(ctx.config.filecoin) as sources:
        await sync_deals(ctx.sessionmaker, sources)


def configured(config: Config) -> bool:
    """Whether any deal source is configured."""
    return bool(config.filecoin.lotus_url or config.filecoin.deal_service_url)


@dataclass(frozen=True, slots=True)
class DealSummary:
    """One deal row with its piece CID, for listings."""

    deal_id: str
    source: str
    provider: str
    piece_cid: str
    state: DealState
    start_epoch: int | None
    end_epoch: int | None
    start_at: datetime | None
    end_at: datetime | None
    last_seen: datetime


def list_deals(
    session: Session,
    *,
    state: DealState | None = None,
    piece_cid: str | None = None,
    limit: int = 100,
) -> list[DealSummary]:
    """Deals, newest first, optionally of one state or one piece."""
    query = sa.select(Deal, Piece.piece_cid).join(Piece, Piece.id == Deal.piece_id)
    if state is not None:
        query = query.where(Deal.state == state)
    if piece_cid is not None:
        query = query.where(Piece.piece_cid == piece_cid)
    rows = session.execute(query.order_by(Deal.id.desc()).limit(limit)).all()
    return [
        DealSummary(
            d.deal_id,
            d.source,
            d.provider,
            cid,
            d.state,
            d.start_epoch,
            d.end_epoch,
            d.start_at,
            d.end_at,
            d.last_seen,
        )
        for d, cid in rows
    ]
