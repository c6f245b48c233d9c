"""Go modules: the module index, the GOPROXY protocol, the checksum database and the mirror.

Everything Go-specific lives in this package: the index feed and module mapping
(:mod:`.indexer`), module paths, versions and the ``h1:`` zip hash (:mod:`.gomod`), the
GOPROXY protocol served under ``/go/`` (:mod:`.mirror`), the checksum database's notes, log and
tiles (:mod:`.sumdb`) and its proxy under ``/go/sumdb/`` (:mod:`.checksums`), ``go.sum``
(:mod:`.lockfiles`) and the loopback fake of the index, proxy and checksum database
(:mod:`.fake`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING

import httpx

from indexers.ecosystem import Ecosystem, Endpoint
from indexers.golang.gomod import verify_go_zip
from indexers.golang.indexer import GoCursor, GoIndexer
from indexers.golang.lockfiles import GO_SUM

if TYPE_CHECKING:
    from indexers.ecosystem import FakeRegistry
    from indexers.mirror.registry import EcosystemRoutes


def _indexer(client: httpx.AsyncClient, endpoints: Mapping[str, str]) -> GoIndexer:
    return GoIndexer(
        client,
        index_url=endpoints["index_url"],
        proxy_url=endpoints["proxy_url"],
        sumdb_url=endpoints.get("sumdb_url"),
    )


def _mirror() -> type[EcosystemRoutes]:
    from indexers.golang.mirror import GoRoutes

    return GoRoutes


def _fake() -> FakeRegistry:
    from indexers.golang.fake import GoFake

    return GoFake()


def _check_h1(reader: IO[bytes], expected: str, url: str) -> str:
    return verify_go_zip(reader, expected, url=url)


def _install_hint(base_url: str, name: str, version: str) -> str:
    return f"GOPROXY={base_url}/go go get {shlex.quote(f'{name}@{version}')}"


def _version_hint(version: str) -> str | None:
    if version[:1].isdigit():
        return f"Go module versions start with v: did you mean v{version}?"
    return None


ECOSYSTEM = Ecosystem(
    name="golang",
    title="Go modules",
    aliases=("go",),
    indexer=GoIndexer,
    endpoints=(
        Endpoint("index_url", "the module index feed"),
        Endpoint("proxy_url", "a GOPROXY"),
        Endpoint("sumdb_url", "the checksum database"),
    ),
    build_indexer=_indexer,
    mirror_endpoint="proxy_url",
    mirror=_mirror,
    fake=_fake,
    install_hint=_install_hint,
    lockfiles=(GO_SUM,),
    file_checks={"h1": _check_h1},
    unlisted_versions=True,
    version_hint=_version_hint,
)

__all__ = ["ECOSYSTEM", "GoCursor", "GoIndexer"]
