"""Exceptions raised by the ``forage`` application.

Hierarchy::

    ForageError
    ├── ConfigError         the configuration file or a FORAGE_* variable is invalid or missing
    │   └── ConfigErrors    several such mistakes, reported together
    ├── InvalidKey          a lookup key (purl or platform:name:version) cannot be parsed
    ├── NotFound            a package, version, artifact or job the caller named does not exist
    ├── JobError            a job cannot run as asked
    │   ├── PermanentJobError  retrying will not help: park the job as dead at once
    │   └── RetryLater      retrying may help, but not soon: wait ``retry_after`` seconds
    └── BundleError         a bundle CAR that is not a Forage mirror bundle, malformed or corrupt

The mirror's source failures (``UpstreamFailed``, ``ArchiveInvalid``) belong to the mirror
machinery the ecosystems share and live in :mod:`indexers.errors`.

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


class ConfigErrors(ConfigError):
    """Several configuration mistakes, gathered so the operator fixes them in one round."""

    def __init__(self, problems: list[ConfigError]) -> None:
        self.problems = [p for problem in problems for p in getattr(problem, "problems", [problem])]
        super().__init__(self.problems[0].key, self.problems[0].reason)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)

    @staticmethod
    def raise_all(problems: list[ConfigError]) -> None:
        """Raise nothing for no problems, the one problem itself, or all of them."""
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise ConfigErrors(problems)


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


class RetryLater(JobError):
    """A job failed in a way that may pass, but not soon (bytes that failed verification: a
    CDN may serve the right ones again); the queue waits at least ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class BundleError(ForageError):
    """A bundle CAR cannot be imported: not a Forage bundle, malformed, or corrupt."""
