"""The repository's documents: ``maven-metadata.xml``, the POM fields Forage reads, and the
HTML directory listing of a version.

- ``maven-metadata.xml`` (https://maven.apache.org/ref/3.8.7/maven-repository-metadata/
  repository-metadata.html): ``metadata/groupId``, ``artifactId``, ``versioning/latest``,
  ``release``, ``versions/version*`` (in deploy order on Central), ``lastUpdated``
  (``yyyyMMddHHmmss``).
- The POM (https://maven.apache.org/pom.html): ``packaging`` (default ``jar``) and
  ``distributionManagement/relocation`` (``groupId``, ``artifactId``, ``version``,
  ``message``; missing fields keep the artifact's own: https://maven.apache.org/guides/
  mini/guide-relocation.html).
- Central answers a directory with an HTML page whose ``<pre id="contents">`` has one line
  per entry: ``<a href="NAME" title="NAME">NAME</a>``, padding, ``yyyy-MM-dd HH:mm`` and the
  size in bytes (``-`` for directories).

XML is parsed with the standard library's expat, which expands no external entity and, from
expat 2.4.1 on, refuses entity amplification ("billion laughs").
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote
from xml.sax.saxutils import escape

#: ``packaging`` values whose main artifact has another extension than the packaging's name.
PACKAGING_EXTENSIONS = {"bundle": "jar", "maven-plugin": "jar", "eclipse-plugin": "jar"}


class DocumentError(ValueError):
    """A repository document Forage cannot read."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element | None, name: str) -> ET.Element | None:
    if element is None:
        return None
    return next((c for c in element if _local(c.tag) == name), None)


def _text(element: ET.Element | None, name: str) -> str | None:
    found = _child(element, name)
    text = (found.text or "").strip() if found is not None else ""
    return text or None


def _parse(body: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(body)  # noqa: S314 - see the module docstring: no entities expand
    except ET.ParseError as exc:
        raise DocumentError(f"{what} is not well-formed XML: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Metadata:
    """An artifact's ``maven-metadata.xml``."""

    group: str | None
    artifact: str | None
    versions: tuple[str, ...]
    latest: str | None = None
    release: str | None = None
    last_updated: str | None = None


def parse_metadata(body: bytes) -> Metadata:
    root = _parse(body, "maven-metadata.xml")
    if _local(root.tag) != "metadata":
        raise DocumentError("maven-metadata.xml has no <metadata> root")
    versioning = _child(root, "versioning")
    listed = _child(versioning, "versions")
    versions = [(v.text or "").strip() for v in listed or () if _local(v.tag) == "version"]
    return Metadata(
        group=_text(root, "groupId"),
        artifact=_text(root, "artifactId"),
        versions=tuple(dict.fromkeys(v for v in versions if v)),
        latest=_text(versioning, "latest"),
        release=_text(versioning, "release"),
        last_updated=_text(versioning, "lastUpdated"),
    )


def snapshot_build(body: bytes) -> str | None:
    """``TIMESTAMP-BUILDNUMBER`` of a SNAPSHOT's version-level ``maven-metadata.xml`` (its
    files are ``ARTIFACT-BASE-TIMESTAMP-BUILDNUMBER[-CLASSIFIER].EXT``); ``None`` for a
    SNAPSHOT deployed without timestamps (``localCopy``, or no ``<snapshot>``)."""
    root = _parse(body, "maven-metadata.xml")
    snapshot = _child(_child(root, "versioning"), "snapshot")
    timestamp, build = _text(snapshot, "timestamp"), _text(snapshot, "buildNumber")
    if _text(snapshot, "localCopy") == "true" or not timestamp or not build:
        return None
    return f"{timestamp}-{build}"


def render_metadata(
    group: str,
    artifact: str,
    versions: Sequence[str],
    *,
    is_snapshot: Callable[[str], bool] | None = None,
    updated: datetime | None = None,
) -> bytes:
    """A ``maven-metadata.xml`` listing ``versions`` in order: ``latest`` is the last one,
    ``release`` the last that ``is_snapshot`` (a predicate) does not call a SNAPSHOT."""
    releases = [v for v in versions if not (is_snapshot and is_snapshot(v))]
    stamp = (updated or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S")
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<metadata>",
        f"  <groupId>{escape(group)}</groupId>",
        f"  <artifactId>{escape(artifact)}</artifactId>",
        "  <versioning>",
    ]
    if versions:
        lines.append(f"    <latest>{escape(versions[-1])}</latest>")
    if releases:
        lines.append(f"    <release>{escape(releases[-1])}</release>")
    lines.append("    <versions>")
    lines += [f"      <version>{escape(v)}</version>" for v in versions]
    lines += ["    </versions>", f"    <lastUpdated>{stamp}</lastUpdated>", "  </versioning>"]
    lines.append("</metadata>")
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True, slots=True)
class Pom:
    """The POM fields Forage uses: the packaging and the relocation, if any."""

    packaging: str
    relocation: str | None = None
    relocation_message: str | None = None

    @property
    def extension(self) -> str | None:
        """The main artifact's extension (``None`` for ``pom`` packaging: the POM is all)."""
        if self.packaging == "pom":
            return None
        return PACKAGING_EXTENSIONS.get(self.packaging, self.packaging)


def parse_pom(body: bytes, group: str, artifact: str, version: str) -> Pom:
    root = _parse(body, "POM")
    if _local(root.tag) != "project":
        raise DocumentError("the POM has no <project> root")
    packaging = _text(root, "packaging") or "jar"
    moved = _child(_child(root, "distributionManagement"), "relocation")
    if moved is None:
        return Pom(packaging)
    target = ":".join(
        _text(moved, field) or own
        for field, own in (("groupId", group), ("artifactId", artifact), ("version", version))
    )
    return Pom(packaging, target, _text(moved, "message"))


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of a directory listing."""

    name: str
    size: int | None
    modified: datetime | None


_ENTRY = re.compile(
    r'<a href="([^"]+)"[^>]*>[^<]*</a>\s+'
    r"([0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2})\s+([0-9]+|-)"
)


def parse_listing(body: str) -> list[Entry]:
    """The files of a directory listing page (subdirectories and ``../`` left out)."""
    entries: list[Entry] = []
    for match in _ENTRY.finditer(body):
        name = unquote(html.unescape(match.group(1)))
        if name.endswith("/") or "/" in name or name.startswith("."):
            continue
        size = int(match.group(3)) if match.group(3).isdigit() else None
        try:
            when = datetime.strptime(match.group(2), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        except ValueError:
            when = None
        entries.append(Entry(name, size, when))
    return entries


def render_listing(title: str, entries: Iterable[Entry]) -> str:
    """A directory page shaped like Central's."""
    rows = ['<a href="../">../</a>']
    for entry in entries:
        name = html.escape(entry.name)
        when = entry.modified.strftime("%Y-%m-%d %H:%M") if entry.modified else "-"
        size = "-" if entry.size is None else str(entry.size)
        link = f'<a href="{name}" title="{name}">{name}</a>'
        rows.append(f"{link}{' ' * max(1, 60 - len(entry.name))}{when}{size:>10}      ")
    body = "\n".join(rows)
    name = html.escape(title)
    return (
        f"<!DOCTYPE html>\n<html>\n<head>\n<title>Central Repository: {name}</title>\n"
        f"</head>\n<body>\n<header>\n<h1>{name}</h1>\n</header>\n<hr/>\n<main>\n"
        f'<pre id="contents">\n{body}\n</pre>\n</main>\n<hr/>\n</body>\n</html>\n'
    )


__all__ = [
    "DocumentError",
    "Entry",
    "Metadata",
    "Pom",
    "parse_listing",
    "parse_metadata",
    "parse_pom",
    "render_listing",
    "render_metadata",
    "snapshot_build",
]
