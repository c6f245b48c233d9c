"""Values that cross from ``indexers`` into ``forage``: changes, releases and artifacts.

All are frozen dataclasses built by pure mapping functions from a registry's own documents.
Digests are a mapping ``algorithm -> value`` with normalized algorithm names: ``sha512``,
``sha256``, ``sha1``, ``md5``, ``blake2b_256`` hold lowercase hex; ``h1`` (Go's dirhash of a
module zip) holds the full ``h1:<base64>`` string as the checksum database prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

CursorT = TypeVar("CursorT")

#: The package statuses an indexer may report: PEP 792's markers (``active`` is ``None``), an
#: npm package whose versions are all deprecated, an unpublished npm package, a package the
#: registry no longer has. Quarantined packages are never served.
PACKAGE_STATUSES = ("quarantined", "archived", "deprecated", "unpublished", "removed")


@dataclass(frozen=True, slots=True)
class Change:
    """One package the feed says has changed since the cursor.

    ``serial`` is the feed's position for this entry when the registry has one (PyPI serial,
    npm seq), so a metadata page older than the change can be detected and retried.
    ``revision`` is the document revision the feed announced when the registry has one (npm
    ``changes[0].rev``, ``"<generation>-<hash>"``), to detect a packument that lags the feed.
    ``version`` is the one version the entry is about when the feed names it (the Go module
    index lists ``(module, version)`` pairs, including pseudo-versions no other list shows).
    """

    name: str
    serial: int | None = None
    deleted: bool = False
    revision: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[CursorT]):
    """One page of a change feed and the cursor that resumes right after it.

    ``head`` is the feed's newest position when the registry reports it, in the spelling of
    the cursor's position (:meth:`~indexers.base.Indexer.cursor_position`); ``done`` is true
    when this page reached the head, so the watcher may stop polling until next run.
    ``position_at`` is the registry's own date of the entry the page's cursor stands at, for
    feeds that date their entries (the lag in seconds is measured from it); ``None`` leaves
    the date already known.
    """

    changes: tuple[Change, ...]
    cursor: CursorT
    done: bool
    head: Any = None
    position_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Artifact:
    """One downloadable file of a release: what the archiver fetches and verifies."""

    filename: str
    url: str
    size: int | None
    digests: Mapping[str, str]
    kind: str | None = None
    yanked: bool = False
    yanked_reason: str | None = None
    requires_python: str | None = None
    uploaded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """One version of a package with its artifacts.

    ``deleted`` marks a version the registry removed (npm unpublish); ``yanked`` a PEP 592
    yank or equivalent (the version stays installable when pinned); ``deprecated`` holds the
    registry's deprecation message if any. ``removal`` says how the registry withdrew a
    release it still names (``"npm: version unpublished"``, ``"go: retracted v1.2.1: why"``),
    so the index can record it and keep it out of listings.
    """

    version: str
    artifacts: tuple[Artifact, ...]
    published_at: datetime | None = None
    yanked: bool = False
    deleted: bool = False
    deprecated: str | None = None
    removal: str | None = None


@dataclass(frozen=True, slots=True)
class PackageInfo:
    """Everything the registry says about one package right now.

    ``name`` is the registry-normalized name used as the index key; ``display_name`` the
    spelling the registry shows. ``deleted`` is true for an unpublished or removed package,
    whose ``releases`` are then those the registry still lists (often none). ``serial`` is the
    registry's version stamp of this document when it has one.

    ``status`` is the package's status as the registry states it (one of
    :data:`PACKAGE_STATUSES`, ``None`` for an active package) and ``status_reason`` its
    explanation. ``complete`` is true when ``releases`` is everything the registry lists, so a
    stored version or file missing from it was removed upstream; anything that leaves
    releases or files out on purpose (the newest N, a selection, a bundle) must set it false.
    """

    ecosystem: str
    name: str
    display_name: str
    releases: tuple[Release, ...]
    deleted: bool = False
    serial: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    status: str | None = None
    status_reason: str | None = None
    complete: bool = True


@dataclass(frozen=True, slots=True)
class LockEntry:
    """One dependency a lockfile or SBOM names: where it came from (a path, a line) and its
    purl, or the ``problem`` that kept it from having one (unpinned, not from a registry).

    ``integrity`` holds the digests the document pins for the release's files, as
    ``(algorithm, lowercase hex)`` with hashlib's names (npm's SRI, pip's ``--hash``, an
    SBOM's hashes): a lookup compares them with the digests Forage verified, so bytes other
    than the ones the lockfile was made with are flagged rather than reported as found.
    """

    source: str
    key: str | None
    problem: str | None = None
    integrity: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class InventoryEntry:
    """One package (or one release) a registry's inventory lists, as a reconcile sweep needs it.

    ``change`` is the import the entry asks for when the index lacks it, with the registry's
    freshness hint (npm revision, PyPI serial, the Go version the index listed); ``stamp`` is
    the registry's version stamp of the package (npm revision generation, PyPI last serial)
    to compare with the one stored, ``None`` when the entry names a release instead
    (``change.version``).
    """

    change: Change
    stamp: int | None = None


@dataclass(frozen=True, slots=True)
class Inventory:
    """One page of a registry's inventory and the opaque token that resumes after it."""

    entries: tuple[InventoryEntry, ...]
    after: str | None
    done: bool
