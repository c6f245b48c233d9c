"""The backfill half of a lookup: an ``import`` job for each key the index does not know.

:func:`backfill` queues an ``import`` job (:mod:`forage.index.ingest`) for each missing key
in the caller's short write transaction: deduplicated against queued imports, limited by a
token bucket (:class:`TokenBucket`), and not repeated for a package its registry was asked
about recently (:class:`BackfillPolicy`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.config import Config
from forage.db.engine import utcnow
from forage.db.models import JobRecord, JobState
from forage.index.ingest import IMPORT
from forage.jobs import queue as jobs
from forage.lookup.keys import Key
from forage.lookup.query import _id_set
from forage.lookup.resolve import Missing
from forage.lookup.views import KeyResult, KeyStatus, _iso
from indexers import ECOSYSTEMS

log = logging.getLogger(__name__)

#: The longest ``jobs.dedup_key`` (its column's length).
DEDUP_KEY_LENGTH: int = JobRecord.dedup_key.type.length


class TokenBucket:
    """Allows ``rate`` events per second on average, ``burst`` at once; thread-safe.

    Bounds how many backfill imports one server queues, whoever asks: a flood of lookups for
    made-up names costs at most ``rate`` job rows per second.
    """

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` tokens; return how many were granted."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            granted = min(wanted, int(self._tokens))
            self._tokens -= granted
            return granted


@dataclass(frozen=True, slots=True)
class BackfillPolicy:
    """Which unknown keys may queue an import, and how often.

    ``ecosystems`` are the registries configured on this installation; ``recheck`` is how
    long a registry's answer for a package stands before a lookup asks again; ``limiter``
    (``None``: unlimited) bounds the imports queued per second.
    """

    ecosystems: frozenset[str]
    recheck: timedelta = timedelta(hours=1)
    limiter: TokenBucket | None = None

    @classmethod
    def from_config(cls, config: Config, *, limited: bool = True) -> BackfillPolicy:
        server = config.server
        limiter = (
            TokenBucket(rate=server.backfill_rate, burst=server.backfill_burst) if limited else None
        )
        return cls(
            ecosystems=frozenset(config.configured_registries()),
            recheck=timedelta(seconds=server.backfill_recheck),
            limiter=limiter,
        )


def import_dedup_key(key: Key) -> str:
    """The ``dedup_key`` of the import job for ``key`` (the watchers' spelling: per version
    where the registry serves versions it does not list, as Go does; else per package); a
    key too long for the column is named by its SHA-256."""
    unlisted = key.ecosystem in ECOSYSTEMS and ECOSYSTEMS[key.ecosystem].unlisted_versions
    suffix = f"@{key.version}" if unlisted and key.version else ""
    dedup = f"{IMPORT}:{key.ecosystem}:{key.name}{suffix}"
    if len(dedup) <= DEDUP_KEY_LENGTH:
        return dedup
    digest = hashlib.sha256(f"{key.name}{suffix}".encode()).hexdigest()
    return f"{IMPORT}:{key.ecosystem}:sha256:{digest}"


def _not_found(key: Key, reason: str) -> KeyResult:
    return KeyResult("", KeyStatus.NOT_FOUND, key, reason=reason)


def backfill(
    session: Session,
    missing: Sequence[Missing],
    *,
    policy: BackfillPolicy,
    now: datetime | None = None,
) -> dict[Key, KeyResult]:
    """Queue imports for missing keys (in the caller's write transaction); each key's outcome."""
    now = now or utcnow()
    outcomes: dict[Key, KeyResult] = {}
    wanted: dict[str, list[Key]] = defaultdict(list)
    for item in missing:
        key = item.key
        if key.ecosystem not in ECOSYSTEMS:
            outcomes[key] = _not_found(key, f"Forage does not index {key.ecosystem} packages")
        elif key.ecosystem not in policy.ecosystems:
            outcomes[key] = _not_found(
                key, f"the {key.ecosystem} registry is not configured on this server"
            )
        elif item.last_synced is not None and now - item.last_synced < policy.recheck:
            checked = _iso(item.last_synced)
            if item.package_deleted:
                reason = f"{key.name} was removed from its registry (checked {checked})"
            else:
                reason = f"the registry listed no version {key.version} (checked {checked})"
            outcomes[key] = _not_found(key, reason)
        else:
            wanted[import_dedup_key(key)].append(key)
    if not wanted:
        return outcomes
    queued = dict(
        session.execute(
            sa.select(JobRecord.dedup_key, JobRecord.id).where(
                JobRecord.state == JobState.QUEUED,
                _id_set(session, JobRecord.dedup_key, list(wanted), text=True),
            )
        ).all()
    )
    fresh = [dedup for dedup in wanted if dedup not in queued]
    granted = policy.limiter.take(len(fresh)) if policy.limiter is not None else len(fresh)
    for dedup in fresh[:granted]:
        first = wanted[dedup][0]
        payload = {"ecosystem": first.ecosystem, "name": first.name, "version": first.version}
        queued[dedup] = jobs.enqueue(session, IMPORT, payload, dedup_key=dedup, now=now)
    if granted < len(fresh):
        log.warning("backfill rate limit: %d imports not queued", len(fresh) - granted)
    for dedup, keys in wanted.items():
        for key in keys:
            job_id = queued.get(dedup)
            outcomes[key] = (
                KeyResult("", KeyStatus.QUEUED, key, job_id=job_id)
                if job_id is not None
                else _not_found(key, "backfill rate limit reached; ask again later")
            )
    return outcomes
