"""Maven and Gradle dependency lists, by purl (``pkg:maven/GROUP/ARTIFACT@VERSION``, with the
``classifier`` and ``type`` qualifiers where they say more than the default jar).

- ``gradle.lockfile`` (https://docs.gradle.org/current/userguide/dependency_locking.html): one
  ``group:artifact:version=configuration,...`` line per locked module, ``empty=...`` for
  configurations that resolve nothing, ``#`` comments.
- The output of ``mvn dependency:list`` (``maven-dependency-plugin``'s ``list`` goal, on the
  console with ``[INFO]`` prefixes or written by ``-DoutputFile``): after ``The following
  files have been resolved:``, one ``group:artifact:type[:classifier]:version:scope`` line per
  dependency, possibly followed by `` -- module NAME`` and ``(optional)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from packageurl import PackageURL

from indexers.ecosystem import LockfileFormat
from indexers.errors import InvalidName
from indexers.maven.coords import ECOSYSTEM, check_version, split_name
from indexers.types import LockEntry

GRADLE_HEADER = "# This is a Gradle generated file for dependency locking."
RESOLVED = "The following files have been resolved:"
_GRADLE_LINE = re.compile(r"([^:=\s]+):([^:=\s]+):([^:=\s]+)=(.*)")
_SCOPES = ("compile", "provided", "runtime", "test", "system", "import")


def maven_purl(
    group: str, artifact: str, version: str, *, classifier: str | None = None, kind: str = "jar"
) -> str:
    """The purl of one Maven artifact (names checked by Maven's rules; ``InvalidName``)."""
    split_name(f"{group}/{artifact}")
    check_version(version)
    qualifiers = {}
    if classifier:
        qualifiers["classifier"] = classifier
    if kind != "jar":
        qualifiers["type"] = kind
    return PackageURL(
        type=ECOSYSTEM, namespace=group, name=artifact, version=version, qualifiers=qualifiers
    ).to_string()


def read_gradle_lockfile(text: str) -> Iterator[LockEntry]:
    """Yield each locked module of a ``gradle.lockfile``."""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("empty="):
            continue
        match = _GRADLE_LINE.fullmatch(line)
        if match is None:
            yield LockEntry(f"line {number}", None, "not a group:artifact:version=... line")
            continue
        group, artifact, version, _ = match.groups()
        try:
            yield LockEntry(f"line {number}", maven_purl(group, artifact, version))
        except InvalidName as exc:
            yield LockEntry(f"line {number}", None, exc.reason)


def _is_gradle_lockfile(base: str, text: str) -> bool:
    return text.lstrip().startswith(GRADLE_HEADER)


def read_dependency_list(text: str) -> Iterator[LockEntry]:
    """Yield each dependency ``mvn dependency:list`` resolved."""
    listing = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"^\[(INFO|WARNING)\]", "", raw).strip()
        if RESOLVED in line:
            listing = True
            continue
        if not listing:
            continue
        coordinate = line.split(" -- ", 1)[0].split(" (", 1)[0].strip()
        fields = coordinate.split(":")
        if len(fields) not in (5, 6) or fields[-1] not in _SCOPES:
            listing = False  # a blank line, "none" or the build's next output ends the list
            continue
        group, artifact, kind = fields[:3]
        classifier = fields[3] if len(fields) == 6 else None
        version = fields[-2]
        try:
            key = maven_purl(group, artifact, version, classifier=classifier, kind=kind)
        except InvalidName as exc:
            yield LockEntry(f"line {number}", None, exc.reason)
            continue
        yield LockEntry(f"line {number}", key)


GRADLE_LOCKFILE = LockfileFormat(
    name="gradle.lockfile",
    filenames=("gradle.lockfile", "buildscript-gradle.lockfile"),
    detect=_is_gradle_lockfile,
    read=read_gradle_lockfile,
)
DEPENDENCY_LIST = LockfileFormat(
    name="mvn dependency:list output",
    detect=lambda base, text: RESOLVED in text,
    read=read_dependency_list,
)

__all__ = [
    "DEPENDENCY_LIST",
    "GRADLE_LOCKFILE",
    "maven_purl",
    "read_dependency_list",
    "read_gradle_lockfile",
]
