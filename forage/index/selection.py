"""What of a registry to archive: the ``[registries.<name>]`` selection, applied one way.

An operator rarely wants all of a registry (bandersnatch's users' top request is choosing
*what* to mirror). The selection is read from configuration (:class:`~forage.config.
RegistryConfig`: ``allow``/``deny`` name patterns and list files, ``prereleases``,
``development``, ``newest``, ``max_file_size``, ``files``) and applied at the two places every
path goes through:

- where feed changes become import jobs (the watcher, its re-scan, a bootstrap, a reconcile
  sweep): :meth:`Selection.changes` drops packages whose name is not selected, and changes
  announcing a development version unless ``development`` asks for them;
- where a package is recorded (:func:`forage.index.ingest.import_package`, which ``forage
  import``, backfill lookups and ``prime`` all use): :meth:`Selection.admit` refuses a name
  not selected with :class:`PackageExcluded`, and :meth:`Selection.apply` leaves out the
  releases and files the selection does not want, marking the answer incomplete so nothing
  left out is taken for a removal upstream.

What a pre-release is differs per ecosystem: each indexer's ``is_prerelease`` decides; what a
development version is (a dev branch, a SNAPSHOT), the ecosystem's ``is_development``.
Development versions are recorded without their files by default: those change under the
same version, so an archive of one is a snapshot of a moment rather than the release a key
names.
``max_file_size`` applies to files whose size the registry publishes (PyPI does; npm's
packuments and the Go proxy do not, where ``max_download_size`` still bounds downloads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path

from forage.config import Config
from forage.config.registries import RegistryConfig, read_pattern_file
from forage.errors import ForageError
from indexers import ECOSYSTEMS, Change, PackageInfo, Release


class PackageExcluded(ForageError):
    """The registry's selection in the configuration leaves this package out."""


@lru_cache(maxsize=64)
def _patterns(path: Path, mtime_ns: int, key: str) -> frozenset[str]:
    return frozenset(read_pattern_file(path, key))


def _file_patterns(path: Path | None, key: str) -> frozenset[str]:
    """A list file's patterns, re-read only when the file changes."""
    if path is None:
        return frozenset()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = -1  # read_pattern_file raises the ConfigError naming the key
    return _patterns(path, mtime, key)


def _matches(name: str, patterns: Iterable[str]) -> str | None:
    """The first pattern ``name`` matches (exact names are patterns too)."""
    return next((p for p in patterns if p == name or fnmatchcase(name, p)), None)


@dataclass(frozen=True, slots=True)
class Selection:
    """One registry's selection; :meth:`of` builds it from the configuration."""

    ecosystem: str
    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()
    prereleases: bool = True
    development: bool = False
    newest: int | None = None
    max_file_size: int | None = None
    files: tuple[str, ...] = ()

    @classmethod
    def of(cls, section: RegistryConfig) -> Selection:
        """The selection ``[registries.<name>]`` states (list files read, cached by mtime)."""
        prefix = f"registries.{section.ecosystem}"
        allow = set(section.allow) | _file_patterns(section.allow_file, f"{prefix}.allow_file")
        deny = set(section.deny) | _file_patterns(section.deny_file, f"{prefix}.deny_file")
        return cls(
            ecosystem=section.ecosystem,
            allow=frozenset(allow),
            deny=frozenset(deny),
            prereleases=section.prereleases,
            development=section.development,
            newest=section.newest,
            max_file_size=section.max_file_size,
            files=section.files,
        )

    def excluded(self, name: str) -> str | None:
        """Why ``name`` is not selected, naming the setting (``None``: it is)."""
        prefix = f"registries.{self.ecosystem}"
        denied = _matches(name, self.deny)
        if denied is not None:
            return f"{self.ecosystem}/{name} is excluded by {prefix}.deny ({denied!r})"
        if self.allow and _matches(name, self.allow) is None:
            return f"{self.ecosystem}/{name} matches nothing in {prefix}.allow"
        return None

    def admit(self, name: str) -> None:
        """Raise :class:`PackageExcluded` unless ``name`` is selected."""
        reason = self.excluded(name)
        if reason is not None:
            raise PackageExcluded(reason)

    def changes(self, changes: Iterable[Change]) -> tuple[Change, ...]:
        """The changes of selected packages (and versions)."""
        development = None if self.development else ECOSYSTEMS[self.ecosystem].is_development
        if not (self.allow or self.deny or development):
            return tuple(changes)
        return tuple(
            change
            for change in changes
            if self.excluded(change.name) is None
            and not (development and change.version and development(change.version))
        )

    def _file_wanted(self, filename: str, size: int | None) -> bool:
        if self.max_file_size is not None and size is not None and size > self.max_file_size:
            return False
        return not self.files or _matches(filename, self.files) is not None

    def apply(self, info: PackageInfo) -> PackageInfo:
        """``info`` with only the selected releases and files (``complete`` false when
        anything was left out)."""
        ecosystem = ECOSYSTEMS[self.ecosystem]
        is_prerelease: Callable[[str], bool] = ecosystem.indexer.is_prerelease
        kept: list[Release] = []
        for release in info.releases:
            if not self.prereleases and is_prerelease(release.version):
                continue
            if not self.development and ecosystem.is_development(release.version):
                # Known (a lookup finds it) but never archived.
                kept.append(dataclasses.replace(release, artifacts=()))
                continue
            files = tuple(a for a in release.artifacts if self._file_wanted(a.filename, a.size))
            if release.artifacts and not files:
                continue
            kept.append(dataclasses.replace(release, artifacts=files))
        if self.newest is not None:
            oldest = datetime.min.replace(tzinfo=UTC)
            ordered = sorted(kept, key=lambda r: r.published_at or oldest, reverse=True)
            wanted = {r.version for r in ordered[: self.newest]}
            kept = [r for r in kept if r.version in wanted]
        if kept == list(info.releases):
            return info
        return dataclasses.replace(info, releases=tuple(kept), complete=False)


def selection_for(config: Config, ecosystem: str) -> Selection:
    """The selection of ``ecosystem``'s table (a configured registry)."""
    return Selection.of(config.registry(ecosystem))


__all__ = ["PackageExcluded", "Selection", "selection_for"]
