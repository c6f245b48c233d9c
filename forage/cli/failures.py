"""Turn the failures an operator meets (a database that is down or is not one, a port in
use, a directory Forage cannot write) into one line naming the thing and the fix, with the
exit code the CLI documents, instead of a traceback.

The database errors come from SQLAlchemy, which is only looked at when it was imported (a
light command never pays for it).
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from dataclasses import dataclass
from typing import Any

#: Exit codes (also in :mod:`forage.cli`): 1 the operation failed, 2 usage or configuration.
FAILED = 1
USAGE = 2


@dataclass(frozen=True, slots=True)
class Failure:
    """What to print (one line, without the ``forage:`` prefix) and the exit code."""

    message: str
    exit_code: int


def explain(exc: BaseException, args: argparse.Namespace) -> Failure | None:
    """The one-line account of an infrastructure failure, or ``None`` for anything else."""
    database = _database_failure(exc, args)
    if database is not None:
        return database
    if isinstance(exc, OSError):
        return _os_failure(exc, args)
    return None


def _database_url(args: argparse.Namespace) -> str:
    config = getattr(args, "loaded_config", None)
    return config.database.display_url if config is not None else "(the configured database)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _database_failure(exc: BaseException, args: argparse.Namespace) -> Failure | None:
    sa_exc: Any = sys.modules.get("sqlalchemy.exc")
    if sa_exc is None or not isinstance(exc, sa_exc.DBAPIError):
        return None
    url = _database_url(args)
    cause = _first_line(getattr(exc, "orig", None) or exc)
    lowered = cause.lower()
    where = f"database {url}"
    fix_url = "set database.url (FORAGE_DATABASE_URL) or data.dir (FORAGE_DATA_DIR)"
    if "unable to open database file" in lowered:
        return Failure(
            f"{where}: cannot open it as an SQLite file (a directory, or a place Forage "
            f"cannot write); {fix_url} to a writable file path",
            USAGE,
        )
    if "file is not a database" in lowered or "malformed" in lowered:
        return Failure(
            f"{where}: not an SQLite database; {fix_url} to Forage's database file", USAGE
        )
    if "password authentication failed" in lowered or "role " in lowered:
        return Failure(f"{where}: {cause}; fix the user or password in database.url", USAGE)
    if "database" in lowered and "does not exist" in lowered:
        return Failure(f"{where}: {cause}; create it (createdb) or fix database.url", USAGE)
    if "connection" in lowered or "could not translate host" in lowered:
        return Failure(
            f"{where} is unreachable: {cause}; start PostgreSQL there or fix database.url "
            "(FORAGE_DATABASE_URL)",
            FAILED,
        )
    return Failure(f"{where}: {cause}", FAILED)


def _listen_address(args: argparse.Namespace) -> str | None:
    if not hasattr(args, "port"):
        return None
    config = getattr(args, "loaded_config", None)
    host = args.host or (config.server.host if config else "?")
    port = args.port if args.port is not None else (config.server.port if config else "?")
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _os_failure(exc: OSError, args: argparse.Namespace) -> Failure | None:
    listen = _listen_address(args)
    if listen is not None and isinstance(exc, socket.gaierror):
        return Failure(
            f"cannot listen on {listen}: {exc.strerror or exc}; give --host (server.host) "
            "an IP address or a name of this machine",
            USAGE,
        )
    if listen is not None and exc.errno == errno.EADDRINUSE:
        return Failure(
            f"cannot listen on {listen}: the address is already in use; stop the other "
            "server or choose another --port (server.port)",
            FAILED,
        )
    if listen is not None and exc.errno == errno.EADDRNOTAVAIL:
        return Failure(
            f"cannot listen on {listen}: no such address on this machine; give --host "
            "(server.host) one of its addresses",
            USAGE,
        )
    if listen is not None and exc.errno == errno.EACCES and exc.filename is None:
        return Failure(
            f"cannot listen on {listen}: permission denied; ports below 1024 need "
            "privileges: choose another --port (server.port)",
            FAILED,
        )
    name = exc.filename
    if name is None:
        return Failure(_first_line(exc), FAILED)
    hint = {
        errno.EACCES: "; give Forage's user access, or set data.dir (FORAGE_DATA_DIR) elsewhere",
        errno.EROFS: "; set data.dir (FORAGE_DATA_DIR) to a writable file system",
        errno.ENOSPC: "; free space on that disk",
        errno.ENOTDIR: "; a file is in the way: set data.dir (FORAGE_DATA_DIR) to a directory",
    }.get(exc.errno or 0, "")
    return Failure(f"{name}: {exc.strerror or exc}{hint}", FAILED)
