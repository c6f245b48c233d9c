"""What a lookup answers: per-key results and the views of artifacts, archives, pins,
pieces and deals they hold, rendered as JSON.

A found version's result lists its artifacts with digests, archive, pins, pieces and the
active Filecoin deals holding them (issue 8: provider and expiry per deal; a deal's expiry is
computed by :mod:`forage.lookup.epochs`). The views are plain values, so an answer can be
rendered once (:func:`render_fragment`), stored, and spliced into later replies as is.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson

from forage.lookup.epochs import epoch_time
from forage.lookup.keys import Key
from forage.lookup.normalize import canonical_purl


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


def _iso(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with ``Z`` (stored times are UTC already, see ``forage.db.engine``)."""
    if moment is None:
        return None
    text = moment.isoformat() if moment.utcoffset() else moment.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


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
class Removal:
    """What a found version's answer says beyond its files: whether and how the registry
    withdrew it, its deprecation, and the package's status (PEP 792, npm)."""

    removed_at: datetime | None = None
    removal: str | None = None
    deprecated: str | None = None
    package_status: str | None = None
    package_status_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        status = self.package_status
        return {
            "removed_at": _iso(self.removed_at),
            "removal": self.removal,
            "deprecated": self.deprecated,
            "package_status": (
                None if status is None else {"status": status, "reason": self.package_status_reason}
            ),
        }


#: A version the registry still offers, not deprecated, of an active package.
NOT_REMOVED = Removal()


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
    #: The archive's digest, ``"<algorithm>:<hex>"``: verified against the registry's, or
    #: Forage's own sha256 of the first download when the registry published none.
    archive_digest: str | None = None
    pins: tuple[PinView, ...] = ()
    pieces: tuple[PieceView, ...] = ()
    removed_at: datetime | None = None
    removal: str | None = None

    def to_json(self) -> dict[str, Any]:
        archive = (
            None
            if self.archive_status is None
            else {
                "status": self.archive_status,
                "size": self.archived_size,
                "archived_at": _iso(self.archived_at),
                "digest": self.archive_digest,
                # "forage": the registry published no digest for this file, so nothing but
                # Forage's own digest of its first download vouches for these bytes.
                "digest_source": "registry" if self.digests else "forage",
            }
        )
        return {
            "filename": self.filename,
            "url": self.url,
            "size": self.size,
            "kind": self.kind,
            "yanked": self.yanked,
            "removed_at": _iso(self.removed_at),
            "removal": self.removal,
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
    #: For ``not_found``: what the registry answered when Forage asked, and when.
    answer: str | None = None
    checked_at: datetime | None = None
    #: For ``found``: removal, deprecation and package status (``None``: none of them).
    removal: Removal | None = None

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
            self.answer,
            self.checked_at,
            self.removal,
        )

    def rendered_only(self) -> KeyResult:
        """This result as a reply needs it once it is rendered: its key, status and bytes.
        A batch holds these while its reply streams, not the thousands of small view and
        key objects the bytes were rendered from (the allocator would keep their pools)."""
        if self.rendered is None or (self.parsed is None and not self.artifacts):
            return self
        return KeyResult(self.key, self.status, rendered=self.rendered)

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
        if self.rendered is not None:
            return cast(dict[str, Any], orjson.loads(self.to_json_bytes()))
        out: dict[str, Any] = {"key": self.key, "status": self.status.value}
        if self.parsed is not None:
            out.update(
                purl=canonical_purl(self.parsed),
                ecosystem=self.parsed.ecosystem,
                name=self.parsed.name,
                version=self.parsed.version,
            )
            if self.parsed.qualifiers:
                out["qualifiers"] = dict(self.parsed.qualifiers)
        if self.status is KeyStatus.FOUND:
            out.update(
                published_at=_iso(self.published_at),
                yanked=self.yanked,
                deleted=self.deleted,
                **(self.removal or NOT_REMOVED).to_json(),
                artifacts=[artifact.to_json() for artifact in self.artifacts],
            )
        elif self.status is KeyStatus.INVALID:
            out["error"] = self.error
        elif self.status is KeyStatus.QUEUED:
            out["job_id"] = self.job_id
        else:
            out["reason"] = self.reason
            if self.checked_at is not None:
                out.update(answer=self.answer, checked_at=_iso(self.checked_at))
        return out


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


def summarize(results: Iterable[KeyResult]) -> dict[str, int]:
    """Count results by status (every status present, zero or not)."""
    counts = dict.fromkeys((status.value for status in KeyStatus), 0)
    for result in results:
        counts[result.status.value] += 1
    return counts


#: Artifact kinds preferred when one key must be answered with one CID (the source first).
_SOURCE_KINDS = frozenset({"sdist", "tarball", "zip"})


def preferred_cid(artifacts: Iterable[ArtifactView]) -> str | None:
    """One CID for a version, as the original Forage answered: the source archive's when a
    release has several files (a PyPI sdist), else the first archived file by name."""
    archived = sorted(
        ((a.kind not in _SOURCE_KINDS, a.filename, a.cid) for a in artifacts if a.cid),
    )
    return archived[0][2] if archived else None
