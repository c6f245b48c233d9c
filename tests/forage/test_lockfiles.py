"""Lockfiles and SBOMs: every dependency yields a key or a reason it has none, formats are
detected by name or content (an unknown one is refused naming those Forage reads: 415, exit
2), and each answer compares the digests the file pins with those Forage holds."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.orm import Session, sessionmaker

from forage.cli import main
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import Artifact, ArtifactDigest, Version
from indexers import MAX_ENTRIES, LockEntry, LockfileError, UnsupportedLockfile, read_lockfile
from indexers.lockfiles import supported_formats
from indexers.npm.lockfiles import parse_yarn_v1
from tests.factories import artifact_content, make_artifact, make_package, make_version
from tests.forage.test_api import TOKEN, Api, seed, start

DATA = Path(__file__).parent.parent / "data" / "lockfiles"


def keys(entries: list[LockEntry]) -> list[str]:
    return [e.key for e in entries if e.key]


def problems(entries: list[LockEntry]) -> dict[str, str]:
    return {e.source: e.problem for e in entries if e.problem}


def test_package_lock_v3_lists_installed_packages_with_aliases_and_nesting() -> None:
    entries = read_lockfile((DATA / "package-lock.json").read_bytes(), filename="package-lock.json")
    assert keys(entries) == [
        "pkg:npm/%40babel/core@7.23.2",
        "pkg:npm/debug@4.3.4",
        "pkg:npm/debug@4.3.5",
        "pkg:npm/lodash@4.17.21",
        "pkg:npm/lodash@4.17.20",
    ]
    # The git dependency is reported; the workspace folder and its link are not dependencies.
    assert list(problems(entries)) == ["node_modules/from-git"]
    assert problems(entries)["node_modules/from-git"].startswith("not from a registry: git+ssh")


def test_requirements_keep_pins_and_report_the_rest() -> None:
    entries = read_lockfile((DATA / "requirements.txt").read_bytes(), filename="requirements.txt")
    assert keys(entries) == [
        "pkg:pypi/certifi@2023.7.22",
        "pkg:pypi/django@5.0.1",
        "pkg:pypi/requests@2.31.0",
        "pkg:pypi/zope.interface@6.1",
    ]
    found = problems(entries)
    assert list(found) == ["line 10", "line 12"]
    assert found["line 10"] == "flask is not pinned to one version"
    assert found["line 12"].startswith("not a requirement")
    assert [e.source for e in entries if e.key][:2] == ["line 3", "line 7"]


def test_go_sum_lists_zip_lines_only_once() -> None:
    entries = read_lockfile((DATA / "go.sum").read_bytes(), filename="go.sum")
    assert keys(entries) == [
        "pkg:golang/github.com/BurntSushi/toml@v1.3.2",
        "pkg:golang/github.com/pkg/errors@v0.9.1",
    ]
    assert problems(entries) == {}
    # The zip's h1 as the checksum database spells it, not the /go.mod line's.
    assert entries[0].integrity == (("h1", "h1:o7IhLm0Msx3BaB+n3Ag7L8EVlByGnpq14C4YWiu/gL8="),)


def test_cyclonedx_walks_nested_components() -> None:
    entries = read_lockfile((DATA / "bom.cdx.json").read_bytes())
    assert sorted(keys(entries)) == [
        "pkg:npm/%40babel/core@7.23.2",
        "pkg:pypi/requests@2.31.0",
        "pkg:pypi/urllib3@2.0.7",
    ]
    assert problems(entries) == {"internal-thing": "component has no purl"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be an object"),
        (b'{"lockfileVersion": 1, "dependencies": {}}', "without a 'packages' map"),
    ],
)
def test_unreadable_documents_raise_lockfile_error(data: bytes, message: str) -> None:
    with pytest.raises(LockfileError, match=message):
        read_lockfile(data)


def test_huge_lockfiles_are_refused() -> None:
    text = "\n".join(f"pkg{i}==1.0" for i in range(MAX_ENTRIES + 1))
    with pytest.raises(LockfileError, match="more than"):
        read_lockfile(text.encode(), filename="requirements.txt")


def integrity(entries: list[LockEntry]) -> dict[str, tuple[tuple[str, str], ...]]:
    return {e.key: e.integrity for e in entries if e.key}


def test_yarn_v1_reads_aliases_old_sha1_pins_and_reports_git() -> None:
    entries = read_lockfile((DATA / "yarn.lock").read_bytes(), filename="yarn.lock")
    assert keys(entries) == [
        "pkg:npm/%40babel/code-frame@7.22.13",
        "pkg:npm/chalk@2.4.2",
        "pkg:npm/string-width@4.2.3",  # installed as string-width-cjs
    ]
    assert entries[0].source == "@babel/code-frame@^7.0.0, @babel/code-frame@^7.22.13"
    pins = integrity(entries)
    sri = base64.b64decode(
        "wKyQRQpjJ0sIp62ErSZdGsjMJWsap5oRNihHhu6G7JVO/9jIB6UyevL+tXuOqrng8j/cxKTWyWUwvSTriiZz/g=="
    )
    assert pins["pkg:npm/string-width@4.2.3"] == (("sha512", sri.hex()),)
    # No integrity line (yarn < 1.10): the sha1 in the resolved URL's fragment.
    assert pins["pkg:npm/chalk@2.4.2"] == (("sha1", "cd42541677a54333cf541a49108c1432b44c9424"),)
    (git,) = problems(entries).values()
    assert git.startswith("not from a registry: https://codeload.github.com/")
    local = b'# yarn lockfile v1\n"local@file:../local":\n  version "1.0.0"\n'
    assert problems(read_lockfile(local)) == {
        "local@file:../local": "not from a registry: file:../local"
    }


def test_yarn_v1_quoting_and_nesting_are_parsed_not_guessed() -> None:
    parsed = parse_yarn_v1(
        '"a@^1", a@~1.2:\n  version "1.2.3"\n  dependencies:\n    "b c" "1 || 2"\n'
        'd@1:\n  version "1.0.0"\n'
    )
    assert parsed == {
        "a@^1, a@~1.2": {"version": "1.2.3", "dependencies": {"b c": "1 || 2"}},
        "d@1": {"version": "1.0.0"},
    }
    with pytest.raises(LockfileError, match="line 3 has a key without a value"):
        read_lockfile(b"# yarn lockfile v1\na@1:\n  version\n", filename="yarn.lock")


def test_yarn_berry_reads_resolutions_and_reports_patches() -> None:
    entries = read_lockfile((DATA / "yarn-berry.lock").read_bytes(), filename="yarn.lock")
    assert keys(entries) == ["pkg:npm/%40babel/code-frame@7.22.13", "pkg:npm/lodash@4.17.21"]
    # Berry's checksum is of its own zip, not the registry's tarball: nothing to compare.
    assert all(e.integrity == () for e in entries)
    # The workspace is the project itself; a patched copy is not the registry's bytes.
    assert [p.split(":")[0] for p in problems(entries).values()] == ["patched locally"]


def test_pnpm_lock_v9_and_older_keys() -> None:
    entries = read_lockfile((DATA / "pnpm-lock.yaml").read_bytes())
    assert keys(entries) == ["pkg:npm/%40babel/core@7.23.2", "pkg:npm/lodash@4.17.21"]
    assert integrity(entries)["pkg:npm/lodash@4.17.21"][0][0] == "sha512"
    assert list(problems(entries).values()) == [
        "not from a registry: https://example.com/my-tarball-1.0.0.tgz"
    ]
    sri = "{integrity: sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA=}"
    v6 = (
        "lockfileVersion: '6.0'\npackages:\n"
        f"  /@types/react@18.2.0(react@18.2.0):\n    resolution: {sri}\n"
        f"  /@types/react@18.2.0(react@18.3.0):\n    resolution: {sri}\n"
    )
    assert keys(read_lockfile(v6.encode())) == ["pkg:npm/%40types/react@18.2.0"]
    v5 = (
        "lockfileVersion: 5.4\npackages:\n  /@babel/core/7.0.0_@types+node@20.1.0:\n    dev: true\n"
    )
    assert keys(read_lockfile(v5.encode(), filename="pnpm-lock.yaml")) == [
        "pkg:npm/%40babel/core@7.0.0"
    ]


CERTIFI_HASHES = (
    ("sha256", "92d6037539857d8206b8f6ae472e8b77db8058fec5937a1ef3f54304089edbb9"),
    ("sha256", "539cc1d13202e33ca466e88b2807e29f4c13049d6d87031a3c110744495cb082"),
)


@pytest.mark.parametrize(
    ("name", "expected", "problem"),
    [
        ("poetry.lock", ["pkg:pypi/certifi@2023.7.22", "pkg:pypi/django@5.0.1"], "git https"),
        ("uv.lock", ["pkg:pypi/certifi@2023.7.22"], "git https"),
        ("Pipfile.lock", ["pkg:pypi/certifi@2023.7.22", "pkg:pypi/pytest@7.4.3"], "https://"),
    ],
)
def test_python_lockfiles_pin_every_file_hash(name: str, expected: list[str], problem: str) -> None:
    entries = read_lockfile((DATA / name).read_bytes())  # detected by content
    assert keys(entries) == expected
    assert sorted(integrity(entries)["pkg:pypi/certifi@2023.7.22"]) == sorted(CERTIFI_HASHES)
    (reason,) = problems(entries).values()
    assert reason.startswith("not from a registry: " + problem)


def test_requirements_hashes_are_pinned() -> None:
    entries = read_lockfile((DATA / "requirements.txt").read_bytes())
    assert sorted(integrity(entries)["pkg:pypi/certifi@2023.7.22"]) == sorted(CERTIFI_HASHES)
    assert integrity(entries)["pkg:pypi/django@5.0.1"] == ()


def test_spdx_json_reads_purl_references_and_checksums() -> None:
    entries = read_lockfile((DATA / "spdx.json").read_bytes())
    assert keys(entries) == ["pkg:npm/lodash@4.17.21", "pkg:pypi/requests@2.31.0"]
    assert integrity(entries)["pkg:npm/lodash@4.17.21"] == (
        ("sha1", "679591c564c3bffaae8454cf0b3df370c3d6911c"),
    )
    assert problems(entries) == {"SPDXRef-DocumentRoot-Directory-.": "component has no purl"}


def test_cyclonedx_xml_reads_nested_components_not_the_project() -> None:
    entries = read_lockfile((DATA / "bom.cdx.xml").read_bytes())
    assert keys(entries) == ["pkg:npm/lodash@4.17.21", "pkg:pypi/urllib3@2.0.7"]
    ((algorithm, value),) = integrity(entries)["pkg:npm/lodash@4.17.21"]
    assert (algorithm, value[:8]) == ("sha512", "bf690311")
    assert problems(entries) == {"vendored-thing": "component has no purl"}


def test_cyclonedx_xml_with_entities_is_refused_before_parsing() -> None:
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE bom [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        '<bom xmlns="http://cyclonedx.org/schema/bom/1.5"><components><component>'
        "<purl>&b;</purl></component></components></bom>"
    )
    with pytest.raises(LockfileError, match="document type declaration"):
        read_lockfile(laughs.encode())
    with pytest.raises(LockfileError, match="not well-formed XML"):
        read_lockfile(b'<bom xmlns="http://cyclonedx.org/schema/bom/1.5"><components>')


@pytest.mark.parametrize(
    "name", ["yarn.lock", "yarn-berry.lock", "pnpm-lock.yaml", "poetry.lock", "uv.lock"]
)
def test_text_lockfiles_are_not_mistaken_for_requirements(name: str) -> None:
    """Issue 19: without a file name, these came back as requirements.txt lines, all skipped."""
    entries = read_lockfile((DATA / name).read_bytes())
    assert keys(entries)
    assert not any(e.source.startswith("line ") for e in entries)


def test_cargo_lock_is_detected_by_content() -> None:
    cargo = (
        "# This file is automatically @generated by Cargo.\nversion = 3\n\n[[package]]\n"
        'name = "serde"\nversion = "1.0.193"\n'
        'source = "registry+https://github.com/rust-lang/crates.io-index"\n'
        'checksum = "25dd9975e68d0cb5aa1120c288333fc98731bd1dd12f561e468ea4728c042b89"\n'
    )
    (entry,) = read_lockfile(cargo.encode())
    assert entry.key == "pkg:cargo/serde@1.0.193"
    assert entry.integrity == (
        ("sha256", "25dd9975e68d0cb5aa1120c288333fc98731bd1dd12f561e468ea4728c042b89"),
    )


@pytest.mark.parametrize(
    "data",
    [
        b"SPDXVersion: SPDX-2.3\nDataLicense: CC0-1.0\nPackageName: lodash\n",
        b'{"name": "x"}',
        b"<project><dependencies/></project>",
    ],
)
def test_unsupported_formats_name_the_supported_ones(data: bytes) -> None:
    with pytest.raises(UnsupportedLockfile) as caught:
        read_lockfile(data, filename="deps.file")
    assert caught.value.supported == supported_formats()
    assert {"yarn.lock", "pnpm-lock.yaml", "poetry.lock", "SPDX 2.3 JSON"} <= set(
        caught.value.supported
    )
    assert "yarn.lock" in str(caught.value)


# The answers: pinned digests against the files Forage holds, qualifiers, 415, uploads, CLI.


@pytest.fixture
def sessions(migrated_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@pytest.fixture
async def api(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> AsyncIterator[Api]:
    async for value in start(migrated_url, tmp_path, sessions, FORAGE_API_TOKEN=TOKEN):
        yield value


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def package_lock(packages: dict[str, dict[str, str]]) -> bytes:
    return json.dumps({"lockfileVersion": 3, "packages": {"": {}, **packages}}).encode()


async def test_a_pinned_digest_other_than_the_archived_bytes_is_flagged(api: Api) -> None:
    good = artifact_content(api.rows["tarball"])
    lock = package_lock(
        {
            "node_modules/@scope/pkg": {"version": "2.0.0", "integrity": sri(good)},
            "node_modules/a/node_modules/@scope/pkg": {
                "version": "2.0.0",
                "integrity": sri(b"bytes the registry never served"),
            },
            "node_modules/left-pad": {"version": "1.0.0", "integrity": sri(b"x")},
            "node_modules/@scope/unpinned": {"version": "2.0.0", "name": "@scope/pkg"},
        }
    )
    body = await api.json("POST", "/api/v1/lookup/lockfile", data=lock)
    deps = body["dependencies"]
    assert [(d["status"], d["integrity"]) for d in deps] == [
        ("found", "match"),
        ("found", "mismatch"),  # still the version Forage holds, but not these bytes
        ("found", "unknown"),  # known version, no file recorded: nothing to compare with
        ("found", "unpinned"),
    ]
    bad = hashlib.sha512(b"bytes the registry never served").hexdigest()
    assert deps[1]["mismatched"] == [f"sha512:{bad}"]
    assert deps[0]["pinned"] == [f"sha512:{hashlib.sha512(good).hexdigest()}"]
    assert "mismatched" not in deps[0]
    assert body["summary"]["found"] == 4
    assert body["summary"]["integrity_mismatch"] == 1


async def test_file_name_and_checksum_qualifiers_narrow_the_answer(api: Api) -> None:
    with api.sessions.begin() as session:
        version = session.get(Artifact, api.rows["sdist"].id).version
        wheel = make_artifact(session, version=version, filename="Django-5.0-py3-none-any.whl")
        wheel_sha256 = hashlib.sha256(artifact_content(wheel)).hexdigest()
    purls = [
        "pkg:pypi/django@5.0?file_name=Django-5.0.tar.gz",
        f"pkg:pypi/django@5.0?checksum=sha256:{wheel_sha256}",
        "pkg:pypi/django@5.0?checksum=sha256:" + "0" * 64,
        "pkg:pypi/django@5.0?file_name=Django-9.9.tar.gz",
        "pkg:pypi/django@5.0",
        f"pkg:pypi/django@5.0?checksum=SHA-256:{wheel_sha256.upper()}",  # as lockfiles spell it
    ]
    bom = {"bomFormat": "CycloneDX", "components": [{"purl": p, "bom-ref": p} for p in purls]}
    body = await api.json("POST", "/api/v1/lookup/lockfile", json=bom)
    deps = body["dependencies"]
    files = [[a["filename"] for a in d.get("artifacts", [])] for d in deps]
    assert files == [
        ["Django-5.0.tar.gz"],
        ["Django-5.0-py3-none-any.whl"],
        ["Django-5.0-py3-none-any.whl", "Django-5.0.tar.gz"],  # nothing matches: all shown
        [],
        ["Django-5.0-py3-none-any.whl", "Django-5.0.tar.gz"],
        ["Django-5.0-py3-none-any.whl"],
    ]
    assert [d["integrity"] for d in deps] == [
        "unpinned",
        "match",
        "mismatch",
        "unpinned",
        "unpinned",
        "match",
    ]
    assert deps[3]["status"] == "not_found"
    assert deps[3]["reason"] == "django has no file Django-9.9.tar.gz"
    assert body["summary"]["integrity_mismatch"] == 1


def h1(data: bytes) -> str:
    """An ``h1:`` as the checksum database prints it (base64 of 32 bytes: mixed case)."""
    return "h1:" + base64.b64encode(hashlib.sha256(data).digest()).decode()


async def test_gemfile_lock_composer_lock_and_go_sum_pins_are_compared(api: Api) -> None:
    with api.sessions.begin() as session:

        def release(ecosystem: str, name: str, number: str) -> Version:
            package = make_package(session, ecosystem=ecosystem, name=name)
            return make_version(session, package=package, number=number)

        nokogiri = release("gem", "nokogiri", "1.16.0")
        make_artifact(session, version=nokogiri, filename="nokogiri-1.16.0.gem")
        linux = make_artifact(
            session, version=nokogiri, filename="nokogiri-1.16.0-x86_64-linux.gem"
        )
        make_artifact(session, version=release("gem", "rake", "13.1.0"), filename="rake-13.1.0.gem")
        one = make_artifact(session, version=release("composer", "acme/one", "1.2.3"))
        make_artifact(session, version=release("composer", "acme/two", "2.0.0"))
        make_artifact(session, version=release("composer", "acme/three", "3.0.0"))
        for module in ("example.com/m", "example.com/n"):
            zipped = make_artifact(
                session,
                version=release("golang", module, "v1.0.0"),
                filename="v1.0.0.zip",
                digests=(),
            )
            zipped.digests["h1"] = ArtifactDigest(algorithm="h1", value=h1(module.encode()))
        linux_sha256 = hashlib.sha256(artifact_content(linux)).hexdigest()
        one_sha1 = hashlib.sha1(artifact_content(one), usedforsecurity=False).hexdigest()
    gemfile_lock = (
        "GEM\n  remote: https://rubygems.org/\n  specs:\n"
        "    nokogiri (1.16.0-x86_64-linux)\n    rake (13.1.0)\n\n"
        "CHECKSUMS\n"
        f"  nokogiri (1.16.0-x86_64-linux) sha256={linux_sha256.upper()}\n"
        f"  rake (13.1.0) sha256={'0' * 64}\n"
    )
    body = await api.json("POST", "/api/v1/lookup/lockfile", data=gemfile_lock.encode())
    assert [(d["status"], d["integrity"]) for d in body["dependencies"]] == [
        ("found", "match"),
        ("found", "mismatch"),
    ]
    assert body["dependencies"][0]["pinned"] == [f"sha256:{linux_sha256}"]

    def dist(name: str, version: str, shasum: str) -> dict[str, object]:
        url = f"https://repo.invalid/{name}.zip"
        return {
            "name": name,
            "version": version,
            "dist": {"type": "zip", "url": url, "shasum": shasum},
        }

    packages = [
        dist("acme/one", "1.2.3", one_sha1),
        dist("acme/two", "2.0.0", "f" * 40),
        dist("acme/three", "3.0.0", ""),
    ]
    lock = {"content-hash": "0" * 32, "packages": packages, "packages-dev": []}
    body = await api.json("POST", "/api/v1/lookup/lockfile", data=json.dumps(lock).encode())
    assert [d["integrity"] for d in body["dependencies"]] == ["match", "mismatch", "unpinned"]
    assert body["dependencies"][1]["mismatched"] == ["sha1:" + "f" * 40]

    good, other = h1(b"example.com/m"), h1(b"example.com/n")
    assert good.lower() != good  # base64 is compared exactly, never case-folded
    go_sum = (
        f"example.com/m v1.0.0 {good}\n"
        f"example.com/m v1.0.0/go.mod {other}\n"  # pins the go.mod, not the zip: not compared
        f"example.com/n v1.0.0 {good}\n"
    )
    body = await api.json("POST", "/api/v1/lookup/lockfile", data=go_sum.encode())
    deps = body["dependencies"]
    assert [(d["status"], d["integrity"]) for d in deps] == [
        ("found", "match"),
        ("found", "mismatch"),
    ]
    assert deps[0]["pinned"] == [good]
    assert deps[1]["mismatched"] == [good]
    assert body["summary"]["integrity_mismatch"] == 1


async def test_unsupported_formats_get_415_and_multipart_uploads_are_read(api: Api) -> None:
    tag_value = b"SPDXVersion: SPDX-2.3\nDataLicense: CC0-1.0\nPackageName: lodash\n"
    refused = await api.json("POST", "/api/v1/lookup/lockfile", data=tag_value, status=415)
    message = refused["error"]["message"]
    assert "not a lockfile Forage reads" in message
    assert "yarn.lock" in message and "SPDX 2.3 JSON" in message

    form = aiohttp.FormData()
    form.add_field("note", "not a file")
    form.add_field("file", (DATA / "yarn.lock").read_bytes(), filename="yarn.lock")
    body = await api.json("POST", "/api/v1/lookup/lockfile", data=form)
    assert [d["source"].split("@")[0] for d in body["dependencies"]][1:3] == [
        "chalk",
        "string-width-cjs",
    ]
    assert body["summary"]["skipped"] == 1

    # A multipart body without a name to go by is read by content.
    form = aiohttp.FormData()
    form.add_field("file", (DATA / "pnpm-lock.yaml").read_bytes(), filename="upload.bin")
    body = await api.json("POST", "/api/v1/lookup/lockfile", data=form)
    assert [d["key"] for d in body["dependencies"]][:2] == [
        "pkg:npm/%40babel/core@7.23.2",
        "pkg:npm/lodash@4.17.21",
    ]
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("keys", "pkg:npm/x@1")
    empty = await api.json("POST", "/api/v1/lookup/lockfile", data=form, status=400)
    assert "holds no file" in empty["error"]["message"]


def run_forage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, *args: str
) -> tuple[int, str, str]:
    for name in [n for n in os.environ if n.startswith("FORAGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FORAGE_DATABASE_URL", url)
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exits_2_for_an_unsupported_lockfile_and_3_for_a_mismatch(
    migrated_url: str,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with sessions.begin() as session:
        tarball = seed(session)["tarball"]
        good = artifact_content(tarball)
    monkeypatch.setenv("FORAGE_DATA_DIR", str(tmp_path / "data"))
    unsupported = tmp_path / "deps.spdx"
    unsupported.write_bytes(b"SPDXVersion: SPDX-2.3\nPackageName: lodash\n")
    code, out, err = run_forage(
        monkeypatch, capsys, migrated_url, "lookup", "--lockfile", str(unsupported)
    )
    assert code == 2
    assert err.count("\n") == 1 and "is not a lockfile Forage reads (package-lock.json" in err

    lock = tmp_path / "package-lock.json"
    lock.write_bytes(
        package_lock({"node_modules/@scope/pkg": {"version": "2.0.0", "integrity": sri(good)}})
    )
    code, out, err = run_forage(
        monkeypatch, capsys, migrated_url, "lookup", "--lockfile", str(lock)
    )
    assert code == 0, err
    assert "0 integrity mismatch" in err
    lock.write_bytes(
        package_lock({"node_modules/@scope/pkg": {"version": "2.0.0", "integrity": sri(b"?")}})
    )
    code, out, err = run_forage(
        monkeypatch, capsys, migrated_url, "lookup", "--lockfile", str(lock)
    )
    assert code == 3
    assert "found, INTEGRITY MISMATCH" in out.splitlines()[1]
    assert "1 found" in err and "1 integrity mismatch" in err
