"""Which indexer serves which registry, built from configuration.

The explicit mapping from ecosystem (purl type) to indexer class lives here; an unknown name
is refused with the list of known ones. Every indexer's ``package(name, change=...)`` takes
the feed change itself and reads the freshness hint its registry carries (npm's announced
revision, PyPI's serial, the version the Go index named), so callers need not know which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from forage.config import Config
from forage.errors import ConfigError
from indexers import GoIndexer, Indexer, NpmIndexer, PyPIIndexer

INDEXER_CLASSES: Mapping[str, type[Indexer[Any]]] = {
    "npm": NpmIndexer,
    "pypi": PyPIIndexer,
    "golang": GoIndexer,
}
#: Every registry Forage can watch, by purl type.
ECOSYSTEMS: tuple[str, ...] = tuple(INDEXER_CLASSES)

#: How many feed positions a run re-reads behind its cursor, for feeds whose entries may
#: land late behind it (npm's replicate feed is a set of hints; DESIGN.md, issue 3).
RESCAN_WINDOW: Mapping[str, int] = {"npm": 2000}


def _npm(config: Config, client: httpx.AsyncClient) -> Indexer[Any]:
    npm = config.registry("npm")
    return NpmIndexer(
        client, registry_url=str(npm.registry_url), replicate_url=str(npm.replicate_url)
    )


def _pypi(config: Config, client: httpx.AsyncClient) -> Indexer[Any]:
    pypi = config.registry("pypi")
    return PyPIIndexer(client, xmlrpc_url=str(pypi.xmlrpc_url), simple_url=str(pypi.index_url))


def _golang(config: Config, client: httpx.AsyncClient) -> Indexer[Any]:
    golang = config.registry("golang")
    return GoIndexer(
        client,
        index_url=str(golang.index_url),
        proxy_url=str(golang.proxy_url),
        sumdb_url=golang.sumdb_url,
    )


_FACTORIES: Mapping[str, Callable[[Config, httpx.AsyncClient], Indexer[Any]]] = {
    "npm": _npm,
    "pypi": _pypi,
    "golang": _golang,
}


def check_ecosystem(ecosystem: str) -> str:
    """Return ``ecosystem`` if Forage knows it, else raise a ``ConfigError`` listing known ones."""
    if ecosystem not in _FACTORIES:
        raise ConfigError(
            "ecosystem", f"unknown registry {ecosystem!r}; known: {', '.join(ECOSYSTEMS)}"
        )
    return ecosystem


def make_indexer(config: Config, ecosystem: str, client: httpx.AsyncClient) -> Indexer[Any]:
    """Build the indexer of a configured registry over the caller's HTTP client."""
    return _FACTORIES[check_ecosystem(ecosystem)](config, client)
