"""``forage cid`` and ``forage car``: content-address local files the way ``ipfs add`` does.

Both run on the ``storage`` library alone: no configuration, database or server is loaded,
so they start fast and work offline. ``storage`` is imported inside the handlers to keep
``forage --help`` quick, and they log nothing, so logging is never set up for them.
"""

from __future__ import annotations

import argparse
import os
import sys

CID_VERSION_HELP = (
    "1 (default): CIDv1 with raw leaves, as `ipfs add --cid-version=1`; "
    "0: CIDv0 (Qm...) with dag-pb leaves, as plain `ipfs add`"
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``cid`` and ``car`` subcommands."""
    cid = subparsers.add_parser(
        "cid",
        help="print the IPFS CID of files",
        description=(
            "Print the CID that `ipfs add` gives each FILE as `CID  FILE` lines in the order "
            "given, like sha256sum: "
            "256 KiB chunks, balanced DAG of at most 174 links per node, SHA-256. Files are "
            "read once in constant memory. An unreadable file is reported on stderr, the "
            "others are still printed, and the exit status is 1."
        ),
    )
    cid.add_argument("files", nargs="+", metavar="FILE", help="file to hash; - reads stdin")
    cid.add_argument("--cid-version", type=int, choices=(0, 1), default=1, help=CID_VERSION_HELP)
    cid.set_defaults(handler=cid_command, logless=True)

    car = subparsers.add_parser(
        "car",
        help="pack a file's UnixFS DAG into a CAR file",
        description=(
            "Write FILE's UnixFS DAG (the blocks `ipfs add` makes) as a CARv1 archive whose "
            "single root is the file's CID, blocks in depth-first order, each once; the "
            "archive can be imported with `ipfs dag import`. Prints the root CID. OUT.car "
            "appears only when complete. FILE is read twice, so it must be a regular file."
        ),
    )
    car.add_argument("file", metavar="FILE", help="file to pack")
    car.add_argument("-o", "--output", required=True, metavar="OUT.car", help="CAR file to write")
    car.add_argument("--cid-version", type=int, choices=(0, 1), default=1, help=CID_VERSION_HELP)
    car.set_defaults(handler=car_command, logless=True)


def _fail(message: str) -> None:
    print(f"forage: {message}", file=sys.stderr)


def cid_command(args: argparse.Namespace) -> int:
    """Print ``CID  FILE`` per readable file; return 1 if any file could not be read."""
    from storage import StorageError, import_file

    failed = 0
    for name in args.files:
        try:
            if name == "-":
                cid = import_file(sys.stdin.buffer, cid_version=args.cid_version).text
            else:
                with open(name, "rb") as stream:
                    cid = import_file(stream, cid_version=args.cid_version).text
        except OSError as exc:
            _fail(f"{name}: {exc.strerror or exc}")
            failed += 1
            continue
        except StorageError as exc:
            _fail(f"{name}: {exc}")
            failed += 1
            continue
        print(f"{cid}  {name}", flush=True)
    return 1 if failed else 0


def car_command(args: argparse.Namespace) -> int:
    """Write the CAR next to its destination, then rename it into place; print the root."""
    import tempfile
    from pathlib import Path

    from storage import StorageError, write_car_from_file

    output = Path(args.output)
    if not output.parent.is_dir():
        _fail(f"{args.output}: directory {output.parent} does not exist")
        return 1
    try:
        source = open(args.file, "rb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        _fail(f"{args.file}: {exc.strerror or exc}")
        return 1
    temp_name = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=output.parent, prefix=f".{output.name}.", suffix=".tmp", delete=False
        ) as temp:
            temp_name = temp.name
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(temp.fileno(), 0o666 & ~umask)
            result = write_car_from_file(source, temp, cid_version=args.cid_version)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, output)
        temp_name = None
    except OSError as exc:
        where = exc.filename or f"{args.file} -> {args.output}"
        _fail(f"{where}: {exc.strerror or exc}")
        return 1
    except StorageError as exc:
        _fail(f"{args.file}: {exc}")
        return 1
    finally:
        source.close()
        if temp_name is not None:
            Path(temp_name).unlink(missing_ok=True)
    print(result.cid, flush=True)
    return 0
