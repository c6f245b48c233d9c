"""``forage commp FILE...``: the Filecoin piece CIDs (v1 and v2) and padded size of files.

Piece commitments follow the Filecoin spec and FRC-0069 (see ``storage.commp``). ``-`` reads
standard input, so a CAR can be piped in (``ipfs dag export CID | forage commp -``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from forage.cli import EXIT_FAILURE


def register(subparsers: Any) -> None:
    """Add the ``commp`` subcommand."""
    parser = subparsers.add_parser(
        "commp",
        help="print the Filecoin piece CIDs and padded piece size of files",
        description=(
            "Compute each file's Filecoin piece commitment and print its piece CID v1 "
            "(as on chain), piece CID v2 (FRC-0069) and padded piece size."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="file to read; - for stdin")
    parser.add_argument("--json", action="store_true", help="print one JSON array of results")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Hash every file named; report each failure by name and carry on with the rest."""
    import json

    from storage import CommPError, PieceInfo, piece_commitment

    results: list[dict[str, object]] = []
    failed = False
    for name in args.files:
        try:
            if name == "-":
                info: PieceInfo = piece_commitment(sys.stdin.buffer)
            else:
                with open(name, "rb") as stream:
                    info = piece_commitment(stream)
        except OSError as exc:
            print(f"forage: {name}: {exc.strerror or exc}", file=sys.stderr)
            failed = True
            continue
        except CommPError as exc:
            print(f"forage: {name}: {exc}", file=sys.stderr)
            failed = True
            continue
        if args.json:
            results.append(
                {
                    "file": name,
                    "payload_size": info.payload_size,
                    "padded_size": info.padded_size,
                    "piece_cid_v1": info.cid_v1,
                    "piece_cid_v2": info.cid_v2,
                }
            )
        else:
            print(
                f"{name}: v1 {info.cid_v1}  v2 {info.cid_v2}  padded size {info.padded_size}"
                f"  payload {info.payload_size}"
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return EXIT_FAILURE if failed else 0
