"""The Simple Repository API under ``/pypi/simple/``, with files under ``/pypi/files/``.

Spec: ``pypa/packaging.python.org:source/specifications/simple-repository-api.rst`` (PEP 503
HTML, PEP 691 JSON chosen by ``Accept``, PEP 592 yanks, PEP 629 repository version, PEP 700
``versions``/``size``/``upload-time``, PEP 792 project status). Project pages live at the
normalized name with a trailing slash; any other spelling is redirected there (301). Both forms
are rendered from one PEP 691 dict; every file links to ``/pypi/files/<sha256>/<filename>``
with ``#sha256=`` in HTML and ``hashes`` in JSON, so a file request names the exact bytes it
wants. A file whose upstream advertises its core metadata (PEP 658/714, with a sha256) carries
``data-core-metadata``/``data-dist-info-metadata`` (HTML) and ``core-metadata`` (JSON: the
old key breaks pip 22.3 to 23.1), and ``<file URL>.metadata`` serves it, checked against that
sha256: pip resolves from it without downloading the wheel. The indexer records each sidecar as
an artifact of its release (``<wheel>.metadata``), so it is archived beside its wheel and the
fallback page advertises the archived ones.

Upstream first: the project page is fetched as PEP 691 JSON from ``registries.pypi.index_url``
and re-rendered with Forage URLs. When the upstream fails the page is built from the index:
archived files of releases the registry has not removed, yanks marked; a quarantined project
(PEP 792) lists no files and none of its files is ever served. When neither can answer, the
answer is a 5xx (:mod:`indexers.mirror.failures`), never the 404 kept for what PyPI does not
have: pip retries a 503 and names a 502 or 504 on a file as an HTTP error.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urldefrag, urljoin

from aiohttp import web
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from indexers.base import parse_time
from indexers.errors import ArchiveInvalid, InvalidName, UpstreamFailed
from indexers.mirror.failures import unavailable
from indexers.mirror.registry import EcosystemRoutes, FileRef, source_headers
from indexers.mirror.rows import ArchivedFile, PackageRows, Withdrawn
from indexers.mirror.spool import send_spool
from indexers.pypi.indexer import METADATA_SUFFIX as METADATA
from indexers.pypi.indexer import advertised_metadata, normalize

log = logging.getLogger(__name__)

ECOSYSTEM = "pypi"
SIMPLE = "/pypi/simple/"
FILES = "/pypi/files/"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
SIMPLE_HTML = "application/vnd.pypi.simple.v1+html"
API_VERSION = "1.1"
FILE_TYPE = "application/octet-stream"
METADATA_TYPE = "text/plain"

MAX_NAME = 255
#: PEP 792 markers a fallback page repeats from the index (``quarantined`` lists nothing).
_SHOWN_STATUSES = frozenset({"archived", "deprecated"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!~-]*")


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


def check_filename(filename: str) -> str:
    """Return a distribution file name if it is plain (no path, no dot-dot), else raise."""
    if len(filename) > MAX_NAME or not _FILENAME.fullmatch(filename) or ".." in filename:
        raise InvalidName(ECOSYSTEM, filename, "not a plain distribution file name")
    return filename


def failed(error: UpstreamFailed, headers: dict[str, str], retry_after: float) -> web.Response:
    """Neither the upstream nor the archive can answer (:mod:`indexers.mirror.failures`)."""
    answer = unavailable(error, headers, retry_after=retry_after)
    text = f"{answer.status} {answer.message}\n"
    return web.Response(status=answer.status, text=text, headers=answer.headers)


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
        if not _SHA256.fullmatch(sha256) or not isinstance(filename, str):
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


def _file_project(filename: str) -> str | None:
    """The normalized project a distribution file names (``None``: a legacy name)."""
    try:
        return str(parse_wheel_filename(filename)[0])
    except (InvalidWheelFilename, InvalidVersion):
        pass
    try:
        return str(parse_sdist_filename(filename)[0])
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


class PyPIRoutes(EcosystemRoutes):
    """The handlers, bound to the application's
    :class:`~indexers.mirror.registry.MirrorContext`."""

    ecosystem = ECOSYSTEM
    prefix = SIMPLE

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/pypi/simple", self.redirect_root)
        app.router.add_get(SIMPLE, self.root)
        app.router.add_get(SIMPLE + "{name}", self.redirect_project)
        app.router.add_get(SIMPLE + "{name}/", self.project)
        app.router.add_get(FILES + "{sha256}/{filename}", self.file)

    @staticmethod
    def listing_path(name: str) -> str:
        return f"{SIMPLE}{normalize(name)}/"

    @staticmethod
    def file_path(name: str, version: str, filename: str, digests: Mapping[str, str]) -> str:
        return f"{FILES}{digests['sha256']}/{quote(filename)}"

    def _respond(
        self, request: web.Request, doc: Mapping[str, Any], headers: dict[str, str]
    ) -> web.Response:
        kind = negotiate(request.headers.get("Accept", ""))
        headers = {**headers, "Vary": "Accept"}
        if kind == SIMPLE_JSON:
            return web.Response(body=render_json(doc), content_type=SIMPLE_JSON, headers=headers)
        return web.Response(body=render_html(doc), content_type=kind, headers=headers)

    async def redirect_root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(SIMPLE)

    async def root(self, request: web.Request) -> web.StreamResponse:
        """The project list: what the index knows (a full upstream list is not proxied)."""
        names = await self.mirror.archive.package_names(ECOSYSTEM)
        kind = negotiate(request.headers.get("Accept", ""))
        headers = {**source_headers("archive"), "Vary": "Accept"}
        if kind == SIMPLE_JSON:
            doc = {"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in names]}
            return web.Response(body=render_json(doc), content_type=SIMPLE_JSON, headers=headers)
        links = "".join(f'    <a href="{SIMPLE}{quote(n)}/">{html.escape(n)}</a>\n' for n in names)
        page = (
            "<!DOCTYPE html>\n<html>\n  <head>\n"
            f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
            f"  </head>\n  <body>\n{links}  </body>\n</html>\n"
        )
        return web.Response(text=page, content_type=kind, headers=headers)

    def _canonical(self, name: str) -> str | web.Response:
        if len(name) > MAX_NAME:
            return web.Response(status=400, text=f"400 Bad Request: name over {MAX_NAME} chars\n")
        try:
            return normalize(name)
        except InvalidName as exc:
            return web.Response(status=400, text=f"400 Bad Request: {exc}\n")

    async def redirect_project(self, request: web.Request) -> web.StreamResponse:
        canonical = self._canonical(request.match_info["name"])
        if isinstance(canonical, web.Response):
            return canonical
        raise web.HTTPMovedPermanently(f"{SIMPLE}{canonical}/")

    async def project(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        canonical = self._canonical(name)
        if isinstance(canonical, web.Response):
            return canonical
        if canonical != name:
            raise web.HTTPMovedPermanently(f"{SIMPLE}{canonical}/")
        base = self.mirror.public_base(str(request.url.origin()))
        try:
            page = await self.upstream_page(canonical, base)
        except UpstreamFailed as exc:
            return await self.fallback(request, canonical, base, exc)
        if page is None:
            return web.Response(
                status=404, text="404 Not Found\n", headers=source_headers("upstream")
            )
        page = withdraw_page(page, await self.withdrawn(canonical))
        page = cool_page(page, self.registry.cutoff())
        return self._respond(request, page, source_headers("upstream"))

    async def upstream_offers(self, file: ArchivedFile) -> bool | None:
        """Whether the upstream's project page still lists the file."""
        page = await self.upstream_page(file.package, "")
        return page is not None and any(f.get("filename") == file.filename for f in page["files"])

    async def upstream_page(self, name: str, base: str) -> dict[str, Any] | None:
        """The upstream's page of ``name`` with Forage URLs, its files' locations remembered
        (``None``: PyPI has no such project). Raises ``UpstreamFailed``."""
        url = f"{self.registry.base_url}/{name}/"
        answer, _ = await self.registry.document(url, headers={"accept": SIMPLE_JSON})
        if answer.absent:
            return None
        try:
            doc = json.loads(answer.body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
            raise UpstreamFailed(url, "status", "project page is not PEP 691 JSON")

        def remember(key: str | tuple[str, str], ref: FileRef) -> None:
            self.registry.refs.put(key, ref)

        return rewrite_page(doc, page_url=answer.url, base=base, remember=remember)

    async def fallback(
        self, request: web.Request, name: str, base: str, error: UpstreamFailed
    ) -> web.StreamResponse:
        """The archive's page, rendered once per change of the index and form."""
        headers = {**source_headers("archive", error=error), "Vary": "Accept"}
        kind = negotiate(request.headers.get("Accept", ""))
        stamp = await self.registry.remembered(
            ("stamp", name), lambda: self.mirror.archive.package_stamp(ECOSYSTEM, name)
        )
        body = b""
        if stamp is not None:
            cutoff = self.registry.cutoff()
            minute = cutoff.replace(second=0, microsecond=0) if cutoff else None
            key = ("page", name, base, kind, stamp, minute)
            cached = self.registry.rendered.fresh(key)
            if cached is not None:
                body = cached.value
            else:
                rows = await self.mirror.archive.package_rows(ECOSYSTEM, name)
                page = fallback_page(rows, base=base) if rows is not None else None
                page = cool_page(page, minute) if page is not None else None
                if page is not None:
                    render = render_json if kind == SIMPLE_JSON else render_html
                    body = await asyncio.to_thread(render, page)
                self.registry.rendered.put(key, body)
        if not body:
            hold = await self.mirror.archive.package_hold(ECOSYSTEM, name)
            if hold is not None:
                return web.Response(status=404, text=f"404 Not Found: {hold}\n", headers=headers)
            return failed(error, headers, self.registry.settings.down_seconds)
        return web.Response(body=body, content_type=kind, headers=headers)

    async def file(self, request: web.Request) -> web.StreamResponse:
        sha256 = request.match_info["sha256"]
        try:
            filename = check_filename(request.match_info["filename"])
        except InvalidName as exc:
            return web.Response(status=400, text=f"400 Bad Request: {exc}\n")
        if not _SHA256.fullmatch(sha256):
            return web.Response(status=400, text="400 Bad Request: not a sha256 hex digest\n")
        if filename.endswith(METADATA):
            return await self.metadata_file(request, sha256, filename)
        archived = await self.mirror.archive.find_file(ECOSYSTEM, filename=filename, sha256=sha256)
        if archived is not None and archived.hold is not None:
            return web.Response(status=404, text=f"404 Not Found: {archived.hold}\n")
        local = await self.serve_local(request, archived, content_type=FILE_TYPE)
        if local is not None:
            return local
        cached = self.registry.refs.stale(sha256)
        url = cached.value.url if cached is not None else archived.url if archived else None
        error: UpstreamFailed | None = None
        if url is None:
            try:
                learnt = await self._learn(request, sha256, filename)
                url = learnt.url if learnt is not None else None
            except UpstreamFailed as exc:
                error = exc
        if url is not None:
            try:
                project = _file_project(filename)
                fetched = await self.registry.file(url, {"sha256": sha256}, package=project)
                if fetched.spool is not None:
                    headers = source_headers("upstream", verified=fetched.verified)
                    return await send_spool(
                        request, fetched.spool, content_type=FILE_TYPE, headers=headers
                    )
                if archived is not None:
                    return await self.serve_archived(request, archived, removed=True)
                return web.Response(
                    status=404, text="404 Not Found\n", headers=source_headers("upstream")
                )
            except UpstreamFailed as exc:
                error = exc
        if archived is None:
            headers = source_headers("archive", error=error)
            if error is None:
                return web.Response(status=404, text="404 Not Found\n", headers=headers)
            return failed(error, headers, self.registry.settings.down_seconds)
        return await self.serve_archived(request, archived, removed=archived.removed, error=error)

    async def _learn(
        self, request: web.Request, key: str | tuple[str, str], filename: str
    ) -> FileRef | None:
        """Where the upstream serves the file ``key`` names (its sha256, or ``(".metadata",
        sha256)`` for its core metadata): remembered from a page, else learnt by reading the
        page of the project ``filename`` belongs to (``None``: not listed there). Raises
        ``UpstreamFailed``."""
        cached = self.registry.refs.stale(key)
        project = _file_project(filename)
        if cached is None and project is not None:
            await self.upstream_page(project, self.mirror.public_base(str(request.url.origin())))
            cached = self.registry.refs.stale(key)
        return cached.value if cached is not None else None

    async def metadata_file(
        self, request: web.Request, sha256: str, filename: str
    ) -> web.StreamResponse:
        """PEP 658: the core metadata of the file ``sha256`` names, checked against the sha256
        its page advertised (the upstream page is read again when that is not known); the
        archived copy when the upstream cannot give it."""
        dist = filename.removesuffix(METADATA)
        owner = await self.mirror.archive.find_file(ECOSYSTEM, filename=dist, sha256=sha256)
        if owner is not None and owner.hold is not None:
            return web.Response(status=404, text=f"404 Not Found: {owner.hold}\n")
        archived = await self.mirror.archive.find_file(ECOSYSTEM, filename=filename)
        local = await self.serve_local(request, archived, content_type=METADATA_TYPE)
        if local is not None:
            return local
        error: UpstreamFailed | None = None
        try:
            ref = await self._learn(request, (METADATA, sha256), dist)
            if ref is not None:
                project = _file_project(dist)
                fetched = await self.registry.file(ref.url, ref.digests, package=project)
                if fetched.spool is not None:
                    headers = source_headers("upstream", verified=fetched.verified)
                    return await send_spool(
                        request, fetched.spool, content_type=METADATA_TYPE, headers=headers
                    )
        except UpstreamFailed as exc:
            error = exc
        headers = source_headers("archive" if error else "upstream", error=error)
        if archived is not None:
            removed = archived.removed if error is not None else True  # else: upstream has none
            return await self.serve_archived(
                request, archived, removed=removed, error=error, content_type=METADATA_TYPE
            )
        if error is None:
            return web.Response(status=404, text="404 Not Found\n", headers=headers)
        return failed(error, headers, self.registry.settings.down_seconds)

    async def serve_archived(
        self,
        request: web.Request,
        archived: ArchivedFile,
        *,
        removed: bool,
        error: UpstreamFailed | None = None,
        content_type: str = FILE_TYPE,
    ) -> web.StreamResponse:
        return await self.send_archived(
            request,
            archived,
            removed=removed,
            error=error,
            content_type=content_type,
            refuse=_refuse,
        )


def _refuse(exc: ArchiveInvalid, headers: dict[str, str]) -> web.Response:
    """pip's answer for an archived copy that fails verification."""
    return web.Response(
        status=502,
        text=f"502 Bad Gateway: archived copy failed verification: {exc.reason}\n",
        headers=headers,
    )


__all__ = [
    "SIMPLE_HTML",
    "SIMPLE_JSON",
    "PyPIRoutes",
    "check_filename",
    "cool_page",
    "fallback_page",
    "negotiate",
    "render_html",
    "render_json",
    "rewrite_page",
    "withdraw_page",
]
