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
   was asked about recently.

A lockfile's reply (:func:`lockfile_reply`) is built from a batch's results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from forage.db.engine import utcnow
from forage.lookup.backfill import BackfillPolicy, backfill
from forage.lookup.resolve import AnswerFill, resolve, save_answers
from forage.lookup.views import KeyResult, summarize
from indexers import LockEntry


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
    with write() as session, session.begin():
        outcomes = backfill(session, resolution.missing, policy=policy, now=now)
    return resolution.with_outcomes(outcomes)


def lockfile_reply(entries: Sequence[LockEntry], results: Sequence[KeyResult]) -> dict[str, Any]:
    """The answer for a lockfile: one entry per dependency in file order (``results`` are
    those of the entries with a key, in order), skipped ones with the reason."""
    answers = iter(results)
    dependencies: list[dict[str, Any]] = []
    for entry in entries:
        if entry.key is None:
            dependencies.append(
                {"source": entry.source, "key": None, "status": "skipped", "reason": entry.problem}
            )
        else:
            dependencies.append({"source": entry.source, **next(answers).to_json()})
    summary: dict[str, int] = summarize(results)
    summary["skipped"] = sum(1 for entry in entries if entry.key is None)
    return {"dependencies": dependencies, "summary": summary}
