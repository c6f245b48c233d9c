"""Every table of Forage's index, on the one :class:`~forage.db.engine.Base`.

The chain the pipeline fills (DESIGN.md, "Data model"):
``Package -> Version -> Artifact (+ ArtifactDigest) -> Archive -> Pin``, archives packed into
``Piece`` rows through ``PieceMember``, the Filecoin ``Deal`` rows that hold each piece, each
watcher's ``FeedCursor``, and the durable job queue's ``JobRecord`` (see :mod:`forage.jobs.queue`).

Invariants live in the schema, so a race ends in an ``IntegrityError``, never a duplicate:
unique natural keys, one archive per artifact, CHECKs on CID and digest form, states as
enums stored by value (portable ``VARCHAR`` + CHECK, no PostgreSQL enum types), timestamps in
UTC and timezone-aware on both stores. CIDs are CIDv1 in base32 (``b`` + ``[a-z2-7]``), as
``ipfs add --cid-version=1`` prints them (https://github.com/multiformats/cid).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, attribute_keyed_dict, mapped_column, relationship

from forage.db.engine import Base, BigIntPK, enum_column, utcnow
from indexers.types import PACKAGE_STATUSES

#: Base32 alphabet of multibase ``b`` (RFC 4648, lower case, no padding).
_BASE32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
#: A CIDv1 over a 32-byte digest is at least 59 characters (``b`` + 58).
CID_MIN_LENGTH = 59
CID_MAX_LENGTH = 128
_HEX = "0123456789abcdef"
#: Hex length of the digest algorithms whose length we know.
DIGEST_HEX_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "blake2b_256": 64, "sha512": 128}


def cid_check(column: str) -> str:
    """SQL (valid on SQLite and PostgreSQL) true when ``column`` is a base32 CIDv1 or NULL."""
    return (
        f"{column} IS NULL OR (substr({column}, 1, 1) = 'b'"
        f" AND length({column}) BETWEEN {CID_MIN_LENGTH} AND {CID_MAX_LENGTH}"
        f" AND ltrim(substr({column}, 2), '{_BASE32_ALPHABET}') = '')"
    )


_DIGEST_LENGTH_CASE = (
    "CASE algorithm "
    + " ".join(f"WHEN '{name}' THEN {n}" for name, n in DIGEST_HEX_LENGTHS.items())
    + " ELSE length(value) END"
)


PACKAGE_STATUS_CHECK = f"status IS NULL OR status IN {PACKAGE_STATUSES!r}"


def _created() -> Mapped[datetime]:
    return mapped_column(default=utcnow, server_default=sa.func.current_timestamp())


def _updated() -> Mapped[datetime]:
    return mapped_column(
        default=utcnow, onupdate=utcnow, server_default=sa.func.current_timestamp()
    )


def _flag() -> Mapped[bool]:
    return mapped_column(default=False, server_default=sa.false())


class ArchiveStatus(enum.StrEnum):
    """Where an artifact's archiving stands."""

    PENDING = "pending"
    ARCHIVED = "archived"
    FAILED = "failed"


class PinStatus(enum.StrEnum):
    """A pinning backend's view of one pin (the IPFS Pinning Service API's states)."""

    QUEUED = "queued"
    PINNING = "pinning"
    PINNED = "pinned"
    FAILED = "failed"


class DealState(enum.StrEnum):
    """A Filecoin deal's state, derived from its on-chain record."""

    PROPOSED = "proposed"
    PUBLISHED = "published"
    ACTIVE = "active"
    EXPIRED = "expired"
    PROPOSAL_EXPIRED = "proposal_expired"
    REJECTED = "rejected"
    SLASHED = "slashed"
    ERROR = "error"


class JobState(enum.StrEnum):
    """A queued job's life: ``queued`` (waiting, maybe until ``run_after``) -> ``running``
    (leased by a worker) -> ``done``, or back to ``queued`` after a failure, or ``dead`` once
    retrying is pointless (attempts used up, or a permanent error)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


class Package(Base):
    """One package of one registry, keyed by its registry-normalized name."""

    __tablename__ = "packages"
    __table_args__ = (
        sa.UniqueConstraint("ecosystem", "name"),
        sa.CheckConstraint("ecosystem <> '' AND ecosystem = lower(ecosystem)", name="ecosystem"),
        sa.CheckConstraint("name <> ''", name="name"),
        sa.CheckConstraint(PACKAGE_STATUS_CHECK, name="status"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    ecosystem: Mapped[str] = mapped_column(sa.String(32))
    name: Mapped[str] = mapped_column(sa.String(1024))
    display_name: Mapped[str | None] = mapped_column(sa.String(1024))
    #: Registry metadata worth keeping that has no column (``PackageInfo.extra``).
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    deleted: Mapped[bool] = _flag()
    #: The registry's status (``indexers.types.PACKAGE_STATUSES``; NULL: active) and its why.
    status: Mapped[str | None] = mapped_column(sa.String(16))
    status_reason: Mapped[str | None] = mapped_column(sa.Text)
    last_synced: Mapped[datetime | None]
    last_serial: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    versions: Mapped[list[Version]] = relationship(
        back_populates="package", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"<Package {self.ecosystem}/{self.name}>"


class Version(Base):
    """One version of a package."""

    __tablename__ = "versions"
    __table_args__ = (
        sa.UniqueConstraint("package_id", "number"),
        sa.CheckConstraint("number <> ''", name="number"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    package_id: Mapped[int] = mapped_column(sa.ForeignKey("packages.id", ondelete="CASCADE"))
    number: Mapped[str] = mapped_column(sa.String(256))
    published_at: Mapped[datetime | None]
    yanked: Mapped[bool] = _flag()
    deleted: Mapped[bool] = _flag()
    #: The registry's deprecation message, if the version is deprecated.
    deprecated: Mapped[str | None] = mapped_column(sa.Text)
    #: When Forage saw the registry withdraw it and how (``"pypi: remove release"``); NULL: listed.
    removed_at: Mapped[datetime | None]
    removal: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    package: Mapped[Package] = relationship(back_populates="versions")
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="version", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"<Version {self.package_id}@{self.number}>"


class Artifact(Base):
    """One downloadable file of a version: what gets archived."""

    __tablename__ = "artifacts"
    __table_args__ = (
        sa.UniqueConstraint("version_id", "filename"),
        sa.CheckConstraint("filename <> ''", name="filename"),
        sa.CheckConstraint("size IS NULL OR size >= 0", name="size"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    version_id: Mapped[int] = mapped_column(sa.ForeignKey("versions.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(sa.String(512))
    url: Mapped[str] = mapped_column(sa.Text)
    size: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: ``sdist``, ``bdist_wheel``, ``tarball``, ``zip``... as the indexer names it.
    kind: Mapped[str | None] = mapped_column(sa.String(32))
    yanked: Mapped[bool] = _flag()
    yanked_reason: Mapped[str | None] = mapped_column(sa.Text)
    requires_python: Mapped[str | None] = mapped_column(sa.String(256))
    uploaded_at: Mapped[datetime | None]
    #: When Forage saw the registry withdraw it and how (``"pypi: remove file"``); NULL: listed.
    removed_at: Mapped[datetime | None]
    removal: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    version: Mapped[Version] = relationship(back_populates="artifacts")
    #: Upstream digests keyed by algorithm (``sha256`` -> hex, ``h1`` -> ``h1:...``).
    digests: Mapped[dict[str, ArtifactDigest]] = relationship(
        collection_class=attribute_keyed_dict("algorithm"),
        back_populates="artifact",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    archive: Mapped[Archive | None] = relationship(back_populates="artifact", passive_deletes=True)

    def __repr__(self) -> str:
        return f"<Artifact {self.filename}>"


class ArtifactDigest(Base):
    """One upstream digest of an artifact, indexed for lookups by digest.

    Values are lowercase hex, of the right length for known algorithms, except ``h1`` (Go's
    module dirhash), kept as the checksum database prints it: ``h1:<base64>``.
    """

    __tablename__ = "artifact_digests"
    __table_args__ = (
        sa.Index(None, "algorithm", "value"),
        sa.CheckConstraint("algorithm <> '' AND algorithm = lower(algorithm)", name="algorithm"),
        sa.CheckConstraint(
            "(algorithm = 'h1' AND value LIKE 'h1:%' AND length(value) > 3)"
            " OR (algorithm <> 'h1' AND value <> ''"
            f" AND ltrim(value, '{_HEX}') = '' AND length(value) = {_DIGEST_LENGTH_CASE})",
            name="value",
        ),
    )

    artifact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("artifacts.id", ondelete="CASCADE"), primary_key=True
    )
    algorithm: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(256))

    artifact: Mapped[Artifact] = relationship(back_populates="digests")


class Archive(Base):
    """The content-addressed copy of one artifact (at most one per artifact).

    ``archived`` rows carry the CID (CIDv1, raw leaves), the byte size, the digest we verified
    against upstream and when; ``failed`` rows carry the error.
    """

    __tablename__ = "archives"
    __table_args__ = (
        sa.UniqueConstraint("artifact_id"),
        sa.Index(None, "cid"),
        sa.Index(None, "status", "id"),
        sa.Index(None, "verified_algorithm", "verified_digest"),
        sa.CheckConstraint(cid_check("cid"), name="cid"),
        sa.CheckConstraint("size IS NULL OR size >= 0", name="size"),
        sa.CheckConstraint(
            "status <> 'archived' OR (cid IS NOT NULL AND size IS NOT NULL"
            " AND archived_at IS NOT NULL)",
            name="archived_complete",
        ),
        sa.CheckConstraint("status <> 'failed' OR error IS NOT NULL", name="failed_error"),
        sa.CheckConstraint(
            "(verified_algorithm IS NULL) = (verified_digest IS NULL)", name="verified_pair"
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    artifact_id: Mapped[int] = mapped_column(sa.ForeignKey("artifacts.id", ondelete="CASCADE"))
    cid: Mapped[str | None] = mapped_column(sa.String(CID_MAX_LENGTH))
    size: Mapped[int | None] = mapped_column(sa.BigInteger)
    status: Mapped[ArchiveStatus] = mapped_column(
        enum_column(ArchiveStatus, "archive_status"), default=ArchiveStatus.PENDING
    )
    error: Mapped[str | None] = mapped_column(sa.Text)
    verified_algorithm: Mapped[str | None] = mapped_column(sa.String(32))
    verified_digest: Mapped[str | None] = mapped_column(sa.String(256))
    archived_at: Mapped[datetime | None]
    #: Attempts since the last success whose bytes failed verification (digest mismatch,
    #: unreadable archive): what bounds their retries (``jobs.mismatch_attempts``).
    mismatches: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    artifact: Mapped[Artifact] = relationship(back_populates="archive")
    pins: Mapped[list[Pin]] = relationship(
        back_populates="archive", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"<Archive {self.id} {self.status} {self.cid}>"


class Pin(Base):
    """One archive pinned (or being pinned) on one backend, by its name in the config."""

    __tablename__ = "pins"
    __table_args__ = (
        sa.UniqueConstraint("archive_id", "backend"),
        sa.CheckConstraint("backend <> ''", name="backend"),
        sa.CheckConstraint("status <> 'pinned' OR pinned_at IS NOT NULL", name="pinned_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    archive_id: Mapped[int] = mapped_column(sa.ForeignKey("archives.id", ondelete="CASCADE"))
    backend: Mapped[str] = mapped_column(sa.String(64))
    #: The backend's own id of the pin request (Pinning Service API ``requestid``).
    request_id: Mapped[str | None] = mapped_column(sa.String(256))
    status: Mapped[PinStatus] = mapped_column(
        enum_column(PinStatus, "pin_status"), default=PinStatus.QUEUED
    )
    error: Mapped[str | None] = mapped_column(sa.Text)
    pinned_at: Mapped[datetime | None]
    checked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    archive: Mapped[Archive] = relationship(back_populates="pins")


class Piece(Base):
    """A Filecoin piece: a CAR of many archives and its commitment (piece CID)."""

    __tablename__ = "pieces"
    __table_args__ = (
        sa.UniqueConstraint("piece_cid"),
        sa.CheckConstraint(cid_check("piece_cid"), name="piece_cid"),
        sa.CheckConstraint(cid_check("car_root"), name="car_root"),
        sa.CheckConstraint(
            "padded_size >= 128 AND (padded_size & (padded_size - 1)) = 0", name="padded_size"
        ),
        sa.CheckConstraint("car_size > 0 AND car_size <= padded_size / 128 * 127", name="car_size"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    piece_cid: Mapped[str] = mapped_column(sa.String(CID_MAX_LENGTH))
    padded_size: Mapped[int] = mapped_column(sa.BigInteger)
    car_root: Mapped[str] = mapped_column(sa.String(CID_MAX_LENGTH))
    car_size: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = _created()

    members: Mapped[list[PieceMember]] = relationship(
        back_populates="piece", cascade="all, delete-orphan", passive_deletes=True
    )
    deals: Mapped[list[Deal]] = relationship(back_populates="piece", passive_deletes=True)


class PieceMember(Base):
    """Where one archive's blocks sit inside a piece's CAR (byte ``offset`` and ``length``)."""

    __tablename__ = "piece_members"
    __table_args__ = (
        sa.UniqueConstraint("piece_id", "offset"),
        #: An archive is packed into one piece; more copies are more deals of that piece.
        sa.UniqueConstraint("archive_id"),
        sa.CheckConstraint('"offset" >= 0 AND length > 0', name="extent"),
    )

    piece_id: Mapped[int] = mapped_column(
        sa.ForeignKey("pieces.id", ondelete="CASCADE"), primary_key=True
    )
    archive_id: Mapped[int] = mapped_column(
        sa.ForeignKey("archives.id", ondelete="RESTRICT"), primary_key=True
    )
    offset: Mapped[int] = mapped_column(sa.BigInteger)
    length: Mapped[int] = mapped_column(sa.BigInteger)

    piece: Mapped[Piece] = relationship(back_populates="members")
    archive: Mapped[Archive] = relationship()


class Deal(Base):
    """A storage deal holding a piece, as last seen at its source (``lotus``, a dump...).

    Epochs are chain heights; each ``*_at`` column is its epoch's time (genesis + 30 s per
    epoch), kept so readers need no chain parameters. ``activation_epoch`` is the sector start
    (``None`` until the deal is sealed), ``slash_epoch`` when it was slashed, if ever.
    """

    __tablename__ = "deals"
    __table_args__ = (
        sa.UniqueConstraint("deal_id", "source"),
        sa.Index(None, "piece_id"),
        sa.CheckConstraint("deal_id <> '' AND source <> ''", name="key"),
        sa.CheckConstraint(
            "start_epoch IS NULL OR end_epoch IS NULL OR end_epoch > start_epoch", name="epochs"
        ),
        sa.CheckConstraint(
            "piece_size IS NULL OR (piece_size >= 128 AND (piece_size & (piece_size - 1)) = 0)",
            name="piece_size",
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    deal_id: Mapped[str] = mapped_column(sa.String(128))
    source: Mapped[str] = mapped_column(sa.String(64))
    piece_id: Mapped[int] = mapped_column(sa.ForeignKey("pieces.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[DealState] = mapped_column(enum_column(DealState, "deal_state"))
    start_epoch: Mapped[int | None] = mapped_column(sa.BigInteger)
    end_epoch: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: The deal proposal's padded piece size, in bytes.
    piece_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    client: Mapped[str | None] = mapped_column(sa.String(64))
    verified: Mapped[bool | None]
    activation_epoch: Mapped[int | None] = mapped_column(sa.BigInteger)
    slash_epoch: Mapped[int | None] = mapped_column(sa.BigInteger)
    start_at: Mapped[datetime | None]
    end_at: Mapped[datetime | None]
    activated_at: Mapped[datetime | None]
    slashed_at: Mapped[datetime | None]
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    piece: Mapped[Piece] = relationship(back_populates="deals")


class FeedCursor(Base):
    """Where a registry's watcher resumes, written with the rows of the page it covers.

    ``version`` increases with every write: update with ``WHERE version = <read value>`` so
    two watchers of one registry cannot both move the cursor (compare-and-set). ``head`` is
    the feed's newest position when last seen (``{"head": <position>}``); ``at_head`` says
    whether the last page written reached it, ``caught_up_at`` when a page last did and
    ``position_at`` the registry's own date of the cursor's position, where it dates entries:
    what the lag in seconds is computed from (:mod:`forage.index.status`).
    """

    __tablename__ = "feed_cursors"
    __table_args__ = (sa.CheckConstraint("feed <> ''", name="feed"),)

    #: The watcher's name: the registry's purl type (``npm``), or ``<type>:<feed>`` where a
    #: registry has several feeds.
    feed: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    cursor: Mapped[dict[str, Any]]
    head: Mapped[dict[str, Any] | None]
    at_head: Mapped[bool] = _flag()
    caught_up_at: Mapped[datetime | None]
    position_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(default=1, server_default="1")
    updated_at: Mapped[datetime] = _updated()


LIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


class JobRecord(Base):
    """A row of the durable job queue; :mod:`forage.jobs.queue` is the only code that writes it.

    ``dedup_key`` is unique among *queued* jobs (a partial unique index): enqueueing the same
    work twice before it starts yields one job, while a change arriving during a run still
    queues one more run.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index(None, "state", "run_after"),
        sa.Index(None, "state", "lease_expires_at"),
        sa.Index(None, "dedup_key", "state"),
        sa.Index(None, "state", "finished_at"),
        sa.Index(
            "uq_jobs_dedup_key_queued",
            "dedup_key",
            unique=True,
            sqlite_where=sa.text("state = 'queued'"),
            postgresql_where=sa.text("state = 'queued'"),
        ),
        sa.CheckConstraint("kind <> ''", name="kind"),
        sa.CheckConstraint(
            "attempts >= 0 AND (max_attempts IS NULL OR"
            " (max_attempts >= 1 AND attempts <= max_attempts))",
            name="attempts",
        ),
        sa.CheckConstraint(
            "state <> 'running' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="running_leased",
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[JobState] = mapped_column(
        enum_column(JobState, "job_state"), default=JobState.QUEUED
    )
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    #: Per-job limit; ``None`` means the queue's ``jobs.max_attempts`` setting.
    max_attempts: Mapped[int | None]
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(256))
    lease_expires_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    dedup_key: Mapped[str | None] = mapped_column(sa.String(512))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    finished_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"<JobRecord {self.id} {self.kind} {self.state}>"


class VersionAnswer(Base):
    """One version's lookup answer, rendered once (:mod:`forage.lookup.resolve`), so a batch
    lookup of known versions is one indexed read whose JSON is spliced into the response.

    Triggers (migration 0003) turn a row into a tombstone, ``body`` NULL and ``stamp`` bumped,
    whenever anything the answer shows changes: the version, its files, digests, archives,
    pins, pieces and deals. A lookup stores a freshly computed answer only where the stamp is
    still the one it read, so an answer computed before a change never outlives it.
    ``valid_until`` is the earliest end of any deal shown: past it the answer is recomputed.
    A lookup reads only rows with a body (and ``valid_until`` ahead), by ``purl``. Every
    version has a row from its insert on (the trigger's tombstone; 0004 added the older
    ones), so the answers to render are found from this table's indexes alone.
    """

    __tablename__ = "version_answers"
    __table_args__ = (
        # The answers to render again (forage.lookup.answers): retired, or stored before 0004.
        sa.Index(
            "ix_version_answers_stale",
            "version_id",
            sqlite_where=sa.text("body IS NULL OR purl IS NULL"),
            postgresql_where=sa.text("body IS NULL OR purl IS NULL"),
        ),
    )

    version_id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=False)
    #: The JSON members of the version's result after ``"key"``, without the braces.
    body: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    valid_until: Mapped[datetime | None] = mapped_column(index=True)
    stamp: Mapped[int] = mapped_column(default=0, server_default="0")
    #: The canonical purl of the version as rendered
    #: (:func:`forage.lookup.normalize.canonical_purl`): how a lookup finds its answer. Not
    #: unique: tombstones of a renamed package keep theirs.
    purl: Mapped[str | None] = mapped_column(sa.Text, index=True)


class LookupMiss(Base):
    """A registry's answer that it does not have a package (``version`` empty) or one version
    of it, and when Forage asked: a lookup of that key answers ``not_found`` with it, and
    queues no import until ``server.backfill_recheck`` has passed (:mod:`forage.index.misses`).
    """

    __tablename__ = "lookup_misses"
    __table_args__ = (
        sa.UniqueConstraint("ecosystem", "name", "version"),
        sa.CheckConstraint("ecosystem <> '' AND name <> ''", name="key"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    ecosystem: Mapped[str] = mapped_column(sa.String(32))
    name: Mapped[str] = mapped_column(sa.String(1024))
    #: The version asked for; ``''`` when the registry has no such package at all.
    version: Mapped[str] = mapped_column(sa.String(256), default="", server_default="")
    #: What the registry answered (``HTTP 404 from <url>: <body>``), or what its listing said.
    answer: Mapped[str] = mapped_column(sa.Text)
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)


# The block locator's tables live in their own module; importing them here registers them on
# ``Base.metadata`` wherever the models are loaded (migrations, ``forage db check``).
from forage.db.packs import BlockPack, PackBlock  # noqa: E402, F401
