"""The database layer's foundations: one declarative ``Base``, column types, engines, sessions
and migrations.

SQLAlchemy 2 in its sync form (https://docs.sqlalchemy.org/en/20/); async code calls it through
``asyncio.to_thread`` with one :class:`~sqlalchemy.orm.Session` per unit of work. Two stores
share one schema:

- SQLite (the embedded default): WAL journal, ``busy_timeout``, foreign keys on, and
  SQLAlchemy's recipe for SQLite transactions (``isolation_level = None`` on the driver and our
  own ``BEGIN``), so SAVEPOINT and transactional DDL work. Read-write engines begin with
  ``BEGIN IMMEDIATE``: a transaction that reads then writes would otherwise fail with
  ``SQLITE_BUSY`` instead of waiting whenever another writer went first; read-only engines
  (``read_only=True``) use a plain deferred ``BEGIN`` and run alongside writers.
  https://www.sqlite.org/lang_transaction.html, https://www.sqlite.org/wal.html
- PostgreSQL through psycopg 3 (``postgresql+psycopg://``), for many workers on many machines.

Migrations are Alembic scripts in :mod:`forage.db.migrations`, configured in code (no
``alembic.ini``): :func:`upgrade`, :func:`downgrade`; comparing the live schema with the
models is :func:`forage.db.schema.schema_diff`.
"""

from __future__ import annotations

import enum
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from forage.config import DatabaseConfig
from forage.errors import ConfigError

log = logging.getLogger(__name__)

#: Constraint names are derived, so migrations (and SQLite batch mode) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only kind of time we store)."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are converted to UTC
    before they are written and tagged UTC when read. A naive datetime is refused rather than
    guessed at.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware value")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def enum_column(enum_cls: type[enum.Enum], name: str) -> sa.Enum:
    """A portable enum column stored by *value* as a string with a CHECK constraint."""
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        validate_strings=True,
        values_callable=lambda cls: [member.value for member in cls],
        length=max(len(member.value) for member in enum_cls),
    )


#: ``JSON`` everywhere, stored as ``jsonb`` on PostgreSQL.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
#: 64-bit ids on PostgreSQL; SQLite needs ``INTEGER`` for its auto-incrementing rowid.
BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Base(DeclarativeBase):
    """The declarative base of every table in :mod:`forage.db.models`."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
    }


def make_engine(database: DatabaseConfig | str, *, read_only: bool = False) -> Engine:
    """Create the engine for a configured database (or a URL), with our connection setup."""
    config = DatabaseConfig(url=database) if isinstance(database, str) else database
    if not config.url:
        raise ConfigError("database.url", "no database URL")
    url = sa.make_url(config.url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, config, read_only=read_only)
    if url.get_backend_name() == "postgresql":
        engine = sa.create_engine(
            url,
            echo=config.echo,
            pool_size=config.pool_size,
            pool_pre_ping=True,
            connect_args={"options": "-c timezone=UTC"},
        )
        if read_only:
            engine = engine.execution_options(postgresql_readonly=True)
        return engine
    raise ConfigError("database.url", f"unsupported backend {url.get_backend_name()!r}")


def _sqlite_engine(url: sa.URL, config: DatabaseConfig, *, read_only: bool) -> Engine:
    if url.database:
        parent = Path(url.database).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror
            raise ConfigError(
                "data.dir",
                f"cannot create {parent}: {why}; set data.dir (FORAGE_DATA_DIR) "
                "or database.url to a writable place",
            ) from exc
    engine = sa.create_engine(
        url,
        echo=config.echo,
        pool_size=config.pool_size,
        connect_args={"timeout": config.busy_timeout},
    )
    busy_ms = int(config.busy_timeout * 1000)
    begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            if read_only:
                cursor.execute("PRAGMA query_only = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql(begin)

    return engine


def make_sessionmaker(engine: Engine | sa.Connection) -> sessionmaker[Session]:
    """Sessions for units of work; objects stay readable after commit (no lazy refresh)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def is_sqlite(bind: Engine | sa.Connection | Session) -> bool:
    """Whether ``bind`` talks to SQLite (the queue and upserts differ slightly)."""
    if isinstance(bind, Session):
        return bind.get_bind().dialect.name == "sqlite"
    return bind.dialect.name == "sqlite"


def alembic_config(connection: sa.Connection | None = None) -> Any:
    """An Alembic ``Config`` pointing at our migrations (and at ``connection`` to run them)."""
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", "forage.db:migrations")
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create the schema or migrate it forward to ``revision``."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the schema back to ``revision`` (``"base"`` drops every table)."""
    from alembic import command

    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or ``None`` for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision the code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


#: The newest migration's revision, written out so that opening an up-to-date database does
#: not import Alembic (with Mako and Pygments, a third of a light command's start-up);
#: tests/forage/test_migrations.py checks it against Alembic's own head.
SCHEMA_HEAD = "0010"

#: Alembic's version table, read directly on the fast path.
_VERSION_TABLE = sa.table("alembic_version", sa.column("version_num", sa.String))


def _stamped_revision(engine: Engine) -> str | None:
    """The revision stamped in the database by Alembic, read with one query; ``None`` when
    it cannot be read (no version table yet: Alembic's own path decides)."""
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(_VERSION_TABLE.c.version_num)).all()
    except sa.exc.DBAPIError:
        return None
    return rows[0][0] if len(rows) == 1 else None


#: APScheduler's job store table (:mod:`forage.jobs.scheduler`); APScheduler owns it.
SCHEDULER_TABLE = "apscheduler_jobs"
#: Tables in Forage's database that migrations do not manage.
UNMANAGED_TABLES = frozenset({SCHEDULER_TABLE})


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic filter: leave tables we do not manage (and everything on them) alone, so
    ``forage db check`` stays clean and autogenerate never drops them."""
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return table not in UNMANAGED_TABLES


def open_database(database: DatabaseConfig, *, must_exist: bool = False) -> Engine:
    """An engine on a database at the head revision, ready for work.

    The embedded SQLite store is created or migrated on first use (zero set-up); a shared
    PostgreSQL database behind the code's revision is refused with the command to run, since
    migrating it is a decision for its operator. Commands that work on an existing index pass
    ``must_exist``: run in the wrong directory, they must say so rather than create an empty
    database and report an empty index.
    """
    if must_exist:
        require_existing(database)
    engine = make_engine(database)
    if _stamped_revision(engine) == SCHEMA_HEAD:
        return engine
    current, head = current_revision(engine), head_revision()
    if current == head:
        return engine
    if engine.dialect.name == "sqlite":
        upgrade(engine)
        return engine
    engine.dispose()
    raise ConfigError(
        "database.url",
        f"{database.display_url} is at revision {current or 'empty'}, the code needs {head}: "
        "run 'forage db upgrade'",
    )


def require_existing(database: DatabaseConfig) -> None:
    """Refuse an SQLite database file that does not exist (a command that only reads)."""
    url = sa.make_url(database.url or "")
    if url.get_backend_name() != "sqlite" or not url.database:
        return
    path = Path(url.database)
    if not path.exists():
        raise ConfigError(
            "database.url",
            f"no database at {path}: run in the directory of your forage.toml, pass "
            "-c FILE or set FORAGE_DATA_DIR (a command that writes, such as "
            "'forage db upgrade', creates it)",
        )
