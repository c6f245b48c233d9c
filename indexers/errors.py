"""Exceptions raised by the ``indexers`` package.

Hierarchy::

    IndexerError
    ├── UpstreamUnavailable     transient: refused, reset, timeout, 5xx, 429 (retry with backoff;
    │                           ``retry_after`` carries the server's Retry-After in seconds)
    ├── StaleMetadata           transient: a cached page older than the serial/sequence that
    │                           announced it (retry after a short wait)
    ├── PackageNotFound         permanent: the registry says the package or version does not exist
    ├── InvalidName             permanent: a package name, module path or version that is not valid
    │                           for the registry (hostile input included)
    ├── FeedError               permanent until a human looks: the feed's document changed shape
    ├── InvalidDigest           permanent: a digest string that is malformed (bad SRI, bad hex)
    ├── InvalidArchive          permanent: a downloaded archive that is not readable or unsafe
    │                           (corrupt zip, member names with ``..``, NUL, absolute paths)
    └── DigestMismatch          bytes whose digest (or size) differs from the registry's own

``forage`` decides what to do with each: retry transient ones, park permanent ones.
"""

from __future__ import annotations


class IndexerError(Exception):
    """Base of every exception raised by ``indexers``."""


class UpstreamUnavailable(IndexerError):
    """The registry could not answer now; retrying later may succeed."""

    def __init__(self, url: str, reason: str, *, retry_after: float | None = None) -> None:
        self.url = url
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{url}: {reason}")


class StaleMetadata(IndexerError):
    """A metadata page is older than the feed entry that announced the change."""

    def __init__(self, url: str, expected: int, actual: int | None) -> None:
        self.url = url
        self.expected = expected
        self.actual = actual
        super().__init__(f"{url}: stale page, serial {actual} < announced {expected}")


class PackageNotFound(IndexerError):
    """The registry says this package (or version) does not exist or was removed."""

    def __init__(self, ecosystem: str, name: str, version: str | None = None) -> None:
        self.ecosystem = ecosystem
        self.name = name
        self.version = version
        what = f"{name}@{version}" if version else name
        super().__init__(f"{ecosystem}: {what} not found")


class InvalidName(IndexerError):
    """A name, module path or version is not valid for the registry."""

    def __init__(self, ecosystem: str, value: str, reason: str) -> None:
        self.ecosystem = ecosystem
        self.value = value
        self.reason = reason
        super().__init__(f"{ecosystem}: invalid name {value[:200]!r}: {reason}")


class FeedError(IndexerError):
    """The change feed answered with a document whose shape we do not understand."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}")


class InvalidDigest(IndexerError):
    """A digest the registry published (or a caller passed) is malformed and cannot be checked."""

    def __init__(self, algorithm: str, value: str, reason: str) -> None:
        self.algorithm = algorithm
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {algorithm} digest {value[:120]!r}: {reason}")


class InvalidArchive(IndexerError):
    """A downloaded archive cannot be read, or holds names that are unsafe to hash or extract."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: invalid archive: {reason}")


class DigestMismatch(IndexerError):
    """Downloaded bytes do not match the digest the registry published for them."""

    def __init__(self, url: str, algorithm: str, expected: str, actual: str) -> None:
        self.url = url
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__(f"{url}: {algorithm} mismatch: expected {expected}, got {actual}")
