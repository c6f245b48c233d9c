"""Health of the archive: how much is archived, packed into pieces, and held by active deals,
how many active deals (replicas) each piece has, and which pieces have fewer than
``filecoin.min_replicas``.

Sizes are archive bytes (the artifacts' own sizes), so "archived", "in pieces" and "in active
deals" compare directly; piece totals (CAR and padded bytes) are given beside them. A replica
is a distinct chain deal that is live (:func:`forage.lookup.epochs.live_deal`: active and not past
its end, as lookups show it; one deal reported by two sources counts once).
:func:`archive_health` is what ``/api/v1/stats`` and the home page call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.engine import utcnow
from forage.db.models import Archive, ArchiveStatus, Deal, Piece, PieceMember
from forage.lookup.epochs import live_deal

#: Under-replicated pieces listed in full (the count covers them all).
DEFAULT_LIST_LIMIT = 100


@dataclass(frozen=True, slots=True)
class PieceReplicas:
    """A piece and the providers of its active deals."""

    piece_cid: str
    padded_size: int
    car_size: int
    members: int
    active_deals: int
    providers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ArchiveHealth:
    """The archive's totals; ``replicas`` maps a number of active deals to how many pieces
    have that many; ``under_replicated`` lists (up to a limit, fewest replicas first) the
    pieces with fewer than ``min_replicas``, ``under_replicated_count`` counts them all."""

    archives: int
    bytes_archived: int
    archives_in_pieces: int
    bytes_in_pieces: int
    bytes_in_active_deals: int
    pieces: int
    piece_car_bytes: int
    piece_padded_bytes: int
    active_deals: int
    replicas: dict[int, int]
    min_replicas: int
    under_replicated_count: int
    under_replicated: tuple[PieceReplicas, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (replica counts as string keys, as JSON objects need)."""
        data = asdict(self)
        data["replicas"] = {str(k): v for k, v in sorted(self.replicas.items())}
        data["under_replicated"] = [
            {**asdict(p), "providers": list(p.providers)} for p in self.under_replicated
        ]
        return data


def archive_health(
    session: Session,
    *,
    min_replicas: int,
    limit: int = DEFAULT_LIST_LIMIT,
    now: datetime | None = None,
) -> ArchiveHealth:
    """Compute the archive's health in a few aggregate queries (no per-row loading)."""
    archived = Archive.status == ArchiveStatus.ARCHIVED
    archives, bytes_archived = session.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(Archive.size), 0)).where(archived)
    ).one()
    in_pieces, bytes_in_pieces = session.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(Archive.size), 0)).join(
            PieceMember, PieceMember.archive_id == Archive.id
        )
    ).one()
    pieces, car_bytes, padded_bytes = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(Piece.car_size), 0),
            sa.func.coalesce(sa.func.sum(Piece.padded_size), 0),
        )
    ).one()
    active = live_deal(now or utcnow())
    replicas_of = (
        sa.select(Piece.id.label("piece_id"), sa.func.count(sa.distinct(Deal.deal_id)).label("n"))
        .select_from(Piece)
        .outerjoin(Deal, sa.and_(Deal.piece_id == Piece.id, active))
        .group_by(Piece.id)
        .subquery()
    )
    histogram = dict(
        session.execute(sa.select(replicas_of.c.n, sa.func.count()).group_by(replicas_of.c.n)).all()
    )
    bytes_in_deals = session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(Archive.size), 0))
        .join(PieceMember, PieceMember.archive_id == Archive.id)
        .join(replicas_of, replicas_of.c.piece_id == PieceMember.piece_id)
        .where(replicas_of.c.n > 0)
    ).scalar_one()
    active_deals = session.execute(
        sa.select(sa.func.count(sa.distinct(Deal.deal_id))).where(active)
    ).scalar_one()
    members = (
        sa.select(PieceMember.piece_id, sa.func.count().label("m"))
        .group_by(PieceMember.piece_id)
        .subquery()
    )
    under = (
        sa.select(Piece, replicas_of.c.n, sa.func.coalesce(members.c.m, 0))
        .join(replicas_of, replicas_of.c.piece_id == Piece.id)
        .outerjoin(members, members.c.piece_id == Piece.id)
        .where(replicas_of.c.n < min_replicas)
    )
    under_count = session.execute(
        sa.select(sa.func.count()).select_from(under.subquery())
    ).scalar_one()
    listed = session.execute(under.order_by(replicas_of.c.n, Piece.id).limit(limit)).all()
    providers: dict[int, set[str]] = {}
    if listed:
        for piece_id, provider in session.execute(
            sa.select(Deal.piece_id, Deal.provider).where(
                active, Deal.piece_id.in_([piece.id for piece, _, _ in listed])
            )
        ):
            providers.setdefault(piece_id, set()).add(provider)
    return ArchiveHealth(
        archives=archives,
        bytes_archived=int(bytes_archived),
        archives_in_pieces=in_pieces,
        bytes_in_pieces=int(bytes_in_pieces),
        bytes_in_active_deals=int(bytes_in_deals),
        pieces=pieces,
        piece_car_bytes=int(car_bytes),
        piece_padded_bytes=int(padded_bytes),
        active_deals=active_deals,
        replicas={int(n): count for n, count in histogram.items()},
        min_replicas=min_replicas,
        under_replicated_count=under_count,
        under_replicated=tuple(
            PieceReplicas(
                piece.piece_cid,
                piece.padded_size,
                piece.car_size,
                int(member_count),
                int(n),
                tuple(sorted(providers.get(piece.id, ()))),
            )
            for piece, n, member_count in listed
        ),
    )
