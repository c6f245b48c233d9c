"""Exceptions raised by the ``indexers`` package.

Hierarchy::

    IndexerError
    ├── UpstreamUnavailable     transient: refused, reset, timeout, 5xx, 429 (retry with backoff;
    │   │                       ``retry_after`` carries the server's Retry-After in seconds)
    │   └── DownloadUnavailable a download failed in a way that may pass (cut body included)
    ├── DownloadRefused         permanent: a download we will not make (host not allowed, over
    │                           the size cap, 4xx, too many redirects)
    ├── StaleMetadata           transient: a cached page older than the serial/sequence that
    │                           announced it (retry after a short wait)
    ├── PackageNotFound         permanent: the registry says the package or version does not exist
    ├── InvalidName             permanent: a package name, module path or version that is not valid
    │                           for the registry (hostile input included)
    ├── FeedError               permanent until a human looks: the feed's document changed shape
    ├── InvalidDigest           permanent: a digest string that is malformed (bad SRI, bad hex)
    ├── InvalidArchive          permanent: a downloaded archive that is not readable or unsafe
    │                           (corrupt zip, member names with ``..``, NUL, absolute paths)
    ├── DigestMismatch          bytes whose digest (or size) differs from the registry's own
    ├── LockfileError           a document that is not a lockfile or SBOM we can read
    │   └── UnsupportedLockfile a document of no format Forage reads (``supported`` lists them)
    └── MirrorError             the package mirror could not use one of its sources
        ├── UpstreamFailed      the upstream failed within its deadline (``kind`` says how:
        │                       refused, reset, timeout, slow, dns, tls, status, truncated,
        │                       digest, too_large, host, down); the archive answers instead
        └── ArchiveInvalid      archived bytes missing or failing their upstream digest: never
                                served

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


class DownloadUnavailable(UpstreamUnavailable):
    """A download failed in a way that may pass: timeout, reset, 5xx, truncated body."""

    def __init__(self, url: str, reason: str, *, retry_after: float | None = None) -> None:
        self.url = url
        self.reason = reason
        self.retry_after = retry_after
        IndexerError.__init__(self, f"download {url}: {reason}")


class DownloadRefused(IndexerError):
    """We will not fetch this: host not allowed, too large, 4xx, too many redirects."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"download {url}: {reason}")


class StaleMetadata(IndexerError):
    """A metadata page is older than the feed entry that announced the change."""

    def __init__(self, url: str, expected: int, actual: int | None) -> None:
        self.url = url
        self.expected = expected
        self.actual = actual
        super().__init__(f"{url}: stale page, serial {actual} < announced {expected}")


class PackageNotFound(IndexerError):
    """The registry says this package (or version) does not exist or was removed.

    ``answer`` is what the registry said, for the record: ``HTTP 404 from <url>: <body>``.
    """

    def __init__(
        self, ecosystem: str, name: str, version: str | None = None, *, answer: str | None = None
    ) -> None:
        self.ecosystem = ecosystem
        self.name = name
        self.version = version
        self.answer = answer
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


class InvalidPosition(IndexerError):
    """A feed cannot start at the position asked for (a time for a sequence-numbered feed...)."""

    def __init__(self, ecosystem: str, position: str, reason: str) -> None:
        self.ecosystem = ecosystem
        self.position = position
        self.reason = reason
        super().__init__(f"{ecosystem}: cannot start the feed at {position[:100]!r}: {reason}")


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


class LockfileError(IndexerError):
    """The document is not a lockfile or SBOM we can read."""


class UnsupportedLockfile(LockfileError):
    """The document is of no format Forage reads (rather than a broken one of a format it
    does): the API answers 415 and the CLI exits 2, naming the ``supported`` formats."""

    def __init__(self, what: str, supported: tuple[str, ...]) -> None:
        self.supported = supported
        super().__init__(f"{what} is not a lockfile Forage reads ({', '.join(supported)})")


class MirrorError(IndexerError):
    """Base of the mirror's source failures."""


class UpstreamFailed(MirrorError):
    """The upstream did not give a usable answer in time; ``kind`` classifies the failure."""

    def __init__(self, url: str, kind: str, reason: str) -> None:
        self.url = url
        self.kind = kind
        self.reason = reason
        super().__init__(f"{url}: {kind}: {reason}")


class ArchiveInvalid(MirrorError):
    """An archive cannot be served: blocks missing, or bytes that fail the upstream digest."""

    def __init__(self, cid: str, reason: str) -> None:
        self.cid = cid
        self.reason = reason
        super().__init__(f"archive {cid}: {reason}")
