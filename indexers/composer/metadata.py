"""Composer's names, versions and v2 metadata documents, mapped to releases.

Sources:

- names: ``composer/composer:src/Composer/Package/Loader/ValidatingArrayLoader.php``
  (``^[a-z0-9]([_.-]?[a-z0-9]+)*/[a-z0-9](([_.]?|-{0,2})[a-z0-9]+)*$``; Packagist names are
  lower case, Composer lower-cases a name before it asks for it);
- stability: ``composer/semver:src/VersionParser.php`` ``parseStability`` (``dev-*`` and
  ``*-dev`` are dev branches; ``alpha``/``beta``/``RC`` modifiers are pre-releases);
- the minified p2 format: ``composer/metadata-minifier:src/MetadataMinifier.php`` ``expand``
  (the first entry is whole; each later entry holds only the keys that differ from the entry
  before it, ``"__unset"`` removing a key), applied by Composer when the document says
  ``"minified": "composer/2.0"`` (``ComposerRepository::loadAsyncPackages``).

A version's ``dist`` is one artifact: ``dist.shasum`` (sha1 of the archive) is its digest when
Packagist publishes one; archives served by code forges (GitHub zipballs) have an empty
``shasum``, so the artifact carries no upstream digest and Forage's own digest recorded at the
first download is all that vouches for it. Dev branches (``~dev.json``) move with every push:
their versions are indexed without files, so their archives are never taken.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from indexers.base import expect, parse_time
from indexers.digests import normalize_hex
from indexers.errors import InvalidDigest, InvalidName
from indexers.types import Artifact, PackageInfo, Release

log = logging.getLogger(__name__)

ECOSYSTEM = "composer"

#: The value a minified entry gives a key its predecessor had and it has not.
UNSET = "__unset"
#: The ``minified`` marker of Composer 2 metadata.
MINIFIED = "composer/2.0"
#: Longest name accepted (Packagist's column is 255 characters).
MAX_NAME_LENGTH = 255

_NAME = re.compile(r"[a-z0-9]([_.-]?[a-z0-9]+)*/[a-z0-9](([_.]?|-{0,2})[a-z0-9]+)*")
#: ``VersionParser::$modifierRegex`` anchored at the end, as ``parseStability`` applies it.
_MODIFIER = re.compile(
    r"[._-]?(?:(stable|beta|b|rc|alpha|a|patch|pl|p)((?:[.-]?\d+)*+)?)?([.-]?dev)?(?:\+.*)?$"
)
#: Characters a version may not hold in a file name.
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def validate_name(name: str) -> str:
    """Return ``name`` lower-cased if Composer accepts it as ``vendor/package``; raise
    ``InvalidName`` otherwise."""
    lowered = name.lower()
    if not lowered or len(lowered) > MAX_NAME_LENGTH or not _NAME.fullmatch(lowered):
        raise InvalidName(ECOSYSTEM, name[:300], "not a vendor/package name Composer accepts")
    return lowered


def split_name(name: str) -> tuple[str, str]:
    """``vendor/package`` as its two parts (the name must be valid)."""
    vendor, _, package = validate_name(name).partition("/")
    return vendor, package


def is_dev(version: str) -> bool:
    """A dev branch (``dev-main``, ``2.x-dev``): Composer's ``dev`` stability by its name."""
    bare = version.split("#", 1)[0]
    return bare.startswith("dev-") or bare.endswith("-dev")


def stability(version: str) -> str:
    """Composer's stability of a version: ``dev``, ``alpha``, ``beta``, ``RC`` or ``stable``."""
    if is_dev(version):
        return "dev"
    match = _MODIFIER.search(version.split("#", 1)[0].lower())
    if match is None:
        return "stable"
    if match.group(3):
        return "dev"
    modifier = match.group(1)
    return {"beta": "beta", "b": "beta", "alpha": "alpha", "a": "alpha", "rc": "RC"}.get(
        modifier or "", "stable"
    )


def expand(versions: Iterable[Any]) -> list[dict[str, Any]]:
    """Undo Composer's metadata minification: each entry inherits every key of the expanded
    entry before it, overridden by its own keys; a key whose value is ``"__unset"`` is
    removed. Nested values are replaced whole, never merged."""
    expanded: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for entry in versions:
        if not isinstance(entry, dict):
            raise ValueError("a minified version entry is not an object")
        if not current:
            current = dict(entry)
        else:
            current = dict(current)
            for key, value in entry.items():
                if value == UNSET:
                    current.pop(key, None)
                else:
                    current[key] = value
        expanded.append(current)
    return expanded


def minify(versions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Composer's minification, the inverse of :func:`expand` (the fake serves with it)."""
    minified: list[dict[str, Any]] = []
    last: dict[str, Any] | None = None
    for version in versions:
        if last is None:
            last = dict(version)
            minified.append(dict(version))
            continue
        entry = {key: value for key, value in version.items() if last.get(key) != value}
        last.update(entry)
        for key in [key for key in last if key not in version]:
            entry[key] = UNSET
            del last[key]
        minified.append(entry)
    return minified


def p2_versions(doc: Any, name: str, url: str) -> list[dict[str, Any]]:
    """The expanded version entries of ``name`` in a p2 document (``[]`` when it has none)."""
    expect(isinstance(doc, dict), url, "p2 document is not an object")
    packages = doc.get("packages")
    expect(isinstance(packages, dict), url, "p2 document has no 'packages' object")
    entries = packages.get(name, [])
    expect(isinstance(entries, list), url, f"'packages.{name}' is not a list")
    if doc.get("minified") == MINIFIED:
        try:
            return expand(entries)
        except ValueError as exc:
            expect(False, url, str(exc))
    expect(all(isinstance(e, dict) for e in entries), url, "a version entry is not an object")
    return [dict(e) for e in entries]


def dist_filename(name: str, version: str, dist_type: str) -> str:
    """The file name Forage gives a version's dist: ``vendor-package-1.2.3.zip``."""
    vendor, package = split_name(name)
    extension = _UNSAFE.sub("-", dist_type or "zip")
    return f"{vendor}-{package}-{_UNSAFE.sub('-', version)}.{extension}"


def dist_digests(dist: Mapping[str, Any], where: str) -> dict[str, str]:
    """``{"sha1": ...}`` from a non-empty, well-formed ``dist.shasum``; else nothing."""
    shasum = dist.get("shasum")
    if not isinstance(shasum, str) or not shasum:
        return {}
    try:
        return {"sha1": normalize_hex("sha1", shasum)}
    except InvalidDigest as exc:
        log.warning("composer %s: dropping dist.shasum: %s", where, exc)
        return {}


def _artifact(name: str, entry: Mapping[str, Any]) -> Artifact | None:
    version = str(entry.get("version"))
    dist = entry.get("dist")
    url = dist.get("url") if isinstance(dist, dict) else None
    if not isinstance(dist, dict) or not isinstance(url, str) or not url:
        return None
    dist_type = str(dist.get("type") or "zip")
    return Artifact(
        filename=dist_filename(name, version, dist_type),
        url=url,
        size=None,
        digests=dist_digests(dist, f"{name} {version}"),
        kind=dist_type,
        uploaded_at=parse_time(entry.get("time")),
    )


def _abandoned(entries: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """The package's status from its newest entry's ``abandoned`` (``true`` or the name of
    the package to use instead)."""
    flag = entries[0].get("abandoned") if entries else None
    if flag is True:
        return "deprecated", "abandoned"
    if isinstance(flag, str) and flag:
        return "deprecated", f"abandoned, use {flag}"
    return None, None


def map_package(name: str, tagged: list[dict[str, Any]], dev: list[dict[str, Any]]) -> PackageInfo:
    """Map a package's expanded tagged and dev-branch entries to :class:`PackageInfo`.

    Every version becomes a release with its dist, dev branches included: whether those are
    archived is the registry's ``development`` setting (``is_dev`` is the ecosystem's
    ``is_development``). ``extra`` keeps each version's dist ``reference`` (the commit a
    lockfile pins) for the mirror to rebuild metadata from.
    """
    releases: list[Release] = []
    references: dict[str, str] = {}
    seen: set[str] = set()
    for entry in tagged + dev:
        version = entry.get("version")
        if not isinstance(version, str) or not version or version in seen:
            continue
        seen.add(version)
        artifact = _artifact(name, entry)
        dist = entry.get("dist")
        reference = dist.get("reference") if isinstance(dist, dict) else None
        if isinstance(reference, str) and reference and artifact is not None:
            references[version] = reference
        releases.append(
            Release(
                version=version,
                artifacts=(artifact,) if artifact else (),
                published_at=parse_time(entry.get("time")),
            )
        )
    status, reason = _abandoned(tagged or dev)
    return PackageInfo(
        ecosystem=ECOSYSTEM,
        name=name,
        display_name=name,
        releases=tuple(releases),
        status=status,
        status_reason=reason,
        extra={"references": references},
    )


__all__ = [
    "ECOSYSTEM",
    "MINIFIED",
    "UNSET",
    "dist_digests",
    "dist_filename",
    "expand",
    "is_dev",
    "map_package",
    "minify",
    "p2_versions",
    "split_name",
    "stability",
    "validate_name",
]
