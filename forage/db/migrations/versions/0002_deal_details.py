"""Deal details (piece size, client, verified, activation and slash epochs, epoch dates) and
one piece per archive.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import forage.db.engine

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_DATES = ("start_at", "end_at", "activated_at", "slashed_at")


def upgrade() -> None:
    with op.batch_alter_table("deals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("piece_size", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("client", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("verified", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("activation_epoch", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("slash_epoch", sa.BigInteger(), nullable=True))
        for name in _DATES:
            batch_op.add_column(
                sa.Column(name, forage.db.engine.UTCDateTime(timezone=True), nullable=True)
            )
        batch_op.create_check_constraint(
            "piece_size",
            "piece_size IS NULL OR (piece_size >= 128 AND (piece_size & (piece_size - 1)) = 0)",
        )
    with op.batch_alter_table("piece_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_piece_members_archive_id"))
        batch_op.create_unique_constraint(batch_op.f("uq_piece_members_archive_id"), ["archive_id"])


def downgrade() -> None:
    with op.batch_alter_table("piece_members", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_piece_members_archive_id"), type_="unique")
        batch_op.create_index(
            batch_op.f("ix_piece_members_archive_id"), ["archive_id"], unique=False
        )
    with op.batch_alter_table("deals", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_deals_piece_size"), type_="check")
        for name in reversed(_DATES):
            batch_op.drop_column(name)
        batch_op.drop_column("slash_epoch")
        batch_op.drop_column("activation_epoch")
        batch_op.drop_column("verified")
        batch_op.drop_column("client")
        batch_op.drop_column("piece_size")
