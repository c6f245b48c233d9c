"""Registry indexers: read change feeds and map registry metadata to releases and artifacts.

``forage`` may use only the names listed in ``__all__``; ``tests/test_exports.py`` guards it.
"""

from __future__ import annotations

from indexers.base import TRANSIENT_STATUS, Indexer, parse_time, redact, retry_after_seconds
from indexers.digests import DigestCheck, DigestVerifier, normalize_hex, parse_sri, to_sri
from indexers.errors import (
    DigestMismatch,
    FeedError,
    IndexerError,
    InvalidArchive,
    InvalidDigest,
    InvalidName,
    PackageNotFound,
    StaleMetadata,
    UpstreamUnavailable,
)
from indexers.golang import GoCursor, GoIndexer
from indexers.gomod import verify_go_zip
from indexers.npm import NpmCursor, NpmIndexer
from indexers.pypi import PyPICursor, PyPIIndexer
from indexers.types import Artifact, Change, PackageInfo, Page, Release

__all__ = [
    "TRANSIENT_STATUS",
    "Artifact",
    "Change",
    "DigestCheck",
    "DigestMismatch",
    "DigestVerifier",
    "FeedError",
    "GoCursor",
    "GoIndexer",
    "Indexer",
    "IndexerError",
    "InvalidArchive",
    "InvalidDigest",
    "InvalidName",
    "NpmCursor",
    "NpmIndexer",
    "PackageInfo",
    "PackageNotFound",
    "Page",
    "PyPICursor",
    "PyPIIndexer",
    "Release",
    "StaleMetadata",
    "UpstreamUnavailable",
    "normalize_hex",
    "parse_sri",
    "parse_time",
    "redact",
    "retry_after_seconds",
    "to_sri",
    "verify_go_zip",
]
