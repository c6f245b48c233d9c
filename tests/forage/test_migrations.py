"""Migrations build exactly the models' schema on both stores, and go back down to nothing.

"Exactly" is Alembic's autogenerate comparison (tables, columns and types, indexes, unique
and foreign keys, and named CHECK constraints) finding no difference; a test that removes an
index shows the comparison would notice one. ``forage db upgrade`` is the user's way in.
"""

from __future__ import annotations

import sqlalchemy as sa

import forage.db.models  # noqa: F401  (the tables the migrations must build)
from forage.cli import main
from forage.db.engine import (
    SCHEMA_HEAD,
    Base,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from forage.db.schema import schema_diff

MODEL_TABLES = set(Base.metadata.tables)


def _check_names(engine: sa.Engine) -> set[tuple[str, str]]:
    inspector = sa.inspect(engine)
    return {
        (table, check["name"])
        for table in inspector.get_table_names()
        for check in inspector.get_check_constraints(table)
        if check["name"]
    }


def test_upgrade_matches_models_and_downgrade_empties(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert set(sa.inspect(engine).get_table_names()) == MODEL_TABLES | {"alembic_version"}
        assert schema_diff(engine) == []
        expected_checks = {
            (table.name, constraint.name)
            for table in Base.metadata.tables.values()
            for constraint in table.constraints
            if isinstance(constraint, sa.CheckConstraint)
        }
        assert _check_names(engine) == expected_checks
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}
        # And up again from base: the downgrade left nothing behind that blocks it.
        upgrade(engine)
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_schema_diff_notices_missing_parts(migrated_url: str, store: str) -> None:
    # The comparison is not blind: a dropped index shows up, and on PostgreSQL (where a
    # CHECK can be dropped in place) so does a dropped CHECK constraint.
    engine = make_engine(migrated_url)
    expected = [("add_index", "ix_archives_cid")]
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP INDEX ix_archives_cid"))
            if store == "postgresql":
                conn.execute(sa.text("ALTER TABLE pins DROP CONSTRAINT ck_pins_backend"))
                expected.append(("add_constraint", "ck_pins_backend"))
        diff = schema_diff(engine)
        assert sorted((op[0], op[1].name) for op in diff) == sorted(expected)
    finally:
        engine.dispose()


def test_dedup_index_is_partial(migrated_url: str) -> None:
    # Both stores keep the partial unique index that lets done/dead jobs share a key.
    engine = make_engine(migrated_url)
    try:
        indexes = {ix["name"]: ix for ix in sa.inspect(engine).get_indexes("jobs")}
        index = indexes["uq_jobs_dedup_key_queued"]
        assert index["unique"]
        assert index["column_names"] == ["dedup_key"]
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO jobs (kind, payload, state, attempts, run_after, dedup_key,"
                    " created_at, updated_at) VALUES"
                    " ('k', '{}', 'done', 0, '2024-01-01', 'x', '2024-01-01', '2024-01-01'),"
                    " ('k', '{}', 'done', 0, '2024-01-01', 'x', '2024-01-01', '2024-01-01')"
                )
            )
            count = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE dedup_key = 'x'"))
            assert count.scalar_one() == 2
    finally:
        engine.dispose()


def test_db_upgrade_command_creates_then_reports_current(
    database_url: str, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("FORAGE_DATABASE_URL", database_url)
    assert main(["db", "upgrade"]) == 0
    assert "migrated from empty to" in capsys.readouterr().err
    assert main(["db", "upgrade"]) == 0
    assert "already at revision" in capsys.readouterr().err
    assert main(["db", "current"]) == 0
    assert capsys.readouterr().out.strip() == f"{head_revision()} (head)"
    assert main(["db", "check"]) == 0


def test_scheduler_table_is_left_alone(migrated_url: str) -> None:
    # APScheduler creates its own job store table in Forage's database: the schema check
    # stays clean with it present, while an unknown extra table is still reported (a
    # generated migration would otherwise drop the schedule).
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    from forage.db.engine import SCHEDULER_TABLE

    engine = make_engine(migrated_url)
    try:
        store = SQLAlchemyJobStore(engine=engine, tablename=SCHEDULER_TABLE)
        store.start(None, "default")
        assert SCHEDULER_TABLE in sa.inspect(engine).get_table_names()
        assert schema_diff(engine) == []
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE stray (id INTEGER PRIMARY KEY)"))
        assert [(op[0], op[1].name) for op in schema_diff(engine)] == [("remove_table", "stray")]
    finally:
        engine.dispose()


def test_schema_head_is_alembics_head() -> None:
    """Opening an up-to-date database compares with this constant instead of asking Alembic:
    a new migration must move it."""
    assert head_revision() == SCHEMA_HEAD
