"""Removals and statuses: when and how Forage saw a release or file leave its registry, and
a package's status (PEP 792, npm).

``versions`` and ``artifacts`` get ``removed_at`` and ``removal`` (NULL while the registry
lists them); ``packages`` gets ``status`` (CHECKed against ``indexers.types.PACKAGE_STATUSES``)
and ``status_reason``. Columns are added in place, never by a batch copy: 0003's triggers
name these tables, and on SQLite a copy would drop them (and, with foreign keys on, dropping
``packages`` would cascade). SQLite takes the CHECK inline in ``ADD COLUMN``
(https://www.sqlite.org/lang_altertable.html#altertabaddcol).

Lookup answers show the package's status, so 0003's trigger on ``packages`` is recreated to
retire them when ``status`` or ``status_reason`` changes too (the ``versions`` and
``artifacts`` triggers already fire on any column); answers stored before this revision are
retired, to be rendered again with the new members.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import forage.db.engine

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_STATUS_CHECK = (
    "status IS NULL OR status IN"
    " ('quarantined', 'archived', 'deprecated', 'unpublished', 'removed')"
)
_PACKAGE_VERSIONS = "SELECT v.id AS version_id FROM versions v WHERE v.package_id = {row}.id"
_BEFORE = ("ecosystem", "name", "deleted")
_AFTER = (*_BEFORE, "status", "status_reason")


def _retire(row: str) -> str:
    """0003's statement retiring the answers of a package's versions (``row``: OLD or NEW)."""
    select = _PACKAGE_VERSIONS.format(row=row)
    return (
        "INSERT INTO version_answers (version_id, stamp)"  # noqa: S608
        f" SELECT DISTINCT t.version_id, 1 FROM ({select}) AS t"
        " WHERE t.version_id IS NOT NULL"
        " ON CONFLICT (version_id) DO UPDATE"
        " SET body = NULL, valid_until = NULL, stamp = version_answers.stamp + 1"
    )


def _package_trigger(columns: tuple[str, ...]) -> None:
    """Recreate the update trigger of ``packages`` firing on ``columns``."""
    update = f"UPDATE OF {', '.join(columns)}"
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER forage_retire_answers ON packages")
        op.execute(
            f"CREATE TRIGGER forage_retire_answers AFTER INSERT OR DELETE OR {update}"
            " ON packages FOR EACH ROW EXECUTE FUNCTION forage_retire_packages()"
        )
        return
    op.execute("DROP TRIGGER forage_retire_packages_update")
    op.execute(
        f"CREATE TRIGGER forage_retire_packages_update AFTER {update} ON packages"
        f" FOR EACH ROW BEGIN {_retire('OLD')}; {_retire('NEW')}; END"
    )


def upgrade() -> None:
    for table in ("versions", "artifacts"):
        op.add_column(
            table,
            sa.Column("removed_at", forage.db.engine.UTCDateTime(timezone=True), nullable=True),
        )
        op.add_column(table, sa.Column("removal", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.add_column("packages", sa.Column("status", sa.String(length=16), nullable=True))
        op.create_check_constraint("status", "packages", _STATUS_CHECK)
    else:
        op.execute(
            "ALTER TABLE packages ADD COLUMN status VARCHAR(16)"
            f" CONSTRAINT ck_packages_status CHECK ({_STATUS_CHECK})"
        )
    op.add_column("packages", sa.Column("status_reason", sa.Text(), nullable=True))
    _package_trigger(_AFTER)
    # Answers stored before now lack the new members: render them again.
    op.execute(
        "UPDATE version_answers SET body = NULL, valid_until = NULL, stamp = stamp + 1"
        " WHERE body IS NOT NULL"
    )


def downgrade() -> None:
    # The trigger first: SQLite refuses to drop a column a trigger names.
    _package_trigger(_BEFORE)
    op.drop_column("packages", "status_reason")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(op.f("ck_packages_status"), "packages", type_="check")
    op.drop_column("packages", "status")
    for table in ("artifacts", "versions"):
        op.drop_column(table, "removal")
        op.drop_column(table, "removed_at")
