"""Exceptions raised by the ``storage`` package.

Hierarchy::

    StorageError
    ├── InvalidCID              text or bytes that are not a CID we can handle
    ├── BlockNotFound           the blockstore has no block for a CID
    ├── IntegrityError          bytes do not hash to the CID (or digest) they claim
    ├── CarError                a CAR stream that cannot be read
    │   ├── CarFormatError      malformed header or section
    │   └── CarTruncated        the stream ended inside a header or section
    ├── ImportSizeError         a chunk or leaf larger than the importer allows
    ├── BlockFormatError        a block that does not decode as its codec (dag-pb, UnixFS)
    ├── BlockstoreError         the filesystem or object store under a blockstore failed
    │   ├── BlockstoreFull      no space left (ENOSPC, EDQUOT); staged blocks were removed
    │   ├── ObjectNotFound      an object store holds no object under a key
    │   └── ObjectStoreUnavailable  transient: an object store's endpoint unreachable, timed
    │                           out or failing (5xx, throttled); retry later
    ├── BackendError            a remote storage service (pinning, Kubo, deals) failed
    │   ├── BackendUnavailable  transient: connection refused, timeout, 5xx, 429 (retry later;
    │   │                       ``retry_after`` carries the server's Retry-After in seconds)
    │   └── BackendRejected     permanent: 4xx, bad token, request refused (do not retry as is)
    └── CommPError              no piece commitment or piece CID for this input (payload
                                under 65 bytes or over 64 GiB, malformed commitment or size)

Lower-level errors (``OSError`` from the filesystem, ``httpx`` transport errors, multiformats
decoding errors) are translated at the boundary and chained with ``from exc``.
"""

from __future__ import annotations

import errno


class StorageError(Exception):
    """Base of every exception raised by ``storage``."""


class InvalidCID(StorageError):
    """A CID string or byte sequence is malformed or uses an unsupported codec or hash."""

    def __init__(self, value: object, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"invalid CID {value!r}: {reason}")


class BlockNotFound(StorageError):
    """The blockstore holds no block for ``cid``."""

    def __init__(self, cid: object) -> None:
        self.cid = cid
        super().__init__(f"block not found: {cid}")


class IntegrityError(StorageError):
    """Bytes do not match the CID or digest they were stored or sent under."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.what = what
        self.expected = expected
        self.actual = actual
        super().__init__(f"{what}: expected {expected}, got {actual}")


class CarError(StorageError):
    """A CAR stream cannot be read."""


class CarFormatError(CarError):
    """The CAR header or a section is malformed (bad varint, CBOR, CID or version)."""


class CarTruncated(CarError):
    """The CAR stream ended in the middle of the header or of a section."""


class ImportSizeError(StorageError):
    """A chunk or leaf exceeds the size the UnixFS importer accepts."""


class BlockFormatError(StorageError):
    """A block's bytes do not decode as its codec says (strict dag-pb, UnixFS ``Data``)."""


class BlockstoreError(StorageError):
    """The filesystem or object store under a blockstore failed; the underlying error
    (``OSError``, the S3 client's) is chained as the cause."""


class BlockstoreFull(BlockstoreError):
    """No space left on the blockstore's filesystem; blocks staged by the write were removed."""


#: ``errno`` values that mean the medium is out of space (``BlockstoreFull``).
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def medium_error(exc: OSError, what: str) -> BlockstoreError:
    """The ``BlockstoreError`` for a filesystem failure (``BlockstoreFull`` when out of space),
    saying what was being done."""
    if exc.errno in _FULL_ERRNOS:
        return BlockstoreFull(f"{what}: no space left ({exc.strerror})")
    return BlockstoreError(f"{what}: {exc}")


class ObjectNotFound(BlockstoreError):
    """An object store (``storage.objects``) holds no object under ``key``."""

    def __init__(self, store: str, key: str) -> None:
        self.store = store
        self.key = key
        super().__init__(f"{store}: no object {key!r}")


class ObjectStoreUnavailable(BlockstoreError):
    """An object store's endpoint is unreachable, timed out or failing (5xx, throttling):
    transient, unlike a refusal (bad credentials, no such bucket), a plain BlockstoreError."""


class BackendError(StorageError):
    """A remote storage service (pinning service, Kubo, Cluster, deal source) failed."""

    def __init__(self, backend: str, message: str, *, status: int | None = None) -> None:
        self.backend = backend
        self.status = status
        super().__init__(f"{backend}: {message}")


class BackendUnavailable(BackendError):
    """Transient failure (refused, reset, timeout, 5xx, 429); the caller may retry later."""

    def __init__(
        self,
        backend: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(backend, message, status=status)
        self.retry_after = retry_after


class BackendRejected(BackendError):
    """Permanent failure (4xx other than 408/429, bad token); retrying unchanged will fail."""


class CommPError(StorageError):
    """No piece commitment or piece CID for this input (size out of range, malformed commitment)."""
