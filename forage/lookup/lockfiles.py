"""Read the packages a lockfile or SBOM names, as lookup keys.

Formats: npm ``package-lock.json`` v2/v3 (https://docs.npmjs.com/cli/configuring-npm/package-lock-json),
a pinned pip ``requirements.txt`` (``name==version``, ``--hash`` allowed; parsed with
``packaging.requirements``), Go's ``go.sum`` (https://go.dev/ref/mod#go-sum-files) and a
CycloneDX JSON SBOM (https://cyclonedx.org/docs/1.6/json/, every component's ``purl``).

Each dependency becomes an ``Entry`` holding a purl key, or a ``problem`` saying why it has
none (an unpinned requirement, a git dependency); one bad line never hides the others.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from packageurl import PackageURL
from packaging.requirements import InvalidRequirement, Requirement

from forage.errors import ForageError

#: The most dependencies one lockfile may name; larger files are refused.
MAX_ENTRIES = 100_000


class LockfileError(ForageError):
    """The document is not a lockfile or SBOM we can read."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One dependency: where it came from and its purl, or why it has none."""

    source: str
    key: str | None
    problem: str | None = None


def _purl(type_: str, name: str, version: str) -> str:
    namespace, _, base = name.rpartition("/")
    return PackageURL(
        type=type_, namespace=namespace or None, name=base, version=version
    ).to_string()


def read_package_lock(document: Mapping[str, Any]) -> Iterator[Entry]:
    """Yield the installed packages of a v2/v3 ``package-lock.json`` (its ``packages`` map)."""
    packages = document.get("packages")
    if not isinstance(packages, dict):
        raise LockfileError("package-lock.json without a 'packages' map (lockfileVersion 2 or 3)")
    for path, meta in packages.items():
        # "" is the project itself; paths outside node_modules are its workspace folders.
        if "node_modules/" not in path or not isinstance(meta, dict) or meta.get("link"):
            continue
        installed_as = path.rpartition("node_modules/")[2]
        name = meta.get("name") or installed_as
        version = meta.get("version")
        resolved = str(meta.get("resolved") or "")
        if not isinstance(version, str) or not version:
            yield Entry(path, None, "no version recorded")
        elif resolved and not resolved.startswith(("http://", "https://")):
            yield Entry(path, None, f"not from a registry: {resolved[:200]}")
        else:
            yield Entry(path, _purl("npm", str(name), version))


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


def read_requirements(text: str) -> Iterator[Entry]:
    """Yield the pinned requirements (``name==version``) of a pip requirements file."""
    for number, line in _logical_lines(text):
        if not line or line.startswith("-"):
            continue
        source = f"line {number}"
        spec = " ".join(part for part in line.split() if not part.startswith("--hash"))
        try:
            requirement = Requirement(spec)
        except InvalidRequirement as exc:
            yield Entry(source, None, f"not a requirement: {exc}")
            continue
        pins = [s for s in requirement.specifier if s.operator in ("==", "===")]
        if requirement.url or len(pins) != 1 or "*" in pins[0].version:
            yield Entry(source, None, f"{requirement.name} is not pinned to one version")
            continue
        yield Entry(source, _purl("pypi", requirement.name, pins[0].version))


def read_go_sum(text: str) -> Iterator[Entry]:
    """Yield the module versions whose zips a ``go.sum`` records (not ``/go.mod``-only ones)."""
    seen: set[tuple[str, str]] = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not fields[2].startswith("h1:"):
            yield Entry(f"line {number}", None, "not a go.sum line")
            continue
        module, version = fields[0], fields[1]
        if version.endswith("/go.mod") or (module, version) in seen:
            continue
        seen.add((module, version))
        yield Entry(f"line {number}", _purl("golang", module, version))


def read_cyclonedx(document: Mapping[str, Any]) -> Iterator[Entry]:
    """Yield every component (nested ones too) of a CycloneDX JSON SBOM by its purl."""
    stack = list(document.get("components") or [])
    while stack:
        component = stack.pop(0)
        if not isinstance(component, dict):
            continue
        stack.extend(component.get("components") or [])
        source = str(component.get("bom-ref") or component.get("name") or "component")
        purl = component.get("purl")
        if isinstance(purl, str) and purl:
            yield Entry(source[:300], purl)
        else:
            yield Entry(source[:300], None, "component has no purl")


def read_lockfile(data: bytes, *, filename: str = "") -> list[Entry]:
    """Detect the format of ``data`` (by name, then content) and return its entries."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LockfileError(f"{filename or 'lockfile'} is not UTF-8 text") from exc
    base = filename.rsplit("/", 1)[-1]
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise LockfileError(f"{base or 'lockfile'} is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise LockfileError("a JSON lockfile must be an object")
        if document.get("bomFormat") == "CycloneDX":
            entries = read_cyclonedx(document)
        elif "lockfileVersion" in document:
            entries = read_package_lock(document)
        else:
            raise LockfileError("JSON that is neither a package-lock.json nor a CycloneDX SBOM")
    elif base == "go.sum" or (stripped and " h1:" in stripped.splitlines()[0]):
        entries = read_go_sum(text)
    else:
        entries = read_requirements(text)
    result: list[Entry] = []
    for entry in entries:
        if len(result) >= MAX_ENTRIES:
            raise LockfileError(f"more than {MAX_ENTRIES} dependencies")
        result.append(entry)
    return result
