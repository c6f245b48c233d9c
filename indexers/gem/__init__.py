"""RubyGems: the compact index (``/versions`` as the feed, ``/info`` per gem), ``.gem``
files and their mirror.

Everything RubyGems-specific lives in this package: the feed and ``/info`` mapping
(:mod:`.indexer`, with its choice of change signal and sources), the compact index formats
(:mod:`.compact`), the source served under ``/gems/`` (:mod:`.mirror`) with the quick
gemspecs ``gem install`` asks for (:mod:`.marshal`), ``Gemfile.lock`` (:mod:`.lockfiles`),
real ``.gem`` files built in Python (:mod:`.build`) and the loopback fake (:mod:`.fake`).
The purl type is ``gem``; the 2021 Forage platform name ``rubygems`` is an alias.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from indexers.ecosystem import Ecosystem, Endpoint
from indexers.gem.compact import platform_file
from indexers.gem.indexer import GemCursor, GemIndexer, validate_name
from indexers.gem.lockfiles import GEMFILE_LOCK

if TYPE_CHECKING:
    from indexers.ecosystem import FakeRegistry
    from indexers.mirror.registry import EcosystemRoutes


def _indexer(client: httpx.AsyncClient, endpoints: Mapping[str, str]) -> GemIndexer:
    return GemIndexer(client, registry_url=endpoints["registry_url"])


def _mirror() -> type[EcosystemRoutes]:
    from indexers.gem.mirror import GemRoutes

    return GemRoutes


def _fake() -> FakeRegistry:
    from indexers.gem.fake import FakeRubyGems

    return FakeRubyGems()


def _install_hint(base_url: str, name: str, version: str) -> str:
    return (
        f"gem install --clear-sources --source {base_url}/gems/ {shlex.quote(name)}"
        f" -v {shlex.quote(version)}"
    )


ECOSYSTEM = Ecosystem(
    name="gem",
    title="RubyGems",
    aliases=("rubygems",),
    indexer=GemIndexer,
    endpoints=(
        Endpoint(
            "registry_url",
            "serves the compact index (/versions, /info, /names), /gems/*.gem and /api/v1",
        ),
    ),
    build_indexer=_indexer,
    mirror_endpoint="registry_url",
    mirror=_mirror,
    fake=_fake,
    install_hint=_install_hint,
    lockfiles=(GEMFILE_LOCK,),
    qualifiers=("platform",),
    file_matches=platform_file,
)

__all__ = ["ECOSYSTEM", "GemCursor", "GemIndexer", "validate_name"]
