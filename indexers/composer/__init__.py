"""Packagist and Composer repositories: the metadata change feed, Composer 2 metadata, dists
and their mirror.

Everything Composer-specific lives in this package: the feed and package list
(:mod:`.indexer`), names, stability and the minified p2 format mapped to releases
(:mod:`.metadata`), the repository protocol served under ``/composer/`` (:mod:`.mirror`),
reading an archived dist's ``composer.json`` (:mod:`.manifest`), ``composer.lock``
(:mod:`.lockfiles`) and the loopback fake of Packagist (:mod:`.fake`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from indexers.composer.indexer import ComposerCursor, ComposerIndexer
from indexers.composer.lockfiles import COMPOSER_LOCK
from indexers.composer.metadata import is_dev
from indexers.ecosystem import Ecosystem, Endpoint

if TYPE_CHECKING:
    from indexers.ecosystem import FakeRegistry
    from indexers.mirror.registry import EcosystemRoutes


def _indexer(client: httpx.AsyncClient, endpoints: Mapping[str, str]) -> ComposerIndexer:
    return ComposerIndexer(client, repo_url=endpoints["repo_url"], api_url=endpoints["api_url"])


def _mirror() -> type[EcosystemRoutes]:
    from indexers.composer.mirror import ComposerRoutes

    return ComposerRoutes


def _fake() -> FakeRegistry:
    from indexers.composer.fake import FakePackagist

    return FakePackagist()


def _install_hint(base_url: str, name: str, version: str) -> str:
    return (
        f"composer config repositories.forage composer {base_url}/composer"
        f" && composer require {shlex.quote(f'{name}:{version}')}"
    )


ECOSYSTEM = Ecosystem(
    name="composer",
    title="Packagist",
    aliases=("packagist",),
    indexer=ComposerIndexer,
    endpoints=(
        Endpoint("repo_url", "the Composer repository: packages.json and p2/ metadata"),
        Endpoint("api_url", "serves metadata/changes.json (the feed) and packages/list.json"),
    ),
    build_indexer=_indexer,
    mirror_endpoint="repo_url",
    mirror=_mirror,
    fake=_fake,
    install_hint=_install_hint,
    lockfiles=(COMPOSER_LOCK,),
    is_development=is_dev,
)

__all__ = ["ECOSYSTEM", "ComposerCursor", "ComposerIndexer"]
