"""The PEP 691 project dict the PyPI mirror renders its simple pages from, and the two
renderings (PEP 503 HTML, PEP 691 JSON).

One dict per page, built from the upstream's page (Forage file URLs, its files' locations
remembered), from the last good upstream page kept on disk and filtered by the archive (issue
16), or from the index alone; then withdrawn, cooled and rendered the same way whichever it
came from (``pypa/packaging.python.org:source/specifications/simple-repository-api.rst``).
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urldefrag, urljoin

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from indexers.base import parse_time
from indexers.mirror.registry import FileRef
from indexers.mirror.rows import PackageRows, Withdrawn
from indexers.pypi.indexer import METADATA_SUFFIX as METADATA
from indexers.pypi.indexer import advertised_metadata

log = logging.getLogger(__name__)

FILES = "/pypi/files/"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
SIMPLE_HTML = "application/vnd.pypi.simple.v1+html"
API_VERSION = "1.1"
#: PEP 792 markers a fallback page repeats from the index (``quarantined`` lists nothing).
_SHOWN_STATUSES = frozenset({"archived", "deprecated"})
SHA256 = re.compile(r"[0-9a-f]{64}")


def negotiate(accept: str) -> str:
    """Pick the page format from ``Accept`` by q-value: PEP 691 JSON, v1 HTML or ``text/html``.

    No header, ``*/*`` or nothing we serve: HTML (the spec lets a server pick a default).
    """
    best = ("text/html", 0.0)
    for part in accept.split(","):
        media, *options = [item.strip() for item in part.split(";")]
        quality = 1.0
        for option in options:
            if option.startswith("q="):
                try:
                    quality = float(option[2:])
                except ValueError:
                    quality = 0.0
        kind = {SIMPLE_JSON: SIMPLE_JSON, SIMPLE_HTML: SIMPLE_HTML, "text/html": "text/html"}.get(
            media
        )
        if kind is not None and quality > best[1]:
            best = (kind, quality)
    return best[0]


def file_url(base: str, sha256: str, filename: str) -> str:
    return f"{base}{FILES}{sha256}/{quote(filename)}"


def _with_metadata(entry: dict[str, Any], sha256: str | None) -> dict[str, Any]:
    # Only the PEP 714 key: pip 22.3 to 23.1 (Debian 12's venv bundles 23.0.1) fails hard on
    # any JSON "dist-info-metadata" (PEP 714, "Motivation"); HTML may carry both names.
    if sha256 is not None:
        entry["core-metadata"] = {"sha256": sha256}
    return entry


def render_json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def render_html(doc: Mapping[str, Any]) -> bytes:
    """The PEP 503 page of a PEP 691 project dict (yanks and Requires-Python kept)."""
    name = html.escape(str(doc["name"]))
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
    ]
    status = doc.get("project-status")
    if isinstance(status, Mapping) and status.get("status"):
        lines.append(
            f'    <meta name="pypi:project-status" content="{html.escape(str(status["status"]))}">'
        )
    lines += [f"    <title>Links for {name}</title>", "  </head>", "  <body>"]
    lines.append(f"    <h1>Links for {name}</h1>")
    for file in doc["files"]:
        sha256 = file["hashes"].get("sha256", "")
        attrs = [f'href="{html.escape(file["url"])}#sha256={sha256}"']
        if file.get("requires-python"):
            attrs.append(f'data-requires-python="{html.escape(file["requires-python"])}"')
        metadata = advertised_metadata(file)
        if metadata is not None:
            value = f"sha256={metadata}"
            attrs.append(f'data-dist-info-metadata="{value}" data-core-metadata="{value}"')
        yanked = file.get("yanked")
        if yanked:
            reason = yanked if isinstance(yanked, str) else ""
            attrs.append(f'data-yanked="{html.escape(reason)}"')
        lines.append(f"    <a {' '.join(attrs)}>{html.escape(file['filename'])}</a><br />")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode()


def rewrite_page(
    doc: Mapping[str, Any], *, page_url: str, base: str, remember: Any
) -> dict[str, Any]:
    """An upstream PEP 691 page with Forage file URLs; ``remember(key, FileRef)`` is told each
    upstream file's location (key: its sha256) and each advertised core metadata file's (key:
    ``(".metadata", the file's sha256)``). Files without a sha256 are dropped (nothing to
    verify)."""
    files = []
    for entry in doc.get("files") or []:
        if not isinstance(entry, dict):
            continue
        given = entry.get("hashes")
        hashes = given if isinstance(given, dict) else {}
        sha256 = str(hashes.get("sha256", "")).lower()
        filename = entry.get("filename")
        href = entry.get("url")
        if not SHA256.fullmatch(sha256) or not isinstance(filename, str):
            log.warning("pypi page %s: dropping a file without a sha256", page_url)
            continue
        if not isinstance(href, str):
            continue
        location = urldefrag(urljoin(page_url, href)).url
        remember(sha256, FileRef(location, {"sha256": sha256}))
        metadata = advertised_metadata(entry)
        if metadata is not None:
            remember((METADATA, sha256), FileRef(location + METADATA, {"sha256": metadata}))
        out = {
            key: entry[key]
            for key in ("filename", "requires-python", "yanked", "size", "upload-time")
            if key in entry
        }
        out["url"] = file_url(base, sha256, filename)
        out["hashes"] = {"sha256": sha256}
        files.append(_with_metadata(out, metadata))
    rewritten: dict[str, Any] = {
        "meta": {"api-version": API_VERSION},
        "name": doc.get("name"),
        "files": files,
        "versions": list(doc.get("versions") or []),
    }
    if doc.get("project-status"):
        rewritten["project-status"] = doc["project-status"]
    return rewritten


def _held_page(name: str, hold: str) -> dict[str, Any]:
    """The page of a project that must not be served: PEP 792 ``quarantined``, no files."""
    return {
        "meta": {"api-version": API_VERSION},
        "name": name,
        "project-status": {"status": "quarantined", "reason": hold},
        "files": [],
        "versions": [],
    }


def withdraw_page(doc: dict[str, Any], withdrawn: Withdrawn) -> dict[str, Any]:
    """An upstream page without what the index knows PyPI withdrew (removed releases and
    files; everything of a quarantined project), so a stale upstream cannot list it again."""
    if not withdrawn:
        return doc
    if withdrawn.hold is not None:
        return _held_page(str(doc.get("name")), withdrawn.hold)
    return {
        **doc,
        "files": [f for f in doc["files"] if f.get("filename") not in withdrawn.files],
        "versions": [v for v in doc["versions"] if v not in withdrawn.versions],
    }


def fallback_page(rows: PackageRows, *, base: str) -> dict[str, Any] | None:
    """The PEP 691 page of what the archive holds (``None`` when it holds nothing to list)."""
    if rows.hold is not None:
        return _held_page(rows.name, rows.hold)
    files = []
    versions: dict[str, None] = {}
    listed = rows.listed_files()
    sidecars = {
        f.filename.removesuffix(METADATA): f.digests.get("sha256")
        for f in listed
        if f.filename.endswith(METADATA)
    }
    for file in listed:
        sha256 = file.digests.get("sha256")
        if sha256 is None or file.filename.endswith(METADATA):
            continue
        entry: dict[str, Any] = {
            "filename": file.filename,
            "url": file_url(base, sha256, file.filename),
            "hashes": {"sha256": sha256},
            "requires-python": file.requires_python,
            "size": file.size,
            "yanked": (file.yanked_reason or True) if file.yanked else False,
        }
        if file.uploaded_at is not None:
            entry["upload-time"] = file.uploaded_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        files.append(_with_metadata(entry, sidecars.get(file.filename)))
        versions[file.version] = None
    if not files:
        return None
    page: dict[str, Any] = {
        "meta": {"api-version": API_VERSION},
        "name": rows.name,
        "files": files,
        "versions": list(versions),
    }
    if rows.status in _SHOWN_STATUSES:
        page["project-status"] = {"status": rows.status}
    return page


def _file_version(filename: str) -> Version | None:
    try:
        return parse_wheel_filename(filename)[1]
    except (InvalidWheelFilename, InvalidVersion):
        pass
    try:
        return parse_sdist_filename(filename)[1]
    except (InvalidSdistFilename, InvalidVersion):
        return None


def _listed_version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def cool_page(page: dict[str, Any], cutoff: datetime | None) -> dict[str, Any]:
    """``page`` without the files uploaded after ``cutoff`` (a cooldown, per file by its
    ``upload-time`` as uv's ``exclude-newer``), and without the versions only those files
    carried. Files without an upload time stay."""
    if cutoff is None:
        return page
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for file in page.get("files") or []:
        uploaded = parse_time(file.get("upload-time"))
        (dropped if uploaded is not None and uploaded > cutoff else kept).append(file)
    if not dropped:
        return page
    still = {_file_version(f["filename"]) for f in kept}
    gone = {_file_version(f["filename"]) for f in dropped} - still - {None}
    versions = [v for v in page.get("versions") or [] if _listed_version(v) not in gone]
    return {**page, "files": kept, "versions": versions}


def kept_page(body: bytes, rows: PackageRows, *, page_url: str, base: str) -> dict[str, Any] | None:
    """The last good upstream page (issue 16) with only the files archived and not removed
    (same name, same sha256), core metadata advertised only where its sidecar is archived
    too, and the versions those files carry (``None``: unusable, or nothing left)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        return None
    page = rewrite_page(doc, page_url=page_url, base=base, remember=lambda key, ref: None)
    listed = {(f.filename, f.digests.get("sha256")) for f in rows.listed_files()}
    sidecars = {
        f.filename.removesuffix(METADATA): f.digests.get("sha256")
        for f in rows.listed_files()
        if f.filename.endswith(METADATA)
    }
    files = []
    for entry in page["files"]:
        if (entry["filename"], entry["hashes"]["sha256"]) not in listed:
            continue
        entry.pop("core-metadata", None)
        files.append(_with_metadata(entry, sidecars.get(entry["filename"])))
    if not files:
        return None
    carried = {_file_version(f["filename"]) for f in files}
    versions = [v for v in page["versions"] if _listed_version(v) in carried]
    return {**page, "files": files, "versions": versions}


__all__ = [
    "API_VERSION",
    "FILES",
    "SHA256",
    "SIMPLE_HTML",
    "SIMPLE_JSON",
    "cool_page",
    "fallback_page",
    "file_url",
    "kept_page",
    "negotiate",
    "render_html",
    "render_json",
    "rewrite_page",
    "withdraw_page",
]
