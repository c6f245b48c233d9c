"""``forage lookup``: where are the bytes of these packages, from the local index.

``forage lookup KEY...`` takes purls or Forage keys; ``--lockfile FILE`` adds every dependency
of a lockfile or SBOM (any format of :func:`indexers.read_lockfile`), each one's pinned digests
compared with the files Forage holds (a mismatch counts as not found). It prints a table (one
line per file: CID, pins, and the active Filecoin deals with provider and expiry) or, with
``--json``, the API's JSON answer. Keys the index lacks queue an import, as the API does
(``--no-backfill`` to only read). Exit status: 0 when every key was found, 3 when some were
not (queued, unknown or malformed), 2 when every key was malformed or the lockfile cannot be
read (of no supported format included).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forage.cli import EXIT_NOT_FOUND, EXIT_USAGE, load_cli_config

if TYPE_CHECKING:
    from forage.lookup.views import KeyResult

#: Keys resolved per batch (each batch is one read and at most one write transaction).
BATCH = 10_000


def register(subparsers: Any) -> None:
    """Add ``lookup``."""
    parser = subparsers.add_parser(
        "lookup",
        help="look up packages' archived files, CIDs, pins and deals",
        description="Answer purls or Forage keys (pkg:npm/left-pad@1.3.0, "
        "npm:left-pad:1.3.0) from the local index: each file's CID, pins and active deals.",
    )
    parser.add_argument("keys", nargs="*", metavar="KEY", help="purl or PLATFORM:NAME:VERSION")
    parser.add_argument(
        "--lockfile",
        metavar="FILE",
        help="a lockfile (package-lock.json, yarn.lock, pnpm-lock.yaml, requirements.txt, "
        "poetry.lock, uv.lock, Pipfile.lock, go.sum, Cargo.lock...) or an SBOM (CycloneDX, SPDX)",
    )
    parser.add_argument(
        "--digest",
        action="append",
        dest="digests",
        metavar="DIGEST",
        help="find files by registry digest: hex, sha256:HEX, sha512-BASE64, h1:BASE64",
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    parser.add_argument(
        "--no-backfill", action="store_true", help="do not queue imports for unknown keys"
    )
    parser.set_defaults(handler=run_lookup)


def run_lookup(args: argparse.Namespace) -> int:
    import json

    from forage.db.engine import make_sessionmaker, open_database
    from forage.lookup.backfill import BackfillPolicy
    from forage.lookup.batch import lockfile_reply, lookup
    from forage.lookup.sessions import read_only_sessionmaker
    from indexers import LockEntry, read_lockfile

    if args.digests:
        from forage.cli.digests import run_digest_lookup

        return run_digest_lookup(args)
    if not args.keys and not args.lockfile:
        print("forage: give keys to look up, or --lockfile FILE", file=sys.stderr)
        return EXIT_USAGE
    entries: list[LockEntry] = [LockEntry("argument", key) for key in args.keys]
    if args.lockfile:
        path = Path(args.lockfile)
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"forage: cannot read {path}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        entries += read_lockfile(data, filename=path.name)  # LockfileError: exit 2 (main)
    config = load_cli_config(args)
    engine = open_database(config.database, must_exist=True)
    writer = make_sessionmaker(engine)
    reader, reader_engine = read_only_sessionmaker(writer)
    try:
        policy = BackfillPolicy.from_config(config, limited=False)
        keys = [entry.key for entry in entries if entry.key is not None]
        results: list[KeyResult] = []
        for start in range(0, len(keys), BATCH):
            results += lookup(
                reader,
                None if args.no_backfill else writer,
                keys[start : start + BATCH],
                policy=policy,
            )
    finally:
        if reader_engine is not None:
            reader_engine.dispose()
        engine.dispose()
    reply = lockfile_reply(entries, results)
    if args.json:
        if args.lockfile:
            print(json.dumps(reply, indent=2))
        else:
            # /api/v1/lookup's answer: without what only a lockfile's reply has.
            lockfile_only = ("source", "integrity", "pinned", "mismatched")
            answers = [
                {k: v for k, v in result.items() if k not in lockfile_only}
                for result in reply["dependencies"]
            ]
            extra = ("skipped", "integrity_mismatch")
            shown = {k: v for k, v in reply["summary"].items() if k not in extra}
            print(json.dumps({"results": answers, "summary": shown}, indent=2))
    else:
        print_table(reply["dependencies"])
    summary = reply["summary"]
    print(
        "forage: "
        + ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in summary.items()),
        file=sys.stderr,
    )
    missing = sum(count for status, count in summary.items() if status not in ("found", "skipped"))
    if missing and missing == summary.get("invalid", 0) and not summary.get("found"):
        return EXIT_USAGE  # nothing could even be asked: every key was malformed
    return EXIT_NOT_FOUND if missing else 0


def _deals(artifact: dict[str, Any]) -> str:
    deals = [
        f"{deal['provider']} until {(deal['expires_at'] or '?')[:10]}"
        for piece in artifact["pieces"]
        for deal in piece["deals"]
    ]
    if deals:
        return ", ".join(deals)
    return "in piece, no active deal" if artifact["pieces"] else "-"


def _rows(dependencies: Sequence[dict[str, Any]]) -> Iterator[tuple[str, ...]]:
    for dependency in dependencies:
        label = dependency["key"] or dependency["source"]
        status = dependency["status"]
        if dependency.get("integrity") == "mismatch":
            status = "found, INTEGRITY MISMATCH"
        if dependency["status"] != "found":
            detail = {
                "queued": f"import queued (job {dependency.get('job_id')})",
                "invalid": dependency.get("error"),
                "not_found": dependency.get("reason"),
                "skipped": dependency.get("reason"),
            }[status]
            yield (label, status, str(detail), "", "", "")
            continue
        if not dependency["artifacts"]:
            yield (label, status, "(no files)", "", "", "")
        for artifact in dependency["artifacts"]:
            archive = artifact["archive"]
            cid = artifact["cid"] or f"({archive['status'] if archive else 'not archived'})"
            pins = ",".join(f"{p['backend']}:{p['status']}" for p in artifact["pins"]) or "-"
            yield (label, status, artifact["filename"], cid, pins, _deals(artifact))
            label, status = "", ""


def print_table(dependencies: Sequence[dict[str, Any]]) -> None:
    """Print one line per file (one per key that has none), columns aligned."""
    header = ("KEY", "STATUS", "FILE", "CID", "PINS", "DEALS")
    rows = [header, *_rows(dependencies)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
