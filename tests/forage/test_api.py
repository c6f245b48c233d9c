"""The JSON API through a real aiohttp server on loopback, on SQLite and PostgreSQL.

What is shown: batch lookups answer every key in order (found with files, CIDs, pins, pieces
and deals; unknown keys queued once; malformed keys as their own entries), by POST and GET
alike; lockfiles and SBOMs are answered per dependency; the legacy ``{key: cid}`` reply; the
reverse lookup by CID (CIDv0 too); package and version pages of the API; stats; the import
endpoint requires the configured bearer token; batches above the key limit and bodies above
the size limit are refused with 413 naming the limit; hostile input gets a 4xx, never a 500;
on SQLite a lookup does not wait for a writer holding the database lock; versions' stored
answers are sent byte for byte as first computed, until the version changes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from multiformats import CID
from sqlalchemy.orm import Session, sessionmaker

from forage.archive.blocks import open_blockstore
from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import Artifact, JobRecord, PinStatus, VersionAnswer
from forage.server.app import make_app
from tests.factories import (
    artifact_content,
    make_archive,
    make_artifact,
    make_deal,
    make_package,
    make_piece,
    make_pin,
    make_version,
    raw_cid,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "lockfiles"
TOKEN = "correct horse battery staple"


def api_config(url: str, tmp_path: Path, **overrides: str) -> Config:
    """A configuration on ``url`` with npm and PyPI configured (never contacted here)."""
    env = {
        "FORAGE_DATA_DIR": str(tmp_path / "data"),
        "FORAGE_DATABASE_URL": url,
        "FORAGE_REGISTRIES_NPM_REGISTRY_URL": "http://127.0.0.1:9/npm",
        "FORAGE_REGISTRIES_NPM_REPLICATE_URL": "http://127.0.0.1:9/replicate",
        "FORAGE_REGISTRIES_NPM_ALLOW_HTTP": "true",
        "FORAGE_REGISTRIES_PYPI_INDEX_URL": "http://127.0.0.1:9/simple",
        "FORAGE_REGISTRIES_PYPI_JSON_URL": "http://127.0.0.1:9/pypi",
        "FORAGE_REGISTRIES_PYPI_XMLRPC_URL": "http://127.0.0.1:9/pypi/xmlrpc",
        "FORAGE_REGISTRIES_PYPI_ALLOW_HTTP": "true",
        **overrides,
    }
    return load_config(environ=env)


@dataclass
class Api:
    client: TestClient[Any, Any]
    sessions: sessionmaker[Session]
    rows: dict[str, Any]

    async def json(self, method: str, path: str, *, status: int = 200, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        body = await response.text()
        assert response.status == status, body
        assert response.content_type == "application/json"
        return json.loads(body)

    def jobs(self) -> list[Any]:
        with self.sessions() as session:
            return session.execute(
                sa.select(JobRecord.id, JobRecord.payload).order_by(JobRecord.id)
            ).all()


def seed(session: Session) -> dict[str, Any]:
    """A small index: pypi/django 5.0 (sdist archived, pinned, in a piece with a live deal),
    npm/@scope/pkg 2.0.0 archived, npm/left-pad known at 1.0.0 only."""
    django = make_package(session, ecosystem="pypi", name="django", display_name="Django")
    version = make_version(session, package=django, number="5.0")
    sdist = make_artifact(session, version=version, filename="Django-5.0.tar.gz", kind="sdist")
    archive = make_archive(session, artifact=sdist)
    make_pin(session, archive=archive)
    piece = make_piece(session, archives=[archive])
    make_deal(session, piece=piece, deal_id="9001", provider="f09", end_epoch=99_000_000)
    scoped = make_version(session, package=make_package(session, name="@scope/pkg"), number="2.0.0")
    tarball = make_artifact(session, version=scoped, filename="pkg-2.0.0.tgz", kind="tarball")
    make_archive(session, artifact=tarball)
    make_version(session, package=make_package(session, name="left-pad"), number="1.0.0")
    return {"sdist": sdist, "tarball": tarball}


@pytest.fixture
def sessions(migrated_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


async def start(
    url: str, tmp_path: Path, sessions: sessionmaker[Session], **overrides: str
) -> AsyncIterator[Api]:
    with sessions.begin() as session:
        rows = seed(session)
    config = api_config(url, tmp_path, **overrides)
    app = make_app(config, sessionmaker=sessions, blockstore=open_blockstore(config))
    async with TestClient(TestServer(app)) as client:
        yield Api(client, sessions, rows)


@pytest.fixture
async def api(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> AsyncIterator[Api]:
    async for value in start(migrated_url, tmp_path, sessions, FORAGE_API_TOKEN=TOKEN):
        yield value


KEYS = [
    "pkg:pypi/Django@5.0",
    "npm:@scope/pkg:2.0.0",
    "npm:left-pad:1.1.0",
    "pkg:npm/left-pad@1.2.0",
    "not a key",
    "pkg:nuget/Newtonsoft.Json@13.0.1",
]


async def test_batch_lookup_answers_every_key_in_order(api: Api) -> None:
    body = await api.json("POST", "/api/v1/lookup", json={"keys": KEYS})
    results = body["results"]
    assert [r["key"] for r in results] == KEYS
    assert [r["status"] for r in results] == [
        "found",
        "found",
        "queued",
        "queued",
        "invalid",
        "not_found",
    ]
    assert body["summary"] == {"found": 2, "queued": 2, "not_found": 1, "invalid": 1}
    (sdist,) = results[0]["artifacts"]
    assert sdist["cid"] == raw_cid(artifact_content(api.rows["sdist"]))
    assert sdist["pins"][0]["status"] == "pinned"
    deal = sdist["pieces"][0]["deals"][0]
    assert (deal["deal_id"], deal["provider"]) == ("9001", "f09")
    assert deal["expires_at"].startswith("2114-")
    assert results[1]["purl"] == "pkg:npm/%40scope/pkg@2.0.0"
    # Two versions of one unknown npm package: one import job, queued once.
    assert results[2]["job_id"] == results[3]["job_id"]
    assert [job.payload["name"] for job in api.jobs()] == ["left-pad"]
    assert results[5]["reason"] == "Forage does not index nuget packages"


async def test_get_answers_like_post_and_a_second_ask_queues_nothing(api: Api) -> None:
    posted = await api.json("POST", "/api/v1/lookup", json={"keys": KEYS[:4]})
    query = ",".join(KEYS[:2]) + "&keys=" + ",".join(KEYS[2:4])
    fetched = await api.json("GET", f"/api/v1/lookup?keys={query}")
    assert fetched == posted
    assert len(api.jobs()) == 1


async def test_lockfiles_and_sboms_are_answered_per_dependency(api: Api) -> None:
    lock = await api.json(
        "POST", "/api/v1/lookup/lockfile", data=(DATA / "package-lock.json").read_bytes()
    )
    sources = [d["source"] for d in lock["dependencies"]]
    assert "node_modules/@babel/core/node_modules/debug" in sources
    skipped = [d for d in lock["dependencies"] if d["status"] == "skipped"]
    assert [d["source"] for d in skipped] == ["node_modules/from-git"]
    assert lock["summary"]["skipped"] == 1
    assert lock["summary"]["queued"] == len(sources) - 1

    reqs = await api.json(
        "POST",
        "/api/v1/lookup/lockfile?filename=requirements.txt",
        data=(DATA / "requirements.txt").read_bytes(),
    )
    by_name = {d.get("name"): d for d in reqs["dependencies"]}
    assert by_name["django"]["status"] == "queued"  # 5.0.1 is not in the index
    assert by_name["zope-interface"]["purl"] == "pkg:pypi/zope-interface@6.1"  # PEP 503
    assert reqs["summary"]["skipped"] == 2

    gosum = await api.json(
        "POST", "/api/v1/lookup/lockfile?filename=go.sum", data=(DATA / "go.sum").read_bytes()
    )
    assert [(d["name"], d["status"]) for d in gosum["dependencies"]] == [
        ("github.com/BurntSushi/toml", "not_found"),
        ("github.com/pkg/errors", "not_found"),
    ]
    assert "golang registry is not configured" in gosum["dependencies"][0]["reason"]

    bom = await api.json(
        "POST", "/api/v1/lookup/lockfile", data=(DATA / "bom.cdx.json").read_bytes()
    )
    assert bom["summary"] == {
        "found": 0,
        "queued": 3,
        "not_found": 0,
        "invalid": 0,
        "skipped": 1,
        "integrity_mismatch": 0,
    }


async def test_legacy_lookup_keeps_the_original_reply(api: Api) -> None:
    cid = raw_cid(artifact_content(api.rows["sdist"]))
    expected = {"pypi:Django:5.0": cid, "npm:left-pad:9.0.0": None, "bogus": None}
    got = await api.json("GET", "/packages/lookup?keys=pypi:Django:5.0,npm:left-pad:9.0.0,bogus")
    assert got == expected
    form = await api.json(
        "POST", "/packages/lookup", data={"keys": "pypi:Django:5.0,npm:left-pad:9.0.0,bogus"}
    )
    assert form == expected
    posted = await api.json("POST", "/packages/lookup", json={"keys": list(expected)})
    assert posted == expected
    assert len(api.jobs()) == 1  # left-pad, queued once for all three asks


async def test_reverse_lookup_by_cid_in_any_spelling(api: Api) -> None:
    cid = raw_cid(artifact_content(api.rows["tarball"]))
    body = await api.json("GET", f"/api/v1/cids/{cid}")
    assert body["cid"] == cid
    assert [(a["purl"], a["artifact"]["filename"]) for a in body["artifacts"]] == [
        ("pkg:npm/%40scope/pkg@2.0.0", "pkg-2.0.0.tgz")
    ]
    base58 = CID.decode(cid).set(base="base58btc")
    assert (await api.json("GET", f"/api/v1/cids/{base58}"))["cid"] == cid
    v0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
    missing = await api.json("GET", f"/api/v1/cids/{v0}", status=404)
    assert (
        "bafybeie5nqv6kd3qnfjupgvz34woh3oksc3iau6abmyajn7qvtf6d2ho34"
        in (missing["error"]["message"])
    )
    bad = await api.json("GET", "/api/v1/cids/not-a-cid", status=400)
    assert bad["error"]["message"].startswith("not a CID")


async def test_package_and_version_endpoints(api: Api) -> None:
    package = await api.json("GET", "/api/v1/packages/pypi/Django")
    assert (package["name"], package["display_name"]) == ("django", "Django")
    assert [(v["version"], v["artifacts"], v["archived"]) for v in package["versions"]] == [
        ("5.0", 1, 1)
    ]
    scoped = await api.json("GET", "/api/v1/packages/npm/@scope/pkg/versions/2.0.0")
    assert scoped["status"] == "found"
    assert scoped["artifacts"][0]["filename"] == "pkg-2.0.0.tgz"
    await api.json("GET", "/api/v1/packages/npm/@scope/pkg/versions/9.9.9", status=404)
    await api.json("GET", "/api/v1/packages/npm/nothing-here", status=404)
    unknown = await api.json("GET", "/api/v1/packages/hackage/text", status=404)
    assert "unknown ecosystem 'hackage'" in unknown["error"]["message"]
    bad = await api.json("GET", "/api/v1/packages/pypi/-bad-name-", status=400)
    assert "PEP 508" in bad["error"]["message"]
    assert api.jobs() == []  # reads never queue imports


async def test_stats_report_the_archive(api: Api) -> None:
    stats = await api.json("GET", "/api/v1/stats")
    assert (stats["packages"], stats["versions"], stats["artifacts"]) == (3, 3, 2)
    assert stats["packages_by_ecosystem"] == {"npm": 2, "pypi": 1}
    assert stats["archives"]["archived"] == 2
    assert stats["pins"]["pinned"] == 1
    assert stats["deals"]["active"] == 1


async def test_import_requires_the_configured_token(api: Api) -> None:
    body = {"key": "pkg:npm/left-pad"}
    response = await api.client.post("/api/v1/import", json=body)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="forage"'
    wrong = await api.client.post(
        "/api/v1/import", json=body, headers={"Authorization": "Bearer guess"}
    )
    assert wrong.status == 401
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert api.jobs() == []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = await api.json("POST", "/api/v1/import", json=body, headers=auth, status=202)
    again = await api.json(
        "POST",
        "/api/v1/import",
        json={"ecosystem": "Npm", "name": "left-pad"},
        headers=auth,
        status=202,
    )
    assert first["job_id"] == again["job_id"]
    assert [job.payload for job in api.jobs()] == [{"ecosystem": "npm", "name": "left-pad"}]
    # A name as long as a key may be still queues (its dedup key is then a digest).
    long = {"ecosystem": "pypi", "name": "a" * 1000}
    await api.json("POST", "/api/v1/import", json=long, headers=auth, status=202)
    longer = {"ecosystem": "pypi", "name": "a" * 5000}
    await api.json("POST", "/api/v1/import", json=longer, headers=auth, status=400)
    unconfigured = await api.json(
        "POST", "/api/v1/import", json={"key": "go:golang.org/x/text"}, headers=auth, status=409
    )
    assert "golang registry is not configured" in unconfigured["error"]["message"]


async def test_without_a_configured_token_writes_are_refused(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    async for api in start(migrated_url, tmp_path, sessions):
        body = await api.json(
            "POST",
            "/api/v1/import",
            json={"key": "pkg:npm/x"},
            headers={"Authorization": "Bearer anything"},
            status=403,
        )
        assert "writes are disabled" in body["error"]["message"]
        assert api.jobs() == []


async def test_key_count_and_body_size_are_bounded(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    env = {"FORAGE_SERVER_MAX_KEYS": "3", "FORAGE_SERVER_MAX_BODY_SIZE": "4096"}
    async for api in start(migrated_url, tmp_path, sessions, **env):
        keys = [f"npm:k{i}:1.0.0" for i in range(4)]
        over = await api.json("POST", "/api/v1/lookup", json={"keys": keys}, status=413)
        assert over["error"]["message"] == (
            "too many keys: at most 3 per request, got 4; split the batch"
        )
        await api.json("GET", "/api/v1/lookup?keys=" + ",".join(keys), status=413)
        await api.json("GET", "/packages/lookup?keys=" + ",".join(keys), status=413)
        lock = await api.json(
            "POST",
            "/api/v1/lookup/lockfile",
            data=(DATA / "requirements.txt").read_bytes(),
            status=413,
        )  # four pinned requirements
        assert "too many dependencies: at most 3 per request, got 4" in lock["error"]["message"]
        huge = await api.json("POST", "/api/v1/lookup", data=b"[" * 5000, status=413)
        assert "4096" in huge["error"]["message"]
        assert api.jobs() == []


async def test_ten_thousand_keys_are_answered_and_one_more_is_refused(api: Api) -> None:
    keys = ["pkg:pypi/django@5.0"] + [f"npm:@scope/pkg:0.0.{i}" for i in range(9_999)]
    body = await api.json("POST", "/api/v1/lookup", json={"keys": keys})
    assert body["summary"]["found"] == 1 and body["summary"]["queued"] == 9_999
    assert len(api.jobs()) == 1  # one package: one import
    over = await api.json("POST", "/api/v1/lookup", json={"keys": [*keys, "x"]}, status=413)
    assert "at most 10000 per request, got 10001" in over["error"]["message"]


HOSTILE: list[tuple[str, str, Any, int]] = [
    ("POST", "/api/v1/lookup", b"", 400),
    ("POST", "/api/v1/lookup", b"{not json", 400),
    ("POST", "/api/v1/lookup", b"\xff\xfe\x00garbage", 400),
    ("POST", "/api/v1/lookup", b"[" * 3000 + b"]" * 3000, 400),
    ("POST", "/api/v1/lookup", b'["a", "b"]', 400),
    ("POST", "/api/v1/lookup", b'{"keys": "npm:a:1"}', 400),
    ("POST", "/api/v1/lookup", b'{"keys": [null, {}, [], 1e999, "\\u0000"]}', 200),
    ("POST", "/api/v1/lookup", b'{"keys": ["pkg:pypi/' + b"a" * 1000 + b'@1"]}', 200),
    ("GET", "/api/v1/lookup", None, 400),
    ("GET", "/api/v1/lookup?keys=%ff%fe,,", None, 200),
    ("GET", "/api/v1/lookup?keys=" + "x" * 5000, None, 200),
    ("POST", "/api/v1/lookup/lockfile", b"", 400),
    ("POST", "/api/v1/lookup/lockfile", b"\xff\xfe\xfd", 400),
    ("POST", "/api/v1/lookup/lockfile", b'{"lockfileVersion": 3}', 400),
    ("POST", "/api/v1/lookup/lockfile", b'{"lockfileVersion": 3, "packages": ' * 2000, 400),
    ("POST", "/api/v1/lookup/lockfile", b"[1, 2]", 400),
    ("GET", "/packages/lookup", None, 400),
    ("POST", "/packages/lookup", b"keys=", 400),
    ("GET", "/api/v1/cids/%00", None, 400),
    ("GET", "/api/v1/cids/" + "b" * 2000, None, 400),
    ("GET", "/api/v1/packages/npm/..%2F..%2Fetc", None, 400),
    ("GET", "/api/v1/packages/golang/%00", None, 400),
    ("GET", "/api/v1/packages/npm/x/versions/" + "9" * 3000, None, 400),
    ("DELETE", "/api/v1/lookup", None, 405),
    ("POST", "/api/v1/import", b"{}", 401),
]


async def test_hostile_input_gets_a_client_error_never_a_500(api: Api) -> None:
    for method, path, body, status in HOSTILE:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        response = await api.client.request(method, path, data=body, headers=headers)
        text = await response.text()
        assert (method, path[:60], response.status) == (method, path[:60], status), text
        assert response.content_type == "application/json"
        if status >= 400:
            assert json.loads(text)["error"]["status"] == status


async def test_a_lookup_does_not_wait_for_a_writer_on_sqlite(
    store: str, migrated_url: str, api: Api
) -> None:
    if store != "sqlite":
        pytest.skip("PostgreSQL readers never wait for writers")
    path = migrated_url.removeprefix("sqlite:///")
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # the job queue's writers take this lock
        started = time.monotonic()
        body = await api.json("POST", "/api/v1/lookup", json={"keys": KEYS[:2]})
        assert body["summary"]["found"] == 2
        assert time.monotonic() - started < 2.0  # a writer's lookup would wait 5 s, then fail
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def _stored_answers(api: Api, count: int) -> None:
    """Until the server's answer writer has stored ``count`` answers (it runs off the
    request's path)."""
    deadline = time.monotonic() + 10
    while True:
        with api.sessions() as session:
            stored = session.execute(
                sa.select(sa.func.count()).where(VersionAnswer.body.is_not(None))
            ).scalar_one()
        if stored >= count:
            return
        assert time.monotonic() < deadline, f"{stored} of {count} answers stored"
        await asyncio.sleep(0.05)


async def test_stored_answers_are_sent_byte_for_byte_until_the_version_changes(
    api: Api,
) -> None:
    keys = {"keys": KEYS[:2]}
    first = await api.client.post("/api/v1/lookup", json=keys)
    sent = await first.read()
    await _stored_answers(api, 2)
    again = await api.client.post("/api/v1/lookup", json=keys)
    # Spliced from the stored answers: the very bytes computed the first time.
    assert await again.read() == sent
    with api.sessions.begin() as session:
        sdist = session.get(Artifact, api.rows["sdist"].id)
        assert sdist is not None and sdist.archive is not None
        sdist.version.yanked = True
        sdist.archive.pins[0].status = PinStatus.FAILED
    body = await api.json("POST", "/api/v1/lookup", json=keys)
    django, scoped = body["results"]
    assert django["yanked"] is True
    assert django["artifacts"][0]["pins"][0]["status"] == "failed"
    assert scoped == json.loads(sent)["results"][1]  # untouched, still the stored answer
