"""The shared block locator: where each block of an object-stored packed blockstore is.

``block_packs`` (one row per pack, ``recorded`` once its blocks are listed) and
``pack_blocks`` (multihash -> pack, offset, length, deleted), read and written by
:mod:`forage.archive.locator` on every host that shares the bucket.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import forage.db.engine

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "block_packs",
        sa.Column("id", forage.db.engine.BigIntPK, nullable=False),
        sa.Column("name", sa.LargeBinary(length=32), nullable=False),
        sa.Column("recorded", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("noted", forage.db.engine.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("length(name) = 32", name=op.f("ck_block_packs_name_length")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_block_packs")),
        sa.UniqueConstraint("name", name=op.f("uq_block_packs_name")),
    )
    op.create_index(op.f("ix_block_packs_recorded"), "block_packs", ["recorded"])
    op.create_table(
        "pack_blocks",
        sa.Column("multihash", sa.LargeBinary(length=255), nullable=False),
        sa.Column("pack_id", sa.BigInteger(), nullable=False),
        sa.Column("start", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("deleted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.CheckConstraint(
            "length(multihash) BETWEEN 1 AND 255", name=op.f("ck_pack_blocks_multihash_length")
        ),
        sa.CheckConstraint("start >= 0 AND length >= 0", name=op.f("ck_pack_blocks_position")),
        sa.ForeignKeyConstraint(
            ["pack_id"], ["block_packs.id"], name=op.f("fk_pack_blocks_pack_id_block_packs")
        ),
        sa.PrimaryKeyConstraint("multihash", name=op.f("pk_pack_blocks")),
    )
    op.create_index(op.f("ix_pack_blocks_pack_id"), "pack_blocks", ["pack_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_pack_blocks_pack_id"), table_name="pack_blocks")
    op.drop_table("pack_blocks")
    op.drop_index(op.f("ix_block_packs_recorded"), table_name="block_packs")
    op.drop_table("block_packs")
