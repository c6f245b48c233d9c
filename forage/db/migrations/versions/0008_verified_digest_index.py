"""Lookups by digest: index the digest Forage verified each archive against.

Upstream digests are already indexed (``artifact_digests (algorithm, value)``); this index lets
``POST /api/v1/lookup/digests`` (:mod:`forage.lookup.digests`) also find an archive by the
digest Forage itself recorded, which is the only one an artifact has when its registry
published none.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INDEX = "ix_archives_verified_algorithm_verified_digest"


def upgrade() -> None:
    op.create_index(INDEX, "archives", ["verified_algorithm", "verified_digest"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="archives")
