"""The Filecoin mainnet clock and the rule for a deal that counts.

A deal's expiry is the end date its source recorded (deal sync reads the chain's genesis),
else the mainnet time of its end epoch: ``genesis + 30 s x epoch``
(https://spec.filecoin.io/#section-systems.filecoin_nodes.clock). Only deals that are
``active`` and not yet over are shown (:func:`live_deal`, the one rule for lookups, pages and
health).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from forage.db.models import Deal, DealState

#: Filecoin mainnet genesis (2020-08-24T22:00:00Z) and the length of one epoch.
FILECOIN_GENESIS = datetime(2020, 8, 24, 22, 0, tzinfo=UTC)
EPOCH_SECONDS = 30


def epoch_time(epoch: int) -> datetime:
    """The wall-clock time of a Filecoin mainnet epoch."""
    return FILECOIN_GENESIS + timedelta(seconds=EPOCH_SECONDS * epoch)


def current_epoch(now: datetime) -> int:
    """The Filecoin mainnet epoch at ``now``."""
    return int((now - FILECOIN_GENESIS).total_seconds()) // EPOCH_SECONDS


def live_deal(now: datetime) -> sa.ColumnElement[bool]:
    """A deal that counts at ``now``: active on chain and not over, by the end date its
    source recorded, else by its end epoch (the one rule for lookups, pages and health)."""
    not_over = sa.or_(
        Deal.end_at > now,
        sa.and_(
            Deal.end_at.is_(None),
            sa.or_(Deal.end_epoch.is_(None), Deal.end_epoch > current_epoch(now)),
        ),
    )
    return sa.and_(Deal.state == DealState.ACTIVE, not_over)
