"""The compact index's documents read and written: ``/versions``, ``/info/NAME``, ``/names``.

Formats as ``rubygems/compact_index`` renders them and Bundler's
``compact_index_client`` parses them (``rubygems/guides: rubygems-org-compact-index-api.md``):

- ``/versions``: a header (``created_at: <time>``), a ``---`` line, then one line per gem
  ``NAME V1,V2[-PLATFORM],-V3 INFO_MD5``; appended lines name versions pushed since
  (``-V`` a yank), the MD5 is of the gem's ``/info`` document at that point;
- ``/info/NAME``: ``---``, then one line per pushed version and platform
  ``V[-PLATFORM] DEP:REQ&REQ,DEP:REQ|checksum:SHA256,ruby:REQ,rubygems:REQ``; yanked versions
  are left out;
- ``/names``: ``---``, then one gem name a line.

A version never holds ``-`` (``Gem::Version`` spells ``1.0-rc1`` as ``1.0.pre.rc1``), so the
first ``-`` of ``V-PLATFORM`` starts the platform, as Bundler splits it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from indexers.base import redact
from indexers.errors import FeedError

#: The line that ends every compact index document's header.
SEPARATOR = "---"
#: The platform of a gem with no native code (no file-name suffix).
RUBY = "ruby"


def split_version(text: str) -> tuple[str, str]:
    """``1.0.0-x86_64-linux`` -> ``("1.0.0", "x86_64-linux")``; no suffix is ``ruby``."""
    version, sep, platform = text.partition("-")
    return version, platform if sep else RUBY


def version_key(version: str, platform: str) -> str:
    """The ``V[-PLATFORM]`` spelling of a release's platform gem."""
    return version if platform == RUBY else f"{version}-{platform}"


def gem_filename(name: str, version: str, platform: str) -> str:
    """``NAME-V[-PLATFORM].gem``, the name RubyGems downloads it by."""
    return f"{name}-{version_key(version, platform)}.gem"


def platform_file(name: str, version: str, filename: str, qualifiers: Mapping[str, str]) -> bool:
    """Whether ``filename`` is the gem of the ``platform`` qualifier's variant of the version
    (``pkg:gem/nokogiri@1.16.0?platform=java``; ``ruby`` is the plain gem), the
    :attr:`~indexers.ecosystem.Ecosystem.file_matches` of RubyGems."""
    return filename == gem_filename(name, version, qualifiers.get("platform", RUBY))


@dataclass(frozen=True, slots=True)
class InfoEntry:
    """One line of ``/info/NAME``: a version's gem for one platform.

    ``dependencies`` are ``(name, requirements)`` pairs (runtime dependencies only, as the
    index lists them); ``ruby`` and ``rubygems`` the required versions of each.
    """

    version: str
    platform: str
    dependencies: tuple[tuple[str, tuple[str, ...]], ...]
    checksum: str | None
    ruby: tuple[str, ...] = ()
    rubygems: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return version_key(self.version, self.platform)

    def line(self, *, checksum: str | None = None) -> str:
        """The entry as an ``/info`` line, its checksum replaced by ``checksum`` if given."""
        deps = ",".join(f"{name}:{'&'.join(reqs)}" for name, reqs in self.dependencies)
        reqs = [f"checksum:{checksum or self.checksum}"] if checksum or self.checksum else []
        if self.ruby:
            reqs.append(f"ruby:{'&'.join(self.ruby)}")
        if self.rubygems:
            reqs.append(f"rubygems:{'&'.join(self.rubygems)}")
        return f"{self.key} {deps}|{','.join(reqs)}"


def _requirements(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split("&") if part.strip())


def parse_info_line(line: str, url: str) -> InfoEntry:
    """One ``/info`` line; ``FeedError`` for a line of another shape."""
    head, sep, rest = line.partition(" ")
    if not head or not sep:
        raise FeedError(redact(url), f"info line {line[:80]!r} has no version")
    deps_text, _, reqs_text = rest.partition("|")
    dependencies = []
    for dep in filter(None, deps_text.split(",")):
        name, colon, reqs = dep.partition(":")
        if not colon or not name:
            raise FeedError(redact(url), f"dependency {dep[:80]!r} is not NAME:REQ")
        dependencies.append((name, _requirements(reqs)))
    fields: dict[str, str] = {}
    for item in filter(None, reqs_text.split(",")):
        key, colon, value = item.partition(":")
        if colon:
            fields[key.strip()] = value.strip()
    version, platform = split_version(head)
    checksum = fields.get("checksum", "").lower() or None
    return InfoEntry(
        version=version,
        platform=platform,
        dependencies=tuple(dependencies),
        checksum=checksum,
        ruby=_requirements(fields.get("ruby", "")),
        rubygems=_requirements(fields.get("rubygems", "")),
    )


def body_lines(text: str) -> Iterator[str]:
    """The lines of a compact index document after its ``---`` header line."""
    lines = text.splitlines()
    start = lines.index(SEPARATOR) + 1 if SEPARATOR in lines else 0
    yield from (line for line in lines[start:] if line.strip())


def parse_info(text: str, url: str) -> list[InfoEntry]:
    """Every entry of an ``/info`` document, in its order (oldest push first)."""
    return [parse_info_line(line, url) for line in body_lines(text)]


def render_info(entries: Iterable[InfoEntry]) -> bytes:
    """An ``/info`` document of ``entries``."""
    return "".join(f"{line}\n" for line in [SEPARATOR, *(e.line() for e in entries)]).encode()


def render_names(names: Iterable[str]) -> bytes:
    """A ``/names`` document."""
    return "".join(f"{name}\n" for name in [SEPARATOR, *names]).encode()


@dataclass(frozen=True, slots=True)
class VersionsLine:
    """One ``/versions`` line: the gem, the versions it names (``-V`` yanked), the info MD5."""

    name: str
    versions: tuple[str, ...]
    info_md5: str


def parse_versions_line(line: str, url: str) -> VersionsLine:
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0]:
        raise FeedError(redact(url), f"versions line {line[:80]!r} is not NAME VERSIONS MD5")
    return VersionsLine(parts[0], tuple(filter(None, parts[1].split(","))), parts[2])


def parse_versions(text: str, url: str, *, header: bool) -> list[VersionsLine]:
    """The lines of a ``/versions`` slice; ``header`` when it starts at the file's start."""
    lines = body_lines(text) if header else (line for line in text.splitlines() if line.strip())
    return [parse_versions_line(line, url) for line in lines]


def render_versions(created_at: str, gems: Iterable[tuple[str, Iterable[str], bytes]]) -> bytes:
    """A compacted ``/versions`` document: ``(name, version keys, its info document)``."""
    lines = [f"created_at: {created_at}", SEPARATOR]
    for name, versions, info in gems:
        md5 = hashlib.md5(info).hexdigest()  # noqa: S324 - the format's own checksum
        lines.append(f"{name} {','.join(versions)} {md5}")
    return "".join(f"{line}\n" for line in lines).encode()


__all__ = [
    "RUBY",
    "SEPARATOR",
    "InfoEntry",
    "VersionsLine",
    "body_lines",
    "gem_filename",
    "parse_info",
    "parse_info_line",
    "parse_versions",
    "parse_versions_line",
    "platform_file",
    "render_info",
    "render_names",
    "render_versions",
    "split_version",
    "version_key",
]
