"""Alembic's environment script: run migrations on the connection :mod:`forage.db.engine` passes in.

Only "online" mode exists: the caller opens the connection (and its transaction) and puts it in
``config.attributes["connection"]``; there is no ``alembic.ini`` and no URL here.
"""

from __future__ import annotations

from alembic import context

import forage.db.models  # noqa: F401  (registers every table on Base.metadata)
from forage.db.engine import Base, include_object

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("forage migrations run online only: use forage.db.engine.upgrade(engine)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_object=include_object,
    autogenerate_plugins=["alembic.autogenerate.*", "alembic.ext.checkconstraint_byname"],
)
with context.begin_transaction():
    context.run_migrations()
