"""Read-only sessions for lookups and other reads that must never wait for writers.

On SQLite, reads get an engine of their own whose transactions begin with a plain ``BEGIN``
(no write lock) and that maps the database file into memory (lookups probe pages all over
it); elsewhere the writer's sessions serve.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from forage.config import DatabaseConfig
from forage.db.engine import make_engine, make_sessionmaker


def read_only_sessionmaker(
    writer: sessionmaker[Session],
) -> tuple[sessionmaker[Session], Engine | None]:
    """Sessions on the same database as ``writer`` that only read: on SQLite a second engine
    whose transactions begin with a plain ``BEGIN`` (no write lock) and that reads the file
    through a memory map (lookups probe pages all over it), returned so the caller disposes
    of it; elsewhere ``writer`` itself. https://www.sqlite.org/mmap.html"""
    bind = writer.kw.get("bind")
    if not isinstance(bind, Engine) or bind.dialect.name != "sqlite":
        return writer, None
    url = bind.url.render_as_string(hide_password=False)
    engine = make_engine(DatabaseConfig(url=url), read_only=True)
    sa.event.listen(engine, "connect", _map_file)
    return make_sessionmaker(engine), engine


#: How much of a SQLite file readers map into memory.
SQLITE_MMAP_SIZE = 4 * 1024**3


def _map_file(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA mmap_size = {SQLITE_MMAP_SIZE}")
    finally:
        cursor.close()
