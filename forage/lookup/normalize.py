"""Lookup keys parsed and normalized: a key's registry spelling and its canonical purl.

Every lookup key (a purl or a Forage key, :mod:`forage.lookup.keys`) is parsed and its name
normalized by the registry's own rules before it is looked up, so every spelling of a version
meets in one row. A plain purl, the common case in a large batch, is read here without the
purl library, and normalized names are remembered across batches: parsing otherwise
dominates a lookup of known keys.
"""

from __future__ import annotations

import functools
import json
import re

from forage.errors import InvalidKey
from forage.lookup.keys import MAX_KEY_LENGTH, Key, parse_key, version_problem
from indexers import ECOSYSTEMS, IndexerError


def normalize_name(ecosystem: str, name: str) -> str:
    """The registry's canonical spelling of ``name`` (PEP 503, npm rules, Go module paths);
    ecosystems Forage does not index keep the name as written."""
    registered = ECOSYSTEMS.get(ecosystem)
    return name if registered is None else registered.normalize_name(name)


#: Purls whose parse is plain: an indexed type, lowercase path segments (an npm scope as
#: ``%40``), no qualifiers or subpath. ``packageurl`` would return them unchanged; reading
#: them here costs a tenth of its parse, which dominates a 10,000-key batch otherwise. A test
#: checks both paths agree.
_PLAIN_PURL = re.compile(
    rf"pkg:({'|'.join(map(re.escape, ECOSYSTEMS))})/"
    r"((?:%40)?[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)*)"
    r"@([A-Za-z0-9][A-Za-z0-9._-]*)"
)


_PLAIN_NAME = re.compile(r"@?[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)*")
_PLAIN_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


#: Plain names whose canonical spelling is remembered: the registries' checks cost more than
#: the rest of a known key's lookup, and the same names come back in batch after batch.
NAME_CACHE_SIZE = 65_536


@functools.lru_cache(maxsize=NAME_CACHE_SIZE)
def _normalized(ecosystem: str, name: str) -> str:
    """:func:`normalize_name`, remembered (a name it refuses raises again every time)."""
    return normalize_name(ecosystem, name)


def canonical_purl(key: Key) -> str:
    """``key.purl()``, spelled here without the purl library for plain names (as
    :data:`_PLAIN_PURL` reads them): building a ``PackageURL`` costs more than a lookup."""
    plain = (
        not key.qualifiers
        and key.ecosystem in ECOSYSTEMS
        and _PLAIN_NAME.fullmatch(key.name)
        and (key.version is None or _PLAIN_VERSION.fullmatch(key.version))
    )
    if not plain:
        return key.purl()
    name = "%40" + key.name[1:] if key.name.startswith("@") else key.name
    return f"pkg:{key.ecosystem}/{name}" + (f"@{key.version}" if key.version else "")


def parse_lookup_key(raw: object) -> Key:
    """Parse and normalize one lookup key; a key naming no version is invalid here."""
    return read_lookup_key(raw)[0]


def read_lookup_key(raw: object) -> tuple[Key, str | None]:
    """:func:`parse_lookup_key`, with the key's canonical purl when the key is one already (a
    plain purl in its registry's spelling, the common case: its stored answer is found by
    this very text, with no second pass over it), else ``None``."""
    if not isinstance(raw, str):
        raise InvalidKey(json.dumps(raw)[:300], "a key must be a string")
    plain = _PLAIN_PURL.fullmatch(raw) if len(raw) <= MAX_KEY_LENGTH else None
    canonical = None
    if plain is None:
        key = parse_key(raw, normalize=normalize_name)
    else:
        ecosystem, name, version = plain.groups()
        if name.startswith("%40"):
            name = "@" + name[3:]
        try:
            key = Key(ecosystem, _normalized(ecosystem, name), version)
        except IndexerError as exc:
            raise InvalidKey(raw, str(exc)) from exc
        if (problem := version_problem(key)) is not None:
            raise InvalidKey(raw, problem)
        if key.name == name:
            canonical = raw
    if key.version is None:
        raise InvalidKey(raw, "a lookup key must name a version (NAME@VERSION or NAME:VERSION)")
    return key, canonical
