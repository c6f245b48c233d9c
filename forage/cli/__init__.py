"""The ``forage`` command line: one subcommand per verb.

Each module listed in ``COMMAND_MODULES`` defines ``register(subparsers)``, which adds its
subcommands and sets ``handler`` (a function taking the parsed ``argparse.Namespace`` and
returning an exit code). Command modules import heavy stacks (database, server) inside their
handlers only, so ``forage --help`` and ``forage cid`` start fast. Only the CLI configures
logging and exits; errors are mapped to exit codes here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from forage import __version__
from forage.errors import ConfigError, ConfigErrors, ForageError, InvalidKey, NotFound

if TYPE_CHECKING:
    from forage.config import Config

COMMAND_MODULES: tuple[str, ...] = (
    "archive",
    "blocks",
    "commp",
    "content",
    "config",
    "db",
    "deals",
    "demo",
    "index",
    "jobs",
    "lookup",
    "mirror",
    "pins",
    "run",
    "serve",
    "worker",
)

#: Exit codes: 0 ok, 1 operation failed, 2 usage or configuration error, 3 not found,
#: 130 interrupted.
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="forage",
        description=(
            "Archive package registries to IPFS and Filecoin and answer batch CID lookups."
        ),
    )
    parser.add_argument("--version", action="version", version=f"forage {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="TOML configuration file (default: $FORAGE_CONFIG, else ./forage.toml if present)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeatable)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only log errors")
    parser.add_argument(
        "--log-format",
        metavar="{text,logfmt,json}",
        help="log lines as text, logfmt (key=value) or json (default: [logging] format, else text)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"forage.cli.{name}").register(subparsers)
    return parser


def configure_logging(verbose: int, quiet: bool, log_format: str | None = None) -> None:
    """Log to stderr, one line per event (:mod:`forage.logs`): Forage's own events at INFO
    (DEBUG with ``-v``), libraries' only from WARNING (everything with ``-vv``); ``-q`` keeps
    errors only."""
    from forage.logs import configure

    configure(format=log_format or "text", verbose=verbose, quiet=quiet)


def load_cli_config(args: argparse.Namespace) -> Config:
    """Load the configuration a command runs with (``-c FILE`` or the defaults) and switch
    logging to its ``[logging] format`` unless ``--log-format`` was given."""
    from forage.config import load_config

    config = load_config(args.config)
    args.loaded_config = config  # named in failure messages (forage.cli.failures)
    if getattr(args, "log_format", None) is None and config.logging.format != "text":
        configure_logging(args.verbose, args.quiet, config.logging.format)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``forage`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.log_format is not None or not getattr(args, "logless", False):
            configure_logging(args.verbose, args.quiet, args.log_format)
        code = int(args.handler(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("forage: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigErrors as exc:
        for problem in exc.problems:
            print(f"forage: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        code = _exit_code(exc)
        if code is not None:
            print(f"forage: {exc}", file=sys.stderr)
            return code
        from forage.cli.failures import explain

        failure = explain(exc, args)
        if failure is None or args.verbose:
            raise
        print(f"forage: {failure.message}", file=sys.stderr)
        return failure.exit_code


def _exit_code(exc: Exception) -> int | None:
    """The documented exit code of one of our libraries' errors (``None``: not one). The
    libraries are looked at only if loaded: an error cannot come from a module never imported,
    and importing them here would slow every command's start."""
    usage: list[type[Exception]] = [ConfigError, InvalidKey]
    missing: list[type[Exception]] = [NotFound]
    failed: list[type[Exception]] = [ForageError]
    indexer_errors: Any = sys.modules.get("indexers.errors")
    if indexer_errors is not None:
        usage += [indexer_errors.InvalidName, indexer_errors.LockfileError]
        missing.append(indexer_errors.PackageNotFound)
        failed.append(indexer_errors.IndexerError)
    storage_errors: Any = sys.modules.get("storage.errors")
    if storage_errors is not None:
        failed.append(storage_errors.StorageError)
    for code, kinds in ((EXIT_USAGE, usage), (EXIT_NOT_FOUND, missing), (EXIT_FAILURE, failed)):
        if isinstance(exc, tuple(kinds)):
            return code
    return None


def _quiet_broken_pipe() -> int:
    """The reader went away (``forage ... | head``): stop without a word. Standard output is
    pointed at /dev/null so the interpreter's final flush does not complain again.
    https://docs.python.org/3/library/signal.html#note-on-sigpipe"""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


if __name__ == "__main__":
    sys.exit(main())
