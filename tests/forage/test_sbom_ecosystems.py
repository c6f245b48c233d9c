"""One CycloneDX SBOM naming a component of every registered ecosystem, on SQLite and
PostgreSQL.

What is shown: posted to the HTTP API (JSON and XML alike), every component is found under
its canonical purl (``pkg:cargo/...``, ``pkg:gem/...?platform=java``,
``pkg:composer/vendor/name``, ``pkg:maven/group/artifact?classifier=sources``), answered
with only the file its qualifiers name; ``export``'s keys and manifest
(:mod:`forage.mirror.offline`) name the same releases and files.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.orm import Session, sessionmaker

from forage.archive.blocks import open_blockstore
from forage.db.engine import make_engine, make_sessionmaker
from forage.mirror.offline import bundle_manifest, lockfile_keys
from forage.server.app import make_app
from indexers import ECOSYSTEMS, read_lockfile
from tests.factories import make_archive, make_artifact, make_package, make_version
from tests.forage.test_api import api_config

#: (purl as the SBOM writes it, canonical purl, ecosystem, name, version, the files the
#: index holds, the files the purl names).
COMPONENTS: tuple[tuple[str, str, str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "pkg:npm/%40babel/core@7.23.0",
        "pkg:npm/%40babel/core@7.23.0",
        "npm",
        "@babel/core",
        "7.23.0",
        ("core-7.23.0.tgz",),
        ("core-7.23.0.tgz",),
    ),
    (
        "pkg:pypi/Django@5.0",
        "pkg:pypi/django@5.0",
        "pypi",
        "django",
        "5.0",
        ("Django-5.0.tar.gz", "Django-5.0-py3-none-any.whl"),
        ("Django-5.0-py3-none-any.whl", "Django-5.0.tar.gz"),
    ),
    (
        "pkg:golang/github.com/pkg/errors@v0.9.1",
        "pkg:golang/github.com/pkg/errors@v0.9.1",
        "golang",
        "github.com/pkg/errors",
        "v0.9.1",
        ("v0.9.1.zip",),
        ("v0.9.1.zip",),
    ),
    (
        "pkg:cargo/serde@1.0.190",
        "pkg:cargo/serde@1.0.190",
        "cargo",
        "serde",
        "1.0.190",
        ("serde-1.0.190.crate",),
        ("serde-1.0.190.crate",),
    ),
    (
        "pkg:gem/nokogiri@1.16.0?platform=java",
        "pkg:gem/nokogiri@1.16.0?platform=java",
        "gem",
        "nokogiri",
        "1.16.0",
        ("nokogiri-1.16.0.gem", "nokogiri-1.16.0-java.gem", "nokogiri-1.16.0-x86_64-linux.gem"),
        ("nokogiri-1.16.0-java.gem",),
    ),
    (
        "pkg:composer/monolog/monolog@3.5.0",
        "pkg:composer/monolog/monolog@3.5.0",
        "composer",
        "monolog/monolog",
        "3.5.0",
        ("monolog-monolog-3.5.0.zip",),
        ("monolog-monolog-3.5.0.zip",),
    ),
    (
        "pkg:maven/org.slf4j/slf4j-api@2.0.9?classifier=sources&type=jar",
        "pkg:maven/org.slf4j/slf4j-api@2.0.9?classifier=sources",
        "maven",
        "org.slf4j/slf4j-api",
        "2.0.9",
        ("slf4j-api-2.0.9.pom", "slf4j-api-2.0.9.jar", "slf4j-api-2.0.9-sources.jar"),
        ("slf4j-api-2.0.9-sources.jar",),
    ),
)


def cyclonedx_json() -> bytes:
    components = [
        {"type": "library", "bom-ref": f"c{i}", "name": c[3], "version": c[4], "purl": c[0]}
        for i, c in enumerate(COMPONENTS)
    ]
    return json.dumps(
        {"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1, "components": components}
    ).encode()


def cyclonedx_xml() -> bytes:
    components = "".join(
        f'<component type="library" bom-ref="c{i}"><name>{escape(c[3])}</name>'
        f"<version>{c[4]}</version><purl>{escape(c[0])}</purl></component>"
        for i, c in enumerate(COMPONENTS)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<bom xmlns="http://cyclonedx.org/schema/bom/1.5" version="1">'
        f"<components>{components}</components></bom>"
    ).encode()


def seed(session: Session) -> None:
    """Every component's version with all its files, each archived."""
    for _, _, ecosystem, name, number, held, _ in COMPONENTS:
        package = make_package(session, ecosystem=ecosystem, name=name)
        version = make_version(session, package=package, number=number)
        for filename in held:
            make_archive(
                session, artifact=make_artifact(session, version=version, filename=filename)
            )


@pytest.fixture
def sessions(migrated_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_url)
    try:
        factory = make_sessionmaker(engine)
        with factory.begin() as session:
            seed(session)
        yield factory
    finally:
        engine.dispose()


@pytest.fixture
async def client(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> AsyncIterator[TestClient[Any, Any]]:
    config = api_config(migrated_url, tmp_path)
    app = make_app(config, sessionmaker=sessions, blockstore=open_blockstore(config))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def test_the_sbom_covers_every_registered_ecosystem() -> None:
    assert sorted(c[2] for c in COMPONENTS) == sorted(ECOSYSTEMS)


@pytest.mark.parametrize(
    ("filename", "document"), [("bom.cdx.json", cyclonedx_json), ("bom.cdx.xml", cyclonedx_xml)]
)
async def test_an_sbom_of_every_ecosystem_is_answered_per_component(
    client: TestClient[Any, Any], filename: str, document: Any
) -> None:
    response = await client.post(f"/api/v1/lookup/lockfile?filename={filename}", data=document())
    body = await response.text()
    assert response.status == 200, body
    reply = json.loads(body)
    dependencies = reply["dependencies"]
    assert reply["summary"]["found"] == len(COMPONENTS)
    assert [
        (d["status"], d["purl"], d["ecosystem"], d["name"], d["version"]) for d in dependencies
    ] == [("found", c[1], c[2], c[3], c[4]) for c in COMPONENTS]
    shown = [sorted(a["filename"] for a in d["artifacts"]) for d in dependencies]
    assert shown == [sorted(c[6]) for c in COMPONENTS]


def test_export_names_the_same_releases_and_files(sessions: sessionmaker[Session]) -> None:
    found = lockfile_keys(read_lockfile(cyclonedx_json(), filename="bom.cdx.json"))
    assert found.problems == []
    assert [key.purl() for key in found.keys] == [c[1] for c in COMPONENTS]
    with sessions() as session:
        manifest, missing = bundle_manifest(session, found.keys)
    assert missing == []
    files = {
        (package["ecosystem"], package["name"]): sorted(
            a["filename"] for version in package["versions"] for a in version["artifacts"]
        )
        for package in manifest["packages"]
    }
    assert files == {(c[2], c[3]): sorted(c[6]) for c in COMPONENTS}
