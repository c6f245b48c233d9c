"""The npm registry's lockfiles, each installed package by purl with the SRI it pins:

- npm's ``package-lock.json`` v2/v3
  (https://docs.npmjs.com/cli/configuring-npm/package-lock-json): its ``packages`` map;
- Yarn's ``yarn.lock``, both the v1 format (its own indented syntax, read per
  ``yarnpkg/yarn:src/lockfile/parse.js``) and Yarn 2+ ("berry", YAML: each entry's
  ``resolution``; its ``checksum`` is of Yarn's repacked zip, not of the registry's tarball,
  so it pins nothing Forage can compare);
- pnpm's ``pnpm-lock.yaml`` v5 to v9 (https://github.com/pnpm/spec/tree/master/lockfile):
  the ``packages`` map, keyed ``/name/1.0.0`` (v5), ``/name@1.0.0(peer@2)`` (v6) or
  ``name@1.0.0`` (v9).

YAML is read with PyYAML's ``safe_load`` (plain data, no object construction).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from indexers.ecosystem import LockfileFormat
from indexers.errors import LockfileError
from indexers.lockfiles import load_json_object, pinned_sri, purl_key
from indexers.types import LockEntry


def read_package_lock(text: str) -> Iterator[LockEntry]:
    """Yield the installed packages of a v2/v3 ``package-lock.json`` (its ``packages`` map)."""
    packages = load_json_object(text, "package-lock.json").get("packages")
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
            yield LockEntry(path, None, "no version recorded")
        elif resolved and not resolved.startswith(("http://", "https://")):
            yield LockEntry(path, None, f"not from a registry: {resolved[:200]}")
        else:
            integrity = pinned_sri(meta.get("integrity"))
            yield LockEntry(path, purl_key("npm", str(name), version), integrity=integrity)


PACKAGE_LOCK = LockfileFormat(
    name="package-lock.json",
    filenames=("package-lock.json", "npm-shrinkwrap.json"),
    detect=lambda base, text: text.lstrip().startswith("{") and '"lockfileVersion"' in text,
    read=read_package_lock,
    json=True,
)


def _load_yaml(text: str, what: str) -> dict[str, Any]:
    import yaml  # type: ignore[import-untyped]  # loaded only to read a YAML lockfile

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LockfileError(f"{what} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise LockfileError(f"{what} must be a YAML mapping")
    return document


def _split_spec(spec: str) -> tuple[str, str]:
    """``name@rest`` (a scoped name keeps its leading ``@``) as ``(name, rest)``."""
    at = spec.find("@", 1)
    return (spec, "") if at < 0 else (spec[:at], spec[at + 1 :])


#: One token of a yarn v1 line: a JSON string or a bare word (up to a space, comma or colon).
_YARN_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[^\s,:"]+(?::(?!\s|$)[^\s,:"]*)*')


def _yarn_string(token: str) -> str:
    return str(json.loads(token)) if token.startswith('"') else token


def parse_yarn_v1(text: str) -> dict[str, dict[str, Any]]:
    """The entries of a yarn v1 lockfile: each top-level block's patterns, joined by ``, ``,
    to its fields (nested blocks such as ``dependencies`` as dicts)."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        while indent <= stack[-1][0]:
            stack.pop()
        body = line.strip()
        tokens = _YARN_TOKEN.findall(body.removesuffix(":"))
        if not tokens:
            raise LockfileError(f"yarn.lock line {number} is not a key and value")
        if body.endswith(":"):
            block: dict[str, Any] = {}
            stack[-1][1][", ".join(_yarn_string(t) for t in tokens)] = block
            stack.append((indent, block))
        elif len(tokens) >= 2:
            stack[-1][1][_yarn_string(tokens[0])] = _yarn_string(tokens[1])
        else:
            raise LockfileError(f"yarn.lock line {number} has a key without a value")
    return root


def _yarn_v1(text: str) -> Iterator[LockEntry]:
    for patterns, fields in parse_yarn_v1(text).items():
        if not isinstance(fields, dict):
            continue
        name, requested = _split_spec(patterns.split(", ")[0])
        if requested.startswith("npm:"):  # an alias: "alias@npm:real@^1"
            name, requested = _split_spec(requested[4:])
        version = fields.get("version")
        resolved = str(fields.get("resolved") or "")
        if not isinstance(version, str) or not version:
            yield LockEntry(patterns, None, "no version recorded")
        elif re.match(r"(file|link|portal|git|github|https?):", requested) or (
            resolved and ("/-/" not in resolved or not resolved.startswith("http"))
        ):
            yield LockEntry(patterns, None, f"not from a registry: {(resolved or requested)[:200]}")
        else:
            integrity = pinned_sri(fields.get("integrity"))
            sha1 = resolved.partition("#")[2]
            if not integrity and re.fullmatch(r"[0-9a-f]{40}", sha1):
                integrity = (("sha1", sha1),)  # before yarn 1.10, the tarball's sha1 only
            yield LockEntry(patterns, purl_key("npm", name, version), integrity=integrity)


def _yarn_berry(text: str) -> Iterator[LockEntry]:
    for patterns, fields in _load_yaml(text, "yarn.lock").items():
        if patterns == "__metadata" or not isinstance(fields, dict):
            continue
        resolution = str(fields.get("resolution") or "")
        name, descriptor = _split_spec(resolution)
        protocol, _, version = descriptor.partition(":")
        where = str(patterns)
        if protocol == "workspace":
            continue  # the project itself or one of its workspaces
        if protocol == "npm" and version:
            yield LockEntry(where, purl_key("npm", name, version))
        elif protocol == "patch":
            yield LockEntry(where, None, f"patched locally: {resolution[:200]}")
        else:
            yield LockEntry(where, None, f"not from a registry: {resolution[:200] or '?'}")


def read_yarn_lock(text: str) -> Iterator[LockEntry]:
    """Yield the registry packages of a ``yarn.lock``, v1 or berry."""
    return _yarn_berry(text) if _is_berry(text) else _yarn_v1(text)


def _is_berry(text: str) -> bool:
    return re.search(r"^__metadata:\s*$", text, re.MULTILINE) is not None


def _pnpm_key(key: str, major: int) -> tuple[str, str]:
    """A ``packages`` key's name and version (peer suffixes dropped)."""
    path = key.removeprefix("/")
    if major < 6:  # "/@scope/name/1.0.0_peer+dep@2.0.0"
        name, _, version = path.rpartition("/")
        return name, version.split("_", 1)[0]
    return _split_spec(path.split("(", 1)[0])


def read_pnpm_lock(text: str) -> Iterator[LockEntry]:
    """Yield the registry packages of a ``pnpm-lock.yaml`` (lockfile versions 5 to 9)."""
    document = _load_yaml(text, "pnpm-lock.yaml")
    try:
        major = int(float(str(document.get("lockfileVersion", "")).split(".")[0]))
    except ValueError as exc:
        raise LockfileError("pnpm-lock.yaml without a lockfileVersion") from exc
    packages = document.get("packages") or {}
    if not isinstance(packages, dict):
        raise LockfileError("pnpm-lock.yaml's 'packages' must be a mapping")
    seen: set[str] = set()
    for key, meta in packages.items():
        where = str(key)
        meta = meta if isinstance(meta, dict) else {}
        found = meta.get("resolution")
        resolution: dict[str, Any] = found if isinstance(found, dict) else {}
        name, version = _pnpm_key(where, major)
        name, version = str(meta.get("name") or name), str(meta.get("version") or version)
        if "tarball" in resolution or "type" in resolution or not name or ":" in version:
            origin = resolution.get("tarball") or resolution.get("repo") or where
            yield LockEntry(where, None, f"not from a registry: {str(origin)[:200]}")
            continue
        purl = purl_key("npm", name, version)
        if purl not in seen:  # one entry per release, whatever peers it was linked with
            seen.add(purl)
            integrity = pinned_sri(resolution.get("integrity"))
            yield LockEntry(where, purl, integrity=integrity)


YARN_LOCK = LockfileFormat(
    name="yarn.lock",
    filenames=("yarn.lock",),
    detect=lambda base, text: (
        "# yarn lockfile v1" in text[:2048] or (_is_berry(text) and "resolution:" in text)
    ),
    read=read_yarn_lock,
)

PNPM_LOCK = LockfileFormat(
    name="pnpm-lock.yaml",
    filenames=("pnpm-lock.yaml", "shrinkwrap.yaml"),
    detect=lambda base, text: re.match(r"\s*lockfileVersion:\s*['\"]?[0-9]", text) is not None,
    read=read_pnpm_lock,
)

__all__ = [
    "PACKAGE_LOCK",
    "PNPM_LOCK",
    "YARN_LOCK",
    "parse_yarn_v1",
    "read_package_lock",
    "read_pnpm_lock",
    "read_yarn_lock",
]
