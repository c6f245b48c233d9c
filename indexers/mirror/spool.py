"""Bytes held between verification and serving: in memory when small, else in a temp file.

The mirror never streams a byte to a client before the whole file has passed its upstream
digest (a truncated or tampered body must fall back to the archive, not reach ``npm``). So a
file is first written to a :class:`Spool` while it is hashed, then served from there. Up to
``memory`` bytes stay in a buffer; beyond that the spool moves to an anonymous temporary file
(unlinked at once, so a crash leaves nothing behind), keeping memory per request flat.

A finished spool is read with positional reads, so any number of requests sharing one
single-flight download read it at once without disturbing each other; the file is closed when
the last reference to the spool goes away.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

from aiohttp import web

#: Bytes per read when a spool is served from its file.
READ_SIZE = 256 * 1024


class Spool:
    """Write once, then read by many; see the module docstring."""

    def __init__(self, *, memory: int, directory: Path | None = None) -> None:
        self._memory = memory
        self._directory = directory
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; spill to a temporary file past the memory threshold."""
        self.size += len(chunk)
        if self._file is not None:
            self._file.write(chunk)
            return
        self._buffer += chunk
        if len(self._buffer) > self._memory:
            handle = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 - see finalize
            weakref.finalize(self, handle.close)
            handle.write(self._buffer)
            self._file = handle
            self._buffer = bytearray()

    def finish(self) -> None:
        """Flush written bytes so positional readers see them."""
        if self._file is not None:
            self._file.flush()

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def getvalue(self) -> bytes:
        """The bytes of an in-memory spool (callers check :attr:`in_memory`)."""
        return bytes(self._buffer)

    def open(self) -> IO[bytes]:
        """A seekable reader of its own over the bytes (for zip checks)."""
        if self._file is None:
            return io.BytesIO(self._buffer)
        return os.fdopen(os.dup(self._file.fileno()), "rb")

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (fewer at the end), without moving any file offset."""
        if self._file is None:
            return bytes(self._buffer[offset : offset + size])
        return os.pread(self._file.fileno(), size, offset)

    def blocking_chunks(self) -> Iterator[bytes]:
        """The bytes in order, read in the calling thread (for archiving them)."""
        if self._file is None:
            yield bytes(self._buffer)
            return
        offset = 0
        while chunk := self.read_at(offset, READ_SIZE):
            offset += len(chunk)
            yield chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes in order, file reads off the event loop."""
        if self._file is None:
            yield bytes(self._buffer)
            return
        offset = 0
        while offset < self.size:
            chunk = await asyncio.to_thread(self.read_at, offset, READ_SIZE)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk


async def send_spool(
    request: web.Request, spool: Spool, *, content_type: str, headers: dict[str, str]
) -> web.StreamResponse:
    """Answer ``request`` with the spool's bytes (a single body when it is in memory)."""
    if spool.in_memory:
        return web.Response(body=spool.getvalue(), content_type=content_type, headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_type = content_type
    response.content_length = spool.size
    await response.prepare(request)
    async for chunk in spool.chunks():
        await response.write(chunk)
    await response.write_eof()
    return response


__all__ = ["READ_SIZE", "Spool", "send_spool"]
