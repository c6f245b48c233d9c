"""Batch lookups: keys to packages, versions, artifacts, archives, pins, pieces and deals.

The one query layer behind the HTTP API, the web pages and ``forage lookup``. A batch of keys
(purls or Forage keys, :mod:`forage.lookup.keys`) is answered in a fixed number of set-based queries
whatever its size: the keys travel as *one* bound parameter (a JSON array read with SQLite's
``json_each``, https://www.sqlite.org/json1.html#jeach; parallel arrays read with PostgreSQL's
``unnest``, https://www.postgresql.org/docs/current/functions-array.html), so no statement
grows with the batch and SQLite's limit on bound variables never applies.

Reading and backfilling are separate steps, so reads run on a read-only session (on SQLite, a
plain ``BEGIN`` that never waits for writers) and only a batch with unknown keys opens a short
write transaction:

1. :func:`resolve` parses and normalizes every key (a malformed one gets its own ``invalid``
   result), finds the versions and loads their artifacts with digests, archive, pins, pieces
   and the active Filecoin deals holding them (issue 8: provider and expiry per deal);
2. :func:`backfill` queues an ``import`` job (:mod:`forage.index.ingest`) for each key the index
   does not know: deduplicated against queued imports, limited by a token bucket, and not
   repeated for a package its registry was asked about recently.

A deal's expiry is the end date its source recorded (deal sync reads the chain's genesis),
else the mainnet time of its end epoch: ``genesis + 30 s x epoch``
(https://spec.filecoin.io/#section-systems.filecoin_nodes.clock). Only deals that are
``active`` and not yet over are shown.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from forage.config import Config, DatabaseConfig
from forage.db.engine import is_sqlite, make_engine, make_sessionmaker, utcnow
from forage.db.models import (
    Archive,
    ArchiveStatus,
    Artifact,
    ArtifactDigest,
    Deal,
    DealState,
    JobRecord,
    JobState,
    Package,
    Piece,
    PieceMember,
    Pin,
    PinStatus,
    Version,
    VersionAnswer,
)
from forage.errors import InvalidKey
from forage.index.ingest import IMPORT
from forage.index.registries import INDEXER_CLASSES
from forage.jobs import queue as jobs
from forage.lookup.keys import MAX_KEY_LENGTH, Key, parse_key
from forage.lookup.lockfiles import Entry
from indexers import IndexerError

log = logging.getLogger(__name__)

#: Filecoin mainnet genesis (2020-08-24T22:00:00Z) and the length of one epoch.
FILECOIN_GENESIS = datetime(2020, 8, 24, 22, 0, tzinfo=UTC)
EPOCH_SECONDS = 30
_ARCHIVED = ArchiveStatus.ARCHIVED.value
#: The longest ``jobs.dedup_key`` (its column's length).
DEDUP_KEY_LENGTH: int = JobRecord.dedup_key.type.length


class KeyStatus(enum.StrEnum):
    """What the index knows about one key."""

    #: The version is in the index (its artifacts may still wait to be archived).
    FOUND = "found"
    #: Not in the index yet; an import of the package is queued.
    QUEUED = "queued"
    #: Not in the index and no import queued; ``reason`` says why.
    NOT_FOUND = "not_found"
    #: The key is malformed; ``error`` says how.
    INVALID = "invalid"


def epoch_time(epoch: int) -> datetime:
    """The wall-clock time of a Filecoin mainnet epoch."""
    return FILECOIN_GENESIS + timedelta(seconds=EPOCH_SECONDS * epoch)


def current_epoch(now: datetime) -> int:
    """The Filecoin mainnet epoch at ``now``."""
    return int((now - FILECOIN_GENESIS).total_seconds()) // EPOCH_SECONDS


def live_deal(now: datetime) -> sa.ColumnElement[bool]:
    """A deal that counts at ``now``: active on chain and not over, by the end date its
    source recorded, else by its end epoch (the one rule for lookups, pages and health)."""
    not_over = sa.or_(
        Deal.end_at > now,
        sa.and_(
            Deal.end_at.is_(None),
            sa.or_(Deal.end_epoch.is_(None), Deal.end_epoch > current_epoch(now)),
        ),
    )
    return sa.and_(Deal.state == DealState.ACTIVE, not_over)


def _iso(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with ``Z`` (stored times are UTC already, see ``forage.db.engine``)."""
    if moment is None:
        return None
    text = moment.isoformat() if moment.utcoffset() else moment.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


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


@dataclass(frozen=True, slots=True)
class DealView:
    """An active storage deal holding a piece: who stores it and until when."""

    deal_id: str
    source: str
    provider: str
    state: str
    start_epoch: int | None
    end_epoch: int | None
    end_at: datetime | None = None

    @property
    def expires_at(self) -> datetime | None:
        """The end date the deal source recorded, else the mainnet time of the end epoch."""
        if self.end_at is not None:
            return self.end_at
        return None if self.end_epoch is None else epoch_time(self.end_epoch)

    def to_json(self) -> dict[str, Any]:
        return {
            "deal_id": self.deal_id,
            "source": self.source,
            "provider": self.provider,
            "state": self.state,
            "start_epoch": self.start_epoch,
            "end_epoch": self.end_epoch,
            "expires_at": _iso(self.expires_at),
        }


@dataclass(frozen=True, slots=True)
class PieceView:
    """A Filecoin piece holding an archive, where in its CAR, and its active deals."""

    piece_cid: str
    padded_size: int
    offset: int
    length: int
    deals: tuple[DealView, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "piece_cid": self.piece_cid,
            "padded_size": self.padded_size,
            "offset": self.offset,
            "length": self.length,
            "deals": [deal.to_json() for deal in self.deals],
        }


@dataclass(frozen=True, slots=True)
class PinView:
    """One pinning backend's copy of an archive."""

    backend: str
    status: str
    pinned_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "status": self.status, "pinned_at": _iso(self.pinned_at)}


@dataclass(frozen=True, slots=True)
class ArtifactView:
    """One file of a version with everything needed to fetch and trust its bytes."""

    id: int
    filename: str
    url: str
    size: int | None
    kind: str | None
    yanked: bool
    digests: Mapping[str, str] = field(default_factory=dict)
    archive_status: str | None = None
    cid: str | None = None
    archived_size: int | None = None
    archived_at: datetime | None = None
    pins: tuple[PinView, ...] = ()
    pieces: tuple[PieceView, ...] = ()

    def to_json(self) -> dict[str, Any]:
        archive = (
            None
            if self.archive_status is None
            else {
                "status": self.archive_status,
                "size": self.archived_size,
                "archived_at": _iso(self.archived_at),
            }
        )
        return {
            "filename": self.filename,
            "url": self.url,
            "size": self.size,
            "kind": self.kind,
            "yanked": self.yanked,
            "digests": dict(self.digests),
            "cid": self.cid,
            "archive": archive,
            "pins": [pin.to_json() for pin in self.pins],
            "pieces": [piece.to_json() for piece in self.pieces],
        }


@dataclass(slots=True)
class KeyResult:
    """The answer for one key, in the order the keys were given. Not frozen: a batch builds
    thousands, and a frozen dataclass's ``__init__`` costs four times as much."""

    key: str
    status: KeyStatus
    parsed: Key | None = None
    error: str | None = None
    reason: str | None = None
    job_id: int | None = None
    published_at: datetime | None = None
    yanked: bool = False
    deleted: bool = False
    artifacts: tuple[ArtifactView, ...] = ()
    #: The JSON members after ``"key"`` (see :func:`render_fragment`): set by a lookup with
    #: ``rendered=True``, where a version's stored answer stands in for ``artifacts``.
    rendered: bytes | None = None

    def answering(self, key: str) -> KeyResult:
        """This result for ``key`` (another spelling of the same version)."""
        return KeyResult(
            key,
            self.status,
            self.parsed,
            self.error,
            self.reason,
            self.job_id,
            self.published_at,
            self.yanked,
            self.deleted,
            self.artifacts,
            self.rendered,
        )

    def json_parts(self) -> tuple[bytes, ...]:
        """``to_json()`` encoded, in pieces that splice the stored fragment in as is: a reply
        joins the pieces of all its results once instead of copying each fragment twice."""
        if self.rendered is None:
            return (orjson.dumps(self.to_json()),)
        return (b'{"key":', orjson.dumps(self.key), b",", self.rendered, b"}")

    def to_json_bytes(self) -> bytes:
        """``to_json()`` encoded (:meth:`json_parts` joined)."""
        return b"".join(self.json_parts())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "status": self.status.value}
        if self.parsed is not None:
            out.update(
                purl=canonical_purl(self.parsed),
                ecosystem=self.parsed.ecosystem,
                name=self.parsed.name,
                version=self.parsed.version,
            )
        if self.status is KeyStatus.FOUND:
            out.update(
                published_at=_iso(self.published_at),
                yanked=self.yanked,
                deleted=self.deleted,
                artifacts=[artifact.to_json() for artifact in self.artifacts],
            )
        elif self.status is KeyStatus.INVALID:
            out["error"] = self.error
        elif self.status is KeyStatus.QUEUED:
            out["job_id"] = self.job_id
        else:
            out["reason"] = self.reason
        return out


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


def render_fragment(result: KeyResult) -> bytes:
    """The JSON members of ``result`` after ``"key"`` (no braces): the same for every spelling
    of a version's key, so it is stored once and spliced after each request's own key."""
    members = result.to_json()
    del members["key"]
    return orjson.dumps(members)[1:-1]


def valid_until(artifacts: Iterable[ArtifactView]) -> datetime | None:
    """When an answer showing ``artifacts`` goes stale on its own: the earliest end of a deal
    it shows (a deal past its end is no longer shown)."""
    ends = [
        deal.expires_at
        for artifact in artifacts
        for piece in artifact.pieces
        for deal in piece.deals
        if deal.expires_at is not None
    ]
    return min(ends, default=None)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The read half of a lookup: results (missing keys provisionally ``not_found``) and the
    distinct missing keys for :func:`backfill`."""

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


def summarize(results: Iterable[KeyResult]) -> dict[str, int]:
    """Count results by status (every status present, zero or not)."""
    counts = dict.fromkeys((status.value for status in KeyStatus), 0)
    for result in results:
        counts[result.status.value] += 1
    return counts


def normalize_name(ecosystem: str, name: str) -> str:
    """The registry's canonical spelling of ``name`` (PEP 503, npm rules, Go module paths);
    ecosystems Forage does not index keep the name as written."""
    indexer = INDEXER_CLASSES.get(ecosystem)
    return name if indexer is None else indexer.normalize_name(name)


#: Purls whose parse is plain: an indexed type, lowercase path segments (an npm scope as
#: ``%40``), no qualifiers or subpath. ``packageurl`` would return them unchanged; reading
#: them here costs a tenth of its parse, which dominates a 10,000-key batch otherwise. A test
#: checks both paths agree.
_PLAIN_PURL = re.compile(
    r"pkg:(npm|pypi|golang)/((?:%40)?[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)*)"
    r"@([A-Za-z0-9][A-Za-z0-9._-]*)"
)


_PLAIN_NAME = re.compile(r"@?[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)*")
_PLAIN_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


#: Plain names whose canonical spelling is remembered: the registries' checks cost more than
#: the rest of a known key's lookup, and the same names come back in batch after batch.
NAME_CACHE_SIZE = 65_536


@functools.lru_cache(maxsize=NAME_CACHE_SIZE)
def _normalized(ecosystem: str, name: str) -> str:
    """:func:`normalize_name`, remembered (a name it refuses raises again every time)."""
    return normalize_name(ecosystem, name)


def canonical_purl(key: Key) -> str:
    """``key.purl()``, spelled here without the purl library for plain names (as
    :data:`_PLAIN_PURL` reads them): building a ``PackageURL`` costs more than a lookup."""
    plain = (
        key.ecosystem in INDEXER_CLASSES
        and _PLAIN_NAME.fullmatch(key.name)
        and (key.version is None or _PLAIN_VERSION.fullmatch(key.version))
    )
    if not plain:
        return key.purl()
    name = "%40" + key.name[1:] if key.name.startswith("@") else key.name
    return f"pkg:{key.ecosystem}/{name}" + (f"@{key.version}" if key.version else "")


def parse_lookup_key(raw: object) -> Key:
    """Parse and normalize one lookup key; a key naming no version is invalid here."""
    if not isinstance(raw, str):
        raise InvalidKey(json.dumps(raw)[:300], "a key must be a string")
    plain = _PLAIN_PURL.fullmatch(raw) if len(raw) <= MAX_KEY_LENGTH else None
    if plain is None:
        key = parse_key(raw, normalize=normalize_name)
    else:
        ecosystem, name, version = plain.groups()
        if name.startswith("%40"):
            name = "@" + name[3:]
        try:
            key = Key(ecosystem, _normalized(ecosystem, name), version)
        except IndexerError as exc:
            raise InvalidKey(raw, str(exc)) from exc
    if key.version is None:
        raise InvalidKey(raw, "a lookup key must name a version (NAME@VERSION or NAME:VERSION)")
    return key


def _echo(raw: object) -> str:
    return raw if isinstance(raw, str) else json.dumps(raw)


# -- set-based building blocks -------------------------------------------------------------


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
    """What :func:`resolve` reads for ``keys``, as one statement of outer joins (a row per
    file x digest x pin x active deal): the benchmark's bare-SQL baseline."""
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


#: Artifact kinds preferred when one key must be answered with one CID (the source first).
_SOURCE_KINDS = frozenset({"sdist", "tarball", "zip"})


def preferred_cid(artifacts: Iterable[ArtifactView]) -> str | None:
    """One CID for a version, as the original Forage answered: the source archive's when a
    release has several files (a PyPI sdist), else the first archived file by name."""
    archived = sorted(
        ((a.kind not in _SOURCE_KINDS, a.filename, a.cid) for a in artifacts if a.cid),
    )
    return archived[0][2] if archived else None


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
                Archive.id.label("archive_id"),
                _raw(Archive.status),
                Archive.cid,
                Archive.size.label("archived_size"),
                _raw(Archive.archived_at),
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
                pins=pins.get(row.archive_id, ()),
                pieces=pieces.get(row.archive_id, ()),
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


def _stored_answers(session: Session, keys: Sequence[Key], now: datetime) -> Any:
    """``(position, body)`` for each of ``keys`` (counted from 1) with a stored answer current
    at ``now``: one probe of the answers' purl index per key, the whole of a lookup of known
    versions."""
    purls = [canonical_purl(key) for key in keys]
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
            *((VersionAnswer.stamp,) if rendered else ()),
        )
        .select_from(k)
        .outerjoin(Package, sa.and_(Package.ecosystem == k.c.ecosystem, Package.name == k.c.name))
        .outerjoin(Version, sa.and_(Version.package_id == Package.id, Version.number == k.c.number))
    )
    if rendered:
        statement = statement.outerjoin(VersionAnswer, VersionAnswer.version_id == Version.id)
    return statement


# -- the two halves of a lookup -------------------------------------------------------------


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
    for raw in raw_keys:
        try:
            parsed.append(parse_lookup_key(raw))
        except InvalidKey as exc:
            parsed.append(exc)
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
    if unique and rendered:
        stored = session.connection().execute(_stored_answers(session, unique, now)).all()
        for position, body in stored:
            bodies[position - 1] = body
        rest = [key for key, body in zip(unique, bodies, strict=True) if body is None]
    if rest:
        statement = _version_rows(session, rest, rendered=rendered)
        for row in session.connection().execute(statement).all():
            key = Key(row.ecosystem, row.name, row.number)
            if row.version_id is not None:
                versions[key] = row
            elif row.package_id is not None:
                packages[key] = row
    artifacts = load_artifacts(
        session, version_ids=sorted({row.version_id for row in versions.values()}), now=now
    )
    for key, version in versions.items():
        views = tuple(artifacts.get(version.version_id, ()))
        result = KeyResult(
            "",
            KeyStatus.FOUND,
            key,
            published_at=_when(version.published_at),
            yanked=version.yanked,
            deleted=version.deleted,
            artifacts=views,
        )
        if rendered:
            body = render_fragment(result)
            result = replace(result, rendered=body)
            fills[version.version_id] = AnswerFill(
                version.version_id, version.stamp, body, valid_until(views), canonical_purl(key)
            )
        answers[slots[key]] = result
    for key, body, answer in zip(unique, bodies, answers, strict=True):
        if body is not None or answer is not None:
            continue
        package = packages.get(key)
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
            results.append(KeyResult(_echo(raw), KeyStatus.FOUND, item, rendered=body))
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
    """The ``dedup_key`` of the import job for ``key`` (the watchers' spelling: a Go import
    is per module version, other registries' per package); a key too long for the column
    is named by its SHA-256."""
    suffix = f"@{key.version}" if key.ecosystem == "golang" and key.version else ""
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
        if key.ecosystem not in INDEXER_CLASSES:
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
    :func:`resolve`), answers computed here are handed to ``keep`` (a server stores them off
    the request's path), else stored with :func:`save_answers` given ``write``."""
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


def lockfile_reply(entries: Sequence[Entry], results: Sequence[KeyResult]) -> dict[str, Any]:
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


def read_only_sessionmaker(
    writer: sessionmaker[Session],
) -> tuple[sessionmaker[Session], Engine | None]:
    """Sessions on the same database as ``writer`` that only read: on SQLite a second engine
    whose transactions begin with a plain ``BEGIN`` (no write lock) and that reads the file
    through a memory map (lookups probe pages all over it), returned so the caller disposes
    of it; elsewhere ``writer`` itself. https://www.sqlite.org/mmap.html"""
    bind = writer.kw.get("bind")
    if not isinstance(bind, Engine) or bind.dialect.name != "sqlite":
        return writer, None
    url = bind.url.render_as_string(hide_password=False)
    engine = make_engine(DatabaseConfig(url=url), read_only=True)
    sa.event.listen(engine, "connect", _map_file)
    return make_sessionmaker(engine), engine


#: How much of a SQLite file readers map into memory.
SQLITE_MMAP_SIZE = 4 * 1024**3


def _map_file(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA mmap_size = {SQLITE_MMAP_SIZE}")
    finally:
        cursor.close()


# -- other reads ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CidMatch:
    """One artifact whose archived bytes have a given CID."""

    ecosystem: str
    name: str
    version: str
    artifact: ArtifactView

    def to_json(self) -> dict[str, Any]:
        key = Key(self.ecosystem, self.name, self.version)
        return {
            "purl": canonical_purl(key),
            "ecosystem": self.ecosystem,
            "name": self.name,
            "version": self.version,
            "artifact": self.artifact.to_json(),
        }


def artifacts_by_cid(session: Session, cid: str, *, now: datetime | None = None) -> list[CidMatch]:
    """Every artifact whose archive has CID ``cid`` (text as stored: CIDv1, base32)."""
    rows = session.execute(
        sa.select(Artifact.id, Artifact.version_id, Package.ecosystem, Package.name, Version.number)
        .join(Archive, Archive.artifact_id == Artifact.id)
        .join(Version, Version.id == Artifact.version_id)
        .join(Package, Package.id == Version.package_id)
        .where(Archive.cid == cid, Archive.status == ArchiveStatus.ARCHIVED)
        .order_by(Package.ecosystem, Package.name, Version.number, Artifact.filename)
    ).all()
    views = load_artifacts(session, artifact_ids=[row.id for row in rows], now=now)
    by_id = {view.id: view for group in views.values() for view in group}
    return [CidMatch(row.ecosystem, row.name, row.number, by_id[row.id]) for row in rows]


@dataclass(frozen=True, slots=True)
class VersionSummary:
    """One version of a package with how many of its files are archived."""

    number: str
    published_at: datetime | None
    yanked: bool
    deleted: bool
    artifacts: int
    archived: int

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.number,
            "published_at": _iso(self.published_at),
            "yanked": self.yanked,
            "deleted": self.deleted,
            "artifacts": self.artifacts,
            "archived": self.archived,
        }


@dataclass(frozen=True, slots=True)
class PackageView:
    """A package and all its versions, newest first."""

    ecosystem: str
    name: str
    display_name: str | None
    deleted: bool
    last_synced: datetime | None
    versions: tuple[VersionSummary, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "purl": canonical_purl(Key(self.ecosystem, self.name, None)),
            "ecosystem": self.ecosystem,
            "name": self.name,
            "display_name": self.display_name,
            "deleted": self.deleted,
            "last_synced": _iso(self.last_synced),
            "versions": [version.to_json() for version in self.versions],
        }


def package_view(session: Session, ecosystem: str, name: str) -> PackageView | None:
    """The package ``name`` (normalized here) of ``ecosystem``, or ``None``."""
    name = normalize_name(ecosystem, name)
    package = session.execute(
        sa.select(Package).where(Package.ecosystem == ecosystem, Package.name == name)
    ).scalar_one_or_none()
    if package is None:
        return None
    archived = sa.case((Archive.status == ArchiveStatus.ARCHIVED, 1), else_=0)
    rows = session.execute(
        sa.select(
            Version.number,
            Version.published_at,
            Version.yanked,
            Version.deleted,
            sa.func.count(Artifact.id),
            sa.func.coalesce(sa.func.sum(archived), 0),
        )
        .outerjoin(Artifact, Artifact.version_id == Version.id)
        .outerjoin(Archive, Archive.artifact_id == Artifact.id)
        .where(Version.package_id == package.id)
        .group_by(Version.id)
        .order_by(Version.published_at.desc().nulls_last(), Version.number.desc())
    )
    versions = tuple(VersionSummary(*row) for row in rows)
    return PackageView(
        package.ecosystem,
        package.name,
        package.display_name,
        package.deleted,
        package.last_synced,
        versions,
    )


def archive_stats(session: Session) -> dict[str, Any]:
    """Counts for ``/api/v1/stats`` and the home page: rows, archived bytes, pins and deals
    by status, pieces and their bytes."""

    def by(column: Any, states: type[enum.Enum]) -> dict[str, int]:
        counts = dict.fromkeys((str(member.value) for member in states), 0)
        for value, count in session.execute(sa.select(column, sa.func.count()).group_by(column)):
            counts[str(states(value).value)] = int(count)
        return counts

    scalar = session.execute
    packages = dict(
        scalar(sa.select(Package.ecosystem, sa.func.count()).group_by(Package.ecosystem)).all()
    )
    archived_bytes = scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Archive.size), 0)).where(
            Archive.status == ArchiveStatus.ARCHIVED
        )
    ).scalar_one()
    pieces, piece_bytes = scalar(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(Piece.car_size), 0))
    ).one()
    return {
        "packages": sum(packages.values()),
        "packages_by_ecosystem": {key: int(value) for key, value in sorted(packages.items())},
        "versions": scalar(sa.select(sa.func.count()).select_from(Version)).scalar_one(),
        "artifacts": scalar(sa.select(sa.func.count()).select_from(Artifact)).scalar_one(),
        "archives": by(Archive.status, ArchiveStatus),
        "archived_bytes": int(archived_bytes or 0),
        "pins": by(Pin.status, PinStatus),
        "pieces": int(pieces),
        "piece_bytes": int(piece_bytes),
        "deals": by(Deal.state, DealState),
    }
