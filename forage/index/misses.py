"""What a registry said it does not have, so that a lookup of it ends.

A lookup of a key the index lacks queues one import (:mod:`forage.lookup.backfill`). When
the import finds that the registry does not have the package (a 404 for a package the index
never held), or has it but not the version the lookup asked for, the answer is kept here as a
:class:`~forage.db.models.LookupMiss`: the registry's own words and when it was asked. Later
lookups of the key answer ``not_found`` with them and queue nothing until
``server.backfill_recheck`` has passed; then one new import asks again and renews or clears
the row.

A version a registry serves without listing it (Go pseudo-versions, ``unlisted_versions``)
is fetched by an import carrying the version; when the registry does not serve it either,
the indexer reports a release without files only because it was asked for: it is dropped
here (it was never published) and recorded as a miss instead (:func:`asked_outcome`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from forage.db.engine import is_sqlite, utcnow
from forage.db.models import LookupMiss
from forage.lookup.keys import Key
from forage.lookup.query import keys_table
from indexers import ECOSYSTEMS, PackageInfo, PackageNotFound

#: The ``import`` payload member that marks an import a lookup asked for.
LOOKUP_HINT = "lookup"

_misses = cast(sa.Table, LookupMiss.__table__)


@dataclass(frozen=True, slots=True)
class Miss:
    """A registry's recorded answer for a key: ``version`` is ``None`` for the package."""

    version: str | None
    answer: str
    checked_at: datetime


def asked_version(hints: Mapping[str, Any]) -> str | None:
    """The version a lookup's import asked for (its payload carries :data:`LOOKUP_HINT`)."""
    version = hints.get("version")
    return str(version) if hints.get(LOOKUP_HINT) and version is not None else None


def not_found_answer(error: PackageNotFound) -> str:
    """The registry's answer a ``PackageNotFound`` carries (its message if it has none)."""
    return error.answer or str(error)


def asked_outcome(info: PackageInfo, asked: str) -> tuple[PackageInfo, str | None]:
    """``info`` without a file-less release of the ``asked`` version that a registry serving
    unlisted versions does not serve, and what to record as the answer (``None``: the
    registry has the version, or lists it as removed: a removal, not a miss)."""
    release = next((r for r in info.releases if r.version == asked), None)
    unlisted = ECOSYSTEMS[info.ecosystem].unlisted_versions
    if release is not None and (release.artifacts or not release.deleted or not unlisted):
        return info, None
    if release is None:
        count = len(info.releases)
        return info, f"{info.ecosystem}: {info.name} lists {count} versions, not {asked}"
    kept = tuple(r for r in info.releases if r.version != asked)
    answer = f"{info.ecosystem}: {info.name} does not serve version {asked}"
    return dataclasses.replace(info, releases=kept), answer


def record_miss(
    session: Session,
    ecosystem: str,
    name: str,
    version: str | None,
    answer: str,
    *,
    now: datetime | None = None,
) -> None:
    """Keep the registry's ``answer`` for the package (``version`` ``None``) or one version."""
    insert = (sqlite.insert if is_sqlite(session) else postgresql.insert)(_misses)
    values = {"answer": answer, "checked_at": now or utcnow()}
    session.execute(
        insert.values(
            ecosystem=ecosystem, name=name, version=version or "", **values
        ).on_conflict_do_update(index_elements=["ecosystem", "name", "version"], set_=values)
    )


def settle_asked(
    session: Session, ecosystem: str, name: str, version: str, answer: str | None
) -> None:
    """After a lookup's import found the package: it is no package-level miss any more, and
    the asked ``version`` is a miss with ``answer``, or none when the registry has it."""
    found = sa.and_(_misses.c.ecosystem == ecosystem, _misses.c.name == name)
    if answer is None:
        session.execute(sa.delete(_misses).where(found, _misses.c.version.in_(["", version])))
        return
    session.execute(sa.delete(_misses).where(found, _misses.c.version == ""))
    record_miss(session, ecosystem, name, version, answer)


def load_misses(
    session: Session, keys: Sequence[Key], *, since: datetime
) -> dict[tuple[str, str], list[Miss]]:
    """The misses checked after ``since`` for the packages of ``keys`` (each key's version and
    the package itself), by ``(ecosystem, name)``; one statement whatever the count."""
    if not keys:
        return {}
    k = keys_table(session, keys)
    rows = session.execute(
        sa.select(_misses.c.ecosystem, _misses.c.name, _misses.c.version, _misses.c.answer)
        .add_columns(_misses.c.checked_at)
        .select_from(k)
        .join(
            _misses,
            sa.and_(
                _misses.c.ecosystem == k.c.ecosystem,
                _misses.c.name == k.c.name,
                sa.or_(_misses.c.version == k.c.number, _misses.c.version == ""),
            ),
        )
        .where(_misses.c.checked_at > since)
    ).all()
    found: dict[tuple[str, str], list[Miss]] = {}
    for row in rows:
        miss = Miss(row.version or None, row.answer, row.checked_at)
        entries = found.setdefault((row.ecosystem, row.name), [])
        if miss not in entries:
            entries.append(miss)
    return found


def miss_for(misses: Mapping[tuple[str, str], list[Miss]], key: Key) -> Miss | None:
    """The recorded answer that ends a lookup of ``key``: its version's, else its package's."""
    entries = misses.get((key.ecosystem, key.name), [])
    exact = (m for m in entries if m.version is not None and m.version == key.version)
    package = (m for m in entries if m.version is None)
    return next(exact, None) or next(package, None)
