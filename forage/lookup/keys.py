"""Lookup keys: Package URLs and the original Forage ``platform:name:version`` keys.

Both spellings name one release of one package and are accepted everywhere a key is
(DESIGN.md, "Keys"):

- purl (https://github.com/package-url/purl-spec): ``pkg:npm/%40scope/name@1.2.3``,
  ``pkg:pypi/requests@2.31.0``, ``pkg:golang/github.com/pkg/errors@v0.9.1``;
- Forage key: ``npm:lodash:4.17.21``, ``go:github.com/pkg/errors:v0.9.1``, the platform
  case-insensitive as the 2021 Forage spelled it (Npm, Go, Pypi, Cargo, Rubygems).

Parsing is syntax only; names are then normalized by the registry's own rules
(``normalize``), so ``pkg:pypi/Django`` and ``pypi:django:...`` meet in one row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from packageurl import PackageURL

from forage.errors import InvalidKey
from indexers import ALIASES, ECOSYSTEMS, IndexerError

#: The longest key we parse; longer input is refused before any work.
MAX_KEY_LENGTH = 1024

#: Forage platform names (lowercased) to purl types, the ecosystem ids used inside Forage:
#: every registered ecosystem's name and aliases. (A purl of any other type parses, and
#: lookups answer that Forage does not index it.)
PLATFORMS: Mapping[str, str] = ALIASES


@dataclass(frozen=True, slots=True)
class Key:
    """One parsed key: ecosystem (purl type), package name and version (``None`` if absent)."""

    ecosystem: str
    name: str
    version: str | None

    def purl(self) -> str:
        """Return the canonical purl spelling of this key."""
        namespace, _, name = self.name.rpartition("/")
        return PackageURL(
            type=self.ecosystem,
            namespace=namespace or None,
            name=name,
            version=self.version,
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
    return Key(purl.type, name, purl.version or None)


def _parse_forage(key: str) -> Key:
    platform, sep, rest = key.partition(":")
    if not sep:
        raise InvalidKey(key, "expected pkg:TYPE/NAME@VERSION or PLATFORM:NAME:VERSION")
    ecosystem = PLATFORMS.get(platform.lower())
    if ecosystem is None:
        known = ", ".join(sorted(PLATFORMS))
        raise InvalidKey(key, f"unknown platform {platform!r} (known: {known})")
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
    if normalize is None:
        return parsed
    try:
        name = normalize(parsed.ecosystem, parsed.name)
    except IndexerError as exc:
        raise InvalidKey(key, str(exc)) from exc
    return Key(parsed.ecosystem, name, parsed.version)


def registered_name(ecosystem: str, name: str) -> str:
    """A registered registry's canonical spelling of ``name``; ``InvalidKey`` for an ecosystem
    Forage does not index (a ``normalize`` for :func:`parse_key`)."""
    registered = ECOSYSTEMS.get(ecosystem)
    if registered is None:
        known = ", ".join(ECOSYSTEMS)
        raise InvalidKey(f"{ecosystem}:{name}", f"no registry {ecosystem!r}; known: {known}")
    return registered.normalize_name(name)
