"""The schema's invariants hold on both stores: natural keys are unique, CIDs and digests must
be well formed, states are stored by value and checked, timestamps come back in UTC, and
deletes cascade (or are refused) as declared. Each violation ends in an IntegrityError."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from forage.db.models import (
    Archive,
    ArchiveStatus,
    Artifact,
    ArtifactDigest,
    FeedCursor,
    JobRecord,
    JobState,
    Package,
    Piece,
    PieceMember,
    Pin,
    Version,
)
from tests.factories import (
    artifact_content,
    make_archive,
    make_artifact,
    make_deal,
    make_package,
    make_piece,
    make_pin,
    make_version,
    raw_cid,
)


def rejects(session: Session, row: object) -> None:
    """Assert the database refuses ``row``, leaving the session usable."""
    with pytest.raises(IntegrityError), session.begin_nested():
        session.add(row)
        session.flush()


def rejects_insert(session: Session, model: type, **values: object) -> None:
    """Like :func:`rejects`, as a racing session would do it: a plain INSERT."""
    with pytest.raises(IntegrityError), session.begin_nested():
        session.execute(sa.insert(model).values(**values))


def test_factory_chain_is_consistent(db_session: Session) -> None:
    # A pin built from nothing brings its archive, artifact, version and package, and the
    # archive's CID and verified digest are those of the artifact's bytes.
    pin = make_pin(db_session)
    archive = pin.archive
    artifact = archive.artifact
    data = artifact_content(artifact)
    assert archive.cid == raw_cid(data)
    assert archive.verified_digest == artifact.digests["sha256"].value
    assert artifact.size == len(data)
    assert artifact.version.package.versions == [artifact.version]
    db_session.expire_all()
    reloaded = db_session.get(Artifact, artifact.id)
    assert reloaded is not None
    assert set(reloaded.digests) == {"sha1", "sha256", "sha512"}
    assert reloaded.digests["sha256"].value == hashlib.sha256(data).hexdigest()


def test_timestamps_come_back_aware_in_utc(db_session: Session) -> None:
    # A time written with a +02:00 offset is stored as the same instant and read back in UTC.
    plus_two = timezone(timedelta(hours=2))
    version = make_version(db_session, published_at=datetime(2024, 5, 1, 12, 0, tzinfo=plus_two))
    db_session.expire_all()
    published = db_session.get(Version, version.id).published_at  # type: ignore[union-attr]
    assert published == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert published.utcoffset() == timedelta(0)
    created = db_session.get(Version, version.id).created_at  # type: ignore[union-attr]
    assert created.tzinfo is not None


def test_naive_datetime_is_refused(db_session: Session) -> None:
    # Guessing the zone of a naive time would silently shift it; the column type refuses it.
    package = make_package(db_session)
    package.last_synced = datetime(2024, 1, 1, 0, 0)
    with pytest.raises(StatementError, match="naive datetime"), db_session.begin_nested():
        db_session.flush()


def test_enums_are_stored_by_value(db_session: Session) -> None:
    archive = make_archive(db_session, status=ArchiveStatus.FAILED)
    stored = db_session.execute(
        sa.text("SELECT status FROM archives WHERE id = :id"), {"id": archive.id}
    ).scalar_one()
    assert stored == "failed"


def test_unknown_state_is_rejected_by_the_database(db_session: Session) -> None:
    # Raw SQL bypasses SQLAlchemy's enum validation; the CHECK constraint still holds.
    artifact = make_artifact(db_session)
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.execute(
            sa.text("INSERT INTO archives (artifact_id, status) VALUES (:a, 'bogus')"),
            {"a": artifact.id},
        )


@pytest.mark.parametrize("ecosystem", ["npm", "pypi"])
def test_package_name_is_unique_per_ecosystem(db_session: Session, ecosystem: str) -> None:
    make_package(db_session, ecosystem=ecosystem, name="left-pad")
    rejects(db_session, Package(ecosystem=ecosystem, name="left-pad"))
    # The same name in another ecosystem is another package.
    other = "golang" if ecosystem == "npm" else "npm"
    assert make_package(db_session, ecosystem=other, name="left-pad").id is not None


def test_ecosystem_must_be_lowercase(db_session: Session) -> None:
    rejects(db_session, Package(ecosystem="Npm", name="x"))


def test_version_number_is_unique_per_package(db_session: Session) -> None:
    version = make_version(db_session, number="1.2.3")
    rejects(db_session, Version(package_id=version.package_id, number="1.2.3"))
    assert make_version(db_session, number="1.2.3").package_id != version.package_id


def test_artifact_filename_is_unique_per_version(db_session: Session) -> None:
    artifact = make_artifact(db_session, filename="a-1.0.tar.gz")
    rejects(
        db_session,
        Artifact(version_id=artifact.version_id, filename="a-1.0.tar.gz", url="https://x.invalid/"),
    )


def test_one_digest_per_algorithm(db_session: Session) -> None:
    artifact = make_artifact(db_session)
    rejects_insert(
        db_session, ArtifactDigest, artifact_id=artifact.id, algorithm="sha256", value="0" * 64
    )


@pytest.mark.parametrize(
    ("algorithm", "value"),
    [
        ("sha256", "ab" * 31),  # 62 hex digits, not 64
        ("sha256", "AB" * 32),  # upper case
        ("sha1", "g" * 40),  # not hex
        ("md5", ""),
        ("h1", "vrePB7BpdOhIswFti7BiZfZJGElgPahSsZeYKv/CC68="),  # h1 without its prefix
        ("SHA256", "ab" * 32),  # algorithm names are lower case
    ],
)
def test_malformed_digests_are_rejected(db_session: Session, algorithm: str, value: str) -> None:
    artifact = make_artifact(db_session, digests=())
    rejects(db_session, ArtifactDigest(artifact_id=artifact.id, algorithm=algorithm, value=value))


def test_wellformed_uncommon_digests_are_accepted(db_session: Session) -> None:
    artifact = make_artifact(db_session, digests=())
    db_session.add_all(
        [
            ArtifactDigest(
                artifact_id=artifact.id,
                algorithm="h1",
                value="h1:vrePB7BpdOhIswFti7BiZfZJGElgPahSsZeYKv/CC68=",
            ),
            ArtifactDigest(artifact_id=artifact.id, algorithm="blake2b_256", value="c" * 64),
        ]
    )
    db_session.flush()
    db_session.expire(artifact)
    assert artifact.digests["h1"].value.startswith("h1:")


def test_one_archive_per_artifact(db_session: Session) -> None:
    archive = make_archive(db_session, status=ArchiveStatus.PENDING)
    rejects(db_session, Archive(artifact_id=archive.artifact_id, status=ArchiveStatus.PENDING))


GOOD_CID = raw_cid(b"hello")


@pytest.mark.parametrize(
    "cid",
    [
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",  # CIDv0: we store CIDv1 only
        GOOD_CID.upper(),  # base32 is lower case
        GOOD_CID[:40],  # truncated
        "z" + GOOD_CID[1:],  # base58btc prefix
        GOOD_CID[:-1] + "1",  # 1 is not in the base32 alphabet
        GOOD_CID[:-1] + "=",  # padding
    ],
)
def test_archive_cid_must_be_base32_cidv1(db_session: Session, cid: str) -> None:
    artifact = make_artifact(db_session)
    rejects(
        db_session,
        Archive(
            artifact_id=artifact.id,
            status=ArchiveStatus.ARCHIVED,
            cid=cid,
            size=5,
            archived_at=datetime(2024, 1, 1, tzinfo=UTC),
        ),
    )


def test_archived_row_needs_cid_size_and_time(db_session: Session) -> None:
    artifact = make_artifact(db_session)
    rejects(db_session, Archive(artifact_id=artifact.id, status=ArchiveStatus.ARCHIVED))
    rejects(db_session, Archive(artifact_id=artifact.id, status=ArchiveStatus.FAILED))
    archive = make_archive(db_session, artifact=artifact)
    assert archive.status is ArchiveStatus.ARCHIVED


def test_verified_digest_comes_with_its_algorithm(db_session: Session) -> None:
    artifact = make_artifact(db_session)
    rejects(
        db_session,
        Archive(artifact_id=artifact.id, status=ArchiveStatus.PENDING, verified_digest="ab"),
    )


def test_one_pin_per_archive_and_backend(db_session: Session) -> None:
    pin = make_pin(db_session, backend="cluster")
    rejects(db_session, Pin(archive_id=pin.archive_id, backend="cluster"))
    assert make_pin(db_session, archive=pin.archive, backend="kubo").id != pin.id


def test_piece_sizes_and_cids_are_checked(db_session: Session) -> None:
    piece = make_piece(db_session)
    assert piece.padded_size & (piece.padded_size - 1) == 0
    good = {"car_root": GOOD_CID, "car_size": 100}
    rejects(db_session, Piece(piece_cid=piece.piece_cid, padded_size=256, **good))  # duplicate
    other = raw_cid(b"other piece")
    rejects(db_session, Piece(piece_cid=other, padded_size=384, **good))  # not a power of 2
    rejects(db_session, Piece(piece_cid=other, padded_size=64, **good))  # below 128
    rejects(db_session, Piece(piece_cid=other, padded_size=128, car_root=GOOD_CID, car_size=128))
    rejects(db_session, Piece(piece_cid="bad", padded_size=256, **good))


def test_archive_in_a_piece_cannot_be_deleted(db_session: Session) -> None:
    piece = make_piece(db_session)
    member = db_session.scalars(
        sa.select(PieceMember).where(PieceMember.piece_id == piece.id)
    ).one()
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.execute(sa.delete(Archive).where(Archive.id == member.archive_id))


def test_deal_key_is_unique_per_source(db_session: Session) -> None:
    deal = make_deal(db_session, deal_id="777")
    rejects(
        db_session,
        type(deal)(
            deal_id="777",
            source=deal.source,
            piece_id=deal.piece_id,
            provider="f0999",
            state=deal.state,
            last_seen=deal.last_seen,
        ),
    )
    assert make_deal(db_session, piece=deal.piece, deal_id="777", source="glif").id != deal.id


def test_deal_epochs_must_be_ordered(db_session: Session) -> None:
    with pytest.raises(IntegrityError), db_session.begin_nested():
        make_deal(db_session, start_epoch=10, end_epoch=10)


def test_deleting_a_package_cascades_in_the_database(db_session: Session) -> None:
    # ON DELETE CASCADE (SQLite needs foreign_keys=ON, set by make_engine): a Core delete
    # of the package removes the whole chain below it, and leaves other packages alone.
    pin = make_pin(db_session)
    bystander = make_pin(db_session)
    archive = pin.archive
    artifact = archive.artifact
    ids = {
        Version: artifact.version_id,
        Artifact: artifact.id,
        Archive: archive.id,
        Pin: pin.id,
    }
    db_session.execute(sa.delete(Package).where(Package.id == artifact.version.package_id))
    db_session.expire_all()
    for model, row_id in ids.items():
        assert db_session.get(model, row_id) is None, model
    digests = sa.select(sa.func.count()).where(ArtifactDigest.artifact_id == ids[Artifact])
    assert db_session.scalar(digests) == 0
    assert db_session.get(Pin, bystander.id) is not None


def test_foreign_keys_are_enforced(db_session: Session) -> None:
    rejects(db_session, Version(package_id=987654321, number="1.0.0"))


def test_feed_cursor_is_one_row_per_feed(db_session: Session) -> None:
    db_session.add(FeedCursor(feed="npm", cursor={"seq": 1}))
    db_session.flush()
    rejects_insert(db_session, FeedCursor, feed="npm", cursor={"seq": 2})
    cursor = db_session.get(FeedCursor, "npm")
    assert cursor is not None and cursor.version == 1 and cursor.cursor == {"seq": 1}


def test_running_job_needs_a_lease(db_session: Session) -> None:
    rejects(db_session, JobRecord(kind="k", state=JobState.RUNNING, attempts=1))
    rejects(db_session, JobRecord(kind="k", attempts=3, max_attempts=2))
    rejects(db_session, JobRecord(kind="", attempts=0))


def test_dedup_key_is_unique_among_queued_jobs_only(db_session: Session) -> None:
    db_session.add(JobRecord(kind="k", dedup_key="same"))
    db_session.flush()
    rejects(db_session, JobRecord(kind="k", dedup_key="same"))
    # Done and dead jobs do not hold the key.
    db_session.add(JobRecord(kind="k", dedup_key="same", state=JobState.DONE))
    db_session.add(JobRecord(kind="k", dedup_key="same", state=JobState.DEAD))
    db_session.flush()
    count = db_session.scalar(
        sa.select(sa.func.count()).select_from(JobRecord).where(JobRecord.dedup_key == "same")
    )
    assert count == 3
