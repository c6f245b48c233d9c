"""Lookup keys: Package URLs and the original Forage ``platform:name:version`` keys.

Both spellings name one release of one package and are accepted everywhere a key is
(DESIGN.md, "Keys"):

- purl (https://github.com/package-url/purl-spec): ``pkg:npm/%40scope/name@1.2.3``,
  ``pkg:pypi/requests@2.31.0``, ``pkg:golang/github.com/pkg/errors@v0.9.1``;
- Forage key: ``npm:lodash:4.17.21``, ``go:github.com/pkg/errors:v0.9.1``, the platform
  case-insensitive as the 2021 Forage spelled it (Npm, Go, Pypi, Cargo, Rubygems).

Parsing is syntax only; names are then normalized by the registry's own rules
(``normalize``), so ``pkg:pypi/Django`` and ``pypi:django:...`` meet in one row.

A purl's qualifiers are kept where they pick files within a version
(:meth:`~indexers.Ecosystem.selecting`: ``pkg:gem/nokogiri@1.16.0?platform=java``,
``pkg:maven/org.slf4j/slf4j-api@2.0.9?classifier=sources``), so a lookup of one answers
those files only; any other qualifier names nothing Forage tells apart and is dropped.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import NamedTuple

from packageurl import PackageURL

from forage.errors import InvalidKey
from indexers import ALIASES, ECOSYSTEMS, IndexerError

#: The longest key we parse; longer input is refused before any work.
MAX_KEY_LENGTH = 1024

#: Forage platform names (lowercased) to purl types, the ecosystem ids used inside Forage:
#: every registered ecosystem's name and aliases. (A purl of any other type parses, and
#: lookups answer that Forage does not index it.)
PLATFORMS: Mapping[str, str] = ALIASES


class Key(NamedTuple):
    """One parsed key: ecosystem (purl type), package name, version (``None`` if absent) and
    the qualifiers that pick files of the version (sorted pairs; see the module docstring).

    A named tuple, not a frozen dataclass: a batch makes and hashes thousands, and a tuple's
    construction and hash run in C (a tenth of a 1,000-key lookup's time otherwise)."""

    ecosystem: str
    name: str
    version: str | None
    qualifiers: tuple[tuple[str, str], ...] = ()

    @property
    def release(self) -> Key:
        """The whole version this key names files of (itself when it has no qualifiers)."""
        return Key(self.ecosystem, self.name, self.version) if self.qualifiers else self

    def wants(self, filename: str) -> bool:
        """Whether ``filename``, a file of this key's version, is one the key names."""
        if not self.qualifiers or self.version is None:
            return True
        registered = ECOSYSTEMS.get(self.ecosystem)
        return registered is None or registered.selects(
            self.name, self.version, filename, dict(self.qualifiers)
        )

    def purl(self) -> str:
        """Return the canonical purl spelling of this key."""
        namespace, _, name = self.name.rpartition("/")
        return PackageURL(
            type=self.ecosystem,
            namespace=namespace or None,
            name=name,
            version=self.version,
            qualifiers=dict(self.qualifiers) or None,
        ).to_string()


#: C0 controls and DEL; one regex scan in C instead of a Python loop per character.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_text(key: str) -> None:
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(key, f"longer than {MAX_KEY_LENGTH} characters")
    if _CONTROL.search(key):
        raise InvalidKey(key, "contains a control character")


def _parse_purl(key: str) -> Key:
    try:
        purl = PackageURL.from_string(key)
    except ValueError as exc:
        raise InvalidKey(key, str(exc)) from exc
    name = f"{purl.namespace}/{purl.name}" if purl.namespace else purl.name
    ecosystem = PLATFORMS.get(purl.type, purl.type)
    if ecosystem not in ECOSYSTEMS and (near := _near_ecosystem(purl.type)) is not None:
        raise InvalidKey(key, f"unknown purl type {purl.type!r}: did you mean {near!r}?")
    registered = ECOSYSTEMS.get(ecosystem)
    qualifiers = purl.qualifiers if isinstance(purl.qualifiers, dict) else {}
    picked = registered.selecting(qualifiers) if registered is not None else ()
    return Key(ecosystem, name, purl.version or None, picked)


def _parse_forage(key: str) -> Key:
    platform, sep, rest = key.partition(":")
    if not sep:
        raise InvalidKey(key, "expected pkg:TYPE/NAME@VERSION or PLATFORM:NAME:VERSION")
    ecosystem = PLATFORMS.get(platform.lower())
    if ecosystem is None:
        raise InvalidKey(key, unknown_ecosystem(platform, noun="platform"))
    name, sep, version = rest.rpartition(":")
    if not sep:
        name, version = rest, ""
    return Key(ecosystem, name, version or None)


def parse_key(
    key: str,
    *,
    normalize: Callable[[str, str], str] | None = None,
) -> Key:
    """Parse a purl or Forage key; ``normalize(ecosystem, name)`` canonicalizes the name.

    ``normalize`` raises ``InvalidKey`` or an ``IndexerError`` (``InvalidName``) for names its
    registry does not allow; the latter is re-raised as ``InvalidKey`` naming the key.
    """
    if not isinstance(key, str):
        raise InvalidKey(repr(key), "a key must be a string")
    key = key.strip()
    _check_text(key)
    if not key:
        raise InvalidKey(key, "empty key")
    parsed = _parse_purl(key) if key.startswith("pkg:") else _parse_forage(key)
    if not parsed.name:
        raise InvalidKey(key, "missing package name")
    if (problem := version_problem(parsed)) is not None:
        raise InvalidKey(key, problem)
    if normalize is None:
        return parsed
    try:
        name = normalize(parsed.ecosystem, parsed.name)
    except IndexerError as exc:
        raise InvalidKey(key, str(exc)) from exc
    return Key(parsed.ecosystem, name, parsed.version, parsed.qualifiers)


def registered_name(ecosystem: str, name: str) -> str:
    """A registered registry's canonical spelling of ``name``; ``InvalidKey`` for an ecosystem
    Forage does not index (a ``normalize`` for :func:`parse_key`)."""
    registered = ECOSYSTEMS.get(ecosystem)
    if registered is None:
        known = ", ".join(ECOSYSTEMS)
        raise InvalidKey(f"{ecosystem}:{name}", f"no registry {ecosystem!r}; known: {known}")
    return registered.normalize_name(name)


def _near_ecosystem(spelling: str) -> str | None:
    close = difflib.get_close_matches(spelling.lower(), PLATFORMS, n=1, cutoff=0.75)
    return PLATFORMS[close[0]] if close else None


def near_ecosystem_hint(spelling: str) -> str:
    """``: did you mean 'golang'?`` when ``spelling`` is a near miss of an ecosystem's name or
    alias, else ``""``."""
    near = _near_ecosystem(spelling)
    return "" if near is None else f": did you mean {near!r}?"


def unknown_ecosystem(spelling: str, *, noun: str = "ecosystem") -> str:
    """Why ``spelling`` names no ecosystem: the near miss it resembles, else the known ones
    (every ecosystem's name and aliases)."""
    hint = near_ecosystem_hint(spelling)
    known = f"; known: {', '.join(sorted(PLATFORMS))}"
    return f"unknown {noun} {spelling[:100]!r}{hint or known}"


#: Characters no exact version has, and the ``1.x`` wildcard: what a range is spelled with.
_RANGE = re.compile(r"[\^~<>*|,\[\]()\s]|^=|^v?\d+(?:\.\d+)*\.[xX]$")
#: Tags that point at a version in some registry's tools (npm dist-tags, Maven's LATEST).
_TAGS = frozenset({"latest", "next", "stable", "release", "canary", "nightly", "beta", "alpha"})
_LONGEST_TAG = max(map(len, _TAGS))


def version_problem(key: Key) -> str | None:
    """Why ``key``'s version cannot name one release (a range, a tag, or not the registry's
    spelling, with what was meant), or ``None``. Lookups answer exact versions only."""
    version = key.version
    if version is None:
        return None
    if _RANGE.search(version):
        exact = version.lstrip("=")
        if exact != version and not _RANGE.search(exact):
            return f"{version!r} is a constraint, not a version: did you mean {exact!r}?"
        return f"{version!r} is a range, not a version: name one exact version"
    if len(version) <= _LONGEST_TAG and version.lower() in _TAGS:
        return f"{version!r} is a tag, not a version: name the exact version it points to"
    registered = ECOSYSTEMS.get(key.ecosystem)
    if registered is not None and registered.version_hint is not None:
        return registered.version_hint(version)
    return None
