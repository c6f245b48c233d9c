"""Registry indexers: read change feeds and map registry metadata to releases and artifacts.

``forage`` may use only the names listed in ``__all__``; ``tests/test_exports.py`` guards it.
"""

from __future__ import annotations

from indexers.base import Indexer
from indexers.errors import (
    DigestMismatch,
    FeedError,
    IndexerError,
    InvalidDigest,
    InvalidName,
    PackageNotFound,
    StaleMetadata,
    UpstreamUnavailable,
)
from indexers.types import Artifact, Change, PackageInfo, Page, Release

__all__ = [
    "Artifact",
    "Change",
    "DigestMismatch",
    "FeedError",
    "Indexer",
    "IndexerError",
    "InvalidDigest",
    "InvalidName",
    "PackageInfo",
    "PackageNotFound",
    "Page",
    "Release",
    "StaleMetadata",
    "UpstreamUnavailable",
]
