"""The sparse registry's rules: crate names, index file paths, index lines, download URLs.

Source: ``rust-lang/cargo:src/doc/src/reference/registry-index.md`` (the index format: one
file per crate, one JSON object per line and version, the ``1/``, ``2/``, ``3/<c>/`` and
``<c1c2>/<c3c4>/`` layout of the lower-cased name; ``config.json`` with ``dl`` and its
``{crate}``, ``{version}``, ``{prefix}``, ``{lowerprefix}`` and ``{sha256-checksum}`` markers,
``/{crate}/{version}/download`` appended when it has none) and crates.io's name rules
(``rust-lang/crates.io:crates/crates_io_validation``: at most 64 ASCII letters, digits, ``-``
and ``_``, starting with a letter; names that differ only by case or by ``-``/``_`` cannot
both exist). The index path keeps ``-`` and ``_`` as published, so Forage's canonical name is
the lower-cased name, the index file's own identity; cargo does the same and refuses a
dependency spelt with the other separator ("perhaps you meant").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from indexers.errors import InvalidName

ECOSYSTEM = "cargo"

#: crates.io's longest crate name.
MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: The ``dl`` template markers (registry-index.md, "Index configuration").
MARKERS = ("{crate}", "{version}", "{prefix}", "{lowerprefix}", "{sha256-checksum}")


def validate_name(name: str) -> str:
    """Return ``name`` unchanged if crates.io could have published it; ``InvalidName`` else."""
    if not name:
        raise InvalidName(ECOSYSTEM, name, "empty name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(ECOSYSTEM, name[:100], f"longer than {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(name):
        raise InvalidName(
            ECOSYSTEM, name, "a crate name is ASCII letters, digits, '-' and '_', from a letter"
        )
    return name


def canonical(name: str) -> str:
    """The index's identity of a crate: its valid name, lower-cased."""
    return validate_name(name).lower()


def prefix(name: str) -> str:
    """The directory of a crate's index file (``1``, ``2``, ``3/s``, ``se/rd``), in the
    name's own case as the ``{prefix}`` marker wants it."""
    if len(name) <= 2:
        return str(len(name))
    if len(name) == 3:
        return f"3/{name[0]}"
    return f"{name[0:2]}/{name[2:4]}"


def index_path(name: str) -> str:
    """The index file of a crate, relative to the index root (``se/rd/serde``)."""
    lower = canonical(name)
    return f"{prefix(lower)}/{lower}"


def name_of_path(path: str) -> str | None:
    """The crate an index path names, if it is exactly that crate's path; ``None`` else."""
    head, _, last = path.rpartition("/")
    try:
        lower = canonical(last)
    except InvalidName:
        return None
    return lower if last == lower and head == prefix(lower) else None


def download_url(template: str, name: str, version: str, cksum: str) -> str:
    """The download URL a ``dl`` template gives one crate version (cargo's rule)."""
    if not any(marker in template for marker in MARKERS):
        return f"{template.rstrip('/')}/{name}/{version}/download"
    return (
        template.replace("{crate}", name)
        .replace("{version}", version)
        .replace("{prefix}", prefix(name))
        .replace("{lowerprefix}", prefix(name).lower())
        .replace("{sha256-checksum}", cksum)
    )


def crate_filename(name: str, version: str) -> str:
    """The file name cargo and crates.io give a ``.crate``."""
    return f"{name}-{version}.crate"


def is_sha256(value: Any) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def parse_lines(body: bytes) -> Iterator[dict[str, Any] | None]:
    """The index file's lines as objects; ``None`` for a line that is not a JSON object
    (cargo skips those too, so one bad line never hides the others)."""
    for raw in body.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            yield None
            continue
        yield line if isinstance(line, dict) else None


def dump_line(line: Mapping[str, Any]) -> bytes:
    """One index line as crates.io writes it: compact JSON, one line."""
    return json.dumps(line, separators=(",", ":")).encode()


__all__ = [
    "ECOSYSTEM",
    "MARKERS",
    "canonical",
    "crate_filename",
    "download_url",
    "dump_line",
    "index_path",
    "is_sha256",
    "name_of_path",
    "parse_lines",
    "prefix",
    "validate_name",
]
