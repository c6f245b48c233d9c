"""Bundler's ``Gemfile.lock`` (also ``gems.locked``): the gems of its ``GEM`` sections.

Format (``rubygems/rubygems: bundler/lib/bundler/lockfile_parser.rb``): top-level section
names at column 0 (``GEM``, ``GIT``, ``PATH``, ``PLATFORMS``, ``DEPENDENCIES``, ``CHECKSUMS``
since Bundler 2.5, ``BUNDLED WITH``...); in a source section, ``  remote:`` and ``  specs:``,
then each resolved gem at four spaces as ``NAME (VERSION[-PLATFORM])`` and its dependencies
at six. A platform gem becomes ``pkg:gem/NAME@VERSION?platform=PLATFORM``; ``GIT`` and
``PATH`` gems are not from a registry and are reported as such. ``CHECKSUMS`` lines
(``NAME (VERSION[-PLATFORM]) sha256=HEX``) name the same gems again and add nothing a key holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from packageurl import PackageURL

from indexers.ecosystem import LockfileFormat
from indexers.gem.compact import RUBY, split_version
from indexers.types import LockEntry

_SPEC = re.compile(r"^    (\S+) \(([^)\s]+)\)$")
_SECTION = re.compile(r"^[A-Z][A-Z ]*$")
_REGISTRY_SECTIONS = frozenset({"GEM"})
_OTHER_SOURCES = frozenset({"GIT", "PATH", "PLUGIN SOURCE"})


def gem_purl(name: str, version: str, platform: str = RUBY) -> str:
    """``pkg:gem/NAME@VERSION``, with ``?platform=`` for a platform gem."""
    qualifiers = {"platform": platform} if platform != RUBY else None
    return PackageURL(type="gem", name=name, version=version, qualifiers=qualifiers).to_string()


def read_gemfile_lock(text: str) -> Iterator[LockEntry]:
    """Yield one entry per gem resolved in the lockfile's source sections."""
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        if _SECTION.fullmatch(line.rstrip()):
            section = line.strip()
            continue
        match = _SPEC.match(line.rstrip())
        if match is None or section not in _REGISTRY_SECTIONS | _OTHER_SOURCES:
            continue
        name, spelled = match.groups()
        source = f"line {number}"
        if section in _OTHER_SOURCES:
            yield LockEntry(source, None, f"{name} comes from a {section} source, not a registry")
            continue
        version, platform = split_version(spelled)
        yield LockEntry(source, gem_purl(name, version, platform))


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
