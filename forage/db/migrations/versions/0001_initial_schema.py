"""Initial schema: packages to deals, feed cursors and the job queue.

Revision ID: 0001
Revises: (none)
"""

# ruff: noqa: E501  (CHECK expressions are frozen here as the models first wrote them)
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import forage.db.engine

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feed_cursors",
        sa.Column("feed", sa.String(length=64), nullable=False),
        sa.Column("cursor", forage.db.engine.JSONType, nullable=False),
        sa.Column("head", forage.db.engine.JSONType, nullable=True),
        sa.Column("lag", sa.Double(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column(
            "updated_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.CheckConstraint("feed <> ''", name=op.f("ck_feed_cursors_feed")),
        sa.PrimaryKeyConstraint("feed", name=op.f("pk_feed_cursors")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("payload", forage.db.engine.JSONType, nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "queued",
                "running",
                "done",
                "dead",
                name="job_state",
                native_enum=False,
                create_constraint=True,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        sa.Column("run_after", forage.db.engine.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=256), nullable=True),
        sa.Column("lease_expires_at", forage.db.engine.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("dedup_key", sa.String(length=512), nullable=True),
        sa.Column(
            "created_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.Column("finished_at", forage.db.engine.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind <> ''", name=op.f("ck_jobs_kind")),
        sa.CheckConstraint(
            "state <> 'running' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name=op.f("ck_jobs_running_leased"),
        ),
        sa.CheckConstraint(
            "attempts >= 0 AND (max_attempts IS NULL OR (max_attempts >= 1 AND attempts <= max_attempts))",
            name=op.f("ck_jobs_attempts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_jobs_state_lease_expires_at"),
            ["state", "lease_expires_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_jobs_state_run_after"), ["state", "run_after"], unique=False
        )
        batch_op.create_index(
            "uq_jobs_dedup_key_queued",
            ["dedup_key"],
            unique=True,
            sqlite_where=sa.text("state = 'queued'"),
            postgresql_where=sa.text("state = 'queued'"),
        )

    op.create_table(
        "packages",
        sa.Column("id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("ecosystem", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("display_name", sa.String(length=1024), nullable=True),
        sa.Column("extra", forage.db.engine.JSONType, nullable=False),
        sa.Column("deleted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("last_synced", forage.db.engine.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_serial", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "ecosystem <> '' AND ecosystem = lower(ecosystem)", name=op.f("ck_packages_ecosystem")
        ),
        sa.CheckConstraint("name <> ''", name=op.f("ck_packages_name")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_packages")),
        sa.UniqueConstraint("ecosystem", "name", name=op.f("uq_packages_ecosystem_name")),
    )
    op.create_table(
        "pieces",
        sa.Column("id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("piece_cid", sa.String(length=128), nullable=False),
        sa.Column("padded_size", sa.BigInteger(), nullable=False),
        sa.Column("car_root", sa.String(length=128), nullable=False),
        sa.Column("car_size", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "car_root IS NULL OR (substr(car_root, 1, 1) = 'b' AND length(car_root) BETWEEN 59 AND 128 AND ltrim(substr(car_root, 2), 'abcdefghijklmnopqrstuvwxyz234567') = '')",
            name=op.f("ck_pieces_car_root"),
        ),
        sa.CheckConstraint(
            "piece_cid IS NULL OR (substr(piece_cid, 1, 1) = 'b' AND length(piece_cid) BETWEEN 59 AND 128 AND ltrim(substr(piece_cid, 2), 'abcdefghijklmnopqrstuvwxyz234567') = '')",
            name=op.f("ck_pieces_piece_cid"),
        ),
        sa.CheckConstraint(
            "car_size > 0 AND car_size <= padded_size / 128 * 127", name=op.f("ck_pieces_car_size")
        ),
        sa.CheckConstraint(
            "padded_size >= 128 AND (padded_size & (padded_size - 1)) = 0",
            name=op.f("ck_pieces_padded_size"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pieces")),
        sa.UniqueConstraint("piece_cid", name=op.f("uq_pieces_piece_cid")),
    )
    op.create_table(
        "deals",
        sa.Column("id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("deal_id", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("piece_id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "proposed",
                "published",
                "active",
                "expired",
                "proposal_expired",
                "rejected",
                "slashed",
                "error",
                name="deal_state",
                native_enum=False,
                create_constraint=True,
            ),
            nullable=False,
        ),
        sa.Column("start_epoch", sa.BigInteger(), nullable=True),
        sa.Column("end_epoch", sa.BigInteger(), nullable=True),
        sa.Column("last_seen", forage.db.engine.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.CheckConstraint("deal_id <> '' AND source <> ''", name=op.f("ck_deals_key")),
        sa.CheckConstraint(
            "start_epoch IS NULL OR end_epoch IS NULL OR end_epoch > start_epoch",
            name=op.f("ck_deals_epochs"),
        ),
        sa.ForeignKeyConstraint(
            ["piece_id"], ["pieces.id"], name=op.f("fk_deals_piece_id_pieces"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deals")),
        sa.UniqueConstraint("deal_id", "source", name=op.f("uq_deals_deal_id_source")),
    )
    with op.batch_alter_table("deals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deals_piece_id"), ["piece_id"], unique=False)

    op.create_table(
        "versions",
        sa.Column("id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("package_id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("number", sa.String(length=256), nullable=False),
        sa.Column("published_at", forage.db.engine.UTCDateTime(timezone=True), nullable=True),
        sa.Column("yanked", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("deleted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("deprecated", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.CheckConstraint("number <> ''", name=op.f("ck_versions_number")),
        sa.ForeignKeyConstraint(
            ["package_id"],
            ["packages.id"],
            name=op.f("fk_versions_package_id_packages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_versions")),
        sa.UniqueConstraint("package_id", "number", name=op.f("uq_versions_package_id_number")),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("version_id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("filename", sa.String(length=512), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=True),
        sa.Column("yanked", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("yanked_reason", sa.Text(), nullable=True),
        sa.Column("requires_python", sa.String(length=256), nullable=True),
        sa.Column("uploaded_at", forage.db.engine.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.CheckConstraint("filename <> ''", name=op.f("ck_artifacts_filename")),
        sa.CheckConstraint("size IS NULL OR size >= 0", name=op.f("ck_artifacts_size")),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["versions.id"],
            name=op.f("fk_artifacts_version_id_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
        sa.UniqueConstraint(
            "version_id", "filename", name=op.f("uq_artifacts_version_id_filename")
        ),
    )
    op.create_table(
        "archives",
        sa.Column("id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("artifact_id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("cid", sa.String(length=128), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "archived",
                "failed",
                name="archive_status",
                native_enum=False,
                create_constraint=True,
            ),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("verified_algorithm", sa.String(length=32), nullable=True),
        sa.Column("verified_digest", sa.String(length=256), nullable=True),
        sa.Column("archived_at", forage.db.engine.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "cid IS NULL OR (substr(cid, 1, 1) = 'b' AND length(cid) BETWEEN 59 AND 128 AND ltrim(substr(cid, 2), 'abcdefghijklmnopqrstuvwxyz234567') = '')",
            name=op.f("ck_archives_cid"),
        ),
        sa.CheckConstraint(
            "status <> 'archived' OR (cid IS NOT NULL AND size IS NOT NULL AND archived_at IS NOT NULL)",
            name=op.f("ck_archives_archived_complete"),
        ),
        sa.CheckConstraint(
            "status <> 'failed' OR error IS NOT NULL", name=op.f("ck_archives_failed_error")
        ),
        sa.CheckConstraint(
            "(verified_algorithm IS NULL) = (verified_digest IS NULL)",
            name=op.f("ck_archives_verified_pair"),
        ),
        sa.CheckConstraint("size IS NULL OR size >= 0", name=op.f("ck_archives_size")),
        sa.ForeignKeyConstraint(
            ["artifact_id"],
            ["artifacts.id"],
            name=op.f("fk_archives_artifact_id_artifacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archives")),
        sa.UniqueConstraint("artifact_id", name=op.f("uq_archives_artifact_id")),
    )
    with op.batch_alter_table("archives", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_archives_cid"), ["cid"], unique=False)

    op.create_table(
        "artifact_digests",
        sa.Column("artifact_id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("algorithm", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.CheckConstraint(
            "(algorithm = 'h1' AND value LIKE 'h1:%' AND length(value) > 3) OR (algorithm <> 'h1' AND value <> '' AND ltrim(value, '0123456789abcdef') = '' AND length(value) = CASE algorithm WHEN 'md5' THEN 32 WHEN 'sha1' THEN 40 WHEN 'sha256' THEN 64 WHEN 'blake2b_256' THEN 64 WHEN 'sha512' THEN 128 ELSE length(value) END)",
            name=op.f("ck_artifact_digests_value"),
        ),
        sa.CheckConstraint(
            "algorithm <> '' AND algorithm = lower(algorithm)",
            name=op.f("ck_artifact_digests_algorithm"),
        ),
        sa.ForeignKeyConstraint(
            ["artifact_id"],
            ["artifacts.id"],
            name=op.f("fk_artifact_digests_artifact_id_artifacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("artifact_id", "algorithm", name=op.f("pk_artifact_digests")),
    )
    with op.batch_alter_table("artifact_digests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_artifact_digests_algorithm_value"), ["algorithm", "value"], unique=False
        )

    op.create_table(
        "piece_members",
        sa.Column("piece_id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("archive_id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.CheckConstraint('"offset" >= 0 AND length > 0', name=op.f("ck_piece_members_extent")),
        sa.ForeignKeyConstraint(
            ["archive_id"],
            ["archives.id"],
            name=op.f("fk_piece_members_archive_id_archives"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["piece_id"],
            ["pieces.id"],
            name=op.f("fk_piece_members_piece_id_pieces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("piece_id", "archive_id", name=op.f("pk_piece_members")),
        sa.UniqueConstraint("piece_id", "offset", name=op.f("uq_piece_members_piece_id_offset")),
    )
    with op.batch_alter_table("piece_members", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_piece_members_archive_id"), ["archive_id"], unique=False
        )

    op.create_table(
        "pins",
        sa.Column("id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("archive_id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=256), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "pinning",
                "pinned",
                "failed",
                name="pin_status",
                native_enum=False,
                create_constraint=True,
            ),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("pinned_at", forage.db.engine.UTCDateTime(timezone=True), nullable=True),
        sa.Column("checked_at", forage.db.engine.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            forage.db.engine.UTCDateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.CheckConstraint("backend <> ''", name=op.f("ck_pins_backend")),
        sa.CheckConstraint(
            "status <> 'pinned' OR pinned_at IS NOT NULL", name=op.f("ck_pins_pinned_at")
        ),
        sa.ForeignKeyConstraint(
            ["archive_id"],
            ["archives.id"],
            name=op.f("fk_pins_archive_id_archives"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pins")),
        sa.UniqueConstraint("archive_id", "backend", name=op.f("uq_pins_archive_id_backend")),
    )


def downgrade() -> None:
    op.drop_table("pins")
    with op.batch_alter_table("piece_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_piece_members_archive_id"))

    op.drop_table("piece_members")
    with op.batch_alter_table("artifact_digests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_artifact_digests_algorithm_value"))

    op.drop_table("artifact_digests")
    with op.batch_alter_table("archives", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_archives_cid"))

    op.drop_table("archives")
    op.drop_table("artifacts")
    op.drop_table("versions")
    with op.batch_alter_table("deals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deals_piece_id"))

    op.drop_table("deals")
    op.drop_table("pieces")
    op.drop_table("packages")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_jobs_dedup_key_queued",
            sqlite_where=sa.text("state = 'queued'"),
            postgresql_where=sa.text("state = 'queued'"),
        )
        batch_op.drop_index(batch_op.f("ix_jobs_state_run_after"))
        batch_op.drop_index(batch_op.f("ix_jobs_state_lease_expires_at"))

    op.drop_table("jobs")
    op.drop_table("feed_cursors")
