"""What the index says about an ecosystem's archived files, as the mirror's listings need it.

Plain frozen values, detached from any database session: the application fills them (its
:class:`~indexers.mirror.registry.ArchiveIndex`), the ecosystems' mirror protocols render them.

Serving rules the listings and file routes share (issue 7, "Fallback rules"):

- a version or file the registry removed (unpublished, deleted, retracted, gone: the index
  records when and how) or a package it deleted is ``removed``: left out of listings,
  ``latest`` and dist-tags -- the upstream's listings too (:class:`Withdrawn`), so a stale or
  lagging upstream cannot bring it back -- its file served only to a request naming that
  exact file, marked ``Forage-Source: archive-removed``;
- a package under a hold (PEP 792 ``quarantined``, npm's ``-security`` placeholder, or an
  operator's ``security_hold`` in the package's metadata) is never served at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    """One archived artifact, detached from the session: where its bytes are and what they
    must hash to."""

    artifact_id: int
    package: str
    version: str
    filename: str
    url: str
    cid: str
    size: int
    digests: Mapping[str, str]
    removed: bool = False
    hold: str | None = None
    yanked: bool = False
    yanked_reason: str | None = None
    requires_python: str | None = None
    uploaded_at: datetime | None = None
    published_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class VersionRow:
    """A version as listings need it."""

    number: str
    published_at: datetime | None
    yanked: bool
    deleted: bool
    deprecated: str | None
    removal: str | None = None


@dataclass(frozen=True, slots=True)
class PackageRows:
    """A package, its versions and its archived files, for a fallback listing."""

    ecosystem: str
    name: str
    display_name: str
    deleted: bool
    extra: Mapping[str, Any]
    versions: tuple[VersionRow, ...]
    files: tuple[ArchivedFile, ...]
    status: str | None = None

    @property
    def hold(self) -> str | None:
        return hold_reason(self.extra, self.status)

    def listed_files(self) -> list[ArchivedFile]:
        """Files a listing may show: archived, of versions the registry has not removed."""
        return [f for f in self.files if not f.removed]

    def fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever anything a rendered listing shows changes."""
        return (
            self.display_name,
            self.deleted,
            self.status,
            json.dumps(self.extra, sort_keys=True, default=str),
            tuple((v.number, v.yanked, v.deleted, v.deprecated, v.removal) for v in self.versions),
            tuple((f.artifact_id, f.cid, f.yanked, f.removed) for f in self.files),
        )


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """What the index knows a registry withdrew from one package: applied to the upstream's
    own listings too, so a removal stays out whether or not the upstream is reachable."""

    hold: str | None = None
    versions: frozenset[str] = frozenset()
    files: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.hold or self.versions or self.files)


def hold_reason(extra: Mapping[str, Any], status: str | None = None) -> str | None:
    """Why a package must never be served, if it is held: PEP 792 quarantine (the package's
    recorded ``status``, or the marker in its metadata), npm security placeholder, or an
    operator's ``security_hold``."""
    marker = extra.get("project_status")
    if isinstance(marker, Mapping) and marker.get("status") == "quarantined":
        return "quarantined (PEP 792)"
    if status == "quarantined":
        return "quarantined (PEP 792)"
    hold = extra.get("security_hold")
    if hold:
        return f"security hold: {hold}" if isinstance(hold, str) else "security hold"
    tags = extra.get("dist_tags")
    latest = tags.get("latest") if isinstance(tags, Mapping) else None
    if isinstance(latest, str) and latest.endswith("-security"):
        return "npm security holding package"
    return None


__all__ = ["ArchivedFile", "PackageRows", "VersionRow", "Withdrawn", "hold_reason"]
