"""Bundler's ``Gemfile.lock`` (also ``gems.locked``): the gems of its ``GEM`` sections.

Format (``rubygems/rubygems: bundler/lib/bundler/lockfile_parser.rb``): top-level section
names at column 0 (``GEM``, ``GIT``, ``PATH``, ``PLATFORMS``, ``DEPENDENCIES``, ``CHECKSUMS``
since Bundler 2.5, ``BUNDLED WITH``...); in a source section, ``  remote:`` and ``  specs:``,
then each resolved gem at four spaces as ``NAME (VERSION[-PLATFORM])`` and its dependencies
at six. A platform gem becomes ``pkg:gem/NAME@VERSION?platform=PLATFORM``; ``GIT`` and
``PATH`` gems are not from a registry and are reported as such. ``CHECKSUMS`` lines
(``  NAME (VERSION[-PLATFORM]) sha256=HEX[,...]``, after the sources) name the same gems
again with the digests of their ``.gem`` files: the entry's pinned ``integrity``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace

from packageurl import PackageURL

from indexers.ecosystem import LockfileFormat
from indexers.gem.compact import RUBY, split_version
from indexers.lockfiles import pinned_hashes
from indexers.types import LockEntry

_SPEC = re.compile(r"^    (\S+) \(([^)\s]+)\)$")
_CHECKSUM = re.compile(r"^  (\S+) \(([^)\s]+)\)(?: (\S+))?$")
_SECTION = re.compile(r"^[A-Z][A-Z ]*$")
_REGISTRY_SECTIONS = frozenset({"GEM"})
_OTHER_SOURCES = frozenset({"GIT", "PATH", "PLUGIN SOURCE"})


def gem_purl(name: str, version: str, platform: str = RUBY) -> str:
    """``pkg:gem/NAME@VERSION``, with ``?platform=`` for a platform gem."""
    qualifiers = {"platform": platform} if platform != RUBY else None
    return PackageURL(type="gem", name=name, version=version, qualifiers=qualifiers).to_string()


def read_gemfile_lock(text: str) -> Iterator[LockEntry]:
    """Yield one entry per gem resolved in the lockfile's source sections, with the digests
    its ``CHECKSUMS`` section pins (gathered before any is yielded: it follows the sources)."""
    section = ""
    gems: list[tuple[str, LockEntry]] = []
    checksums: dict[str, tuple[tuple[str, str], ...]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if _SECTION.fullmatch(line.rstrip()):
            section = line.strip()
            continue
        if section == "CHECKSUMS":
            checksum = _CHECKSUM.match(line.rstrip())
            if checksum is not None and checksum.group(3):
                name, spelled, values = checksum.groups()
                checksums[f"{name} {spelled}"] = pinned_hashes(values.split(","))
            continue
        match = _SPEC.match(line.rstrip())
        if match is None or section not in _REGISTRY_SECTIONS | _OTHER_SOURCES:
            continue
        name, spelled = match.groups()
        source = f"line {number}"
        if section in _OTHER_SOURCES:
            entry = LockEntry(source, None, f"{name} comes from a {section} source, not a registry")
        else:
            version, platform = split_version(spelled)
            entry = LockEntry(source, gem_purl(name, version, platform))
        gems.append((f"{name} {spelled}", entry))
    for lock_name, entry in gems:
        yield replace(entry, integrity=checksums.get(lock_name, ())) if entry.key else entry


def _is_gemfile_lock(base: str, text: str) -> bool:
    return bool(re.search(r"^(GEM|GIT|PATH)\n  remote: ", text, re.MULTILINE)) and (
        "\n  specs:\n" in text
    )


GEMFILE_LOCK = LockfileFormat(
    name="Gemfile.lock",
    filenames=("Gemfile.lock", "gems.locked"),
    detect=_is_gemfile_lock,
    read=read_gemfile_lock,
)

__all__ = ["GEMFILE_LOCK", "gem_purl", "read_gemfile_lock"]
