"""PyPI's lockfiles, each pinned release by purl with the sha256 digests of its files:

- pip's ``requirements.txt`` with every requirement pinned (``name==version``, ``--hash``),
  parsed with ``packaging.requirements``
  (https://pip.pypa.io/en/stable/reference/requirements-file-format/);
- Poetry's ``poetry.lock`` (TOML: ``[[package]]`` with ``files``; Poetry 1.0 to 1.4 kept the
  hashes under ``[metadata.files]``);
- uv's ``uv.lock`` (https://docs.astral.sh/uv/concepts/projects/layout/#the-lockfile, TOML:
  ``[[package]]`` with ``source``, ``sdist`` and ``wheels``);
- Pipenv's ``Pipfile.lock`` (JSON: ``default`` and ``develop`` maps, ``version`` ``==x``).

A package installed from git, a URL or a local path names nothing PyPI holds: its entry says
so instead of carrying a key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from indexers.ecosystem import LockfileFormat
from indexers.errors import LockfileError
from indexers.lockfiles import load_json_object, pinned_hashes, purl_key
from indexers.types import LockEntry

#: A line that starts like a requirement with a version clause (``name[extra] ==``...).
_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?\s*(===?|~=|!=|<=?|>=?)", re.MULTILINE
)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Join backslash continuations and drop comments, keeping the first line number."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def read_requirements(text: str) -> Iterator[LockEntry]:
    """Yield the pinned requirements (``name==version``) of a pip requirements file."""
    for number, line in _logical_lines(text):
        if not line or line.startswith("-"):
            continue
        source = f"line {number}"
        parts = line.split()
        spec = " ".join(part for part in parts if not part.startswith("--hash"))
        hashes = [part.partition("=")[2] for part in parts if part.startswith("--hash=")]
        try:
            requirement = Requirement(spec)
        except InvalidRequirement as exc:
            yield LockEntry(source, None, f"not a requirement: {exc}")
            continue
        pins = [s for s in requirement.specifier if s.operator in ("==", "===")]
        if requirement.url or len(pins) != 1 or "*" in pins[0].version:
            yield LockEntry(source, None, f"{requirement.name} is not pinned to one version")
            continue
        key = purl_key("pypi", requirement.name, pins[0].version)
        yield LockEntry(source, key, integrity=pinned_hashes(hashes))


def _is_requirements(base: str, text: str) -> bool:
    """A ``.txt``/``.in`` file (or one without a name) whose first requirement line pins a
    version: other formats' first lines (TOML tables, YAML keys, comments) never do."""
    if base and not base.endswith((".txt", ".in")):
        return False
    first = next((line for _, line in _logical_lines(text) if line and line[0] != "-"), "")
    return _REQUIREMENT.match(first) is not None


def _load_toml(text: str, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockfileError(f"{what} is not valid TOML: {exc}") from exc


def _packages(document: Mapping[str, Any], what: str) -> list[Any]:
    packages = document.get("package")
    if not isinstance(packages, list):
        raise LockfileError(f"{what} without [[package]] tables")
    return packages


def _release(where: str, name: object, version: object) -> LockEntry | None:
    """The problem entry of a package without a name or version, else ``None``."""
    if isinstance(name, str) and name and isinstance(version, str) and version:
        return None
    return LockEntry(where, None, "no name or version recorded")


def read_poetry_lock(text: str) -> Iterator[LockEntry]:
    """Yield the PyPI packages of a ``poetry.lock`` (any lock version)."""
    document = _load_toml(text, "poetry.lock")
    metadata = document.get("metadata")
    legacy = metadata.get("files") if isinstance(metadata, dict) else None
    legacy = legacy if isinstance(legacy, dict) else {}
    for index, package in enumerate(_packages(document, "poetry.lock")):
        if not isinstance(package, dict):
            continue
        name, version = package.get("name"), package.get("version")
        where = f"package[{index}] {name}"
        source = package.get("source")
        kind = source.get("type") if isinstance(source, dict) else None
        problem = _release(where, name, version)
        if problem is not None:
            yield problem
        elif kind not in (None, "legacy"):  # "legacy" is another package index
            url = source.get("url") if isinstance(source, dict) else None
            yield LockEntry(where, None, f"not from a registry: {kind} {str(url)[:200]}")
        else:
            files = package.get("files") or legacy.get(str(name)) or []
            hashes = [f.get("hash") for f in files if isinstance(f, dict)]
            key = purl_key("pypi", str(name), str(version))
            yield LockEntry(where, key, integrity=pinned_hashes(hashes))


def read_uv_lock(text: str) -> Iterator[LockEntry]:
    """Yield the registry packages of a ``uv.lock``."""
    document = _load_toml(text, "uv.lock")
    for index, package in enumerate(_packages(document, "uv.lock")):
        if not isinstance(package, dict):
            continue
        name, version = package.get("name"), package.get("version")
        where = f"package[{index}] {name}"
        found = package.get("source")
        source: dict[str, Any] = found if isinstance(found, dict) else {}
        if {"editable", "virtual"} & source.keys():
            continue  # the project itself or one of its workspace members
        problem = _release(where, name, version)
        if problem is not None:
            yield problem
        elif "registry" not in source:
            origin = next(iter(source.items()), ("?", ""))
            yield LockEntry(where, None, f"not from a registry: {origin[0]} {origin[1]}"[:220])
        else:
            sdist = package.get("sdist")
            wheels = package.get("wheels") or []
            files = [sdist, *wheels] if isinstance(wheels, list) else [sdist]
            hashes = [f.get("hash") for f in files if isinstance(f, dict)]
            key = purl_key("pypi", str(name), str(version))
            yield LockEntry(where, key, integrity=pinned_hashes(hashes))


def read_pipfile_lock(text: str) -> Iterator[LockEntry]:
    """Yield the packages of a ``Pipfile.lock``'s ``default`` and ``develop`` groups."""
    document = load_json_object(text, "Pipfile.lock")
    for group in ("default", "develop"):
        packages = document.get(group) or {}
        if not isinstance(packages, dict):
            raise LockfileError(f"Pipfile.lock's {group!r} must be an object")
        for name, meta in packages.items():
            where = f"{group}.{name}"
            meta = meta if isinstance(meta, dict) else {}
            version = meta.get("version")
            origin = next((meta[k] for k in ("git", "file", "path") if k in meta), None)
            if origin is not None:
                yield LockEntry(where, None, f"not from a registry: {str(origin)[:200]}")
            elif not isinstance(version, str) or not version.startswith("=="):
                yield LockEntry(where, None, f"{name} is not pinned to one version")
            else:
                key = purl_key("pypi", name, version.lstrip("="))
                yield LockEntry(where, key, integrity=pinned_hashes(meta.get("hashes") or []))


REQUIREMENTS = LockfileFormat(
    name="requirements.txt",
    filenames=("requirements.txt",),
    detect=_is_requirements,
    read=read_requirements,
)

POETRY_LOCK = LockfileFormat(
    name="poetry.lock",
    filenames=("poetry.lock",),
    detect=lambda base, text: (
        "[[package]]" in text and ("@generated by Poetry" in text[:512] or "content-hash" in text)
    ),
    read=read_poetry_lock,
)

UV_LOCK = LockfileFormat(
    name="uv.lock",
    filenames=("uv.lock",),
    detect=lambda base, text: (
        "[[package]]" in text
        and re.search(r"^source = \{ (registry|editable|virtual) =", text, re.MULTILINE) is not None
    ),
    read=read_uv_lock,
)

PIPFILE_LOCK = LockfileFormat(
    name="Pipfile.lock",
    filenames=("Pipfile.lock",),
    detect=lambda base, text: text.lstrip().startswith("{") and '"pipfile-spec"' in text,
    read=read_pipfile_lock,
    json=True,
)

__all__ = [
    "PIPFILE_LOCK",
    "POETRY_LOCK",
    "REQUIREMENTS",
    "UV_LOCK",
    "read_pipfile_lock",
    "read_poetry_lock",
    "read_requirements",
    "read_uv_lock",
]
