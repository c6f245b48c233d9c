"""Read the packages a lockfile or SBOM names, as lookup keys.

Each ecosystem's home declares its own formats (:class:`~indexers.ecosystem.LockfileFormat`:
npm's ``package-lock.json``, pip's ``requirements.txt``, Go's ``go.sum``...); the one format
that spans ecosystems, a CycloneDX JSON SBOM (https://cyclonedx.org/docs/1.6/json/, every
component's ``purl``), lives here. :func:`read_lockfile` picks the format by file name, then by
content, and returns one :class:`~indexers.types.LockEntry` per dependency: a purl key, or a
``problem`` saying why it has none; one bad line never hides the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from packageurl import PackageURL

from indexers.ecosystem import LockfileFormat
from indexers.errors import LockfileError
from indexers.jsontext import load_json
from indexers.types import LockEntry

#: The most dependencies one lockfile may name; larger files are refused.
MAX_ENTRIES = 100_000


def purl_key(type_: str, name: str, version: str) -> str:
    """The purl of one release; a ``/`` in ``name`` separates the namespace."""
    namespace, _, base = name.rpartition("/")
    return PackageURL(
        type=type_, namespace=namespace or None, name=base, version=version
    ).to_string()


def load_json_object(text: str, what: str) -> dict[str, Any]:
    """Parse a JSON lockfile, which must be an object of Unicode text (no lone surrogates:
    see :mod:`indexers.jsontext`); ``LockfileError`` otherwise."""
    try:
        document = load_json(text)
    except ValueError as exc:
        raise LockfileError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise LockfileError("a JSON lockfile must be an object")
    return document


def read_cyclonedx(text: str) -> Iterator[LockEntry]:
    """Yield every component (nested ones too) of a CycloneDX JSON SBOM by its purl."""
    document: Mapping[str, Any] = load_json_object(text, "CycloneDX SBOM")
    stack = list(document.get("components") or [])
    while stack:
        component = stack.pop(0)
        if not isinstance(component, dict):
            continue
        stack.extend(component.get("components") or [])
        source = str(component.get("bom-ref") or component.get("name") or "component")
        purl = component.get("purl")
        if isinstance(purl, str) and purl:
            yield LockEntry(source[:300], purl)
        else:
            yield LockEntry(source[:300], None, "component has no purl")


CYCLONEDX = LockfileFormat(
    name="CycloneDX SBOM",
    detect=lambda base, text: '"bomFormat"' in text and '"CycloneDX"' in text,
    read=read_cyclonedx,
    json=True,
)


def lockfile_formats() -> tuple[LockfileFormat, ...]:
    """Every format Forage reads: each registered ecosystem's, then CycloneDX."""
    from indexers.ecosystems import ECOSYSTEMS

    own = tuple(fmt for eco in ECOSYSTEMS.values() for fmt in eco.lockfiles)
    return (*own, CYCLONEDX)


def _choose(text: str, base: str) -> LockfileFormat:
    formats = lockfile_formats()
    named = [fmt for fmt in formats if base and fmt.filenames and base in fmt.filenames]
    if named:
        return named[0]
    for fmt in formats:
        if fmt.detect(base, text):
            return fmt
    if text.lstrip().startswith(("{", "[")):
        load_json_object(text, base or "lockfile")
        names = [f"a {fmt.name}" for fmt in formats if fmt.json]
        raise LockfileError("JSON that is neither " + " nor ".join(names))
    known = ", ".join(fmt.name for fmt in formats)
    raise LockfileError(f"{base or 'the document'} is not a lockfile Forage reads ({known})")


def read_lockfile(data: bytes, *, filename: str = "") -> list[LockEntry]:
    """Detect the format of ``data`` (by name, then content) and return its entries."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LockfileError(f"{filename or 'lockfile'} is not UTF-8 text") from exc
    base = filename.rsplit("/", 1)[-1]
    result: list[LockEntry] = []
    for entry in _choose(text, base).read(text):
        if len(result) >= MAX_ENTRIES:
            raise LockfileError(f"more than {MAX_ENTRIES} dependencies")
        result.append(entry)
    return result


__all__ = [
    "CYCLONEDX",
    "MAX_ENTRIES",
    "LockEntry",
    "LockfileError",
    "load_json_object",
    "lockfile_formats",
    "purl_key",
    "read_cyclonedx",
    "read_lockfile",
]
