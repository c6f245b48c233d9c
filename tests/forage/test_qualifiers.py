"""Purl qualifiers that pick files of a version, on SQLite and PostgreSQL.

What is shown: ``?platform=`` (RubyGems) and ``?classifier=``/``?type=`` (Maven) answer only
the matching files, with the purl type spec's defaults (no classifier, type ``jar``) and
Maven's types that imply a classifier; qualifiers an ecosystem does not use change nothing;
a qualified key is never served the version's stored answer and never stores its filtered
one, in one batch with the whole version or after it; a version without a matching file is
``not_found`` saying so, with no import queued; the lockfile readers' purls (Gemfile.lock
platform gems, ``mvn dependency:list`` classifiers) get the right file through a lookup.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import VersionAnswer
from forage.lookup.keys import Key
from forage.lookup.normalize import canonical_purl, parse_lookup_key
from forage.lookup.resolve import resolve, store_answers
from forage.lookup.views import KeyStatus
from indexers import ECOSYSTEMS, read_lockfile
from tests.factories import make_archive, make_artifact, make_package, make_version
from tests.forage.test_lookup import NOW

GEMS = ("nokogiri-1.16.0.gem", "nokogiri-1.16.0-java.gem", "nokogiri-1.16.0-x86_64-linux.gem")
JARS = (
    "slf4j-api-2.0.9.pom",
    "slf4j-api-2.0.9.jar",
    "slf4j-api-2.0.9-sources.jar",
    "slf4j-api-2.0.9-javadoc.jar",
    "slf4j-api-2.0.9-tests.jar",
)


def seed(session: Session) -> None:
    """nokogiri 1.16.0 with three platform gems; slf4j-api 2.0.9 with a POM and four jars;
    every file archived."""
    for ecosystem, name, number, files in (
        ("gem", "nokogiri", "1.16.0", GEMS),
        ("maven", "org.slf4j/slf4j-api", "2.0.9", JARS),
    ):
        version = make_version(
            session, package=make_package(session, ecosystem=ecosystem, name=name), number=number
        )
        for filename in files:
            make_archive(
                session, artifact=make_artifact(session, version=version, filename=filename)
            )
    session.flush()


def files(result: Any) -> list[str]:
    """The file names a result shows, from its JSON as the API sends it."""
    body = orjson.loads(result.to_json_bytes())
    return sorted(artifact["filename"] for artifact in body["artifacts"])


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("pkg:gem/nokogiri@1.16.0?platform=java", ["nokogiri-1.16.0-java.gem"]),
        ("pkg:gem/nokogiri@1.16.0?platform=ruby", ["nokogiri-1.16.0.gem"]),
        ("pkg:gem/nokogiri@1.16.0", sorted(GEMS)),
        ("rubygems:nokogiri:1.16.0", sorted(GEMS)),
        ("pkg:maven/org.slf4j/slf4j-api@2.0.9?classifier=sources", ["slf4j-api-2.0.9-sources.jar"]),
        (
            "pkg:maven/org.slf4j/slf4j-api@2.0.9?classifier=sources&type=jar",
            ["slf4j-api-2.0.9-sources.jar"],
        ),
        # The default type alone is the plain purl (SBOM tools write it on every component).
        ("pkg:maven/org.slf4j/slf4j-api@2.0.9?type=jar", sorted(JARS)),
        ("pkg:maven/org.slf4j/slf4j-api@2.0.9?type=pom", ["slf4j-api-2.0.9.pom"]),
        ("pkg:maven/org.slf4j/slf4j-api@2.0.9?type=test-jar", ["slf4j-api-2.0.9-tests.jar"]),
        ("pkg:maven/org.slf4j/slf4j-api@2.0.9?type=javadoc", ["slf4j-api-2.0.9-javadoc.jar"]),
        ("pkg:maven/org.slf4j/slf4j-api@2.0.9", sorted(JARS)),
        # A qualifier Maven purls do not use to pick files: the whole version, as before.
        ("pkg:maven/org.slf4j/slf4j-api@2.0.9?repository_url=repo.example", sorted(JARS)),
    ],
)
def test_qualifiers_pick_the_files_they_name(
    db_session: Session, key: str, expected: list[str]
) -> None:
    seed(db_session)
    for rendered in (False, True):
        (result,) = resolve(db_session, [key], now=NOW, rendered=rendered).results
        assert result.status is KeyStatus.FOUND
        assert files(result) == expected


def test_unused_qualifiers_leave_the_key_as_it_was() -> None:
    plain = parse_lookup_key("pkg:gem/nokogiri@1.16.0")
    assert parse_lookup_key("pkg:gem/nokogiri@1.16.0?repository_url=x") == plain
    assert parse_lookup_key("pkg:npm/left-pad@1.3.0?arch=x86") == Key("npm", "left-pad", "1.3.0")
    java = parse_lookup_key("pkg:gem/nokogiri@1.16.0?platform=java&repository_url=x")
    assert java.qualifiers == (("platform", "java"),) and java.release == plain
    assert canonical_purl(java) == "pkg:gem/nokogiri@1.16.0?platform=java"
    # Maven's default type says what its absence does: one key, one canonical purl.
    sources = parse_lookup_key("pkg:maven/org.slf4j/slf4j-api@2.0.9?classifier=sources")
    assert parse_lookup_key(canonical_purl(sources) + "&type=jar") == sources
    assert canonical_purl(sources) == "pkg:maven/org.slf4j/slf4j-api@2.0.9?classifier=sources"


def test_a_qualified_key_neither_takes_nor_leaves_the_stored_answer(db_session: Session) -> None:
    seed(db_session)
    whole, java = "pkg:gem/nokogiri@1.16.0", "pkg:gem/nokogiri@1.16.0?platform=java"
    # Both in one batch: the whole version's answer is the one stored, with every file.
    first = resolve(db_session, [java, whole], now=NOW, rendered=True)
    assert [files(r) for r in first.results] == [["nokogiri-1.16.0-java.gem"], sorted(GEMS)]
    (fill,) = first.fills
    assert fill.purl == whole
    assert store_answers(db_session, first.fills) == 1
    # With the version's answer stored, the qualified key is still filtered, stores nothing.
    again = resolve(db_session, [java, whole], now=NOW, rendered=True)
    assert again.fills == ()
    shown, stored = again.results
    assert shown.artifacts and files(shown) == ["nokogiri-1.16.0-java.gem"]
    assert orjson.loads(shown.to_json_bytes())["qualifiers"] == {"platform": "java"}
    assert stored.artifacts == () and files(stored) == sorted(GEMS)
    stored_purls = sa.select(VersionAnswer.purl).where(VersionAnswer.body.is_not(None))
    assert db_session.execute(stored_purls).scalars().all() == [whole]


def test_a_version_without_the_named_file_is_not_found(db_session: Session) -> None:
    seed(db_session)
    keys = [
        "pkg:gem/nokogiri@1.16.0?platform=arm64-darwin",
        "pkg:maven/org.slf4j/slf4j-api@2.0.9?classifier=natives-linux",
        "pkg:gem/nokogiri@9.9.9?platform=java",
        "pkg:maven/org.slf4j/slf4j-api@2.0.9?type=war",
    ]
    resolution = resolve(db_session, keys, now=NOW, rendered=True)
    darwin, natives, unknown, war = resolution.results
    assert darwin.status is KeyStatus.NOT_FOUND and natives.status is KeyStatus.NOT_FOUND
    assert war.reason == "org.slf4j/slf4j-api 2.0.9 has no file matching type=war"
    assert darwin.reason == "nokogiri 1.16.0 has no file matching platform=arm64-darwin"
    assert "classifier=natives-linux" in (natives.reason or "")
    # Only the unknown version is left for an import; nothing is stored for the others.
    assert [m.key.version for m in resolution.missing] == ["9.9.9"]
    assert unknown.status is KeyStatus.NOT_FOUND and resolution.fills == ()


def test_lockfile_purls_get_the_file_they_lock(db_session: Session) -> None:
    seed(db_session)
    gemfile = (
        "GEM\n  remote: https://rubygems.org/\n  specs:\n"
        "    nokogiri (1.16.0-java)\n    nokogiri (1.16.0-x86_64-linux)\n\n"
        "PLATFORMS\n  java\n  x86_64-linux\n\nDEPENDENCIES\n  nokogiri\n"
    )
    listing = (
        "[INFO] The following files have been resolved:\n"
        "[INFO]    org.slf4j:slf4j-api:jar:sources:2.0.9:compile\n"
        "[INFO]    org.slf4j:slf4j-api:pom:2.0.9:compile\n"
    )
    keys = [
        entry.key
        for data, name in ((gemfile, "Gemfile.lock"), (listing, "dependencies.txt"))
        for entry in read_lockfile(data.encode(), filename=name)
    ]
    results = resolve(db_session, keys, now=NOW, rendered=True).results
    assert [files(r) for r in results] == [
        ["nokogiri-1.16.0-java.gem"],
        ["nokogiri-1.16.0-x86_64-linux.gem"],
        ["slf4j-api-2.0.9-sources.jar"],
        ["slf4j-api-2.0.9.pom"],
    ]


#: For every qualifier an ecosystem picks files by: a package and a file of its version 1.1
#: that the qualifier's value names.
PICKED = {
    ("gem", "platform"): ("b", "b-1.1-java.gem", "java"),
    ("maven", "classifier"): ("a/b", "b-1.1-sources.jar", "sources"),
    ("maven", "type"): ("a/b", "b-1.1.pom", "pom"),
}


def test_every_file_matcher_keeps_its_own_files_apart() -> None:
    """Each ecosystem that picks files by qualifiers takes the file its qualifier names in
    that file's version, and refuses the same file as one of another version."""
    qualified = {(e.name, q) for e in ECOSYSTEMS.values() for q in e.qualifiers}
    assert qualified == set(PICKED)  # a new qualifier needs its case here
    for (name, qualifier), (package, filename, value) in PICKED.items():
        ecosystem = ECOSYSTEMS[name]
        assert ecosystem.selects(package, "1.1", filename, {qualifier: value})
        assert not ecosystem.selects(package, "1.0", filename, {qualifier: value})


def test_a_snapshot_classifier_names_its_timestamped_file() -> None:
    maven = ECOSYSTEMS["maven"]
    sources = {"classifier": "sources"}
    build = "lib-1.1-20240101.120000-3"
    assert maven.selects("g/lib", "1.1-SNAPSHOT", f"{build}-sources.jar", sources)
    assert not maven.selects("g/lib", "1.1-SNAPSHOT", f"{build}.jar", sources)
    assert maven.selects("g/lib", "1.1-SNAPSHOT", f"{build}.pom", {"type": "pom"})
    assert not maven.selects("g/lib", "1.1-SNAPSHOT", "lib-1.0-sources.jar", sources)
