"""The last good metadata document of each package, kept on disk (issue 16, criterion 1).

An ecosystem's mirror asks :meth:`RegistryMirror.document
<indexers.mirror.registry.RegistryMirror.document>` to keep a listing it fetched whole and
well (``keep=True``); when the upstream later fails, the ecosystem serves that document
filtered by what the archive holds and what the registry removed, instead of rebuilding it
from the index alone. One file per document URL, named by the URL's sha256, replaced
atomically (a reader sees the old document or the new one, never a torn one); a failed write
(a full disk) is logged and costs nothing but the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path

from indexers.base import redact

log = logging.getLogger(__name__)


class LastGood:
    """Documents under ``directory`` (``None``: nothing kept)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def path(self, url: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / hashlib.sha256(url.encode()).hexdigest()

    async def keep(self, url: str, body: bytes) -> None:
        """Store ``body`` as the last good document of ``url``."""
        path = self.path(url)
        if path is None:
            return
        try:
            await asyncio.to_thread(replace_file, path, body)
        except OSError as exc:
            log.error("cannot keep the last good document of %s: %s", redact(url), exc)

    def stamp(self, url: str) -> tuple[int, int] | None:
        """What changes when the kept document does (``None``: none kept)."""
        path = self.path(url)
        try:
            stat = path.stat() if path is not None else None
        except OSError:
            return None
        return None if stat is None else (stat.st_mtime_ns, stat.st_size)

    async def read(self, url: str) -> bytes | None:
        """The last good document of ``url`` (``None``: none kept, or unreadable)."""
        path = self.path(url)
        if path is None:
            return None
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot read the last good document of %s: %s", redact(url), exc)
            return None


def replace_file(path: Path, body: bytes) -> None:
    """Write ``body`` to ``path`` through a temporary file renamed over it: a reader sees the
    old bytes or the new ones, never a torn file (the mirror's kept documents, sumdb tiles)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(body)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


__all__ = ["LastGood", "replace_file"]
