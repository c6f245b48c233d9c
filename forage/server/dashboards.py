"""What the home and deals pages chart: each registry's files by archive state with its
feed's lag, pieces by replicas, and active deals by month of expiry, as
:class:`~forage.server.charts.BarChart` values (drawn by ``templates/charts.html``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import Deal
from forage.filecoin.health import ArchiveHealth
from forage.index.status import registry_status
from forage.lookup.epochs import epoch_time, live_deal
from forage.server.charts import BarChart, bar_chart, by_month

#: How the home page's chart splits a registry's files (disjoint, summing to those known).
FILE_SERIES = ("archived", "pending", "failed", "removed")


@dataclass(frozen=True, slots=True)
class RegistryHealth:
    """One registry's row on the home page: its files by state and its feed's lag."""

    name: str
    files: dict[str, int]
    feed: bool
    lag_seconds: float | None
    at_head: bool


def registry_health(session: Session) -> tuple[list[RegistryHealth], BarChart]:
    """Each registry's files and feed, and the chart of its files: archived, pending,
    failed, and removed upstream before they were archived (so a bar is the files known)."""
    registries = []
    rows = []
    for name, status in registry_status(session).items():
        files = dict(status.files)
        archived, pending, failed = files["archived"], files["pending"], files["failed"]
        gone = max(0, files["known"] - archived - pending - failed)
        rows.append((name, (archived, pending, failed, gone)))
        feed = status.feed
        registries.append(
            RegistryHealth(
                name,
                files,
                feed is not None,
                None if feed is None else feed.lag_seconds,
                feed is not None and feed.at_head,
            )
        )
    chart = bar_chart("files-chart", "Files per registry by archive state", FILE_SERIES, rows)
    return registries, chart


def replicas_chart(health: ArchiveHealth) -> BarChart:
    """Pieces by how many active deals hold them, those under ``min_replicas`` marked."""
    rows = [
        (f"{n} active deal(s)", (count, 0) if n < health.min_replicas else (0, count))
        for n, count in sorted(health.replicas.items())
    ]
    title = f"Pieces by replicas (fewer than {health.min_replicas} is under-replicated)"
    return bar_chart("replicas-chart", title, ("under", "pieces"), rows)


def expiry_chart(session: Session, now: datetime) -> BarChart:
    """Active deals by the month they end: when replicas will be lost unless renewed."""
    ends = session.execute(sa.select(Deal.end_at, Deal.end_epoch).where(live_deal(now)))
    moments = (
        end_at or (None if end_epoch is None else epoch_time(end_epoch))
        for end_at, end_epoch in ends
    )
    months = by_month(moment for moment in moments if moment is not None)
    rows = [(month, (count,)) for month, count in months]
    return bar_chart("expiry-chart", "Active deals by month of expiry", ("deals",), rows)
