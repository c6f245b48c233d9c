"""npm's ``package-lock.json`` v2/v3
(https://docs.npmjs.com/cli/configuring-npm/package-lock-json): every installed package of its
``packages`` map, by purl."""

from __future__ import annotations

from collections.abc import Iterator

from indexers.ecosystem import LockfileFormat
from indexers.errors import LockfileError
from indexers.lockfiles import load_json_object, purl_key
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
            yield LockEntry(path, purl_key("npm", str(name), version))


PACKAGE_LOCK = LockfileFormat(
    name="package-lock.json",
    filenames=("package-lock.json", "npm-shrinkwrap.json"),
    detect=lambda base, text: text.lstrip().startswith("{") and '"lockfileVersion"' in text,
    read=read_package_lock,
    json=True,
)

__all__ = ["PACKAGE_LOCK", "read_package_lock"]
