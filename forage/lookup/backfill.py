"""The backfill half of a lookup: an ``import`` job for each key the index does not know.

:func:`backfill` queues an ``import`` job (:mod:`forage.index.ingest`) for each missing key
in the caller's short write transaction: deduplicated against queued imports, limited by a
token bucket (:class:`TokenBucket`), and not repeated for a package its registry was asked
about recently (:class:`BackfillPolicy`). A lookup therefore ends: an unknown key is
``queued`` once, and once the import found that the registry does not have it (a miss,
:mod:`forage.index.misses`), ``not_found`` with the registry's answer and when it was
asked, until ``recheck`` has passed and one new import asks again. A version of a known
package is asked for by an import of its own where the registry serves versions it does not
list (``unlisted_versions``: Go pseudo-versions); elsewhere the package's listing answers.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.config import Config
from forage.db.engine import utcnow
from forage.db.models import JobRecord, JobState
from forage.index.ingest import IMPORT
from forage.index.misses import LOOKUP_HINT, Miss, load_misses, miss_for
from forage.index.selection import Selection, selection_for
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
    (``None``: unlimited) bounds the imports queued per second; ``selections`` are the
    configured registries' selections, whose excluded names are answered at once instead of
    queueing an import that would only skip them.
    """

    ecosystems: frozenset[str]
    recheck: timedelta = timedelta(hours=1)
    limiter: TokenBucket | None = None
    selections: Mapping[str, Selection] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, *, limited: bool = True) -> BackfillPolicy:
        server = config.server
        limiter = (
            TokenBucket(rate=server.backfill_rate, burst=server.backfill_burst) if limited else None
        )
        configured = config.configured_registries()
        return cls(
            ecosystems=frozenset(configured),
            recheck=timedelta(seconds=server.backfill_recheck),
            limiter=limiter,
            selections={name: selection_for(config, name) for name in configured},
        )


def _excluded(policy: BackfillPolicy, key: Key) -> str | None:
    selection = policy.selections.get(key.ecosystem)
    return None if selection is None else selection.excluded(key.name)


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


def _not_found(
    key: Key, reason: str, *, answer: str | None = None, checked: datetime | None = None
) -> KeyResult:
    return KeyResult("", KeyStatus.NOT_FOUND, key, reason=reason, answer=answer, checked_at=checked)


def _answered(
    item: Missing, miss: Miss | None, policy: BackfillPolicy, now: datetime
) -> KeyResult | None:
    """The ``not_found`` result that ends a lookup of ``item`` without an import, or ``None``
    when an import should ask the registry (nothing it answered is younger than ``recheck``)."""
    key = item.key
    if miss is not None and (miss.version is not None or not item.package_known):
        checked = _iso(miss.checked_at)
        what = f"no version {key.version} of {key.name}" if miss.version else f"no {key.name}"
        reason = f"the registry has {what} (checked {checked}): {miss.answer}"
        return _not_found(key, reason, answer=miss.answer, checked=miss.checked_at)
    if item.last_synced is None or now - item.last_synced >= policy.recheck:
        return None
    checked = _iso(item.last_synced)
    if item.package_deleted:
        reason = f"{key.name} was removed from its registry (checked {checked})"
    elif ECOSYSTEMS[key.ecosystem].unlisted_versions:
        return None  # served unlisted: only an import of this version can tell
    else:
        reason = f"the registry listed no version {key.version} (checked {checked})"
    return _not_found(key, reason, checked=item.last_synced)


def not_queued(missing: Sequence[Missing], error: Exception) -> dict[Key, KeyResult]:
    """The outcome of keys whose imports could not be queued because the database refused the
    write (``error``: a full disk, a read-only or locked database)."""
    orig = getattr(error, "orig", None) or error
    why = str(orig).splitlines()[0][:200] if str(orig) else type(orig).__name__
    reason = f"not in the index, and no import could be queued now ({why}); ask again later"
    return {item.key: _not_found(item.key, reason) for item in missing}


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
    asked: list[Missing] = []
    for item in missing:
        key = item.key
        if key.ecosystem not in ECOSYSTEMS:
            outcomes[key] = _not_found(key, f"Forage does not index {key.ecosystem} packages")
        elif key.ecosystem not in policy.ecosystems:
            outcomes[key] = _not_found(
                key, f"the {key.ecosystem} registry is not configured on this server"
            )
        elif excluded := _excluded(policy, key):
            outcomes[key] = _not_found(key, f"not archived here: {excluded}")
        else:
            asked.append(item)
    misses = load_misses(session, [item.key for item in asked], since=now - policy.recheck)
    for item in asked:
        answered = _answered(item, miss_for(misses, item.key), policy, now)
        if answered is not None:
            outcomes[item.key] = answered
        else:
            wanted[import_dedup_key(item.key)].append(item.key)
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
        # LOOKUP_HINT: the import records what the registry answers for this very key.
        payload: dict[str, object] = {"ecosystem": first.ecosystem, "name": first.name}
        payload |= {"version": first.version, LOOKUP_HINT: True}
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
