"""Lookups that end: what a registry answered for a key it does not have, and when it was asked.

``lookup_misses`` holds one row per package (``version`` empty) or version a registry said it
does not have, with its answer and when it was checked (``forage.index.misses``).
``archives.mismatches`` counts the attempts since the last success whose bytes failed
verification, which bounds their retries (``jobs.mismatch_attempts``).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import forage.db.engine

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lookup_misses",
        sa.Column("id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("ecosystem", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("version", sa.String(length=256), server_default="", nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("checked_at", forage.db.engine.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("ecosystem <> '' AND name <> ''", name=op.f("ck_lookup_misses_key")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lookup_misses")),
        sa.UniqueConstraint(
            "ecosystem", "name", "version", name=op.f("uq_lookup_misses_ecosystem_name_version")
        ),
    )
    # Not a batch (copy and rename) on SQLite: 0003's triggers name the archives table.
    op.add_column(
        "archives", sa.Column("mismatches", sa.Integer(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("archives", "mismatches")
    op.drop_table("lookup_misses")
