"""crates.io: the recent-updates listing as change signal, the sparse index and its mirror.

Everything crates.io-specific lives in this package: the change signal and the index-file
mapping (:mod:`.indexer`, whose docstring says why the listing and what else was weighed),
the sparse index's rules for names, paths, lines and download URLs (:mod:`.sparse`), the
sparse registry protocol served under ``/cargo/`` (:mod:`.mirror`), ``Cargo.lock``
(:mod:`.lockfiles`) and the loopback fake of the index, the listing and downloads
(:mod:`.fake`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from indexers.cargo.indexer import CargoCursor, CargoIndexer
from indexers.cargo.lockfiles import CARGO_LOCK
from indexers.ecosystem import Ecosystem, Endpoint

if TYPE_CHECKING:
    from indexers.ecosystem import FakeRegistry
    from indexers.mirror.registry import EcosystemRoutes


def _indexer(client: httpx.AsyncClient, endpoints: Mapping[str, str]) -> CargoIndexer:
    return CargoIndexer(client, index_url=endpoints["index_url"], api_url=endpoints["api_url"])


def _mirror() -> type[EcosystemRoutes]:
    from indexers.cargo.mirror import CargoRoutes

    return CargoRoutes


def _fake() -> FakeRegistry:
    from indexers.cargo.fake import FakeCratesIo

    return FakeCratesIo()


def _install_hint(base_url: str, name: str, version: str) -> str:
    """``cargo add`` with crates.io replaced by the mirror's sparse index (README)."""
    return (
        "cargo --config 'source.crates-io.replace-with=\"forage\"'"
        f" --config 'source.forage.registry=\"sparse+{base_url}/cargo/index/\"'"
        f" add {shlex.quote(f'{name}@={version}')}"
    )


ECOSYSTEM = Ecosystem(
    name="cargo",
    title="crates.io",
    aliases=("crates", "crates.io", "crates-io"),
    indexer=CargoIndexer,
    endpoints=(
        Endpoint("index_url", "the sparse index root, with config.json (index.crates.io)"),
        Endpoint("api_url", "the web API origin whose crate listing is the change signal"),
    ),
    build_indexer=_indexer,
    mirror_endpoint="index_url",
    mirror=_mirror,
    fake=_fake,
    install_hint=_install_hint,
    lockfiles=(CARGO_LOCK,),
)

__all__ = ["ECOSYSTEM", "CargoCursor", "CargoIndexer"]
