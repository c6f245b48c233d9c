"""``forage config``: print the effective configuration (file, then ``FORAGE_*`` variables,
then defaults) as TOML, with secrets masked, so an operator sees what the other commands use.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from forage.cli import load_cli_config


def register(subparsers: Any) -> None:
    """Add the ``config`` subcommand."""
    parser = subparsers.add_parser(
        "config", help="print the effective configuration (secrets masked)"
    )
    parser.set_defaults(handler=run)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _emit(table: dict[str, Any], path: str, lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if scalars:
        lines.append(f"[{path}]")
        for key, value in scalars.items():
            if value is None:
                lines.append(f"# {key} is not set")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    for key, value in table.items():
        if isinstance(value, dict):
            _emit(value, f"{path}.{key}" if path else key, lines)


def run(args: argparse.Namespace) -> int:

    config = load_cli_config(args)
    lines = [f"# source: {config.source or '(defaults and environment only)'}", ""]
    _emit(config.to_dict(), "", lines)
    sys.stdout.write("\n".join(lines).rstrip("\n") + "\n")
    return 0
