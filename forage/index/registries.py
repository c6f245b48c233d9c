"""The indexer of each configured registry, built from configuration.

Which ecosystems exist is :data:`indexers.ECOSYSTEMS` (one registration line per home
package); this module only joins a registration with its ``[registries.<name>]`` table. Every
indexer's ``package(name, change=...)`` takes the feed change itself and reads the freshness
hint its registry carries (npm's announced revision, PyPI's serial, the version the Go index
named), so callers need not know which.
"""

from __future__ import annotations

from typing import Any

import httpx

from forage.config import Config
from forage.errors import ConfigError
from indexers import ECOSYSTEMS, Indexer, find_ecosystem


def check_ecosystem(ecosystem: str) -> str:
    """The purl type ``ecosystem`` names (aliases accepted), else a ``ConfigError`` listing the
    known ones."""
    registered = find_ecosystem(ecosystem)
    if registered is None:
        from forage.lookup.keys import near_ecosystem_hint

        known = f"; known: {', '.join(ECOSYSTEMS)}"
        hint = near_ecosystem_hint(ecosystem)
        raise ConfigError("ecosystem", f"unknown registry {ecosystem!r}{hint or known}")
    return registered.name


def make_indexer(config: Config, ecosystem: str, client: httpx.AsyncClient) -> Indexer[Any]:
    """Build the indexer of a configured registry over the caller's HTTP client."""
    name = check_ecosystem(ecosystem)
    endpoints = config.registry(name).endpoints
    return ECOSYSTEMS[name].build_indexer(client, {k: v for k, v in endpoints.items() if v})
