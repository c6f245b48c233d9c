"""Stored lookup answers found by purl: one index probe per key instead of three.

``version_answers.purl`` is the canonical purl of the version an answer was rendered for
(``forage.lookup.canonical_purl``), indexed. It is not unique: a package renamed after its
answers were rendered leaves tombstones (``body`` NULL) under the old purl, and lookups only
read rows with a body. Rows stored before this revision have no purl; their versions are
answered by the full read and get one when their answer is stored again.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("version_answers", sa.Column("purl", sa.Text(), nullable=True))
    op.create_index(op.f("ix_version_answers_purl"), "version_answers", ["purl"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_version_answers_purl"), table_name="version_answers")
    # Not a batch (copy and rename) on SQLite: 0003's triggers name the table.
    op.drop_column("version_answers", "purl")
