"""Maven coordinates: group, artifact and version rules, and the repository layout.

Names follow Maven's own model validation (``maven-model-builder``'s
``DefaultModelValidator``): a groupId and an artifactId match ``[A-Za-z0-9_\\-.]+``; a version
holds no whitespace and none of ``\\/:"<>|?*``. Forage also refuses what could not name one
directory of the layout (an empty group segment, ``.`` or ``..``), since names become paths.

Forage names a Maven package ``GROUP/ARTIFACT`` (the purl's namespace and name:
``pkg:maven/org.example/demo@1.0``). Forage keys separate fields with ``:``, which Maven's own
``group:artifact:version`` spelling also uses, so a key parser splitting at the last ``:``
reads ``maven:org.example:demo:1.0`` as the name ``org.example:demo`` and the version ``1.0``;
:func:`normalize_name` accepts that and ``org.example/demo`` alike and answers the latter. The
documented key is ``maven:GROUP/ARTIFACT:VERSION`` (``maven:GROUP:ARTIFACT:VERSION`` is also
read; without a version, only the ``/`` form is unambiguous).

Layout (https://maven.apache.org/repositories/layout.html): ``GROUP/as/path/ARTIFACT/`` holds
``maven-metadata.xml``; ``.../VERSION/ARTIFACT-VERSION[-CLASSIFIER].EXT`` the files, each with
``.md5``, ``.sha1`` (and, for newer uploads, ``.sha256``, ``.sha512``) sidecars.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from indexers.errors import InvalidName

ECOSYSTEM = "maven"

_ID = re.compile(r"[A-Za-z0-9_\-.]+")
_BAD_VERSION = re.compile(r'[\s\\/:"<>|?*]')
#: The longest group, artifact or version accepted (Central's longest are far shorter).
MAX_LENGTH = 200

#: Checksum sidecars by file suffix, strongest first (the order the indexer prefers them).
SIDECARS: dict[str, str] = {
    ".sha512": "sha512",
    ".sha256": "sha256",
    ".sha1": "sha1",
    ".md5": "md5",
}
_HEX_LENGTHS = {"sha512": 128, "sha256": 64, "sha1": 40, "md5": 32}

#: ``ARTIFACT-VERSION-yyyyMMdd.HHmmss-N``: a deployed SNAPSHOT build (``ArtifactUtils``).
_TIMESTAMPED = re.compile(r".*-[0-9]{8}\.[0-9]{6}-[0-9]+")
#: The ``yyyyMMdd.HHmmss-N`` of a SNAPSHOT build's file names.
_BUILD = re.compile(r"[0-9]{8}\.[0-9]{6}-[0-9]+")
#: Maven's ``ComparableVersion`` qualifiers that sort before a release, and their one-letter
#: forms (``a1``, ``b2``, ``m3``: a letter directly followed by a digit).
_PRERELEASE = re.compile(
    r"(?:^|[.\-_]|(?<=[0-9]))(?:alpha|beta|milestone|rc|cr|snapshot)(?=$|[.\-_0-9])"
    r"|(?:^|[.\-_]|(?<=[0-9]))[abm](?=[0-9])"
)


def _check_id(kind: str, value: str) -> str:
    if not value or len(value) > MAX_LENGTH or not _ID.fullmatch(value):
        raise InvalidName(ECOSYSTEM, value[:MAX_LENGTH], f"a {kind} must match [A-Za-z0-9_-.]+")
    if value in (".", "..") or (kind == "groupId" and "" in value.split(".")):
        raise InvalidName(ECOSYSTEM, value, f"a {kind} must name a directory")
    return value


def check_version(version: str) -> str:
    """``version`` if Maven accepts it as a version and it names one directory."""
    if not version or len(version) > MAX_LENGTH or _BAD_VERSION.search(version):
        raise InvalidName(
            ECOSYSTEM, version[:MAX_LENGTH], 'a version holds no spaces nor \\/:"<>|?*'
        )
    if version in (".", ".."):
        raise InvalidName(ECOSYSTEM, version, "a version must name a directory")
    return version


def split_name(name: str) -> tuple[str, str]:
    """``(groupId, artifactId)`` of ``GROUP/ARTIFACT`` or ``GROUP:ARTIFACT``, checked."""
    separator = ":" if ":" in name else "/"
    parts = name.split(separator)
    if len(parts) != 2:
        raise InvalidName(ECOSYSTEM, name[:MAX_LENGTH], "expected GROUP/ARTIFACT or GROUP:ARTIFACT")
    return _check_id("groupId", parts[0]), _check_id("artifactId", parts[1])


def normalize_name(name: str) -> str:
    """The canonical ``GROUP/ARTIFACT`` (Maven coordinates are case-sensitive)."""
    group, artifact = split_name(name.strip())
    return f"{group}/{artifact}"


def is_snapshot(version: str) -> bool:
    """A SNAPSHOT version, plain or timestamped (Maven's ``ArtifactUtils.isSnapshot``)."""
    return version.endswith("SNAPSHOT") or bool(_TIMESTAMPED.fullmatch(version))


def is_prerelease(version: str) -> bool:
    """Whether ``version`` sorts before its release in ``ComparableVersion``: an alpha, beta,
    milestone, release candidate or SNAPSHOT qualifier (``1.0-rc1``, ``2.0.b3``, ``1-SNAPSHOT``)."""
    return bool(_PRERELEASE.search(version.lower())) or is_snapshot(version)


def artifact_dir(name: str) -> str:
    """``GROUP/as/path/ARTIFACT``: where ``maven-metadata.xml`` and the versions live."""
    group, artifact = split_name(name)
    return f"{group.replace('.', '/')}/{artifact}"


def file_path(name: str, version: str, filename: str) -> str:
    """The repository path of one file of a version, percent-encoded where a version or file
    name holds what a URL path cannot (``#``, ``%``)."""
    return f"{artifact_dir(name)}/{quote(version, safe='+')}/{quote(filename, safe='+')}"


@dataclass(frozen=True, slots=True)
class FileName:
    """What a file name of a version says: its classifier (``None`` for the main artifact and
    the POM) and extension (``pom``, ``jar``, ``tar.gz``)."""

    classifier: str | None
    extension: str


def parse_file_name(artifact: str, version: str, filename: str) -> FileName | None:
    """Read ``ARTIFACT-VERSION[-CLASSIFIER].EXT``; ``None`` for any other name (sidecars,
    signatures and unrelated files are not Maven artifacts of this version)."""
    prefix = f"{artifact}-{version}"
    if not filename.startswith(prefix) or "/" in filename:
        return None
    rest = filename[len(prefix) :]
    classifier: str | None = None
    if rest.startswith("-"):
        classifier, dot, rest = rest[1:].partition(".")
        if not classifier or not dot:
            return None
        rest = "." + rest
    extension = rest[1:]
    if not rest.startswith(".") or not extension or extension.endswith("."):
        return None
    if any(extension.endswith(s) for s in (*SIDECARS, ".asc")):
        return None
    return FileName(classifier, extension)


#: Maven's default artifact handlers (``maven-core``'s ``artifact-handlers.xml``): the
#: extension of a dependency ``type`` and the classifier it implies. Other types are their
#: own extension (``war``, ``ear``, ``zip``).
TYPES: dict[str, tuple[str, str | None]] = {
    "jar": ("jar", None),
    "maven-plugin": ("jar", None),
    "ejb": ("jar", None),
    "bundle": ("jar", None),
    "ejb-client": ("jar", "client"),
    "test-jar": ("jar", "tests"),
    "java-source": ("jar", "sources"),
    "javadoc": ("jar", "javadoc"),
}


def _build_of(artifact: str, version: str, filename: str) -> str:
    """The version as ``filename`` spells it: a SNAPSHOT's files name their timestamped
    build (``lib-1.1-20240101.120000-3.jar`` of ``1.1-SNAPSHOT``)."""
    base = version.removesuffix("SNAPSHOT")
    if base == version:
        return version
    build = _BUILD.match(filename, len(artifact) + 1 + len(base))
    prefix = filename.startswith(f"{artifact}-{base}")
    return base + build.group() if prefix and build else version


def typed_file(name: str, version: str, filename: str, qualifiers: Mapping[str, str]) -> bool:
    """Whether ``filename`` is the file a purl's ``classifier`` and ``type`` name (each with
    the purl spec's default: no classifier, type ``jar``), the
    :attr:`~indexers.ecosystem.Ecosystem.file_matches` of Maven."""
    artifact = split_name(name)[1]
    parsed = parse_file_name(artifact, _build_of(artifact, version, filename), filename)
    if parsed is None:
        return False
    kind = qualifiers.get("type", "jar")
    extension, implied = TYPES.get(kind, (kind, None))
    classifier = qualifiers.get("classifier", implied)
    return parsed.extension == extension and parsed.classifier == classifier


def parse_sidecar(text: str, algorithm: str) -> str | None:
    """The digest in a checksum sidecar: its first word, lowercase hex of the algorithm's
    length (sidecars written by some tools append the file name); ``None`` if malformed."""
    words = text.split()
    if not words:
        return None
    value = words[0].lower()
    if len(value) != _HEX_LENGTHS[algorithm] or not re.fullmatch(r"[0-9a-f]+", value):
        return None
    return value


__all__ = [
    "ECOSYSTEM",
    "SIDECARS",
    "TYPES",
    "FileName",
    "artifact_dir",
    "check_version",
    "file_path",
    "is_prerelease",
    "is_snapshot",
    "normalize_name",
    "parse_file_name",
    "parse_sidecar",
    "split_name",
    "typed_file",
]
