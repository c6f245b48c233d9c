"""Read an archived dist's ``composer.json``, to rebuild p2 metadata (require, autoload, type)
when the registry is down.

A dist is a zip (GitHub zipballs put everything under one top directory, other archivers at
the root): the shallowest ``composer.json`` is the package's. A zip is read from its end, so
the bytes go to a temporary file that spills to disk past a few MiB, never all to memory.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

from indexers.errors import ArchiveInvalid

#: Largest ``composer.json`` read out of a dist.
MAX_MANIFEST_SIZE = 4 * 1024**2
#: Bytes of a dist kept in memory before the temporary file moves to disk.
SPILL_SIZE = 8 * 1024**2

#: The members of a package's ``composer.json`` that its p2 entries carry
#: (``composer/packagist``'s ``Version::toV2Array``); root-only settings stay out.
PACKAGE_FIELDS = (
    "description",
    "keywords",
    "homepage",
    "license",
    "authors",
    "type",
    "require",
    "require-dev",
    "conflict",
    "replace",
    "provide",
    "suggest",
    "autoload",
    "autoload-dev",
    "include-path",
    "target-dir",
    "bin",
    "extra",
    "support",
    "funding",
)


def composer_manifest(chunks: Iterator[bytes], cid: str) -> dict[str, Any]:
    """The package fields of the ``composer.json`` inside the zip given as ``chunks``;
    ``ArchiveInvalid`` for an unreadable zip or one without a ``composer.json`` object."""
    with tempfile.SpooledTemporaryFile(max_size=SPILL_SIZE) as spool:
        for chunk in chunks:
            spool.write(chunk)
        spool.seek(0)
        try:
            with zipfile.ZipFile(spool) as archive:
                found = [
                    info
                    for info in archive.infolist()
                    if info.filename.rsplit("/", 1)[-1] == "composer.json"
                    and info.filename.count("/") <= 1
                    and not info.is_dir()
                ]
                if not found:
                    raise ArchiveInvalid(cid, "dist without composer.json")
                member = min(found, key=lambda info: info.filename.count("/"))
                if member.file_size > MAX_MANIFEST_SIZE:
                    raise ArchiveInvalid(cid, f"composer.json of {member.file_size} bytes")
                manifest = json.loads(archive.read(member))
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
            raise ArchiveInvalid(cid, f"unreadable dist: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArchiveInvalid(cid, "composer.json is not an object")
    return {key: manifest[key] for key in PACKAGE_FIELDS if key in manifest}


__all__ = ["MAX_MANIFEST_SIZE", "PACKAGE_FIELDS", "composer_manifest"]
