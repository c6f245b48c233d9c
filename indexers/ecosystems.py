"""The ecosystems Forage follows: one line per home package.

This is the one place an ecosystem is registered. Everything that works across ecosystems
(configuration tables, watchers, lookups, keys, lockfiles, the mirror, the demo, the
conformance suite) iterates :data:`ECOSYSTEMS`; nothing else names a registry.
"""

from __future__ import annotations

from collections.abc import Mapping

from indexers import cargo, composer, gem, golang, maven, npm, pypi
from indexers.ecosystem import Ecosystem, FileCheck
from indexers.errors import InvalidName

#: Every registered ecosystem by purl type, in the order they were added.
ECOSYSTEMS: Mapping[str, Ecosystem] = {
    eco.name: eco
    for eco in (
        npm.ECOSYSTEM,
        pypi.ECOSYSTEM,
        golang.ECOSYSTEM,
        cargo.ECOSYSTEM,
        gem.ECOSYSTEM,
        composer.ECOSYSTEM,
        maven.ECOSYSTEM,
    )
}

#: Every spelling that names an ecosystem (purl types and aliases, lower case).
ALIASES: Mapping[str, str] = {
    spelling: eco.name for eco in ECOSYSTEMS.values() for spelling in (eco.name, *eco.aliases)
}

#: Whole-file checks by digest algorithm (Go's ``h1:``), for any code verifying archived bytes.
FILE_CHECKS: Mapping[str, FileCheck] = {
    algorithm: check for eco in ECOSYSTEMS.values() for algorithm, check in eco.file_checks.items()
}


def find_ecosystem(spelling: str) -> Ecosystem | None:
    """The ecosystem ``spelling`` names (a purl type or an alias, any case), if any."""
    name = ALIASES.get(spelling.strip().lower())
    return None if name is None else ECOSYSTEMS[name]


def get_ecosystem(spelling: str) -> Ecosystem:
    """The ecosystem ``spelling`` names; ``InvalidName`` listing the known ones otherwise."""
    eco = find_ecosystem(spelling)
    if eco is None:
        known = ", ".join(ECOSYSTEMS)
        raise InvalidName("ecosystem", spelling[:100], f"unknown ecosystem; known: {known}")
    return eco


__all__ = ["ALIASES", "ECOSYSTEMS", "FILE_CHECKS", "find_ecosystem", "get_ecosystem"]
