"""Reconciliation: a resumable sweep that finds what a registry's feed never announced.

Feeds are hints: npm's replica inserts entries late or loses them, a watcher started at the
head never saw what came before, a page can be skipped by a bug. Each registry also offers a
listing of what it holds (:meth:`indexers.Indexer.inventory`): npm's replica ``_all_docs``
with each document's revision, PyPI's ``list_packages_with_serial`` (as bandersnatch reads it),
the Go index re-read over a window before the watcher's cursor. A sweep pages through that
listing and compares each entry with the index, once, here:

- an entry naming a package with a stamp (npm revision generation, PyPI serial) is *missing*
  when the index has no such package and *changed* when the stored ``last_serial`` is older
  (or unknown);
- an entry naming a release (Go ``module@version``) is *missing* when the index has no such
  package and *changed* when it has the package but not that version.

Both queue an ``import`` job carrying the listing's freshness hint (so a stale answer is
retried, not recorded), through the configured selection, in the transaction that moves the
sweep's cursor: a row ``<ecosystem>:reconcile`` in ``feed_cursors`` holding the listing token
to resume after. A killed sweep resumes on the next run; a finished one starts over on the
run after. ``dry_run`` walks the whole listing from the start, writes nothing and queues
nothing, and counts the same figures. The scheduler queues a ``reconcile`` job per
configured registry every ``schedule.reconcile`` seconds (:mod:`forage.jobs.tasks`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.engine import utcnow
from forage.db.models import FeedCursor, Package, Version
from forage.errors import ConfigError, ForageError, PermanentJobError
from forage.index.ingest import enqueue_changes
from forage.index.registries import make_indexer
from forage.index.selection import selection_for
from forage.jobs import queue as jobs
from forage.jobs.worker import JobContext
from indexers import Change, Indexer, InventoryEntry

log = logging.getLogger(__name__)

#: The job kind a scheduled sweep runs as.
RECONCILE = "reconcile"
#: Names compared per query.
CHUNK = 500


class SweepConflict(ForageError):
    """Another sweep of this registry moved its cursor since we read it; this one stops."""


def sweep_feed(ecosystem: str) -> str:
    """The ``feed_cursors`` row of ``ecosystem``'s sweep."""
    return f"{ecosystem}:reconcile"


@dataclass(slots=True)
class ReconcileStats:
    """What one sweep run saw: entries checked, missing from the index, changed since it was
    recorded, imports queued (0 on a dry run), pages read, and whether the listing ended."""

    checked: int = 0
    missing: int = 0
    changed: int = 0
    queued: int = 0
    pages: int = 0
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "missing": self.missing,
            "changed": self.changed,
            "queued": self.queued,
            "pages": self.pages,
            "done": self.done,
        }


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def compare(
    session: Session, ecosystem: str, entries: Sequence[InventoryEntry]
) -> tuple[list[Change], list[Change]]:
    """The entries' changes the index lacks: (missing packages, changed packages)."""
    names = sorted({entry.change.name for entry in entries})
    stored: dict[str, tuple[int, int | None]] = {}
    for chunk in _chunks(names):
        rows = session.execute(
            sa.select(Package.name, Package.id, Package.last_serial).where(
                Package.ecosystem == ecosystem, Package.name.in_(chunk)
            )
        )
        stored.update((row.name, (row.id, row.last_serial)) for row in rows)
    ids = [package_id for package_id, _ in stored.values()]
    versions: set[tuple[int, str]] = set()
    if any(entry.change.version for entry in entries):
        for start in range(0, len(ids), CHUNK):
            rows = session.execute(
                sa.select(Version.package_id, Version.number).where(
                    Version.package_id.in_(ids[start : start + CHUNK])
                )
            )
            versions.update((row.package_id, row.number) for row in rows)
    missing: list[Change] = []
    changed: list[Change] = []
    for entry in entries:
        known = stored.get(entry.change.name)
        if known is None:
            missing.append(entry.change)
        elif entry.change.version is not None:
            if (known[0], entry.change.version) not in versions:
                changed.append(entry.change)
        elif entry.stamp is not None and (known[1] is None or known[1] < entry.stamp):
            changed.append(entry.change)
    return missing, changed


def _load(session: Session, feed: str) -> tuple[dict[str, Any], int] | None:
    row = session.get(FeedCursor, feed)
    return None if row is None else (dict(row.cursor), row.version)


def _save(session: Session, feed: str, state: dict[str, Any], version: int | None) -> int:
    """Write the sweep's state (compare-and-set on ``version``; ``None``: a new row)."""
    now = utcnow()
    if version is None:
        session.add(FeedCursor(feed=feed, cursor=state, version=1, updated_at=now))
        session.flush()
        return 1
    result = session.execute(
        sa.update(FeedCursor)
        .where(FeedCursor.feed == feed, FeedCursor.version == version)
        .values(cursor=state, version=version + 1, updated_at=now)
        .returning(FeedCursor.version)
    )
    if result.scalar_one_or_none() is None:
        raise SweepConflict(f"{feed}: moved by another sweep; stopping this run")
    return version + 1


def commit_sweep_page(
    session: Session,
    *,
    ecosystem: str,
    changes: Sequence[Change],
    state: dict[str, Any],
    version: int | None,
) -> int:
    """Queue the page's imports and move the sweep's cursor in one transaction."""
    enqueue_changes(session, ecosystem, changes)
    return _save(session, sweep_feed(ecosystem), state, version)


async def reconcile(
    ctx: JobContext,
    ecosystem: str,
    *,
    dry_run: bool = False,
    max_pages: int | None = None,
    on_page: Callable[[ReconcileStats], None] | None = None,
) -> ReconcileStats:
    """Sweep ``ecosystem``'s inventory (see the module docstring) until it ends, or for
    ``max_pages`` pages; resumes a sweep a kill interrupted."""
    ctx.config.registry(ecosystem)  # ConfigError naming what to set
    indexer: Indexer[Any] = make_indexer(ctx.config, ecosystem, ctx.http[ecosystem])
    selection = selection_for(ctx.config, ecosystem)
    feed = sweep_feed(ecosystem)
    stored = None if dry_run else await ctx.transaction(_load, feed)
    version = stored[1] if stored else None
    state = stored[0] if stored else {}
    if not state.get("running"):
        watcher = await ctx.transaction(_load, ecosystem)
        cursor = indexer.cursor_from_dict(watcher[0]) if watcher else None
        state = {"running": True, "after": indexer.inventory_start(cursor), **_fresh()}
    stats = ReconcileStats()
    while True:
        page = await indexer.inventory(state["after"])
        entries = [e for e in page.entries if selection.excluded(e.change.name) is None]
        missing, changed = await ctx.transaction(compare, ecosystem, entries)
        counts = {"checked": len(entries), "missing": len(missing), "changed": len(changed)}
        stats.pages += 1
        stats.checked += counts["checked"]
        stats.missing += counts["missing"]
        stats.changed += counts["changed"]
        totals = {key: state.get(key, 0) + value for key, value in counts.items()}
        state = {**state, **totals, "after": page.after, "running": not page.done}
        if page.done:
            state["finished_at"] = utcnow().isoformat()
        if not dry_run:
            version = await ctx.transaction(
                commit_sweep_page,
                ecosystem=ecosystem,
                changes=[*missing, *changed],
                state=state,
                version=version,
            )
            stats.queued += len(missing) + len(changed)
        if on_page is not None:
            on_page(stats)
        if page.done or (max_pages and stats.pages >= max_pages):
            stats.done = page.done
            return stats


def _fresh() -> dict[str, Any]:
    return {"started_at": utcnow().isoformat(), "checked": 0, "missing": 0, "changed": 0}


async def reconcile_job(ctx: JobContext, job: jobs.Job) -> None:
    """Handler of ``reconcile`` jobs ``{ecosystem}``: run (or resume) the sweep to its end."""
    ecosystem = str(job.payload["ecosystem"])
    try:
        ctx.config.registry(ecosystem)
    except ConfigError as exc:
        raise PermanentJobError(str(exc)) from exc
    stats = await reconcile(ctx, ecosystem)
    log.info(
        "reconcile %s: %d checked, %d missing, %d changed, %d imports queued",
        ecosystem,
        stats.checked,
        stats.missing,
        stats.changed,
        stats.queued,
        extra={"fields": {"registry": ecosystem, **stats.as_dict()}},
    )


__all__ = [
    "RECONCILE",
    "ReconcileStats",
    "SweepConflict",
    "commit_sweep_page",
    "compare",
    "reconcile",
    "reconcile_job",
    "sweep_feed",
]
