"""The filesystem underneath ``storage.flatfs``: staging directories and durable writes.

A store's staging directory, ``staging/<id>/``, lives while any of its batches is open and
is guarded by an ``flock``-ed ``<id>.lock``: the lock is taken before the directory exists,
so opening a store removes what killed processes left behind and never what live writers
(threads or processes) use. Files are written whole or removed; ``syncfs(2)`` (loaded from
the C library where there is one) and directory ``fsync`` make writes and renames durable.

Spec: syncfs(2), fsync(2) and flock(2) in the Linux man-pages.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import itertools
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    """``syncfs(2)`` from the C library, or ``None`` where there is none (not Linux)."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


def _syncfs(path: Path) -> None:
    """Write back every dirty page and inode of the filesystem holding ``path``."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs(2) is not available", str(path))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


class _StagingArea:
    """A private directory under ``staging/``, guarded by an ``flock`` on ``<name>.lock``.

    The lock file is created and locked before the directory exists, and checked to still be
    the file on disk once locked, so a cleaner never removes a live writer's directory.
    """

    def __init__(self, staging: Path) -> None:
        while True:
            name = uuid.uuid4().hex
            lock_path = staging / f"{name}.lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                still_there = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                still_there = False
            except BaseException:
                os.close(fd)
                raise
            if still_there:
                break
            os.close(fd)
        self._lock_fd = fd
        self.lock_path = lock_path
        self.path = staging / name
        try:
            self.path.mkdir()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Remove the directory and everything in it, then the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.lock_path.unlink(missing_ok=True)
        os.close(self._lock_fd)


class _Staging:
    """The store's staging area, shared by its open batches: created when the first one needs
    it, removed when the last one ends (one directory and lock per busy period, not per batch).
    """

    def __init__(self, staging: Path) -> None:
        self._staging = staging
        self._lock = threading.Lock()
        self._area: _StagingArea | None = None
        self._users = 0
        self._names = itertools.count()

    def acquire(self) -> tuple[str, str]:
        """The area's directory and a file-name prefix no other batch uses; pair with
        ``release``."""
        with self._lock:
            if self._area is None:
                self._area = _StagingArea(self._staging)
            self._users += 1
            return str(self._area.path), f"{next(self._names)}."

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._area is not None:
                self._area.release()
                self._area = None


def _remove_stale_staging(staging: Path) -> int:
    """Remove staging directories and lock files whose writer is gone; return how many."""
    removed = 0
    for entry in os.scandir(staging):
        name = entry.name
        if entry.is_dir(follow_symlinks=False):
            lock_path, dir_path = staging / f"{name}.lock", Path(entry.path)
        elif name.endswith(".lock"):
            lock_path, dir_path = Path(entry.path), staging / name.removesuffix(".lock")
            if dir_path.is_dir():
                continue  # handled with its directory
        else:
            os.unlink(entry.path)
            removed += 1
            continue
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            shutil.rmtree(dir_path, ignore_errors=True)  # written by no one: stale
            removed += 1
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live writer holds it
            continue
        try:
            shutil.rmtree(dir_path, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    return removed


def _write_file(path: str, data: bytes, *, fsync: bool) -> None:
    """Write ``data`` to a new file; on any failure remove what was written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)
