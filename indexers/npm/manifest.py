"""Read an archived npm tarball's ``package.json``, to rebuild version documents
(dependencies, bin, engines) when the registry is down."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

from indexers.errors import ArchiveInvalid

#: Largest ``package.json`` read out of an npm tarball for a fallback packument.
MAX_MANIFEST_SIZE = 4 * 1024**2


class _ChunkReader(io.RawIOBase):
    """A read-only stream over an iterator of byte chunks (for ``tarfile``'s stream mode)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def npm_manifest(chunks: Iterator[bytes], cid: str) -> dict[str, Any]:
    """The ``package.json`` inside an npm tarball given as ``chunks`` (its top directory's,
    any name); raises ``ArchiveInvalid`` for an unreadable tarball or one without a manifest.
    """
    stream = io.BufferedReader(_ChunkReader(chunks))
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if len(parts) != 2 or parts[1] != "package.json" or not member.isfile():
                    continue
                if member.size > MAX_MANIFEST_SIZE:
                    raise ArchiveInvalid(cid, f"package.json of {member.size} bytes")
                handle = tar.extractfile(member)
                if handle is None:
                    break
                manifest = json.loads(handle.read())
                if not isinstance(manifest, dict):
                    raise ArchiveInvalid(cid, "package.json is not an object")
                return manifest
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, ValueError) as exc:
        raise ArchiveInvalid(cid, f"unreadable npm tarball: {exc}") from exc
    raise ArchiveInvalid(cid, "npm tarball without package.json")


__all__ = ["MAX_MANIFEST_SIZE", "npm_manifest"]
