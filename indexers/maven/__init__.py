"""Maven Central (and any Maven repository): the Maven Indexer's chunks, the repository layout
and its mirror.

Everything Maven-specific lives in this package: coordinates and the layout
(:mod:`.coords`), the index's transfer format (:mod:`.indexdata`), ``maven-metadata.xml``,
POMs and directory listings (:mod:`.documents`), the feed and mapping (:mod:`.indexer`), the
layout served under ``/maven2/`` (:mod:`.mirror`), ``gradle.lockfile`` and ``mvn
dependency:list`` (:mod:`.lockfiles`) and the loopback fake (:mod:`.fake`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from indexers.ecosystem import Ecosystem, Endpoint
from indexers.maven.coords import is_snapshot, typed_file
from indexers.maven.indexer import MavenCursor, MavenIndexer
from indexers.maven.lockfiles import DEPENDENCY_LIST, GRADLE_LOCKFILE

if TYPE_CHECKING:
    from indexers.ecosystem import FakeRegistry
    from indexers.mirror.registry import EcosystemRoutes


def _indexer(client: httpx.AsyncClient, endpoints: Mapping[str, str]) -> MavenIndexer:
    return MavenIndexer(
        client,
        repository_url=endpoints["repository_url"],
        index_url=endpoints["index_url"],
    )


def _mirror() -> type[EcosystemRoutes]:
    from indexers.maven.mirror import MavenRoutes

    return MavenRoutes


def _fake() -> FakeRegistry:
    from indexers.maven.fake import FakeMaven

    return FakeMaven()


def _install_hint(base_url: str, name: str, version: str) -> str:
    coordinates = shlex.quote(f"{name.replace('/', ':')}:{version}")
    return (
        f"mvn dependency:get -Dartifact={coordinates}"
        f" -DremoteRepositories=forage::default::{base_url}/maven2"
    )


ECOSYSTEM = Ecosystem(
    name="maven",
    title="Maven Central",
    aliases=(),
    indexer=MavenIndexer,
    endpoints=(
        Endpoint("repository_url", "the repository (layout) base, e.g. .../maven2"),
        Endpoint("index_url", "the Maven Indexer index published beside it (<repository>/.index)"),
    ),
    build_indexer=_indexer,
    mirror_endpoint="repository_url",
    mirror=_mirror,
    fake=_fake,
    install_hint=_install_hint,
    lockfiles=(GRADLE_LOCKFILE, DEPENDENCY_LIST),
    qualifiers=("classifier", "type"),
    qualifier_defaults={"type": "jar"},
    file_matches=typed_file,
    is_development=is_snapshot,
)

__all__ = ["ECOSYSTEM", "MavenCursor", "MavenIndexer"]
