"""Batch lookups: keys to packages, versions, artifacts, archives, pins, pieces and deals.

The one entry point behind the HTTP API, the web pages and ``forage lookup``. Reading and
backfilling are separate steps, so reads run on a read-only session (on SQLite, a plain
``BEGIN`` that never waits for writers, :mod:`forage.lookup.sessions`) and only a batch with
unknown keys opens a short write transaction:

1. :func:`~forage.lookup.resolve.resolve` parses and normalizes every key (a malformed one
   gets its own ``invalid`` result), finds the versions and loads their artifacts with
   digests, archive, pins, pieces and the active Filecoin deals holding them (issue 8:
   provider and expiry per deal), in a fixed number of set-based queries
   (:mod:`forage.lookup.query`) per slice of :data:`SLICE` keys, each slice rendered and
   its rows and views dropped before the next (issue 15: a big batch's peak memory);
2. :func:`~forage.lookup.backfill.backfill` queues an ``import`` job
   (:mod:`forage.index.ingest`) for each key the index does not know: deduplicated against
   queued imports, limited by a token bucket, and not repeated for a package its registry
   was asked about recently. When the database refuses the write (a full disk), the
   lookup still answers: those keys are ``not_found`` with the reason nothing was queued.

A lockfile's reply (:func:`lockfile_reply`) is built from a batch's results, each pinned
digest compared with the files Forage holds (:mod:`forage.lookup.integrity`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from forage.db.engine import utcnow
from forage.lookup.backfill import BackfillPolicy, backfill, not_queued
from forage.lookup.integrity import Integrity, checked
from forage.lookup.keys import Key
from forage.lookup.resolve import AnswerFill, Missing, Resolution, resolve, save_answers
from forage.lookup.views import KeyResult, summarize
from indexers import LockEntry

log = logging.getLogger(__name__)


#: Keys resolved at a time: a 10,000-key batch read at once holds its key, row and view
#: objects (tens of MB of small Python objects, which the allocator keeps as pools) until
#: its reply is sent; a slice of this many is one set of set-based queries, rendered and
#: dropped before the next.
SLICE = 1_000


def lookup(
    read: Callable[[], Session],
    write: Callable[[], Session] | None,
    raw_keys: Sequence[object],
    *,
    policy: BackfillPolicy | None,
    now: datetime | None = None,
    rendered: bool = False,
    keep: Callable[[Sequence[AnswerFill]], object] | None = None,
) -> tuple[KeyResult, ...]:
    """Resolve ``raw_keys`` on a ``read`` session, :data:`SLICE` keys at a time, then (given
    ``write`` and ``policy``) backfill the missing ones in one write transaction. With
    ``rendered`` (see :func:`~forage.lookup.resolve.resolve`), each result keeps only its
    rendered bytes (:meth:`~forage.lookup.views.KeyResult.rendered_only`), and the answers
    computed here are handed to ``keep`` a slice at a time (a server stores them off the
    request's path), else stored with :func:`~forage.lookup.resolve.save_answers` given
    ``write`` once the read is over."""
    now = now or utcnow()
    results: list[KeyResult] = []
    missing: dict[Key, Missing] = {}
    fills: list[AnswerFill] = []
    with read() as session, session.begin():
        for start in range(0, len(raw_keys), SLICE):
            part = resolve(session, raw_keys[start : start + SLICE], now=now, rendered=rendered)
            if rendered:
                results.extend(result.rendered_only() for result in part.results)
            else:
                results.extend(part.results)
            for item in part.missing:
                missing.setdefault(item.key, item)
            if part.fills and keep is not None:
                keep(part.fills)
            else:
                fills.extend(part.fills)
            del part
    if fills and write is not None:
        save_answers(write, fills)
    resolution = Resolution(tuple(results), tuple(missing.values()))
    del results, fills
    if not resolution.missing or write is None or policy is None:
        return resolution.results
    try:
        with write() as session, session.begin():
            outcomes = backfill(session, resolution.missing, policy=policy, now=now)
    except OperationalError as exc:
        # A full disk or a database that refuses writes: answer what is known, and say why
        # nothing was queued, rather than fail the whole lookup.
        log.warning("lookup could not queue imports: %s", exc)
        outcomes = not_queued(resolution.missing, exc)
    return resolution.with_outcomes(outcomes)


def lockfile_reply(entries: Sequence[LockEntry], results: Sequence[KeyResult]) -> dict[str, Any]:
    """The answer for a lockfile: one entry per dependency in file order (``results`` are
    those of the entries with a key, in order), skipped ones with the reason."""
    summary = LockfileSummary()
    dependencies = [summary.add(dep) for dep in lockfile_dependencies(entries, results)]
    return {"dependencies": dependencies, "summary": summary.counts}


def lockfile_dependencies(
    entries: Sequence[LockEntry], results: Sequence[KeyResult]
) -> Iterator[dict[str, Any]]:
    """The ``dependencies`` of :func:`lockfile_reply` one at a time (a server streams them):
    each found version's files narrowed by the key's ``file_name`` and ``checksum``
    qualifiers and the lockfile's pinned digests compared with them
    (:func:`~forage.lookup.integrity.checked`)."""
    answers = iter(results)
    for entry in entries:
        if entry.key is None:
            yield {
                "source": entry.source,
                "key": None,
                "status": "skipped",
                "reason": entry.problem,
            }
        else:
            yield checked(entry, next(answers))


class LockfileSummary:
    """The ``summary`` of :func:`lockfile_reply`, counted as its dependencies go by: results
    by status, the skipped entries, and those whose pinned digests match no file Forage
    holds (``integrity_mismatch``)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {**summarize(()), "skipped": 0, "integrity_mismatch": 0}

    def add(self, dependency: dict[str, Any]) -> dict[str, Any]:
        """Count ``dependency`` and return it."""
        self.counts[dependency["status"]] += 1
        if dependency.get("integrity") == Integrity.MISMATCH:
            self.counts["integrity_mismatch"] += 1
        return dependency
