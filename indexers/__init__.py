"""Registry indexers and the ecosystems they belong to.

One home package per ecosystem (``indexers/npm/``, ``indexers/pypi/``, ``indexers/golang/``)
holds everything specific to that registry, registered once in :mod:`indexers.ecosystems`;
the shared base is here: the indexer contract (:mod:`.base`), digests, downloads under a host
policy, lockfile reading, the mirror machinery (:mod:`.mirror`) and the loopback fake server
(:mod:`.fakeserver`). ``forage`` may use only the names listed in ``__all__`` and the homes'
registrations; ``tests/test_exports.py`` guards the list.
"""

from __future__ import annotations

from indexers.base import TRANSIENT_STATUS, Indexer, parse_time, redact, retry_after_seconds
from indexers.digests import DigestCheck, DigestVerifier, normalize_hex, parse_sri, to_sri
from indexers.download import HostPolicy, iter_body, open_download
from indexers.ecosystem import (
    Ecosystem,
    Endpoint,
    FakeRegistry,
    FileCheck,
    LockfileFormat,
)
from indexers.ecosystems import ALIASES, ECOSYSTEMS, FILE_CHECKS, find_ecosystem, get_ecosystem
from indexers.errors import (
    ArchiveInvalid,
    DigestMismatch,
    DownloadRefused,
    DownloadUnavailable,
    FeedError,
    IndexerError,
    InvalidArchive,
    InvalidDigest,
    InvalidName,
    InvalidPosition,
    LockfileError,
    MirrorError,
    PackageNotFound,
    StaleMetadata,
    UnsupportedLockfile,
    UpstreamFailed,
    UpstreamUnavailable,
)
from indexers.jsontext import load_json
from indexers.lockfiles import MAX_ENTRIES, read_lockfile
from indexers.types import (
    Artifact,
    Change,
    Inventory,
    InventoryEntry,
    LockEntry,
    PackageInfo,
    Page,
    Release,
)

__all__ = [
    "ALIASES",
    "ECOSYSTEMS",
    "FILE_CHECKS",
    "MAX_ENTRIES",
    "TRANSIENT_STATUS",
    "ArchiveInvalid",
    "Artifact",
    "Change",
    "DigestCheck",
    "DigestMismatch",
    "DigestVerifier",
    "DownloadRefused",
    "DownloadUnavailable",
    "Ecosystem",
    "Endpoint",
    "FakeRegistry",
    "FeedError",
    "FileCheck",
    "HostPolicy",
    "Indexer",
    "IndexerError",
    "InvalidArchive",
    "InvalidDigest",
    "InvalidName",
    "InvalidPosition",
    "Inventory",
    "InventoryEntry",
    "LockEntry",
    "LockfileError",
    "LockfileFormat",
    "MirrorError",
    "PackageInfo",
    "PackageNotFound",
    "Page",
    "Release",
    "StaleMetadata",
    "UnsupportedLockfile",
    "UpstreamFailed",
    "UpstreamUnavailable",
    "find_ecosystem",
    "get_ecosystem",
    "iter_body",
    "load_json",
    "normalize_hex",
    "open_download",
    "parse_sri",
    "parse_time",
    "read_lockfile",
    "redact",
    "retry_after_seconds",
    "to_sri",
]
