"""Fixtures for indexer tests: loopback fake registries (``http_client`` is project-wide).

Each registry section is appended by the engineer who owns that registry's fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from indexers.fakeserver import RunningServer, serve
from indexers.npm.fake import FakeNpmRegistry
from indexers.pypi.fake import FakePyPI

# -- npm ---------------------------------------------------------------------------------------


@pytest.fixture
def npm_registry() -> FakeNpmRegistry:
    return FakeNpmRegistry()


@pytest.fixture
async def npm_server(npm_registry: FakeNpmRegistry) -> AsyncIterator[RunningServer]:
    async with serve(npm_registry.make_app()) as running:
        yield running


# -- PyPI --------------------------------------------------------------------------------------


@pytest.fixture
def pypi() -> FakePyPI:
    return FakePyPI()


@pytest.fixture
async def pypi_server(pypi: FakePyPI) -> AsyncIterator[RunningServer]:
    async with serve(pypi.make_app()) as running:
        yield running
