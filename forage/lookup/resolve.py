"""The read half of a lookup: keys to results, on a read-only session, and the storing
of the answers it had to compute.

:func:`resolve` parses and normalizes every key (a malformed one gets its own ``invalid``
result), finds the versions and loads their artifacts with digests, archive, pins, pieces and
the active Filecoin deals holding them; the keys the index does not know are returned for
:func:`~forage.lookup.backfill.backfill`. With ``rendered``, a version's stored answer is
used as is and the answers computed instead are returned to be stored
(:func:`store_answers`) where nothing changed in between.

A key with qualifiers that pick files (``?platform=java``, ``?classifier=sources``,
:mod:`forage.lookup.keys`) is answered with those files only: it is read like its whole
version but never served nor stored as the version's answer, and a version none of whose
files match is ``not_found`` saying so (no import is queued: the version is known).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from forage.db.engine import is_sqlite, utcnow
from forage.db.models import VersionAnswer
from forage.errors import InvalidKey
from forage.lookup.keys import Key
from forage.lookup.normalize import canonical_purl, read_lookup_key
from forage.lookup.query import _stored_answers, _version_rows, _when, load_artifacts
from forage.lookup.views import (
    NOT_REMOVED,
    KeyResult,
    KeyStatus,
    Removal,
    render_fragment,
    valid_until,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Missing:
    """A key the index lacks, with what is known of its package (for the backfill decision)."""

    key: Key
    package_known: bool
    package_deleted: bool
    last_synced: datetime | None


@dataclass(frozen=True, slots=True)
class AnswerFill:
    """A version's freshly rendered answer, to store where its row still has ``stamp``
    (``None``: there was no row)."""

    version_id: int
    stamp: int | None
    body: bytes
    valid_until: datetime | None
    purl: str


@dataclass(frozen=True, slots=True)
class Resolution:
    """The read half of a lookup: results (missing keys provisionally ``not_found``) and the
    distinct missing keys for :func:`~forage.lookup.backfill.backfill`."""

    results: tuple[KeyResult, ...]
    missing: tuple[Missing, ...]
    fills: tuple[AnswerFill, ...] = ()

    def with_outcomes(self, outcomes: Mapping[Key, KeyResult]) -> tuple[KeyResult, ...]:
        """The results with each missing key's backfill outcome filled in."""
        out: list[KeyResult] = []
        for result in self.results:
            outcome = outcomes.get(result.parsed) if result.parsed is not None else None
            if result.status is KeyStatus.NOT_FOUND and outcome is not None:
                result = replace(outcome, key=result.key)
            out.append(result)
        return tuple(out)


def removal_of(row: Any) -> Removal | None:
    """The removal, deprecation and package status a version row carries (``None``: none)."""
    removal = Removal(
        _when(row.removed_at),
        row.removal,
        row.deprecated,
        row.package_status,
        row.package_status_reason,
    )
    return None if removal == NOT_REMOVED else removal


def _no_file(key: Key) -> KeyResult:
    """The answer for a known version none of whose files the key's qualifiers pick."""
    picked = "&".join(f"{name}={value}" for name, value in key.qualifiers)
    reason = f"{key.name} {key.version} has no file matching {picked}"
    return KeyResult("", KeyStatus.NOT_FOUND, key, reason=reason)


def _echo(raw: object) -> str:
    return raw if isinstance(raw, str) else json.dumps(raw)


def resolve(
    session: Session,
    raw_keys: Sequence[object],
    *,
    now: datetime | None = None,
    rendered: bool = False,
) -> Resolution:
    """Answer ``raw_keys`` from the index (read-only); see the module docstring.

    With ``rendered``, a found version's stored answer (:class:`~forage.db.models.VersionAnswer`)
    is used as is, and the versions without a current one are computed, rendered and
    returned as :attr:`Resolution.fills`; every found result then carries ``rendered``.
    """
    now = now or utcnow()
    parsed: list[Key | InvalidKey] = []
    canonical: dict[Key, str] = {}  # the keys given as their canonical purl, and that purl
    for raw in raw_keys:
        try:
            key, purl = read_lookup_key(raw)
        except InvalidKey as exc:
            parsed.append(exc)
            continue
        parsed.append(key)
        if purl is not None:
            canonical[key] = purl
    # Each distinct key's place in ``unique``; -1 for an invalid one.
    slots: dict[Key, int] = {}
    places = [slots.setdefault(k, len(slots)) if isinstance(k, Key) else -1 for k in parsed]
    unique = list(slots)
    bodies: list[bytes | None] = [None] * len(unique)  # stored answers
    answers: list[KeyResult | None] = [None] * len(unique)  # computed ones
    versions: dict[Key, Any] = {}
    packages: dict[Key, Any] = {}
    missing: list[Missing] = []
    fills: dict[int, AnswerFill] = {}
    rest = unique
    # Stored answers are of whole versions: a key picking some files is always computed.
    whole = [key for key in unique if not key.qualifiers] if rendered else []
    if whole:
        purls = [canonical.get(key) or canonical_purl(key) for key in whole]
        stored = session.connection().execute(_stored_answers(session, purls, now)).all()
        for position, body in stored:
            bodies[slots[whole[position - 1]]] = body
        rest = [key for key, body in zip(unique, bodies, strict=True) if body is None]
    if rest:
        releases = list(dict.fromkeys(key.release for key in rest))
        statement = _version_rows(session, releases, rendered=rendered)
        for row in session.connection().execute(statement).all():
            key = Key(row.ecosystem, row.name, row.number)
            if row.version_id is not None:
                versions[key] = row
            elif row.package_id is not None:
                packages[key] = row
    artifacts = load_artifacts(
        session, version_ids=sorted({row.version_id for row in versions.values()}), now=now
    )
    for key in rest:
        version = versions.get(key.release)
        if version is None:
            continue
        views = tuple(artifacts.get(version.version_id, ()))
        if key.qualifiers:
            views = tuple(view for view in views if key.wants(view.filename))
            if not views:
                answers[slots[key]] = _no_file(key)
                continue
        result = KeyResult(
            "",
            KeyStatus.FOUND,
            key,
            published_at=_when(version.published_at),
            yanked=version.yanked,
            deleted=version.deleted,
            artifacts=views,
            removal=removal_of(version),
        )
        if rendered:
            body = render_fragment(result)
            result = replace(result, rendered=body)
            if not key.qualifiers:
                fills[version.version_id] = AnswerFill(
                    version.version_id, version.stamp, body, valid_until(views), canonical_purl(key)
                )
        answers[slots[key]] = result
    for key, body, answer in zip(unique, bodies, answers, strict=True):
        if body is not None or answer is not None:
            continue
        package = packages.get(key.release)
        missing.append(
            Missing(
                key,
                package_known=package is not None,
                package_deleted=bool(package and package.package_deleted),
                last_synced=_when(package.last_synced) if package is not None else None,
            )
        )
    results: list[KeyResult] = []
    for raw, item, place in zip(raw_keys, parsed, places, strict=True):
        if isinstance(item, InvalidKey):
            results.append(KeyResult(_echo(raw), KeyStatus.INVALID, error=item.reason))
        elif (body := bodies[place]) is not None:
            # The stored bytes are the whole answer: nothing else is kept for the reply.
            results.append(KeyResult(_echo(raw), KeyStatus.FOUND, rendered=body))
        elif (hit := answers[place]) is not None:
            results.append(hit.answering(_echo(raw)))
        else:
            reason = "not in the index"
            results.append(KeyResult(_echo(raw), KeyStatus.NOT_FOUND, item, reason=reason))
    return Resolution(tuple(results), tuple(missing), tuple(fills.values()))


def save_answers(write: Callable[[], Session], fills: Sequence[AnswerFill]) -> int:
    """:func:`store_answers` in a write transaction of its own; a store that fails (a busy
    database) is logged and skipped: the answers are computed again next time."""
    try:
        with write() as session, session.begin():
            return store_answers(session, fills)
    except sa.exc.OperationalError as exc:
        log.warning("%d rendered answers not stored: %s", len(fills), exc)
        return 0


def store_answers(session: Session, fills: Sequence[AnswerFill]) -> int:
    """Store rendered answers (in the caller's write transaction) where each version's row
    is as the lookup read it: absent, or with the same stamp. A row a trigger retired in
    between keeps its tombstone. Returns how many were stored."""
    table = cast(sa.Table, VersionAnswer.__table__)
    fresh = [
        {
            "version_id": f.version_id,
            "body": f.body,
            "valid_until": f.valid_until,
            "stamp": 0,
            "purl": f.purl,
        }
        for f in fills
        if f.stamp is None
    ]
    again = [
        {"v": f.version_id, "s": f.stamp, "b": f.body, "u": f.valid_until, "p": f.purl}
        for f in fills
        if f.stamp is not None
    ]
    connection = session.connection()
    stored = 0
    if fresh:
        dialect = sqlite if is_sqlite(session) else postgresql
        insert = dialect.insert(table).on_conflict_do_nothing(index_elements=["version_id"])
        stored += connection.execute(insert, fresh).rowcount
    if again:
        update = (
            sa.update(table)
            .where(table.c.version_id == sa.bindparam("v"), table.c.stamp == sa.bindparam("s"))
            .values(body=sa.bindparam("b"), valid_until=sa.bindparam("u"), purl=sa.bindparam("p"))
        )
        stored += connection.execute(update, again).rowcount
    return stored
