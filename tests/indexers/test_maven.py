"""The Maven home: coordinates, the Maven Indexer's transfer format, the feed over its chunks,
the layout's mapping with sidecar digests, the ``/maven2/`` mirror's fallbacks and sidecars,
the lockfile formats and keys -- against the loopback fake of a Central-shaped repository."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import Archive, ArchiveStatus, Artifact
from forage.errors import InvalidKey
from forage.lookup.keys import parse_key, registered_name
from indexers import InvalidName, read_lockfile
from indexers.fakeserver import RunningServer, serve
from indexers.maven.coords import is_prerelease, is_snapshot, normalize_name, parse_file_name
from indexers.maven.documents import parse_listing, parse_pom, render_listing
from indexers.maven.fake import FakeMaven
from indexers.maven.indexdata import (
    IndexFormatError,
    Record,
    parse_properties,
    read_chunk,
    record_document,
    write_chunk,
)
from indexers.maven.indexer import MavenCursor, MavenIndexer
from indexers.types import Change
from tests.forage.mirror.conftest import db_url, forage_mirror, mirror_config  # noqa: F401
from tests.forage.mirror.test_offline import cli

NAME = "org.example/demo"


@pytest.fixture
def maven() -> FakeMaven:
    return FakeMaven()


@pytest.fixture
async def server(maven: FakeMaven) -> AsyncIterator[RunningServer]:
    async with serve(maven.make_app()) as running:
        yield running


@pytest.fixture
async def indexer(maven: FakeMaven, server: RunningServer) -> AsyncIterator[MavenIndexer]:
    endpoints = maven.config_endpoints(server.url)
    async with httpx.AsyncClient() as client:
        yield MavenIndexer(
            client, repository_url=endpoints["repository_url"], index_url=endpoints["index_url"]
        )


# -- coordinates ------------------------------------------------------------------------------


def test_names_take_both_spellings_and_refuse_what_is_not_a_directory() -> None:
    assert normalize_name("org.example:demo") == normalize_name("org.example/demo") == NAME
    assert normalize_name("Com.Big:Big_Lib") == "Com.Big/Big_Lib"  # case-sensitive
    for bad in ("org.example", "a/b/c", "org..x/demo", ".x/demo", "org.x/..", "org.x/de mo", ""):
        with pytest.raises(InvalidName):
            normalize_name(bad)


@pytest.mark.parametrize(
    ("version", "pre"),
    [
        ("1.0", False),
        ("1.0-rc1", True),
        ("2.0.0-RC2", True),
        ("1.0-alpha-1", True),
        ("1.0.b3", True),
        ("3.0-M1", True),
        ("1.0-SNAPSHOT", True),
        ("1.0.Final", False),
        ("1.0-sp1", False),
        ("2.0-beta", True),
        ("1.0-macos", False),
        ("4.1.100.Final", False),
    ],
)
def test_prereleases_follow_comparable_version_qualifiers(version: str, pre: bool) -> None:
    assert is_prerelease(version) is pre


def test_snapshots_plain_and_timestamped() -> None:
    assert is_snapshot("1.1-SNAPSHOT") and is_snapshot("1.1-20240101.120000-3")
    assert not is_snapshot("1.1")


def test_file_names_of_a_version() -> None:
    parsed = parse_file_name("demo", "1.0", "demo-1.0-bin.tar.gz")
    assert parsed is not None and (parsed.classifier, parsed.extension) == ("bin", "tar.gz")
    main = parse_file_name("demo", "1.0", "demo-1.0.jar")
    assert main is not None and (main.classifier, main.extension) == (None, "jar")
    for other in ("demo-1.0.jar.sha1", "demo-1.0.jar.asc", "other-1.0.jar", "demo-1.0-.jar"):
        assert parse_file_name("demo", "1.0", other) is None


def test_a_relocation_keeps_the_fields_it_does_not_name() -> None:
    pom = b"""<project xmlns="http://maven.apache.org/POM/4.0.0"><packaging>pom</packaging>
      <distributionManagement><relocation><groupId>org.new</groupId></relocation>
      </distributionManagement></project>"""
    parsed = parse_pom(pom, "org.old", "demo", "1.0")
    assert parsed.relocation == "org.new:demo:1.0" and parsed.extension is None


def test_a_central_listing_round_trips() -> None:
    page = render_listing("org/example/demo/1.0", parse_listing(SAMPLE_LISTING))
    assert parse_listing(page) == parse_listing(SAMPLE_LISTING)
    entries = parse_listing(SAMPLE_LISTING)
    assert [e.name for e in entries] == ["junit-4.13.2.jar", "junit-4.13.2.jar.sha1"]
    assert entries[0].size == 384581
    assert entries[0].modified == datetime(2021, 2, 13, 16, 32, tzinfo=UTC)


SAMPLE_LISTING = """<pre id="contents">
<a href="../">../</a>
<a href="junit-4.13.2.jar" title="junit-4.13.2.jar">junit-4.13.2.jar</a>  \
2021-02-13 16:32    384581
<a href="junit-4.13.2.jar.sha1" title="junit-4.13.2.jar.sha1">junit-4.13.2.jar.sha1</a>  \
2021-02-13 16:32        40
<a href="sub/" title="sub/">sub/</a>   2021-02-13 16:32         -
</pre>"""


# -- the transfer format ----------------------------------------------------------------------


def test_chunks_round_trip_modified_utf8_and_old_records() -> None:
    when = datetime(2024, 5, 1, tzinfo=UTC)
    added = Record(False, "org.ex", "dëmo", "1.0", "sources", "jar", when, "ab" * 20)
    old = {"u": "org.ex|legacy|2.0|NA", "i": "jar|0|10|0|0|0|jar", "m": "0"}
    documents = [
        {"DESCRIPTOR": "NexusIndex", "IDXINFO": "1.0|central"},
        record_document(added),
        old,
        {"del": "org.ex|gone|0.1|NA|jar", "m": "1"},
        {"u": "org.ex|emoji|1|NA|jar", "n": "snake \U0001f40d\x00"},
    ]
    records = list(read_chunk(io.BytesIO(write_chunk(documents, timestamp=when))))
    assert records[0] == added
    assert (records[1].artifact, records[1].classifier, records[1].extension) == (
        "legacy",
        None,
        "jar",
    )
    assert records[2].deleted and records[2].artifact == "gone"
    assert len(records) == 4


def test_a_damaged_chunk_is_a_format_error() -> None:
    data = write_chunk([record_document(Record(False, "g", "a", "1", None, "jar"))])
    raw = gzip.decompress(data)
    with pytest.raises(IndexFormatError, match="inside"):
        list(read_chunk(io.BytesIO(gzip.compress(raw[:-3]))))
    with pytest.raises(IndexFormatError, match="first byte"):
        list(read_chunk(io.BytesIO(gzip.compress(b"\x02" + raw[1:]))))
    with pytest.raises(IndexFormatError, match="gzip"):
        list(read_chunk(io.BytesIO(b"not gzip at all")))


def test_central_properties() -> None:
    text = (
        "#Sat Feb 03 03:40:43 UTC 2024\nnexus.index.incremental-1=844\n"
        "nexus.index.timestamp=20240203010032.081 +0000\nnexus.index.id=central\n"
        "nexus.index.chain-id=1318453614498\nnexus.index.last-incremental=845\n"
        "nexus.index.incremental-0=845\n"
    )
    props = parse_properties(text)
    assert (props.chain_id, props.last, props.chunks) == ("1318453614498", 845, (844, 845))
    assert props.timestamp == datetime(2024, 2, 3, 1, 0, 32, 81000, tzinfo=UTC)
    with pytest.raises(IndexFormatError):
        parse_properties("nexus.index.id=central\n")


# -- the feed -----------------------------------------------------------------------------------


async def test_the_feed_reads_one_chunk_a_page_and_skips_snapshots(
    maven: FakeMaven, indexer: MavenIndexer
) -> None:
    start = await indexer.start_cursor()
    maven.publish(NAME, "1.0")
    maven.publish_snapshot(NAME, "1.1-SNAPSHOT")  # never in the index
    maven.publish(NAME, "1.1")
    maven.withdraw(NAME, "1.0")
    seen: list[Change] = []
    cursor = start
    for _ in range(5):
        page = await indexer.changes(cursor)
        seen += page.changes
        cursor = page.cursor
        if page.done:
            break
    assert [(c.name, c.version) for c in seen] == [(NAME, "1.0"), (NAME, "1.1"), (NAME, None)]
    assert cursor == MavenCursor(maven.last_chunk, maven.chain_id) and page.head == 3
    again = await indexer.changes(cursor)
    assert again.changes == () and again.done


async def test_a_gap_or_a_rebuilt_chain_moves_on_and_says_so(
    maven: FakeMaven, indexer: MavenIndexer, caplog: pytest.LogCaptureFixture
) -> None:
    start = await indexer.start_cursor()
    for version in ("1.0", "1.1", "1.2"):
        maven.publish(NAME, version)
    del maven.chunks[1]  # expired from the published window
    with caplog.at_level(logging.WARNING):
        page = await indexer.changes(start)
    assert [c.version for c in page.changes] == ["1.1"] and "no longer published" in caplog.text
    maven.chain_id = "42"
    rebuilt = await indexer.changes(page.cursor)
    assert rebuilt.changes == () and rebuilt.cursor == MavenCursor(3, "42") and rebuilt.done
    assert "chain changed" in caplog.text


async def test_origin_and_the_inventory_cover_every_published_chunk(
    maven: FakeMaven, indexer: MavenIndexer
) -> None:
    maven.publish(NAME, "1.0")
    maven.publish("org.example/other", "2.0")
    assert await indexer.cursor_at("origin") == MavenCursor(0, maven.chain_id)
    first = await indexer.inventory(None)
    second = await indexer.inventory(first.after)
    assert [e.change.name for e in (*first.entries, *second.entries)] == [NAME, "org.example/other"]
    assert not first.done and second.done


# -- mapping ----------------------------------------------------------------------------------


async def test_a_package_maps_files_classifiers_and_the_strongest_sidecar(
    maven: FakeMaven, indexer: MavenIndexer
) -> None:
    files = maven.publish(NAME, "1.0", classifiers=("sources", "javadoc"))
    old = maven.publish(NAME, "0.9", sidecars=("md5", "sha1"))
    maven.relocate(NAME, "2.0", to="org.example:demo-core:2.0")
    maven.publish_snapshot(NAME, "2.1-SNAPSHOT")
    info = await indexer.package("org.example:demo")
    releases = {r.version: r for r in info.releases}
    assert set(releases) == {"1.0", "0.9", "2.0", "2.1-SNAPSHOT"}  # selection drops SNAPSHOTs
    assert {a.filename.count("-2.1-20") for a in releases["2.1-SNAPSHOT"].artifacts} == {1}
    current = {a.filename: a for a in releases["1.0"].artifacts}
    assert set(current) == set(files)
    for filename, artifact in current.items():
        assert artifact.digests == {"sha512": hashlib.sha512(files[filename].data).hexdigest()}
        assert artifact.size == len(files[filename].data)
    assert (
        current["demo-1.0-javadoc.jar"].kind == "javadoc" and current["demo-1.0.pom"].kind == "pom"
    )
    legacy = next(a for a in releases["0.9"].artifacts if a.filename == "demo-0.9.jar")
    assert legacy.digests == {"sha1": old["demo-0.9.jar"].sidecar("sha1")}
    assert releases["2.0"].deprecated == (
        "relocated to org.example:demo-core:2.0: moved to org.example:demo-core"
    )
    assert [a.filename for a in releases["2.0"].artifacts] == ["demo-2.0.pom"]
    assert info.extra["relocations"]["2.0"]["to"] == "org.example:demo-core:2.0"
    assert info.display_name == "org.example:demo"


async def test_without_listings_the_pom_names_the_main_artifact(
    maven: FakeMaven, indexer: MavenIndexer
) -> None:
    maven.listings = False
    maven.publish(NAME, "1.0", classifiers=("sources",))
    info = await indexer.package(NAME)
    (release,) = info.releases
    assert [a.filename for a in release.artifacts] == ["demo-1.0.pom", "demo-1.0.jar"]
    assert all("sha512" in a.digests for a in release.artifacts)


async def test_a_listed_version_whose_files_are_gone_is_deleted(
    maven: FakeMaven, indexer: MavenIndexer
) -> None:
    maven.publish(NAME, "1.0")
    maven.publish(NAME, "1.1")
    del maven.artifacts[NAME].files["1.0"]
    info = await indexer.package(NAME)
    gone = next(r for r in info.releases if r.version == "1.0")
    assert gone.deleted and gone.artifacts == ()


# -- the mirror -------------------------------------------------------------------------------


async def test_the_mirror_serves_sidecars_and_falls_back_to_the_archive(
    tmp_path: Path,
    db_url: str,  # noqa: F811
) -> None:
    maven = FakeMaven()
    files = maven.publish(NAME, "1.0")
    maven.publish(NAME, "1.1")
    jar = files["demo-1.0.jar"]
    async with serve(maven.make_app()) as upstream:
        endpoints = {"maven": maven.config_endpoints(upstream.url)}
        async with forage_mirror(tmp_path, db_url, registries=endpoints) as forage:
            await forage.ingest("maven", NAME)
            await forage.archive_all()
            base = f"{forage.url}/maven2/org/example/demo"
            async with httpx.AsyncClient() as client:
                maven.tamper(NAME, "1.0")  # other bytes upstream, true sidecars
                served = await client.get(f"{base}/1.0/demo-1.0.jar")
                # An archived file is served from the archive; the upstream is not asked.
                assert served.content == jar.data and served.headers["Forage-Source"] == "archive"
                assert "Forage-Upstream-Error" not in served.headers
                for algorithm in ("sha1", "md5", "sha256", "sha512"):
                    answer = await client.get(f"{base}/1.0/demo-1.0.jar.{algorithm}")
                    assert answer.text == jar.sidecar(algorithm)
                await upstream.close()
                metadata = await client.get(f"{base}/maven-metadata.xml")
                assert metadata.headers["Forage-Source"] == "archive"
                assert "<release>1.1</release>" in metadata.text
                assert metadata.text.index(">1.0</version>") < metadata.text.index(">1.1</version>")
                digest = await client.get(f"{base}/maven-metadata.xml.sha1")
                assert digest.text == hashlib.sha1(metadata.content).hexdigest()  # noqa: S324
                for path in ("../etc/passwd", "org/x", ".index/x.properties", "org/ex/a b/1/x.jar"):
                    refused = await client.get(f"{forage.url}/maven2/{path}")
                    assert refused.status_code == 404, path
                # With the upstream gone, Forage cannot tell "no such file" from "cannot ask".
                missing = await client.get(f"{base}/9.9/demo-9.9.jar")
                assert missing.status_code == 502


# -- lockfiles and keys ------------------------------------------------------------------------

DEPENDENCY_LIST = """[INFO] --- maven-dependency-plugin:3.5.0:list (default-cli) @ consumer ---
[INFO]
[INFO] The following files have been resolved:
[INFO]    org.example:demo:jar:1.0:compile -- module demo (auto)
[INFO]    org.example:demo:jar:sources:1.0:compile
[INFO]    org.example:bom-only:pom:2.0:import
[INFO]    junit:junit:jar:4.13.2:test (optional)
[INFO]    bad:co ords:jar:1:compile
[INFO]
[INFO] ------------------------------------------------------------------------
[INFO] BUILD SUCCESS
"""


def test_mvn_dependency_list_output_names_artifacts_with_qualifiers() -> None:
    entries = read_lockfile(DEPENDENCY_LIST.encode(), filename="deps.txt")
    assert [e.key for e in entries if e.key] == [
        "pkg:maven/org.example/demo@1.0",
        "pkg:maven/org.example/demo@1.0?classifier=sources",
        "pkg:maven/org.example/bom-only@2.0?type=pom",
        "pkg:maven/junit/junit@4.13.2",
    ]
    assert [e.problem for e in entries if e.problem] == ["a artifactId must match [A-Za-z0-9_-.]+"]


def test_a_gradle_lockfile_skips_empty_configurations() -> None:
    text = (
        "# This is a Gradle generated file for dependency locking.\n"
        "com.google.guava:guava:32.1.2-jre=compileClasspath,runtimeClasspath\n"
        "not a line\n"
        "empty=annotationProcessor\n"
    )
    entries = read_lockfile(text.encode())
    assert [e.key for e in entries] == ["pkg:maven/com.google.guava/guava@32.1.2-jre", None]


def test_keys_in_every_spelling_meet_in_one_name() -> None:
    spellings = (
        "maven:org.example:demo:1.0",
        "maven:org.example/demo:1.0",
        "pkg:maven/org.example/demo@1.0",
        "pkg:maven/org.example/demo@1.0?classifier=sources&type=jar",
    )
    keys = {parse_key(k, normalize=registered_name).release for k in spellings}
    assert len(keys) == 1  # the qualifiers pick files of that one version
    (key,) = keys
    assert (key.name, key.version, key.purl()) == (NAME, "1.0", "pkg:maven/org.example/demo@1.0")
    with pytest.raises(InvalidKey):
        parse_key("maven:org.example:demo", normalize=registered_name)  # no version: ambiguous


async def test_prime_archives_the_files_a_gradle_lockfile_names(
    tmp_path: Path,
    db_url: str,  # noqa: F811
) -> None:
    maven = FakeMaven()
    maven.publish(NAME, "1.0", classifiers=("sources",))
    maven.publish(NAME, "1.1")
    _, data = maven.lockfile([(NAME, "1.0")])
    lockfile = tmp_path / "gradle.lockfile"
    lockfile.write_bytes(data)
    async with serve(maven.make_app()) as upstream:
        config = mirror_config(
            tmp_path, db_url, registries={"maven": maven.config_endpoints(upstream.url)}
        )
        prime = ("-c", str(config.source), "prime", "--lockfile", str(lockfile))
        assert await asyncio.to_thread(cli, *prime) == 0
    engine = make_engine(config.database)
    try:
        with make_sessionmaker(engine)() as session:
            archived = set(
                session.execute(
                    sa.select(Artifact.filename)
                    .join(Archive, Archive.artifact_id == Artifact.id)
                    .where(Archive.status == ArchiveStatus.ARCHIVED)
                ).scalars()
            )
    finally:
        engine.dispose()
    assert archived == {"demo-1.0.pom", "demo-1.0.jar", "demo-1.0-sources.jar"}
