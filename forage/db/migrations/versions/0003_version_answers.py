"""Pre-rendered lookup answers per version, and the triggers that retire them on change.

Every table whose rows a lookup answer shows gets a row trigger that turns the answers of the
versions it touches into tombstones (``body`` NULL, ``stamp`` + 1; see
``forage.db.models.VersionAnswer``). The same statement serves both stores: an ``INSERT ...
SELECT ... ON CONFLICT DO UPDATE`` (https://www.sqlite.org/lang_upsert.html,
https://www.postgresql.org/docs/current/sql-insert.html#SQL-ON-CONFLICT); SQLite runs it in
``CREATE TRIGGER`` bodies (https://www.sqlite.org/lang_createtrigger.html), PostgreSQL in one
PL/pgSQL trigger function per table (https://www.postgresql.org/docs/current/plpgsql-trigger.html).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import forage.db.engine

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ARCHIVE_VERSIONS = (
    "SELECT a.version_id AS version_id FROM archives r JOIN artifacts a ON a.id = r.artifact_id"
    " WHERE r.id = {row}.archive_id"
)
_PIECE_VERSIONS = (
    "SELECT a.version_id AS version_id FROM piece_members m JOIN archives r ON r.id = m.archive_id"
    " JOIN artifacts a ON a.id = r.artifact_id WHERE m.piece_id = {row}.{column}"
)
#: Per table: the versions a row (``{row}``: NEW or OLD) shows up in, and the columns whose
#: update matters (``None``: any column).
TRACKED: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "packages": (
        "SELECT v.id AS version_id FROM versions v WHERE v.package_id = {row}.id",
        ("ecosystem", "name", "deleted"),
    ),
    "versions": ("SELECT {row}.id AS version_id", None),
    "artifacts": ("SELECT {row}.version_id AS version_id", None),
    "artifact_digests": (
        "SELECT a.version_id AS version_id FROM artifacts a WHERE a.id = {row}.artifact_id",
        None,
    ),
    "archives": (
        "SELECT a.version_id AS version_id FROM artifacts a WHERE a.id = {row}.artifact_id",
        None,
    ),
    "pins": (_ARCHIVE_VERSIONS, None),
    "piece_members": (_ARCHIVE_VERSIONS, None),
    "pieces": (_PIECE_VERSIONS.replace("{column}", "id"), None),
    "deals": (
        _PIECE_VERSIONS.replace("{column}", "piece_id"),
        (
            "piece_id",
            "deal_id",
            "source",
            "provider",
            "state",
            "start_epoch",
            "end_epoch",
            "end_at",
        ),
    ),
}


def _retire(row: str, versions: str) -> str:
    """SQL turning the answers of ``versions`` (as seen from ``row``) into tombstones; built
    from this module's constants only."""
    select = versions.format(row=row)
    return (
        "INSERT INTO version_answers (version_id, stamp)"  # noqa: S608
        f" SELECT DISTINCT t.version_id, 1 FROM ({select}) AS t"
        " WHERE t.version_id IS NOT NULL"
        " ON CONFLICT (version_id) DO UPDATE"
        " SET body = NULL, valid_until = NULL, stamp = version_answers.stamp + 1"
    )


def _create_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, (versions, columns) in TRACKED.items():
            op.execute(
                f"CREATE FUNCTION forage_retire_{table}() RETURNS trigger"
                " LANGUAGE plpgsql AS $$ BEGIN"
                f" IF TG_OP <> 'INSERT' THEN {_retire('OLD', versions)}; END IF;"
                f" IF TG_OP <> 'DELETE' THEN {_retire('NEW', versions)}; END IF;"
                " RETURN NULL; END $$"
            )
            update = "UPDATE" + (f" OF {', '.join(columns)}" if columns else "")
            op.execute(
                f"CREATE TRIGGER forage_retire_answers AFTER INSERT OR DELETE OR {update}"
                f" ON {table} FOR EACH ROW EXECUTE FUNCTION forage_retire_{table}()"
            )
        return
    for table, (versions, columns) in TRACKED.items():
        update = "UPDATE" + (f" OF {', '.join(columns)}" if columns else "")
        for event, rows in (("insert", ("NEW",)), ("update", ("OLD", "NEW")), ("delete", ("OLD",))):
            body = " ".join(f"{_retire(row, versions)};" for row in rows)
            what = update if event == "update" else event.upper()
            op.execute(
                f"CREATE TRIGGER forage_retire_{table}_{event} AFTER {what} ON {table}"
                f" FOR EACH ROW BEGIN {body} END"
            )


def _drop_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TRACKED:
            op.execute(f"DROP TRIGGER forage_retire_answers ON {table}")
            op.execute(f"DROP FUNCTION forage_retire_{table}()")
        return
    for table in TRACKED:
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER forage_retire_{table}_{event}")


def upgrade() -> None:
    op.create_table(
        "version_answers",
        sa.Column(
            "version_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("valid_until", forage.db.engine.UTCDateTime(timezone=True), nullable=True),
        sa.Column("stamp", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_version_answers")),
    )
    _create_triggers()


def downgrade() -> None:
    _drop_triggers()
    op.drop_table("version_answers")
