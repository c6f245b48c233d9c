"""Composer's ``composer.lock`` (https://getcomposer.org/doc/01-basic-usage.md#commit-your-composer-lock-file-to-version-control):
every package of ``packages`` and ``packages-dev``, by purl, pinning its ``dist.shasum`` (the
sha1 of the dist archive; an empty one pins nothing)."""

from __future__ import annotations

from collections.abc import Iterator

from indexers.composer.metadata import validate_name
from indexers.ecosystem import LockfileFormat
from indexers.errors import InvalidName, LockfileError
from indexers.lockfiles import load_json_object, pinned_digest, purl_key
from indexers.types import LockEntry

#: Dist and source types that do not come from a Composer repository.
_LOCAL = frozenset({"path", "artifact"})


def read_composer_lock(text: str) -> Iterator[LockEntry]:
    """Yield the locked packages (``packages`` then ``packages-dev``) of a ``composer.lock``."""
    document = load_json_object(text, "composer.lock")
    sections = [document.get("packages"), document.get("packages-dev", [])]
    if not all(isinstance(section, list) for section in sections):
        raise LockfileError("composer.lock without 'packages' and 'packages-dev' lists")
    for section_name, section in zip(("packages", "packages-dev"), sections, strict=True):
        for index, package in enumerate(section or []):
            source = f"{section_name}[{index}]"
            if not isinstance(package, dict):
                yield LockEntry(source, None, "not an object")
                continue
            name, version = package.get("name"), package.get("version")
            if isinstance(name, str):
                source = f"{section_name}: {name[:200]}"
            dist = package.get("dist")
            kind = dist.get("type") if isinstance(dist, dict) else None
            if not isinstance(name, str) or not isinstance(version, str) or not version:
                yield LockEntry(source, None, "no name or version recorded")
                continue
            if kind in _LOCAL:
                yield LockEntry(source, None, f"not from a registry: dist type {kind}")
                continue
            try:
                canonical = validate_name(name)
            except InvalidName as exc:
                yield LockEntry(source, None, str(exc))
                continue
            shasum = dist.get("shasum") if isinstance(dist, dict) else None
            pinned = pinned_digest("sha1", shasum) if isinstance(shasum, str) else ()
            yield LockEntry(source, purl_key("composer", canonical, version), integrity=pinned)


COMPOSER_LOCK = LockfileFormat(
    name="composer.lock",
    filenames=("composer.lock",),
    detect=lambda base, text: '"content-hash"' in text and '"packages"' in text,
    read=read_composer_lock,
    json=True,
)

__all__ = ["COMPOSER_LOCK", "read_composer_lock"]
