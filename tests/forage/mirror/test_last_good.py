"""The last good listing of every ecosystem (issue 16, criteria 1 and 2), against each fake.

Parametrized over :data:`indexers.ECOSYSTEMS`, like ``tests/ecosystems/test_conformance.py``:

- nothing primed, a listing and two files pass through a healthy upstream; the registry then
  withdraws one release (recorded by the next import) and publishes a version whose file
  nobody fetched, the listing is read once more, and the upstream goes down: the listing
  served is that last good document -- the archived release's entry exactly as served while
  the upstream was healthy, the never-fetched version and the withdrawn release not offered
  -- and the archived file's bytes are the same;
- an archived file whose release the upstream's listing no longer offers (and the index has
  not heard of) is served marked ``archive-removed``, the file itself never asked for;
- an archived file requested while the upstream is failing does not wait for the listing:
  it carries the failure already seen, the listing is read again in the background.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexers import ECOSYSTEMS, Ecosystem, FakeRegistry
from indexers.fakeserver import RunningServer, start_fake
from indexers.pypi.pages import SIMPLE_JSON
from tests.forage.mirror.conftest import Forage, forage_mirror

#: A third version each fake accepts, published after the listing was first read.
NEWER = {"cargo": "0.3.0", "golang": "v1.2.0"}


def _newer(ecosystem: Ecosystem) -> str:
    return NEWER.get(ecosystem.name, "1.2.0")


def _headers(ecosystem: Ecosystem) -> dict[str, str]:
    return {"accept": SIMPLE_JSON} if ecosystem.name == "pypi" else {}


def entries(ecosystem: Ecosystem, name: str, body: bytes, files: dict[str, str]) -> dict[str, Any]:
    """What a listing offers for each version of ``files`` (version: the file fetched or
    published for it) that it names, in the registry's own terms (a cargo line marked yanked
    still names its version; a PyPI release is the entry of that one file)."""
    versions = tuple(files)
    text = body.decode()
    kind = ecosystem.name
    if kind == "npm":
        found: dict[str, Any] = json.loads(text)["versions"]
    elif kind == "pypi":  # core metadata is advertised only once its sidecar is archived too
        listed = [
            {k: value for k, value in f.items() if k != "core-metadata"}
            for f in json.loads(text)["files"]
        ]
        found = {
            v: [json.dumps(f, sort_keys=True) for f in listed if f["filename"] == files[v]]
            for v in versions
        }
    elif kind == "cargo":
        found = {line["vers"]: line for line in map(json.loads, text.splitlines())}
    elif kind == "gem":
        lines = text.split("---\n", 1)[-1].splitlines()
        found = {line.split(" ", 1)[0]: line for line in lines}
    elif kind == "composer":
        found = {e["version"]: e for e in json.loads(text)["packages"][name]}
    elif kind == "maven":
        found = {v: v for v in versions if f"<version>{v}</version>" in text}
    else:
        found = {v: v for v in text.split()}
    return {v: found[v] for v in versions if found.get(v)}


def offered(ecosystem: Ecosystem, listing: dict[str, Any], version: str) -> bool:
    """Whether ``listing`` offers ``version`` to a new resolution."""
    entry = listing.get(version)
    return entry is not None and not (ecosystem.name == "cargo" and entry.get("yanked"))


def _paths(ecosystem: Ecosystem, fake: FakeRegistry, name: str, version: str) -> tuple[str, bytes]:
    filename, data = fake.release_file(name, version)
    digests = {a: hashlib.new(a, data).hexdigest() for a in ("sha256", "sha1", "sha512")}
    return ecosystem.mirror().file_path(name, version, filename, digests), data


@pytest.fixture
def fake(ecosystem: Ecosystem) -> FakeRegistry:
    return ecosystem.fake()


@pytest.fixture
async def upstream(fake: FakeRegistry) -> AsyncIterator[RunningServer]:
    running = await start_fake(fake.make_app())
    yield running
    await running.close()


@pytest.fixture
async def forage(
    ecosystem: Ecosystem, fake: FakeRegistry, upstream: RunningServer, tmp_path: Path, db_url: str
) -> AsyncIterator[Forage]:
    endpoints = {ecosystem.name: fake.config_endpoints(upstream.url)}
    async with forage_mirror(tmp_path, db_url, registries=endpoints) as running:
        yield running


async def _pass_through(
    ecosystem: Ecosystem, fake: FakeRegistry, forage: Forage, client: httpx.AsyncClient
) -> str:
    """Publish two releases and fetch the listing and both files through the mirror."""
    name = fake.NAME_EXAMPLES[0][1]
    for version in fake.SAMPLE_VERSIONS:
        fake.publish_release(name, version)
    listing = await client.get(
        forage.url + ecosystem.mirror().listing_path(name), headers=_headers(ecosystem)
    )
    assert (listing.status_code, listing.headers["Forage-Source"]) == (200, "upstream")
    for version in fake.SAMPLE_VERSIONS:
        path, data = _paths(ecosystem, fake, name, version)
        served = await client.get(forage.url + path)
        assert served.status_code == 200, served.text[:300]
        assert (served.content, served.headers["Forage-Source"]) == (data, "upstream")
    await forage.mirror.registries[ecosystem.name].settle()
    return name


@pytest.mark.parametrize("ecosystem", list(ECOSYSTEMS.values()), ids=list(ECOSYSTEMS))
async def test_an_outage_serves_the_last_good_listing_filtered_by_the_archive(
    ecosystem: Ecosystem, fake: FakeRegistry, upstream: RunningServer, forage: Forage
) -> None:
    kept, withdrawn = fake.SAMPLE_VERSIONS
    newer = _newer(ecosystem)
    async with httpx.AsyncClient() as client:
        name = await _pass_through(ecosystem, fake, forage, client)
        every = {v: fake.release_file(name, v)[0] for v in (kept, withdrawn)}
        fake.withdraw_release(name, withdrawn)
        await forage.ingest(ecosystem.name, name)  # the index records the withdrawal
        fake.publish_release(name, newer)  # its file is never fetched
        every[newer] = fake.release_file(name, newer)[0]
        listing = forage.url + ecosystem.mirror().listing_path(name)
        healthy = await client.get(listing, headers=_headers(ecosystem))
        assert healthy.headers["Forage-Source"] == "upstream"
        before = entries(ecosystem, name, healthy.content, every)
        assert offered(ecosystem, before, newer)
        await forage.mirror.registries[ecosystem.name].settle()  # the document is kept

        await upstream.close()
        down = await client.get(listing, headers=_headers(ecosystem))
        assert down.status_code == 200, down.text[:300]
        assert down.headers["Forage-Source"] == "archive"
        after = entries(ecosystem, name, down.content, every)
        assert after[kept] == before[kept]  # the upstream's own entry, as served healthy
        assert not offered(ecosystem, after, newer)
        assert not offered(ecosystem, after, withdrawn)
        path, data = _paths(ecosystem, fake, name, kept)
        served = await client.get(forage.url + path)
        assert (served.content, served.headers["Forage-Source"]) == (data, "archive")
        # The same bytes again: a digest file or a client's checksum sees one document.
        assert (await client.get(listing, headers=_headers(ecosystem))).content == down.content


#: Ecosystems whose listing stops offering a withdrawn release (cargo's marks it yanked and
#: Go's proxy keeps serving a retracted version: both still offer the file).
DROPPING = [ECOSYSTEMS[e] for e in ("npm", "pypi", "gem", "composer", "maven")]


@pytest.mark.parametrize("ecosystem", DROPPING, ids=[e.name for e in DROPPING])
async def test_a_file_the_upstream_listing_dropped_is_served_marked_removed(
    ecosystem: Ecosystem, fake: FakeRegistry, forage: Forage
) -> None:
    kept, withdrawn = fake.SAMPLE_VERSIONS
    async with httpx.AsyncClient() as client:
        name = await _pass_through(ecosystem, fake, forage, client)
        path, data = _paths(ecosystem, fake, name, withdrawn)
        fake.withdraw_release(name, withdrawn)  # the index has not heard of it
        removed = await client.get(forage.url + path)
        assert (removed.content, removed.headers["Forage-Source"]) == (data, "archive-removed")
        path, data = _paths(ecosystem, fake, name, kept)
        served = await client.get(forage.url + path)
        assert (served.content, served.headers["Forage-Source"]) == (data, "archive")


@pytest.mark.parametrize("ecosystem", [ECOSYSTEMS["npm"]], ids=["npm"])
async def test_an_archived_file_does_not_wait_on_a_failing_upstream_for_the_listing(
    ecosystem: Ecosystem, fake: Any, tmp_path: Path, db_url: str, upstream: RunningServer
) -> None:
    """The first failure is seen by the request that met it; the next request for an
    archived file is answered with that failure, not with the stall the listing meets."""
    endpoints = {ecosystem.name: fake.config_endpoints(upstream.url)}
    settings = {"first_byte_timeout": 1.0, "deadline": 1.0}
    async with (
        forage_mirror(tmp_path, db_url, registries=endpoints, mirror=settings) as forage,
        httpx.AsyncClient(timeout=10) as client,
    ):
        name = await _pass_through(ecosystem, fake, forage, client)
        path, data = _paths(ecosystem, fake, name, fake.SAMPLE_VERSIONS[0])
        fake.faults.fail(503, times=1)
        first = await client.get(forage.url + path)
        assert first.headers["Forage-Upstream-Error"] == "status: HTTP 503"
        fake.faults.slow(2.0, times=1)  # the listing would now time out
        second = await client.get(forage.url + path)
        assert (second.content, second.headers["Forage-Source"]) == (data, "archive")
        assert second.headers["Forage-Upstream-Error"] == "status: HTTP 503"
        await forage.mirror.registries[ecosystem.name].settle()  # the listing read again
        assert fake.faults.pending == 0
        third = await client.get(forage.url + path)
        assert third.headers["Forage-Upstream-Error"].startswith("timeout")


@pytest.mark.parametrize("ecosystem", [ECOSYSTEMS["golang"]], ids=["golang"])
async def test_an_archived_go_version_serves_info_and_mod_without_the_proxy(
    ecosystem: Ecosystem, fake: Any, forage: Forage, upstream: RunningServer
) -> None:
    """``.info`` and ``.mod`` never change once the zip is verified (the go.mod is covered by
    go.sum and the checksum database): the proxy is not asked for them, and in an outage the
    ``.info`` is still the proxy's own."""
    version = fake.SAMPLE_VERSIONS[0]
    name = fake.NAME_EXAMPLES[0][1]
    fake.publish_release(name, version)
    base = forage.url + ecosystem.mirror().file_path(name, version, "", {}).removesuffix(".zip")
    async with httpx.AsyncClient() as client:
        info = await client.get(base + ".info")  # what the go command asks first
        mod = await client.get(base + ".mod")
        assert (info.headers["Forage-Source"], mod.headers["Forage-Source"]) == ("upstream",) * 2
        zipped = await client.get(base + ".zip")
        assert zipped.headers["Forage-Source"] == "upstream"
        await forage.mirror.registries[ecosystem.name].settle()
        fake.requests.clear()
        for suffix, expected in ((".info", info.content), (".mod", mod.content)):
            local = await client.get(base + suffix)
            assert (local.content, local.headers["Forage-Source"]) == (expected, "archive")
        assert not [p for p in fake.requests.paths() if p.endswith((".info", ".mod"))]
        await upstream.close()
        down = await client.get(base + ".info")
        assert (down.content, down.headers["Forage-Source"]) == (info.content, "archive")
