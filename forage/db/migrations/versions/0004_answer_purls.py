"""Stored lookup answers found by purl: one index probe per key instead of three.

``version_answers.purl`` is the canonical purl of the version an answer was rendered for
(``forage.lookup.normalize.canonical_purl``), indexed. It is not unique: a package renamed after its
answers were rendered leaves tombstones (``body`` NULL) under the old purl, and lookups only
read rows with a body. Rows stored before this revision have no purl; their versions are
answered by the full read and get one when their answer is stored again.

So that ``forage.lookup.answers`` finds the answers to render from indexes instead of scanning every
version: every version gets a row (a tombstone where it had none; versions inserted since
0003 already have one, from its trigger), a partial index holds the rows to render again
(no body or no purl; https://www.sqlite.org/partialindex.html,
https://www.postgresql.org/docs/current/indexes-partial.html) and ``valid_until`` is
indexed.

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


_STALE = "body IS NULL OR purl IS NULL"


def upgrade() -> None:
    op.add_column("version_answers", sa.Column("purl", sa.Text(), nullable=True))
    op.create_index(op.f("ix_version_answers_purl"), "version_answers", ["purl"], unique=False)
    op.create_index(
        op.f("ix_version_answers_valid_until"), "version_answers", ["valid_until"], unique=False
    )
    op.execute(
        "INSERT INTO version_answers (version_id, stamp) SELECT v.id, 0 FROM versions v"
        " WHERE NOT EXISTS (SELECT 1 FROM version_answers a WHERE a.version_id = v.id)"
    )
    op.create_index(
        "ix_version_answers_stale",
        "version_answers",
        ["version_id"],
        unique=False,
        sqlite_where=sa.text(_STALE),
        postgresql_where=sa.text(_STALE),
    )


def downgrade() -> None:
    op.drop_index("ix_version_answers_stale", table_name="version_answers")
    op.drop_index(op.f("ix_version_answers_valid_until"), table_name="version_answers")
    op.drop_index(op.f("ix_version_answers_purl"), table_name="version_answers")
    # Not a batch (copy and rename) on SQLite: 0003's triggers name the table.
    op.drop_column("version_answers", "purl")
