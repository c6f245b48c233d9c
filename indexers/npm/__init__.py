"""npm: the registry's CouchDB replication feed, packuments, tarballs and their mirror.

Everything npm-specific lives in this package: the feed and packument mapping
(:mod:`.indexer`), name rules (:func:`~indexers.npm.indexer.validate_name`), the registry
protocol served under ``/npm/`` (:mod:`.mirror`), ``package-lock.json``, ``yarn.lock`` and
``pnpm-lock.yaml`` (:mod:`.lockfiles`), reading an archived tarball's manifest
(:mod:`.manifest`) and the loopback fake (:mod:`.fake`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from indexers.digests import to_sri
from indexers.ecosystem import Ecosystem, Endpoint
from indexers.npm.indexer import NpmCursor, NpmIndexer, escape_name, validate_name
from indexers.npm.lockfiles import PACKAGE_LOCK, PNPM_LOCK, YARN_LOCK

if TYPE_CHECKING:
    from indexers.ecosystem import FakeRegistry
    from indexers.mirror.registry import EcosystemRoutes


def _indexer(client: httpx.AsyncClient, endpoints: Mapping[str, str]) -> NpmIndexer:
    return NpmIndexer(
        client, registry_url=endpoints["registry_url"], replicate_url=endpoints["replicate_url"]
    )


def _mirror() -> type[EcosystemRoutes]:
    from indexers.npm.mirror import NpmRoutes

    return NpmRoutes


def _fake() -> FakeRegistry:
    from indexers.npm.fake import FakeNpmRegistry

    return FakeNpmRegistry()


def _install_hint(base_url: str, name: str, version: str) -> str:
    return f"npm install --registry {base_url}/npm/ {shlex.quote(f'{name}@{version}')}"


def _digest_notation(algorithm: str, value: str) -> str:
    """npm prints ``integrity`` as SRI (``sha512-<base64>``) and ``shasum`` as hex."""
    return value if algorithm == "sha1" else to_sri({algorithm: value})


ECOSYSTEM = Ecosystem(
    name="npm",
    title="npm",
    aliases=(),
    indexer=NpmIndexer,
    endpoints=(
        Endpoint("registry_url", "serves packuments and tarballs"),
        Endpoint("replicate_url", "the CouchDB-style replica with _changes"),
    ),
    build_indexer=_indexer,
    mirror_endpoint="registry_url",
    mirror=_mirror,
    fake=_fake,
    install_hint=_install_hint,
    digest_notation=_digest_notation,
    lockfiles=(PACKAGE_LOCK, YARN_LOCK, PNPM_LOCK),
    # The replicate feed is a set of hints: entries may land late, behind the cursor.
    rescan_window=2000,
)

__all__ = ["ECOSYSTEM", "NpmCursor", "NpmIndexer", "escape_name", "validate_name"]
