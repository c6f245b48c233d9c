"""PyPI: the XML-RPC changelog, the Simple Repository API and their mirror.

Everything PyPI-specific lives in this package: the feed and PEP 691 mapping
(:mod:`.indexer`, PEP 503 name normalization), the simple pages and files served under
``/pypi/`` (:mod:`.mirror`), pinned ``requirements.txt``, ``poetry.lock``, ``uv.lock`` and
``Pipfile.lock`` (:mod:`.lockfiles`) and the loopback fake of the simple, JSON and XML-RPC
APIs (:mod:`.fake`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from indexers.ecosystem import Ecosystem, Endpoint
from indexers.pypi.indexer import PyPICursor, PyPIIndexer, normalize
from indexers.pypi.lockfiles import PIPFILE_LOCK, POETRY_LOCK, REQUIREMENTS, UV_LOCK

if TYPE_CHECKING:
    from indexers.ecosystem import FakeRegistry
    from indexers.mirror.registry import EcosystemRoutes


def _indexer(client: httpx.AsyncClient, endpoints: Mapping[str, str]) -> PyPIIndexer:
    return PyPIIndexer(
        client, xmlrpc_url=endpoints["xmlrpc_url"], simple_url=endpoints["index_url"]
    )


def _mirror() -> type[EcosystemRoutes]:
    from indexers.pypi.mirror import PyPIRoutes

    return PyPIRoutes


def _fake() -> FakeRegistry:
    from indexers.pypi.fake import FakePyPI

    return FakePyPI()


def _install_hint(base_url: str, name: str, version: str) -> str:
    spec = shlex.quote(f"{name}=={version}")
    return f"pip install --index-url {base_url}/pypi/simple/ {spec}"


ECOSYSTEM = Ecosystem(
    name="pypi",
    title="PyPI",
    aliases=(),
    indexer=PyPIIndexer,
    endpoints=(
        Endpoint("index_url", "the simple API base (PEP 503/691)"),
        Endpoint("json_url", "the JSON API base (<json_url>/<project>/json)"),
        Endpoint("xmlrpc_url", "the XML-RPC endpoint whose changelog_since_serial is the feed"),
    ),
    build_indexer=_indexer,
    mirror_endpoint="index_url",
    mirror=_mirror,
    fake=_fake,
    install_hint=_install_hint,
    lockfiles=(REQUIREMENTS, POETRY_LOCK, UV_LOCK, PIPFILE_LOCK),
)

__all__ = ["ECOSYSTEM", "PyPICursor", "PyPIIndexer", "normalize"]
