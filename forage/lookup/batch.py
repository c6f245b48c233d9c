"""Batch lookups: keys to packages, versions, artifacts, archives, pins, pieces and deals.

The one entry point behind the HTTP API, the web pages and ``forage lookup``. Reading and
backfilling are separate steps, so reads run on a read-only session (on SQLite, a plain
``BEGIN`` that never waits for writers, :mod:`forage.lookup.sessions`) and only a batch with
unknown keys opens a short write transaction:

1. :func:`~forage.lookup.resolve.resolve` parses and normalizes every key (a malformed one
   gets its own ``invalid`` result), finds the versions and loads their artifacts with
   digests, archive, pins, pieces and the active Filecoin deals holding them (issue 8:
   provider and expiry per deal), in a fixed number of set-based queries
   (:mod:`forage.lookup.query`);
2. :func:`~forage.lookup.backfill.backfill` queues an ``import`` job
   (:mod:`forage.index.ingest`) for each key the index does not know: deduplicated against
   queued imports, limited by a token bucket, and not repeated for a package its registry
   was asked about recently. When the database refuses the write (a full disk), the
   lookup still answers: those keys are ``not_found`` with the reason nothing was queued.

A lockfile's reply (:func:`lockfile_reply`) is built from a batch's results.
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
from forage.lookup.resolve import AnswerFill, resolve, save_answers
from forage.lookup.views import KeyResult, summarize
from indexers import LockEntry

log = logging.getLogger(__name__)


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
    """Resolve ``raw_keys`` on a ``read`` session, then (given ``write`` and ``policy``)
    backfill the missing ones in one write transaction. With ``rendered`` (see
    :func:`~forage.lookup.resolve.resolve`), answers computed here are handed to ``keep`` (a
    server stores them off the request's path), else stored with
    :func:`~forage.lookup.resolve.save_answers` given ``write``."""
    now = now or utcnow()
    with read() as session, session.begin():
        resolution = resolve(session, raw_keys, now=now, rendered=rendered)
    if resolution.fills and keep is not None:
        keep(resolution.fills)
    elif resolution.fills and write is not None:
        save_answers(write, resolution.fills)
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
    return {
        "dependencies": list(lockfile_dependencies(entries, results)),
        "summary": lockfile_summary(entries, results),
    }


def lockfile_dependencies(
    entries: Sequence[LockEntry], results: Sequence[KeyResult]
) -> Iterator[dict[str, Any]]:
    """The ``dependencies`` of :func:`lockfile_reply` one at a time (a server streams them)."""
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
            yield {"source": entry.source, **next(answers).to_json()}


def lockfile_summary(entries: Sequence[LockEntry], results: Sequence[KeyResult]) -> dict[str, int]:
    """The ``summary`` of :func:`lockfile_reply`: results by status, and the skipped entries."""
    summary: dict[str, int] = summarize(results)
    summary["skipped"] = sum(1 for entry in entries if entry.key is None)
    return summary
