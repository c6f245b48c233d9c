"""Lockfile and SBOM reading: every dependency yields a key or a reason it has none."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexers import MAX_ENTRIES, LockEntry, LockfileError, read_lockfile

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
        (b'{"name": "x"}', "neither a package-lock.json"),
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
