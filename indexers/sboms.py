"""SBOMs, the lockfile formats that span ecosystems: every component named by its purl.

- CycloneDX JSON and XML (https://cyclonedx.org/docs/1.6/json/, .../1.6/xml/): each
  ``component`` (nested ones too) with its ``purl`` and ``hashes``;
- SPDX 2.3 JSON (https://spdx.github.io/spdx-spec/v2.3/package-information/): each package's
  ``externalRefs`` entry of type ``purl`` and its ``checksums``.

An XML SBOM is parsed by the standard library's expat, which resolves no external entity;
a document type declaration (the way to declare entities at all) is refused before parsing,
so no entity expansion is ever attempted (expat 2.4+ also bounds it).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping
from typing import Any

from indexers.ecosystem import LockfileFormat
from indexers.errors import LockfileError
from indexers.lockfiles import load_json_object, pinned_digest
from indexers.types import LockEntry

_CYCLONEDX_XMLNS = re.compile(r"\{http://cyclonedx\.org/schema/bom/[0-9.]+\}")
_DOCTYPE = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _entry(source: str, purl: object, integrity: tuple[tuple[str, str], ...]) -> LockEntry:
    if isinstance(purl, str) and purl.strip():
        return LockEntry(source[:300], purl.strip(), integrity=integrity)
    return LockEntry(source[:300], None, "component has no purl")


def _hashes(hashes: object, algorithm: str, value: str) -> tuple[tuple[str, str], ...]:
    """The digests of a list of ``{algorithm: ..., value: ...}`` objects (unknown ones left
    out)."""
    if not isinstance(hashes, list):
        return ()
    pinned: list[tuple[str, str]] = []
    for item in hashes:
        if isinstance(item, Mapping):
            alg, digest = item.get(algorithm), item.get(value)
            if isinstance(alg, str) and isinstance(digest, str):
                pinned.extend(pinned_digest(alg, digest))
    return tuple(pinned)


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
        integrity = _hashes(component.get("hashes"), "alg", "content")
        yield _entry(source, component.get("purl"), integrity)


def _local(tag: str) -> str:
    return _CYCLONEDX_XMLNS.sub("", tag)


def read_cyclonedx_xml(text: str) -> Iterator[LockEntry]:
    """Yield every component (nested ones too) of a CycloneDX XML SBOM by its purl."""
    if _DOCTYPE.search(text):
        raise LockfileError("CycloneDX XML with a document type declaration is refused")
    try:
        root = ElementTree.fromstring(text)  # noqa: S314 (no DTD: refused above)
    except ElementTree.ParseError as exc:
        raise LockfileError(f"CycloneDX SBOM is not well-formed XML: {exc}") from exc
    if _local(root.tag) != "bom":
        raise LockfileError("a CycloneDX XML SBOM's root element must be <bom>")
    # Components under <metadata> describe the project itself, not a dependency.
    listed = [child for child in root if _local(child.tag) == "components"]
    for element in (e for top in listed for e in top.iter()):
        if _local(element.tag) != "component":
            continue
        fields = {_local(child.tag): child for child in element}
        name = fields.get("name")
        source = element.get("bom-ref") or (name.text if name is not None else None)
        pinned: list[tuple[str, str]] = []
        hashes = fields.get("hashes")
        for digest in hashes if hashes is not None else ():
            pinned.extend(pinned_digest(digest.get("alg") or "", (digest.text or "").strip()))
        purl = fields.get("purl")
        yield _entry(source or "component", purl.text if purl is not None else None, tuple(pinned))


def read_spdx(text: str) -> Iterator[LockEntry]:
    """Yield every package of an SPDX 2.x JSON document by its ``purl`` external reference."""
    document = load_json_object(text, "SPDX document")
    packages = document.get("packages") or []
    if not isinstance(packages, list):
        raise LockfileError("an SPDX document's 'packages' must be a list")
    for package in packages:
        if not isinstance(package, dict):
            continue
        source = str(package.get("SPDXID") or package.get("name") or "package")
        refs = package.get("externalRefs") or []
        purls = [
            ref.get("referenceLocator")
            for ref in (refs if isinstance(refs, list) else [])
            if isinstance(ref, dict) and ref.get("referenceType") == "purl"
        ]
        integrity = _hashes(package.get("checksums"), "algorithm", "checksumValue")
        yield _entry(source, purls[0] if purls else None, integrity)


CYCLONEDX = LockfileFormat(
    name="CycloneDX JSON SBOM",
    detect=lambda base, text: '"bomFormat"' in text and '"CycloneDX"' in text,
    read=read_cyclonedx,
    json=True,
)

CYCLONEDX_XML = LockfileFormat(
    name="CycloneDX XML SBOM",
    detect=lambda base, text: (
        text.lstrip().startswith("<") and "cyclonedx.org/schema/bom" in text[:4096]
    ),
    read=read_cyclonedx_xml,
)

SPDX_JSON = LockfileFormat(
    name="SPDX 2.3 JSON",
    detect=lambda base, text: text.lstrip().startswith("{") and '"spdxVersion"' in text,
    read=read_spdx,
    json=True,
)

#: The SBOM formats, in the order their content is tried.
SBOM_FORMATS = (CYCLONEDX, CYCLONEDX_XML, SPDX_JSON)

__all__ = [
    "CYCLONEDX",
    "CYCLONEDX_XML",
    "SBOM_FORMATS",
    "SPDX_JSON",
    "read_cyclonedx",
    "read_cyclonedx_xml",
    "read_spdx",
]
