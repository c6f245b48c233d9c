"""Alembic migrations of Forage's schema, configured in code by :mod:`forage.db.engine`.

Every script must run on SQLite and PostgreSQL: alter tables through
``op.batch_alter_table`` (SQLite rebuilds the table), name every constraint (the naming
convention in :data:`forage.db.engine.NAMING_CONVENTION` does it for model-declared ones), and keep
CHECK expressions to SQL both stores accept. ``forage db revision -m MESSAGE`` writes a new
script by comparing the models with a migrated database; review it before committing.
https://alembic.sqlalchemy.org/en/latest/batch.html
"""
