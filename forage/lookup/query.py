"""The set-based SQL behind lookups: keys as one bound parameter, and the reads of
versions, artifacts, digests, archives, pins, pieces, deals and stored answers.

A batch of keys (purls or Forage keys, :mod:`forage.lookup.keys`) is answered in a fixed
number of set-based queries whatever its size: the keys travel as *one* bound parameter (a
JSON array read with SQLite's ``json_each``, https://www.sqlite.org/json1.html#jeach;
parallel arrays read with PostgreSQL's ``unnest``,
https://www.postgresql.org/docs/current/functions-array.html), so no statement grows with the
batch and SQLite's limit on bound variables never applies. Hot columns are read raw
(:func:`_raw`) and converted here (:func:`_when`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from forage.db.engine import is_sqlite, utcnow
from forage.db.models import (
    Archive,
    ArchiveStatus,
    Artifact,
    ArtifactDigest,
    Deal,
    DealState,
    Package,
    Piece,
    PieceMember,
    Pin,
    Version,
    VersionAnswer,
)
from forage.lookup.keys import Key
from forage.lookup.views import ArtifactView, DealView, PieceView, PinView

_ARCHIVED = ArchiveStatus.ARCHIVED.value


def _raw(column: Any) -> Any:
    """A column read as the driver returns it, skipping SQLAlchemy's per-row conversion on hot
    paths: enums as their stored strings, times as SQLite's text (see :func:`_when`)."""
    return sa.type_coerce(column, sa.String).label(column.key)


def _when(value: str | datetime | None) -> datetime | None:
    """A time read with :func:`_raw`: SQLite's UTC text (parsed by the C ``fromisoformat``,
    many times faster than the generic DATETIME processor), or PostgreSQL's aware value."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _json_each(values: Sequence[Any]) -> Any:
    """SQLite's ``json_each(:values)`` as a table ``(key, value)``: ``values`` bound as one
    JSON array parameter, ``key`` each one's index from 0."""
    doc = orjson.dumps(values).decode()
    return sa.func.json_each(sa.bindparam(None, doc, type_=sa.Text)).table_valued("key", "value")


def _id_set(session: Session, column: Any, values: Sequence[Any], *, text: bool = False) -> Any:
    """``column IN <values>`` with ``values`` bound as one parameter, whatever their count."""
    if is_sqlite(session):
        return column.in_(sa.select(_json_each(list(values)).c.value))
    element = sa.Text() if text else sa.BigInteger()
    array = sa.bindparam(None, list(values), type_=postgresql.ARRAY(element))
    return column == sa.any_(array)


def keys_table(session: Session | sa.Connection, keys: Sequence[Key]) -> Any:
    """A derived table ``k(ecosystem, name, number, position)`` of ``keys``, bound as one
    parameter; ``position`` is a key's place in ``keys``, counted from 1."""
    if is_sqlite(session):
        each = _json_each([(k.ecosystem, k.name, k.version) for k in keys])
        return sa.select(
            sa.func.json_extract(each.c.value, "$[0]").label("ecosystem"),
            sa.func.json_extract(each.c.value, "$[1]").label("name"),
            sa.func.json_extract(each.c.value, "$[2]").label("number"),
            (each.c.key + 1).label("position"),
        ).subquery("k")
    texts = postgresql.ARRAY(sa.Text())
    return (
        sa.func.unnest(
            sa.bindparam(None, [k.ecosystem for k in keys], type_=texts),
            sa.bindparam(None, [k.name for k in keys], type_=texts),
            sa.bindparam(None, [k.version for k in keys], type_=texts),
        )
        .table_valued("ecosystem", "name", "number", with_ordinality="position")
        .render_derived(name="k", with_types=False)
    )


def full_query(bind: Session | sa.Connection, keys: Sequence[Key]) -> Any:
    """What :func:`~forage.lookup.resolve.resolve` reads for ``keys``, as one statement of
    outer joins (a row per file x digest x pin x active deal): the benchmark's bare-SQL
    baseline."""
    k = keys_table(bind, keys)
    return (
        sa.select(
            k.c.ecosystem,
            k.c.name,
            k.c.number,
            Version.id,
            Version.published_at,
            Artifact.filename,
            Artifact.url,
            Artifact.size,
            Artifact.kind,
            Archive.status,
            Archive.cid,
            Archive.archived_at,
            ArtifactDigest.algorithm,
            ArtifactDigest.value,
            Pin.backend,
            Pin.status,
            Piece.piece_cid,
            PieceMember.offset,
            Deal.deal_id,
            Deal.provider,
            Deal.end_epoch,
        )
        .select_from(k)
        .join(Package, sa.and_(Package.ecosystem == k.c.ecosystem, Package.name == k.c.name))
        .join(Version, sa.and_(Version.package_id == Package.id, Version.number == k.c.number))
        .outerjoin(Artifact, Artifact.version_id == Version.id)
        .outerjoin(Archive, Archive.artifact_id == Artifact.id)
        .outerjoin(ArtifactDigest, ArtifactDigest.artifact_id == Artifact.id)
        .outerjoin(Pin, Pin.archive_id == Archive.id)
        .outerjoin(PieceMember, PieceMember.archive_id == Archive.id)
        .outerjoin(Piece, Piece.id == PieceMember.piece_id)
        .outerjoin(Deal, sa.and_(Deal.piece_id == Piece.id, Deal.state == DealState.ACTIVE))
    )


def load_artifacts(
    session: Session,
    *,
    version_ids: Sequence[int] = (),
    artifact_ids: Sequence[int] = (),
    now: datetime | None = None,
) -> dict[int, list[ArtifactView]]:
    """Artifacts of the given versions (or the given artifacts), keyed by version id, ordered
    by file name, each with digests, archive, pins, pieces and active deals."""
    if not version_ids and not artifact_ids:
        return {}
    where = (
        _id_set(session, Artifact.version_id, version_ids)
        if version_ids
        else _id_set(session, Artifact.id, artifact_ids)
    )
    rows = (
        session.connection()
        .execute(
            sa.select(
                Artifact.id,
                Artifact.version_id,
                Artifact.filename,
                Artifact.url,
                Artifact.size,
                Artifact.kind,
                Artifact.yanked,
                _raw(Artifact.removed_at),
                Artifact.removal,
                Archive.id.label("archive_id"),
                _raw(Archive.status),
                Archive.cid,
                Archive.size.label("archived_size"),
                _raw(Archive.archived_at),
                Archive.verified_algorithm,
                Archive.verified_digest,
            )
            .outerjoin(Archive, Archive.artifact_id == Artifact.id)
            .where(where)
            .order_by(Artifact.version_id, Artifact.filename)
        )
        .all()
    )
    if not rows:
        return {}
    ids = [row.id for row in rows]
    archive_ids = [row.archive_id for row in rows if row.archive_id is not None]
    digests: dict[int, dict[str, str]] = defaultdict(dict)
    for artifact_id, algorithm, value in (
        session.connection()
        .execute(
            sa.select(ArtifactDigest.artifact_id, ArtifactDigest.algorithm, ArtifactDigest.value)
            .where(_id_set(session, ArtifactDigest.artifact_id, ids))
            .order_by(ArtifactDigest.artifact_id, ArtifactDigest.algorithm)
        )
        .all()
    ):
        digests[artifact_id][algorithm] = value
    pins = _pins(session, archive_ids)
    pieces = _pieces(session, archive_ids, now=now or utcnow())
    out: dict[int, list[ArtifactView]] = defaultdict(list)
    for row in rows:
        status = row.status
        out[row.version_id].append(
            ArtifactView(
                id=row.id,
                filename=row.filename,
                url=row.url,
                size=row.size,
                kind=row.kind,
                yanked=row.yanked,
                digests=digests.get(row.id, {}),
                archive_status=status,
                cid=row.cid if status == _ARCHIVED else None,
                archived_size=row.archived_size,
                archived_at=_when(row.archived_at),
                archive_digest=(
                    f"{row.verified_algorithm}:{row.verified_digest}"
                    if row.verified_digest and status == _ARCHIVED
                    else None
                ),
                pins=pins.get(row.archive_id, ()),
                pieces=pieces.get(row.archive_id, ()),
                removed_at=_when(row.removed_at),
                removal=row.removal,
            )
        )
    return out


def _pins(session: Session, archive_ids: Sequence[int]) -> dict[int, tuple[PinView, ...]]:
    if not archive_ids:
        return {}
    found: dict[int, list[PinView]] = defaultdict(list)
    for archive_id, backend, status, pinned_at in (
        session.connection()
        .execute(
            sa.select(Pin.archive_id, Pin.backend, _raw(Pin.status), _raw(Pin.pinned_at))
            .where(_id_set(session, Pin.archive_id, archive_ids))
            .order_by(Pin.archive_id, Pin.backend)
        )
        .all()
    ):
        found[archive_id].append(PinView(backend, status, _when(pinned_at)))
    return {key: tuple(value) for key, value in found.items()}


def _pieces(
    session: Session, archive_ids: Sequence[int], *, now: datetime
) -> dict[int, tuple[PieceView, ...]]:
    """Pieces holding the archives, each with its active deals that are not over yet, the
    latest ending first (ends are checked here, on the few active deals, so the statement
    stays a plain join without sorting)."""
    if not archive_ids:
        return {}
    active = sa.and_(Deal.piece_id == Piece.id, Deal.state == DealState.ACTIVE)
    rows = (
        session.connection()
        .execute(
            sa.select(
                PieceMember.archive_id,
                PieceMember.offset,
                PieceMember.length,
                Piece.id.label("piece_id"),
                Piece.piece_cid,
                Piece.padded_size,
                Deal.deal_id,
                Deal.source,
                Deal.provider,
                _raw(Deal.state),
                Deal.start_epoch,
                Deal.end_epoch,
                _raw(Deal.end_at),
            )
            .join(Piece, Piece.id == PieceMember.piece_id)
            .outerjoin(Deal, active)
            .where(_id_set(session, PieceMember.archive_id, archive_ids))
        )
        .all()
    )
    grouped: dict[tuple[int, int], tuple[Any, list[DealView]]] = {}
    for row in rows:
        place = (row.archive_id, row.piece_id)
        entry = grouped.get(place)
        if entry is None:
            entry = grouped[place] = (row, [])
        if row.deal_id is None:
            continue
        deal = DealView(
            row.deal_id,
            row.source,
            row.provider,
            row.state,
            row.start_epoch,
            row.end_epoch,
            _when(row.end_at),
        )
        expires = deal.expires_at
        if expires is None or expires > now:
            entry[1].append(deal)
    out: dict[int, list[PieceView]] = defaultdict(list)
    for (archive_id, _piece), (row, deals) in sorted(grouped.items(), key=lambda item: item[0]):
        deals.sort(key=_latest_end_first)
        out[archive_id].append(
            PieceView(row.piece_cid, row.padded_size, row.offset, row.length, tuple(deals))
        )
    return {key: tuple(value) for key, value in out.items()}


def _latest_end_first(deal: DealView) -> tuple[bool, float, str]:
    expires = deal.expires_at
    return (expires is not None, -expires.timestamp() if expires else 0.0, deal.deal_id)


def _stored_answers(session: Session, purls: Sequence[str], now: datetime) -> Any:
    """``(position, body)`` for each of ``purls`` (canonical, :func:`canonical_purl`; counted
    from 1) with a stored answer current at ``now``: one probe of the answers' purl index per
    key, the whole of a lookup of known versions."""
    if is_sqlite(session):
        each = _json_each(purls)
        k = sa.select((each.c.key + 1).label("position"), each.c.value.label("purl")).subquery("k")
    else:
        k = (
            sa.func.unnest(sa.bindparam(None, purls, type_=postgresql.ARRAY(sa.Text())))
            .table_valued("purl", with_ordinality="position")
            .render_derived(name="k", with_types=False)
        )
    current = sa.or_(VersionAnswer.valid_until.is_(None), VersionAnswer.valid_until > now)
    return (
        sa.select(k.c.position, VersionAnswer.body)
        .select_from(k)
        .join(VersionAnswer, VersionAnswer.purl == k.c.purl)
        .where(VersionAnswer.body.is_not(None), current)
    )


def _version_rows(session: Session, keys: Sequence[Key], *, rendered: bool) -> Any:
    """Each of ``keys`` with its package and version (NULLs where unknown) and, with
    ``rendered``, the stamp of the version's stored answer."""
    k = keys_table(session, keys)
    statement = (
        sa.select(
            k.c.ecosystem,
            k.c.name,
            k.c.number,
            Package.id.label("package_id"),
            Package.deleted.label("package_deleted"),
            _raw(Package.last_synced),
            Version.id.label("version_id"),
            _raw(Version.published_at),
            Version.yanked,
            Version.deleted,
            _raw(Version.removed_at),
            Version.removal,
            Version.deprecated,
            Package.status.label("package_status"),
            Package.status_reason.label("package_status_reason"),
            *((VersionAnswer.stamp,) if rendered else ()),
        )
        .select_from(k)
        .outerjoin(Package, sa.and_(Package.ecosystem == k.c.ecosystem, Package.name == k.c.name))
        .outerjoin(Version, sa.and_(Version.package_id == Package.id, Version.number == k.c.number))
    )
    if rendered:
        statement = statement.outerjoin(VersionAnswer, VersionAnswer.version_id == Version.id)
    return statement
