"""``forage lookup --digest D``: which archived files have these bytes, by registry digest.

Digests in any registry's notation (hex, ``sha256:HEX``, npm's ``sha512-BASE64``, Go's
``h1:BASE64``; :mod:`forage.lookup.digests`), answered from the local index: a table of the
matching files with their CIDs, or with ``--json`` the API's answer. Exit status: 0 when every
digest matched a file, 3 when some did not (or were malformed).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from forage.cli import EXIT_NOT_FOUND, load_cli_config


def run_digest_lookup(args: argparse.Namespace) -> int:
    """Answer ``args.digests`` (the ``lookup`` command's ``--digest`` options)."""
    import json

    from forage.db.engine import make_sessionmaker, open_database
    from forage.lookup.digests import digests_reply, lookup_digests

    config = load_cli_config(args)
    engine = open_database(config.database, must_exist=True)
    try:
        with make_sessionmaker(engine)() as session:
            reply = digests_reply(lookup_digests(session, args.digests))
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        print_digest_table(reply["results"])
    summary = reply["summary"]
    print(
        "forage: " + ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in summary.items()),
        file=sys.stderr,
    )
    return EXIT_NOT_FOUND if summary["not_found"] or summary["invalid"] else 0


def print_digest_table(results: list[dict[str, Any]]) -> None:
    """One line per matching file (one per digest that has none), columns aligned."""
    rows = [("DIGEST", "STATUS", "PURL", "FILE", "CID")]
    for result in results:
        digest, status = str(result["digest"]), str(result["status"])
        label = digest if len(digest) <= 24 else digest[:21] + "..."
        matches = result.get("matches") or []
        if not matches:
            rows.append((label, status, str(result.get("error", "-")), "", ""))
        for match in matches:
            artifact = match["artifact"]
            rows.append(
                (label, status, match["purl"], artifact["filename"], artifact["cid"] or "-")
            )
            label, status = "", ""
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
