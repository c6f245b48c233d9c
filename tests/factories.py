"""Consistent rows for tests: package -> version -> artifact (+ digests) -> archive -> pin,
and pieces with members and deals.

Each builder creates what it needs and was not given, adds the row to the session and
flushes, so ids are set. Values are derived, never random: an artifact's bytes come from a
counter, its size and digests are those of the bytes, and its archive's CID is the CIDv1
(raw codec, sha2-256) of the same bytes, which is what ``ipfs add --cid-version=1`` prints for
a file of one chunk. ``artifact_content(artifact)`` gives the bytes back.
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from multiformats import CID, multihash
from sqlalchemy.orm import Session

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
    PinStatus,
    Version,
)

_sequence = itertools.count(1)
#: A fixed clock, so timestamps in factory rows are reproducible.
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def raw_cid(data: bytes) -> str:
    """The CIDv1 (raw, sha2-256, base32) of ``data``."""
    return str(CID("base32", 1, "raw", multihash.digest(data, "sha2-256")))


def piece_like_cid(seed: bytes) -> str:
    """A well-formed base32 CIDv1 (fil-commitment-unsealed) for a piece row."""
    digest = hashlib.sha256(seed).digest()
    return str(CID("base32", 1, "fil-commitment-unsealed", ("sha2-256-trunc254-padded", digest)))


def artifact_content(artifact: Artifact) -> bytes:
    """The bytes a factory artifact stands for."""
    return f"content of {artifact.filename}\n".encode()


def _add(session: Session, row: Any) -> Any:
    session.add(row)
    session.flush()
    return row


def make_package(
    session: Session, *, ecosystem: str = "npm", name: str | None = None, **fields: Any
) -> Package:
    name = name or f"package-{next(_sequence)}"
    fields.setdefault("display_name", name)
    return _add(session, Package(ecosystem=ecosystem, name=name, **fields))


def make_version(
    session: Session, *, package: Package | None = None, number: str | None = None, **fields: Any
) -> Version:
    package = package or make_package(session)
    number = number or f"1.0.{next(_sequence)}"
    fields.setdefault("published_at", EPOCH)
    return _add(session, Version(package=package, number=number, **fields))


def make_artifact(
    session: Session,
    *,
    version: Version | None = None,
    filename: str | None = None,
    digests: tuple[str, ...] = ("sha256", "sha512", "sha1"),
    **fields: Any,
) -> Artifact:
    version = version or make_version(session)
    filename = filename or f"{version.package.name}-{version.number}.tgz"
    artifact = Artifact(
        version=version,
        filename=filename,
        url=f"https://registry.invalid/{version.package.name}/-/{filename}",
        **fields,
    )
    data = artifact_content(artifact)
    if artifact.size is None:
        artifact.size = len(data)
    for algorithm in digests:
        value = hashlib.new(algorithm, data).hexdigest()
        artifact.digests[algorithm] = ArtifactDigest(algorithm=algorithm, value=value)
    return _add(session, artifact)


def make_archive(
    session: Session,
    *,
    artifact: Artifact | None = None,
    status: ArchiveStatus = ArchiveStatus.ARCHIVED,
    **fields: Any,
) -> Archive:
    artifact = artifact or make_artifact(session)
    data = artifact_content(artifact)
    if status is ArchiveStatus.ARCHIVED:
        fields.setdefault("cid", raw_cid(data))
        fields.setdefault("size", len(data))
        fields.setdefault("verified_algorithm", "sha256")
        fields.setdefault("verified_digest", hashlib.sha256(data).hexdigest())
        fields.setdefault("archived_at", EPOCH + timedelta(hours=1))
    elif status is ArchiveStatus.FAILED:
        fields.setdefault("error", "DigestMismatch: sha256 differs")
    return _add(session, Archive(artifact=artifact, status=status, **fields))


def make_pin(
    session: Session,
    *,
    archive: Archive | None = None,
    backend: str = "kubo",
    status: PinStatus = PinStatus.PINNED,
    **fields: Any,
) -> Pin:
    archive = archive or make_archive(session)
    fields.setdefault("request_id", f"request-{next(_sequence)}")
    if status is PinStatus.PINNED:
        fields.setdefault("pinned_at", EPOCH + timedelta(hours=2))
    return _add(session, Pin(archive=archive, backend=backend, status=status, **fields))


def make_piece(session: Session, *, archives: list[Archive] | None = None, **fields: Any) -> Piece:
    archives = archives if archives is not None else [make_archive(session)]
    seq = next(_sequence)
    lengths = [a.size or 1 for a in archives]
    car_size = 59 + sum(lengths)
    padded = 128
    while padded // 128 * 127 < car_size:
        padded *= 2
    fields.setdefault("piece_cid", piece_like_cid(f"piece {seq}".encode()))
    fields.setdefault("car_root", raw_cid(f"car root {seq}".encode()))
    piece = _add(session, Piece(padded_size=padded, car_size=car_size, **fields))
    offset = 59
    for archive, length in zip(archives, lengths, strict=True):
        session.add(PieceMember(piece=piece, archive=archive, offset=offset, length=length))
        offset += length
    session.flush()
    return piece


def make_deal(
    session: Session,
    *,
    piece: Piece | None = None,
    source: str = "lotus",
    state: DealState = DealState.ACTIVE,
    **fields: Any,
) -> Deal:
    piece = piece or make_piece(session)
    fields.setdefault("deal_id", str(1000 + next(_sequence)))
    fields.setdefault("provider", "f01234")
    fields.setdefault("start_epoch", 4_000_000)
    fields.setdefault("end_epoch", 5_500_000)
    fields.setdefault("last_seen", EPOCH)
    return _add(session, Deal(piece=piece, source=source, state=state, **fields))
