"""Exceptions raised by the ``forage`` application.

Hierarchy::

    ForageError
    ├── ConfigError         the configuration file or a FORAGE_* variable is invalid or missing
    ├── InvalidKey          a lookup key (purl or platform:name:version) cannot be parsed
    ├── NotFound            a package, version, artifact or job the caller named does not exist
    ├── JobError            a job cannot run as asked
    │   └── PermanentJobError  retrying will not help: park the job as dead at once
    └── MirrorError         the package mirror could not use one of its sources
        ├── UpstreamFailed  the upstream registry failed within its deadline (``kind`` says how:
        │                   refused, reset, timeout, slow, dns, tls, status, truncated, digest,
        │                   too_large, host, down); the mirror answers from the archive instead
        ├── ArchiveInvalid  archived bytes are missing or fail their upstream digest: never served
        └── BundleError     a bundle CAR that is not a Forage mirror bundle, malformed or corrupt

The CLI maps these to exit codes; the HTTP error middleware maps them to JSON errors.
"""

from __future__ import annotations


class ForageError(Exception):
    """Base of every exception raised by ``forage``."""


class ConfigError(ForageError):
    """The configuration is invalid; the message names the key and what to set."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"configuration {key}: {reason}")


class InvalidKey(ForageError):
    """A lookup key is malformed."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid key {key[:300]!r}: {reason}")


class NotFound(ForageError):
    """The thing named does not exist in the index."""


class JobError(ForageError):
    """A job failed; the runner retries it with backoff."""


class PermanentJobError(JobError):
    """A job failed in a way retrying cannot fix; the runner marks it dead at once."""


class MirrorError(ForageError):
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


class BundleError(MirrorError):
    """A bundle CAR cannot be imported: not a Forage bundle, malformed, or corrupt."""
