"""Lookups by digest: the parser, the query, the API route and ``forage lookup --digest``.

What is shown: every notation registries use (hex by length or named, npm's SRI, Go's
``h1:``) reads as the digest the index stores, and malformed ones are refused with the reason;
a batch is answered in order, matching registry digests and Forage's own verified digest
(a file whose registry published none), not a failed archive's; the API takes POST and GET
(an unescaped ``+`` of base64 survives), answers 400/413 for bad bodies; the CLI prints the
matching files and exits 3 while some digest matched nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from forage.db.models import ArchiveStatus, ArtifactDigest
from forage.lookup.digests import lookup_digests, parse_digest
from indexers import InvalidDigest
from tests.factories import (
    artifact_content,
    make_archive,
    make_artifact,
    make_package,
    make_version,
    raw_cid,
)
from tests.forage.test_api import Api, start
from tests.forage.test_cli_lookup import Done, forage, rows, sessions  # noqa: F401

DATA = b"content of demo-1.0.0.tgz\n"
SHA512 = hashlib.sha512(DATA).digest()
SHA256_HEX = hashlib.sha256(DATA).hexdigest()
GO_H1 = "h1:" + base64.b64encode(hashlib.sha256(b"go.sum line").digest()).decode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SHA256_HEX, (("sha256", SHA256_HEX), ("blake2b_256", SHA256_HEX))),
        (SHA256_HEX.upper(), (("sha256", SHA256_HEX), ("blake2b_256", SHA256_HEX))),
        (f"sha256:{SHA256_HEX}", (("sha256", SHA256_HEX),)),
        (f"SHA-256={SHA256_HEX}", (("sha256", SHA256_HEX),)),
        ("a" * 40, (("sha1", "a" * 40),)),
        ("b" * 32, (("md5", "b" * 32),)),
        (SHA512.hex(), (("sha512", SHA512.hex()),)),
        ("sha512-" + base64.b64encode(SHA512).decode(), (("sha512", SHA512.hex()),)),
        (f"  {GO_H1} ", (("h1", GO_H1),)),
    ],
)
def test_notations_read_as_stored(text: str, expected: tuple[tuple[str, str], ...]) -> None:
    assert set(parse_digest(text)) == set(expected)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("abc", "3 hex digits"),
        ("sha256:abcd", "2 bytes, expected 32"),
        ("crc32:abcd", "unknown algorithm"),
        ("h1:tooshort=", "base64 of 32 bytes"),
        ("sha512-!!!", "not hex, ALGORITHM:HEX, SRI"),
        ("pkg:npm/left-pad@1.3.0", "not hex, ALGORITHM:HEX, SRI"),
        ("f" * 600, "longer than"),
    ],
)
def test_malformed_digests_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidDigest) as caught:
        parse_digest(text)
    assert reason in caught.value.reason


def _index(session: Session) -> dict[str, Any]:
    """npm demo 1.0.0 (sha512, sha1), a Go module (h1 only), a PyPI file with no registry
    digest (only Forage's sha256) and one whose archive failed."""
    npm = make_version(session, package=make_package(session, name="demo"), number="1.0.0")
    tarball = make_artifact(session, version=npm, filename="demo-1.0.0.tgz", digests=("sha512",))
    make_archive(session, artifact=tarball)
    go = make_version(
        session,
        package=make_package(session, ecosystem="golang", name="example.com/m"),
        number="v1.0.0",
    )
    module = make_artifact(session, version=go, filename="v1.0.0.zip", digests=())
    module.digests["h1"] = ArtifactDigest(algorithm="h1", value=GO_H1)
    make_archive(session, artifact=module)
    pypi = make_version(session, package=make_package(session, ecosystem="pypi", name="bare"))
    bare = make_artifact(session, version=pypi, filename="bare-1.tar.gz", digests=())
    make_archive(session, artifact=bare)
    broken = make_artifact(session, version=pypi, filename="broken-1.tar.gz", digests=())
    make_archive(
        session,
        artifact=broken,
        status=ArchiveStatus.FAILED,
        verified_algorithm="sha256",
        verified_digest=hashlib.sha256(artifact_content(broken)).hexdigest(),
    )
    return {"tarball": tarball, "module": module, "bare": bare, "broken": broken}


def test_a_batch_is_answered_in_order(db_session: Session) -> None:
    made = _index(db_session)
    assert artifact_content(made["tarball"]) == DATA
    bare_sha256 = hashlib.sha256(artifact_content(made["bare"])).hexdigest()
    broken_sha256 = hashlib.sha256(artifact_content(made["broken"])).hexdigest()
    given = [
        "sha512-" + base64.b64encode(SHA512).decode(),
        GO_H1,
        bare_sha256,
        broken_sha256,
        "0" * 64,
        "nonsense",
        SHA512.hex(),
    ]
    results = [r.to_json() for r in lookup_digests(db_session, given)]
    assert [r["digest"] for r in results] == given
    assert [r["status"] for r in results] == [
        "found",
        "found",
        "found",
        "not_found",  # a failed archive's digest vouches for nothing
        "not_found",
        "invalid",
        "found",
    ]
    npm = results[0]["matches"]
    assert [(m["purl"], m["artifact"]["cid"]) for m in npm] == [
        ("pkg:npm/demo@1.0.0", raw_cid(DATA))
    ]
    assert results[6]["matches"] == npm
    assert results[1]["matches"][0]["purl"] == "pkg:golang/example.com/m@v1.0.0"
    assert results[1]["algorithms"] == ["h1"]
    bare = results[2]["matches"][0]
    assert bare["artifact"]["filename"] == "bare-1.tar.gz"
    assert bare["artifact"]["archive"]["digest_source"] == "forage"
    assert results[4]["algorithms"] == ["blake2b_256", "sha256"]
    assert "not hex" in results[5]["error"]


@pytest.fixture
async def api(
    migrated_url: str,
    tmp_path: Path,
    sessions: sessionmaker[Session],  # noqa: F811
) -> AsyncIterator[Api]:
    async for value in start(migrated_url, tmp_path, sessions, FORAGE_SERVER_MAX_KEYS="3"):
        yield value


async def test_api_answers_post_and_get(api: Api) -> None:
    data = artifact_content(api.rows["sdist"])
    sri = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    body = await api.json("POST", "/api/v1/lookup/digests", json={"digests": [sri, "0" * 40]})
    assert body["summary"] == {"found": 1, "not_found": 1, "invalid": 0}
    assert body["results"][0]["matches"][0]["purl"] == "pkg:pypi/django@5.0"
    assert body["results"][0]["matches"][0]["artifact"]["cid"] == raw_cid(data)
    # "+" and "/" left unescaped, as people paste them.
    got = await api.json("GET", f"/api/v1/lookup/digests?digests={sri},xyz")
    assert [r["status"] for r in got["results"]] == ["found", "invalid"]
    assert got["results"][0]["matches"] == body["results"][0]["matches"]


async def test_api_refuses_bad_requests(api: Api) -> None:
    for kwargs in ({"json": {"keys": ["a"]}}, {"json": {"digests": [1]}}, {"data": b"{"}):
        error = await api.json("POST", "/api/v1/lookup/digests", status=400, **kwargs)
        assert error["error"]["status"] == 400
    await api.json("GET", "/api/v1/lookup/digests", status=400)
    error = await api.json(
        "POST", "/api/v1/lookup/digests", status=413, json={"digests": ["a" * 40] * 4}
    )
    assert "at most 3" in error["error"]["message"]


def test_cli_lookup_by_digest(
    migrated_url: str,
    rows: dict[str, Any],  # noqa: F811
    forage: Callable[..., Done],  # noqa: F811
) -> None:
    data = artifact_content(rows["sdist"])
    sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    done = forage(migrated_url, "lookup", "--digest", sha1)
    assert done.returncode == 0, done.stderr
    assert "pkg:pypi/django@5.0" in done.stdout and raw_cid(data) in done.stdout
    assert "1 found, 0 not found, 0 invalid" in done.stderr
    done = forage(migrated_url, "lookup", "--json", "--digest", sha1, "--digest", "0" * 64)
    assert done.returncode == 3
    reply = json.loads(done.stdout)
    assert [r["status"] for r in reply["results"]] == ["found", "not_found"]
