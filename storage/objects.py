"""Object stores: whole immutable objects under string keys, behind one small protocol.

A packed blockstore (``storage.objectpacks``) keeps each pack as one object, written once and
read by byte ranges. This module holds the ``ObjectStore`` protocol and its local
implementation, ``DirectoryObjects`` (one file per object under a directory); the
S3-compatible one is ``storage.s3.S3Objects``. Both give the same guarantees:

- ``put`` is atomic: a reader sees the whole object or nothing (S3: a PUT, or a completed
  multipart upload, is atomic; local: a temporary file, ``fsync``, ``rename``, and the
  directory ``fsync``ed, so the object also survives a crash once ``put`` returns);
- ``get_range`` returns exactly the bytes asked for, ``ObjectNotFound`` for an absent key,
  ``BlockstoreError`` for a range past the object's end;
- ``size`` is ``None`` for an absent key; ``delete`` of an absent key does nothing;
- ``keys`` lists every key under a prefix (in no promised order);
- failures of the medium raise ``BlockstoreError`` (``BlockstoreFull`` for a full local disk,
  ``ObjectStoreUnavailable`` for an unreachable or failing endpoint).

Keys are ``/``-separated relative paths of safe characters (``KEY``); anything else is
refused, so a key can never climb out of a directory or a bucket prefix.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from storage.errors import BlockstoreError, ObjectNotFound, medium_error
from storage.staging import _fsync_dir

__all__ = [
    "DirectoryObjects",
    "ObjectStore",
    "check_key",
]

#: A key: ``/``-separated segments of letters, digits, ``.``, ``_``, ``-``, none of them
#: ``.`` or ``..`` nor starting with ``.`` (temporary files of ``DirectoryObjects`` do).
KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
#: How much ``DirectoryObjects.put`` copies at once from a source file.
COPY_CHUNK = 1 << 20

Source = str | os.PathLike[str] | bytes


def check_key(key: str) -> str:
    """``key`` if it is a valid object key, else ``BlockstoreError``."""
    if not KEY.fullmatch(key):
        raise BlockstoreError(f"invalid object key {key!r}")
    return key


@runtime_checkable
class ObjectStore(Protocol):
    """The contract of an object store (synchronous methods; see the module docstring)."""

    def put(self, key: str, source: Source) -> None:
        """Store the bytes (or the file at the path) ``source`` under ``key``, atomically."""

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the object ``key`` from ``offset``."""

    def size(self, key: str) -> int | None:
        """The size of the object ``key``, or ``None`` if there is none."""

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with ``prefix``."""

    def delete(self, key: str) -> None:
        """Remove the object ``key``, if any."""

    def check(self) -> None:
        """Raise ``BlockstoreError`` unless the store is there and takes writes from us."""

    def close(self) -> None:
        """Release connections and threads."""


class DirectoryObjects:
    """An ``ObjectStore`` in a local directory: the object ``a/b/c`` is the file
    ``<root>/a/b/c``. ``durable=False`` skips the syncs (tests, throwaway stores)."""

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise medium_error(exc, f"opening object directory {self.root}") from exc

    def __repr__(self) -> str:
        return f"DirectoryObjects({str(self.root)!r})"

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def put(self, key: str, source: Source) -> None:
        """Write a temporary file beside the object, sync it, rename it into place, sync
        the directory."""
        final = self._path(key)
        directory = os.path.dirname(final)
        temporary = f"{directory}/.{os.path.basename(final)}.{secrets.token_hex(8)}.tmp"
        try:
            created = self._makedirs(directory)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                if isinstance(source, bytes):
                    _write_all(fd, source)
                else:
                    _copy_file(fd, source)
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, final)
            if self.durable:
                for path in [directory, *created]:
                    _fsync_dir(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise medium_error(exc, f"writing object {key}") from exc

    def _makedirs(self, directory: str) -> list[str]:
        """Create ``directory`` and any missing parents; the parents whose entries changed
        (to be synced)."""
        if os.path.isdir(directory):
            return []
        missing = []
        path = directory
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        return [os.path.dirname(path) for path in missing]

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``, with one ``pread``."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise ObjectNotFound(str(self.root), key) from exc
        except OSError as exc:
            raise medium_error(exc, f"reading object {key}") from exc
        try:
            data = os.pread(fd, length, offset)
        except OSError as exc:
            raise medium_error(exc, f"reading object {key}") from exc
        finally:
            os.close(fd)
        if len(data) != length:
            raise BlockstoreError(
                f"object {key}: {length} bytes at {offset} asked for, {len(data)} there"
            )
        return data

    def size(self, key: str) -> int | None:
        """The file's size, or ``None``."""
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise medium_error(exc, f"reading object {key}") from exc

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every object file under the root whose key starts with ``prefix``."""
        start = self.root / os.path.dirname(prefix) if "/" in prefix else self.root
        try:
            for directory, subdirectories, files in os.walk(start):
                subdirectories.sort()
                relative = os.path.relpath(directory, self.root)
                base = "" if relative == "." else relative + "/"
                for name in sorted(files):
                    key = base + name
                    if not name.startswith(".") and key.startswith(prefix):
                        yield key
        except OSError as exc:
            raise medium_error(exc, f"listing objects under {prefix!r}") from exc

    def delete(self, key: str) -> None:
        """Unlink the object's file, if any."""
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise medium_error(exc, f"deleting object {key}") from exc

    def check(self) -> None:
        """The directory is there and writable."""
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise BlockstoreError(f"object directory {self.root} is not writable")

    def close(self) -> None:
        """Nothing to release."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_file(fd: int, source: str | os.PathLike[str]) -> None:
    """Copy the file ``source`` into ``fd`` in the kernel where it can (``copy_file_range``),
    in ``COPY_CHUNK`` reads otherwise: constant memory."""
    with open(source, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        copied = 0
        copy_range = getattr(os, "copy_file_range", None)
        if copy_range is not None:
            with contextlib.suppress(OSError):
                while copied < size:
                    step = copy_range(src.fileno(), fd, size - copied)
                    if step == 0:
                        break
                    copied += step
        if copied < size:  # no copy_file_range, or it failed across filesystems
            src.seek(copied)
            os.lseek(fd, copied, os.SEEK_SET)
            while chunk := src.read(COPY_CHUNK):
                _write_all(fd, chunk)
