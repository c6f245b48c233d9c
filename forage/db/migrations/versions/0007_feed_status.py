"""Status that tells the truth: when each feed was last caught up with its head.

``feed_cursors.lag`` held a figure in each feed's own units (positions for some feeds, seconds
for others), frozen at the last write, so it kept growing with the clock for a watcher that
was caught up. It is replaced by what the lag in seconds is computed from when read
(``forage.index.status``): ``at_head`` (the last page written reached the feed's head),
``caught_up_at`` (when a page last did) and ``position_at`` (the registry's own date of the
cursor's position, for feeds that date their entries).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import forage.db.engine

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feed_cursors", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("at_head", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("caught_up_at", forage.db.engine.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("position_at", forage.db.engine.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.drop_column("lag")


def downgrade() -> None:
    with op.batch_alter_table("feed_cursors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lag", sa.Double(), nullable=True))
        batch_op.drop_column("position_at")
        batch_op.drop_column("caught_up_at")
        batch_op.drop_column("at_head")
