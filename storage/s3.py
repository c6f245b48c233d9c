"""``S3Objects``: the ``ObjectStore`` protocol (``storage.objects``) on any S3-compatible
service (AWS S3, MinIO, Ceph RGW, R2, ``rclone serve s3``...).

The client is aiobotocore (botocore, AWS's own request signing, retries and error model,
over aiohttp, which Forage already uses). The other candidate was obstore (Rust
``object_store`` bindings: faster, one self-contained wheel, sync and async APIs), but
``object_store`` refuses a ranged GET answered ``200`` instead of ``206`` ("Received
non-partial response when range requested"), and S3-compatible servers do answer that way:
``rclone serve s3`` (gofakes3) up to at least rclone 1.75 returns the right bytes with ``200``
and a ``Content-Range``, which is the server the tests and CI run against. botocore reads the
body it is sent; this module checks its length instead. aiobotocore is async and the
``Blockstore`` protocol is synchronous (blocks are read from worker threads and CLI code), so
each ``S3Objects`` runs its client on a private event loop in a daemon thread and the
synchronous methods submit to it (``asyncio.run_coroutine_threadsafe``); a forked child gets
a loop and client of its own on first use.

- ``put`` sends one ``PutObject`` (atomic) up to ``multipart_threshold`` bytes, and a multipart
  upload above it (atomic on completion; aborted on failure), reading the file ``part_size``
  bytes at a time with at most ``concurrency`` parts in flight: memory stays bounded;
- ``get_range`` is one ranged ``GetObject``; its answer must be exactly the bytes asked for;
- checksums are only sent and checked when an operation requires them (botocore's
  ``when_required``: S3-compatible servers vary in the trailers they accept), and bodies are
  sent unsigned (``UNSIGNED-PAYLOAD``): the bytes are checked where it matters, against their
  CIDs when read.

Errors: ``ObjectNotFound`` for an absent key; ``ObjectStoreUnavailable`` (transient) for an
unreachable endpoint, a timeout, a 5xx or throttling; a plain ``BlockstoreError`` naming the
bucket and endpoint for refusals (bad credentials, no such bucket). Credentials are passed in
by the caller (this package reads no environment) and appear in no message or ``repr``.

Spec: https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html,
https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from storage.errors import BlockstoreError, ObjectNotFound, ObjectStoreUnavailable
from storage.objects import Source, check_key

__all__ = [
    "S3Objects",
]

T = TypeVar("T")

#: Objects larger than this are sent as multipart uploads.
MULTIPART_THRESHOLD = 64 << 20
#: The size of each part of a multipart upload (S3's minimum is 5 MiB, except the last).
PART_SIZE = 16 << 20
#: Error codes that mean the credentials are refused.
_DENIED = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
        "403",
        "401",
    }
)
_ABSENT = frozenset({"NoSuchKey", "NotFound", "404"})
_TRANSIENT = frozenset(
    {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling"}
)


class _LoopThread:
    """An event loop running in a daemon thread, for one process, and the client opened on
    it (``client``, set on first use; ``context`` is what closes it)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="s3")
        self.thread.start()
        self.client: Any = None
        self.context: Any = None
        self.opening = asyncio.Lock()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()

    def shutdown(self) -> None:
        """Close the client and stop the thread (in the process that started it)."""
        if self.pid != os.getpid() or self.loop.is_closed():
            return
        if self.context is not None:
            with contextlib.suppress(Exception):  # closing: nothing left to do about it
                self.run(self.context.__aexit__(None, None, None))
            self.client = self.context = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class S3Objects:
    """An ``ObjectStore`` in ``bucket`` under ``prefix`` (no leading or trailing ``/``).

    ``endpoint`` is the service's URL (``None``: AWS for ``region``); ``access_key`` and
    ``secret_key`` (and ``session_token`` for temporary credentials) sign every request.
    ``timeout`` bounds connecting and each read, in seconds; ``attempts`` is botocore's
    total tries per request (its "standard" retry mode: 5xx, throttling, connection errors).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key: str,
        secret_key: str,
        session_token: str | None = None,
        timeout: float = 60.0,
        attempts: int = 3,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        concurrency: int = 4,
    ) -> None:
        if not bucket:
            raise BlockstoreError("S3: no bucket named")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.region = region
        self._credentials = (access_key, secret_key, session_token)
        self._timeout = timeout
        self._attempts = attempts
        self.multipart_threshold = max(multipart_threshold, part_size)
        self.part_size = part_size
        self._concurrency = concurrency
        self._lock = threading.Lock()
        self._loop: _LoopThread | None = None

    @property
    def where(self) -> str:
        """The bucket, prefix and endpoint, as error messages name them."""
        location = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{location} at {self.endpoint or f'AWS {self.region}'}"

    def __repr__(self) -> str:
        return f"S3Objects({self.where!r})"

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _run(self, make: Callable[[Any], Awaitable[T]], what: str) -> T:
        """Run ``make(client)`` (a coroutine function) on the loop; errors translated."""
        loop = self._loop_thread()
        try:
            return loop.run(self._call(loop, make))
        except BlockstoreError:
            raise
        except Exception as exc:
            raise self._translate(exc, what) from exc

    async def _call(self, loop: _LoopThread, make: Callable[[Any], Awaitable[T]]) -> T:
        if loop.client is None:
            async with loop.opening:  # the first calls of several threads open one client
                if loop.client is None:
                    loop.context = self._client_context()
                    loop.client = await loop.context.__aenter__()
        return await make(loop.client)

    def _loop_thread(self) -> _LoopThread:
        with self._lock:
            if self._loop is None or self._loop.pid != os.getpid():
                # First use, or a forked child: the parent's thread and client are not ours.
                self._loop = _LoopThread()
                # Closed with this store, or at exit: no client left for the collector.
                weakref.finalize(self, self._loop.shutdown)
            return self._loop

    def _client_context(self) -> Any:
        from aiobotocore.session import get_session  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        access_key, secret_key, session_token = self._credentials
        config = Config(
            connect_timeout=self._timeout,
            read_timeout=self._timeout,
            retries={"max_attempts": self._attempts, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # No SHA-256 of each body for the signature: one more pass over every byte, on
            # the one loop thread. Packs are checked end to end instead (every block against
            # its CID on ``get``, each index against the pack's name), and TLS covers https.
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            max_pool_connections=max(10, self._concurrency * 2),
        )
        return get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=session_token,
            config=config,
        )

    def _translate(self, exc: Exception, what: str) -> BlockstoreError:
        from botocore.exceptions import (  # type: ignore[import-untyped]
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            ReadTimeoutError,
        )

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code == "NoSuchBucket":
                return BlockstoreError(
                    f"{self.where}: {what}: bucket {self.bucket!r} does not exist (create it, "
                    "or name another bucket)"
                )
            if code in _DENIED or status in (401, 403):
                return BlockstoreError(
                    f"{self.where}: {what}: access refused ({code or status}): the access key "
                    "or secret is wrong, or lacks permission on the bucket"
                )
            if status >= 500 or code in _TRANSIENT or status == 429:
                return ObjectStoreUnavailable(f"{self.where}: {what}: {code or status}")
            message = error.get("Message") or exc
            return BlockstoreError(f"{self.where}: {what}: {code or status}: {message}")
        if isinstance(exc, ConnectionError | ReadTimeoutError | HTTPClientError):
            return ObjectStoreUnavailable(f"{self.where}: {what}: endpoint unreachable: {exc}")
        if isinstance(exc, BotoCoreError):
            return BlockstoreError(f"{self.where}: {what}: {exc}")
        if isinstance(exc, OSError | asyncio.TimeoutError):
            return ObjectStoreUnavailable(f"{self.where}: {what}: {exc!r}")
        return BlockstoreError(f"{self.where}: {what}: {exc!r}")

    def check(self) -> None:
        """Make sure the bucket exists and the credentials are accepted (one request)."""
        try:
            self._run(lambda c: c.head_bucket(Bucket=self.bucket), "opening the bucket")
        except BlockstoreError as exc:
            if _status(exc.__cause__) == 404:  # a HEAD answer has no body, so no error code
                raise BlockstoreError(
                    f"{self.where}: bucket {self.bucket!r} does not exist (create it, or name "
                    "another bucket)"
                ) from exc.__cause__
            raise

    def put(self, key: str, source: Source) -> None:
        """Store ``source`` under ``key``: one PUT, or a multipart upload for a large file."""
        full = self._full(key)
        what = f"writing object {key}"
        if isinstance(source, bytes):
            self._run(lambda c: c.put_object(Bucket=self.bucket, Key=full, Body=source), what)
            return
        try:
            size = os.stat(source).st_size
        except OSError as exc:
            raise BlockstoreError(f"{what}: {exc}") from exc
        if size <= self.multipart_threshold:
            self._run(lambda c: self._put_file(c, full, source), what)
        else:
            self._run(lambda c: self._put_multipart(c, full, source, size), what)

    async def _put_file(self, client: Any, full: str, path: str | os.PathLike[str]) -> None:
        # aiohttp streams the file (reading it in an executor): memory stays flat.
        with open(path, "rb") as body:  # noqa: ASYNC230  (opening is instant, reading is not here)
            await client.put_object(Bucket=self.bucket, Key=full, Body=body)

    async def _put_multipart(
        self, client: Any, full: str, path: str | os.PathLike[str], size: int
    ) -> None:
        upload = await client.create_multipart_upload(Bucket=self.bucket, Key=full)
        upload_id = upload["UploadId"]
        limit = asyncio.Semaphore(self._concurrency)
        loop = asyncio.get_running_loop()

        async def send(number: int, offset: int) -> dict[str, Any]:
            async with limit:
                want = min(self.part_size, size - offset)
                data = await loop.run_in_executor(None, _read_part, path, offset, want)
                if len(data) != want:  # the file changed under us: never send a short object
                    raise BlockstoreError(f"{path}: {len(data)} bytes at {offset}, not {want}")
                answer = await client.upload_part(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=io.BytesIO(data),
                )
                return {"PartNumber": number, "ETag": answer["ETag"]}

        try:
            offsets = range(0, size, self.part_size)
            parts = await asyncio.gather(
                *(send(number, offset) for number, offset in enumerate(offsets, start=1))
            )
            await client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(Exception):  # the first failure is the one to report
                await client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id
                )
            raise

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` with one ranged GET, checked for length."""
        if length == 0:
            if self.size(key) is None:
                raise ObjectNotFound(self.where, key)
            return b""
        full = self._full(key)

        async def get(client: Any) -> bytes:
            answer = await client.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={offset}-{offset + length - 1}"
            )
            async with answer["Body"] as body:
                return bytes(await body.read())

        try:
            data = self._run(get, f"reading object {key}")
        except BlockstoreError as exc:
            if _absent(exc.__cause__):
                raise ObjectNotFound(self.where, key) from exc.__cause__
            if _status(exc.__cause__) == 416:
                raise BlockstoreError(
                    f"{self.where}: object {key}: {length} bytes at {offset} asked for, "
                    "past its end"
                ) from exc.__cause__
            raise
        if len(data) != length:
            raise BlockstoreError(
                f"{self.where}: object {key}: {length} bytes at {offset} asked for, "
                f"{len(data)} sent"
            )
        return data

    def size(self, key: str) -> int | None:
        """The object's ``Content-Length`` (one HEAD), or ``None``."""
        full = self._full(key)
        try:
            answer = self._run(
                lambda c: c.head_object(Bucket=self.bucket, Key=full), f"reading object {key}"
            )
        except BlockstoreError as exc:
            if _absent(exc.__cause__):
                return None
            raise
        return int(answer["ContentLength"])

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix``, one listing page (up to 1,000 keys) at a time."""
        base = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:
            arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base + prefix}
            if token:
                arguments["ContinuationToken"] = token
            page: dict[str, Any] = self._run(
                functools.partial(_list_page, arguments=arguments),
                f"listing objects under {prefix!r}",
            )
            for entry in page.get("Contents", ()):
                yield entry["Key"][len(base) :]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def delete(self, key: str) -> None:
        """Remove the object (S3 answers a delete of an absent key with success)."""
        full = self._full(key)
        self._run(lambda c: c.delete_object(Bucket=self.bucket, Key=full), f"deleting object {key}")

    def close(self) -> None:
        """Close the client and stop the loop thread (a later call starts them again)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.shutdown()


async def _list_page(client: Any, *, arguments: dict[str, Any]) -> Any:
    return await client.list_objects_v2(**arguments)


def _read_part(path: str | os.PathLike[str], offset: int, size: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(size)


def _status(exc: BaseException | None) -> int:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _absent(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the S3 answer for an absent key (not an absent bucket)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in _ABSENT or (code != "NoSuchBucket" and _status(exc) == 404)
