"""Project-wide fixtures: the two database stores, sessions rolled back after each test.

Stores are real: a SQLite file, and a throwaway PostgreSQL cluster that this file starts once
per session from the installed server binaries (``initdb``/``pg_ctl`` on ``PATH`` or under
``/usr/lib/postgresql/*/bin``), on 127.0.0.1 with trust auth and ``fsync=off``. PostgreSQL
tests are skipped only where the binaries are absent and ``CI`` is not ``true``; under
``CI=true`` a missing PostgreSQL fails the run. PostgreSQL refuses to run as root, so as root
the server runs as ``postgres`` (or ``nobody``) in a temp directory handed to that user.

Fixtures, parametrized over ``sqlite`` and ``postgresql`` (PostgreSQL cases carry the
``postgres`` marker):

- ``store``: the store's name (module-scoped parameter of everything below);
- ``database_url``: a fresh, *empty* database per test (for migration tests);
- ``migrated_url``: a fresh database at the head revision per test, for code that commits
  (workers, subprocesses);
- ``db_engine``: a migrated database shared by one test module;
- ``db_session``: a ``Session`` on ``db_engine`` inside an outer transaction that is rolled
  back after the test; the session's own commits become SAVEPOINT releases (SQLAlchemy's
  "joining a session into an external transaction" recipe; SQLite gets its SAVEPOINT support
  from :func:`forage.db.engine.make_engine`).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.s3server import s3_prefix, s3_server  # noqa: F401 - fixtures for every directory

STORES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
_counter = itertools.count()


def _postgres_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running throwaway cluster; ``create_database`` returns a SQLAlchemy URL."""

    bindir: Path
    root: Path
    port: int
    run_as: dict[str, Any]
    user: str = "forage"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)

    def create_database(self, *, template: str | None = None) -> str:
        name = f"forage_{os.getpid()}_{next(_counter)}"
        self._admin(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args],
            check=True,
            capture_output=True,
            cwd=self.root,
            **self.run_as,
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Start a PostgreSQL cluster for the session (see the module docstring for skip rules)."""
    bindir = _postgres_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        message = "PostgreSQL server binaries (initdb, pg_ctl) not found"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, and CI=true requires them", pytrace=False)
        pytest.skip(message)
    run_as: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="forage-pg-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        os.chown(root, account.pw_uid, account.pw_gid)
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    server = PostgresServer(bindir=bindir, root=root, port=_free_port(), run_as=run_as)
    subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(server.datadir),
            "-U",
            server.user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        cwd=root,
        **run_as,
    )
    options = (
        f"-h 127.0.0.1 -p {server.port} -k {root} -c fsync=off -c synchronous_commit=off"
        " -c full_page_writes=off -c max_connections=200"
    )
    try:
        server.pg_ctl("-l", str(root / "server.log"), "-w", "-t", "60", "-o", options, "start")
    except subprocess.CalledProcessError as exc:
        log = (
            (root / "server.log").read_text(errors="replace")
            if (root / "server.log").exists()
            else ""
        )
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr!r}\n{log}") from exc
    try:
        yield server
    finally:
        try:
            server.pg_ctl("-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def _postgres_template(postgres_server: PostgresServer) -> str:
    """A database at the head revision, cloned (fast) for every ``migrated_url``."""
    from forage.db.engine import make_engine, upgrade

    name = postgres_server.create_database()
    engine = make_engine(postgres_server.url(name))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return name


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from forage.db.engine import make_engine, upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "forage.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)
    finally:
        engine.dispose()  # the last connection to close checkpoints the WAL into the file
    return path


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    """The database store under test: ``sqlite`` or ``postgresql``."""
    return str(request.param)


def _new_url(
    store: str, request: pytest.FixtureRequest, directory: Path, *, migrated: bool
) -> Iterator[str]:
    if store == "sqlite":
        path = directory / f"forage-{next(_counter)}.db"
        if migrated:
            shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    template = request.getfixturevalue("_postgres_template") if migrated else None
    name = server.create_database(template=template)
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)


@pytest.fixture
def database_url(store: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of the store under test."""
    yield from _new_url(store, request, tmp_path, migrated=False)


@pytest.fixture
def migrated_url(store: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at the head revision, for tests whose code commits for real."""
    yield from _new_url(store, request, tmp_path, migrated=True)


@pytest.fixture(scope="module")
def db_engine(
    store: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """An engine on a migrated database shared by the test module."""
    from forage.db.engine import make_engine

    urls = _new_url(store, request, tmp_path_factory.mktemp("db"), migrated=True)
    engine = make_engine(next(urls))
    try:
        yield engine
    finally:
        engine.dispose()
        for _ in urls:
            pass


@pytest.fixture
def db_session(db_engine: Any) -> Iterator[Any]:
    """A session whose work is rolled back after the test, whatever it committed."""
    from sqlalchemy.orm import Session

    connection = db_engine.connect()
    outer = connection.begin()
    session = Session(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        connection.close()


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for tests to aim at loopback fakes (short timeout: fakes are local)."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own directory, so the default ``forage-data`` and
    ``forage.toml`` of a configuration built from defaults never land in the checkout."""
    monkeypatch.chdir(tmp_path)
