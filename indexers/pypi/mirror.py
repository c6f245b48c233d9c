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
and re-rendered with Forage URLs (:mod:`.pages`), and kept on disk as the last good page.
When the upstream fails, that page is served with only the files archived and not removed;
without one, the page is built from the index: archived files of releases the registry has
not removed, yanks marked; a quarantined project
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
from urllib.parse import quote

from aiohttp import web
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion

from indexers.errors import ArchiveInvalid, InvalidName, UpstreamFailed
from indexers.mirror.failures import unavailable
from indexers.mirror.listings import outage_listing
from indexers.mirror.registry import EcosystemRoutes, FileRef, source_headers
from indexers.mirror.rows import ArchivedFile, PackageRows
from indexers.mirror.spool import send_spool
from indexers.pypi.indexer import METADATA_SUFFIX as METADATA
from indexers.pypi.indexer import normalize
from indexers.pypi.pages import (
    API_VERSION,
    FILES,
    SHA256,
    SIMPLE_HTML,
    SIMPLE_JSON,
    cool_page,
    fallback_page,
    kept_page,
    negotiate,
    render_html,
    render_json,
    rewrite_page,
    withdraw_page,
)

log = logging.getLogger(__name__)

ECOSYSTEM = "pypi"
SIMPLE = "/pypi/simple/"
FILE_TYPE = "application/octet-stream"
METADATA_TYPE = "text/plain"

MAX_NAME = 255
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!~-]*")


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
        url = self._page_url(name)
        answer, _ = await self.registry.document(url, headers={"accept": SIMPLE_JSON}, keep=True)
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

    def _page_url(self, name: str) -> str:
        return f"{self.registry.base_url}/{name}/"

    async def fallback(
        self, request: web.Request, name: str, base: str, error: UpstreamFailed
    ) -> web.StreamResponse:
        """The last good upstream page filtered by the archive, else the index's own page;
        rendered once per change of either and per form."""
        headers = {**source_headers("archive", error=error), "Vary": "Accept"}
        kind = negotiate(request.headers.get("Accept", ""))
        url = self._page_url(name)

        async def render(rows: PackageRows, kept: bytes | None, cutoff: datetime | None) -> bytes:
            page = None
            if kept is not None and rows.hold is None:
                page = kept_page(kept, rows, page_url=url, base=base)
            page = page or fallback_page(rows, base=base)
            if page is None:
                return b""
            render = render_json if kind == SIMPLE_JSON else render_html
            return await asyncio.to_thread(render, cool_page(page, cutoff))

        body = await outage_listing(self, name, url=url, variant=(kind, base), render=render)
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
        if not SHA256.fullmatch(sha256):
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
        # Named by its project, the lookup goes through the packages' index, not every archive.
        project = owner.package if owner is not None else _file_project(dist)
        archived = await self.mirror.archive.find_file(ECOSYSTEM, name=project, filename=filename)
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
