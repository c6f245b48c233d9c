"""A RubyGems source under ``/gems/``: the compact index, quick gemspecs and ``.gem`` files.

What the clients on these machines ask a source for (found by running them against a
logging server): ``gem install`` 3.3 sends ``HEAD /gems/`` -- a 200 means "compact index",
anything else makes it fall back to the legacy ``specs.4.8.gz`` files, which are therefore
not served -- then ``info/NAME`` and ``quick/Marshal.4.8/NAME-V[-PLATFORM].gemspec.rz`` per
gem, then ``gems/FILE.gem``; ``bundle install`` 2.3 reads ``versions``, ``info/NAME`` and
``gems/FILE.gem`` and checks each gem's SHA-256 against ``info``'s ``checksum``.

Upstream first: ``versions``, ``names``, ``info`` and quick gemspecs are fetched from
``registries.gem.registry_url``; ``info`` loses what the index knows was yanked (so a lagging
upstream cannot list it again) and teaches the mirror each gem's checksum. Gems are streamed
from the upstream and verified against that checksum; on any failure (down, 5xx, timeout, bad
bytes) the archive answers: ``info`` is the last good upstream one (kept on disk) with only
the archived gems of versions not yanked, else those gems with their dependencies as the
index recorded them; ``versions`` (its MD5s those of the ``info`` served) and ``names``
list the archived gems, gemspecs are written from the recorded ``info`` lines
(:mod:`.marshal`), and a yanked gem's file is served to an exact request only. Documents
carry an MD5 ``ETag`` and a ``Repr-Digest`` of the body served, as Bundler checks them;
``Range`` is ignored (a 200 is a valid answer that clients take whole).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from indexers.errors import ArchiveInvalid, FeedError, InvalidName, UpstreamFailed
from indexers.gem.compact import (
    InfoEntry,
    gem_filename,
    parse_info,
    parse_info_line,
    render_info,
    render_names,
    render_versions,
    split_version,
)
from indexers.gem.indexer import validate_name
from indexers.gem.marshal import quick_gemspec
from indexers.mirror.failures import unavailable
from indexers.mirror.listings import outage_listing
from indexers.mirror.registry import EcosystemRoutes, FileRef, source_headers
from indexers.mirror.rows import ArchivedFile, PackageRows, Withdrawn
from indexers.mirror.spool import send_spool

log = logging.getLogger(__name__)

ECOSYSTEM = "gem"
PREFIX = "/gems/"
GEM_TYPE = "application/octet-stream"
TEXT = "text/plain"
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,300}")


def _document_headers(body: bytes, source: dict[str, str]) -> dict[str, str]:
    md5 = hashlib.md5(body).hexdigest()  # noqa: S324 - Bundler compares it with the ETag
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return {**source, "ETag": f'"{md5}"', "Repr-Digest": f"sha-256=:{digest}:"}


def _text(body: bytes, source: dict[str, str]) -> web.Response:
    return web.Response(body=body, content_type=TEXT, headers=_document_headers(body, source))


def _not_found(headers: dict[str, str], why: str = "") -> web.Response:
    return web.Response(
        status=404, text=f"404 Not Found{': ' + why if why else ''}\n", headers=headers
    )


def _failed(error: UpstreamFailed, headers: dict[str, str], retry_after: float) -> web.Response:
    """Neither the upstream nor the archive has it: a 5xx ``gem`` and ``bundle`` report as a
    failed fetch (and retry), not "could not find gem" (:mod:`indexers.mirror.failures`)."""
    answer = unavailable(error, headers, retry_after=retry_after)
    text = f"{answer.status} {answer.message}\n"
    return web.Response(status=answer.status, text=text, headers=answer.headers)


def withdraw_info(entries: list[InfoEntry], name: str, withdrawn: Withdrawn) -> list[InfoEntry]:
    """``entries`` without what the index knows was yanked (all of a held gem)."""
    if withdrawn.hold is not None:
        return []
    return [
        e
        for e in entries
        if e.version not in withdrawn.versions
        and gem_filename(name, e.version, e.platform) not in withdrawn.files
    ]


def recorded_entry(extra: Mapping[str, Any], key: str, sha256: str | None) -> InfoEntry:
    """The ``/info`` entry the index recorded for ``V[-PLATFORM]`` (dependencies and
    requirements), with the archived file's checksum; a bare entry if none was recorded."""
    info = extra.get("info")
    line = info.get(key) if isinstance(info, Mapping) else None
    if isinstance(line, str):
        try:
            entry = parse_info_line(line, "index")
        except FeedError:
            pass
        else:
            return InfoEntry(
                entry.version,
                entry.platform,
                entry.dependencies,
                sha256,
                entry.ruby,
                entry.rubygems,
            )
    version, platform = split_version(key)
    return InfoEntry(version, platform, (), sha256)


def _key(name: str, filename: str) -> str:
    return filename[len(name) + 1 : -len(".gem")]


def fallback_entries(rows: PackageRows) -> list[InfoEntry]:
    """The ``/info`` entries of the archived gems of versions not yanked."""
    if rows.hold is not None:
        return []
    return [
        recorded_entry(rows.extra, _key(rows.name, f.filename), f.digests.get("sha256"))
        for f in rows.listed_files()
        if f.digests.get("sha256")
    ]


def kept_entries(body: bytes, rows: PackageRows) -> list[InfoEntry]:
    """The last good upstream ``/info`` (issue 16) with only the archived gems of versions
    not yanked, each with the archive's checksum (what Bundler checks the ``.gem`` against)."""
    if rows.hold is not None:
        return []
    try:
        entries = parse_info(body.decode(), rows.name)
    except (UnicodeDecodeError, FeedError):
        return []
    files = {f.filename: f for f in rows.listed_files() if f.digests.get("sha256")}
    kept = []
    for entry in entries:
        file = files.get(gem_filename(rows.name, entry.version, entry.platform))
        if file is not None:
            kept.append(dataclasses.replace(entry, checksum=file.digests["sha256"]))
    return kept


def _candidates(filename: str) -> list[tuple[str, str]]:
    """``(name, V[-PLATFORM])`` splits of a gem file name: at each ``-`` before a digit."""
    base = filename.removesuffix(".gem")
    return [
        (base[:i], base[i + 1 :])
        for i, char in enumerate(base)
        if char == "-" and i + 1 < len(base) and base[i + 1].isdigit()
    ]


class GemRoutes(EcosystemRoutes):
    """The handlers, bound to the application's mirror context."""

    ecosystem = ECOSYSTEM
    prefix = PREFIX

    def setup(self, app: web.Application) -> None:
        app.router.add_get(PREFIX, self.root)
        app.router.add_get(PREFIX + "versions", self.versions)
        app.router.add_get(PREFIX + "names", self.names)
        app.router.add_get(PREFIX + "info/{name}", self.info)
        app.router.add_get(PREFIX + "quick/Marshal.4.8/{filename}", self.quick)
        app.router.add_get(PREFIX + "gems/{filename}", self.gem)

    @staticmethod
    def listing_path(name: str) -> str:
        return f"{PREFIX}info/{name}"

    @staticmethod
    def file_path(name: str, version: str, filename: str, digests: Mapping[str, str]) -> str:
        return f"{PREFIX}gems/{filename}"

    def _upstream_url(self, path: str) -> str:
        return f"{self.registry.base_url}/{path}"

    async def _upstream(self, path: str, *, keep: bool = False) -> bytes | None:
        """The upstream's 200 body for ``path``, ``None`` when it says it has none;
        ``UpstreamFailed`` otherwise. ``keep``: kept as the last good document."""
        answer, _ = await self.registry.document(self._upstream_url(path), keep=keep)
        return None if answer.absent else answer.body

    async def archived_info(self, name: str) -> bytes | None:
        """``/info/NAME`` without the upstream: the last good one filtered by the archive,
        else the index's (``None``: nothing to list); ``versions`` takes its MD5 from it."""

        async def render(rows: PackageRows, kept: bytes | None, _: object) -> bytes | None:
            entries = kept_entries(kept, rows) if kept else []
            entries = entries or fallback_entries(rows)
            return render_info(entries) if entries else None

        url = self._upstream_url(f"info/{name}")
        return await outage_listing(self, name, url=url, variant="info", render=render)

    async def root(self, request: web.Request) -> web.StreamResponse:
        """200: how ``gem`` learns this source has a compact index."""
        return web.Response(text="Forage RubyGems mirror (compact index)\n")

    async def versions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._upstream("versions")
            if body is not None:
                return _text(body, source_headers("upstream"))
            error = UpstreamFailed(self._upstream_url("versions"), "status", "HTTP 404")
        except UpstreamFailed as exc:
            error = exc
        gems = []
        for name in await self.mirror.archive.package_names(ECOSYSTEM):
            info = await self.archived_info(name)
            if info:
                entries = parse_info(info.decode(), name)
                gems.append((name, [e.key for e in entries], info))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return _text(render_versions(now, gems), source_headers("archive", error=error))

    async def names(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._upstream("names")
            if body is not None:
                return _text(body, source_headers("upstream"))
            error = UpstreamFailed(self._upstream_url("names"), "status", "HTTP 404")
        except UpstreamFailed as exc:
            error = exc
        names = await self.mirror.archive.package_names(ECOSYSTEM)
        return _text(render_names(names), source_headers("archive", error=error))

    def _name(self, request: web.Request) -> str | web.Response:
        try:
            return validate_name(request.match_info["name"])
        except InvalidName as exc:
            return web.Response(status=400, text=f"400 Bad Request: {exc}\n")

    async def upstream_offers(self, file: ArchivedFile) -> bool | None:
        """Whether the gem's upstream ``/info`` still lists the file's version and platform."""
        entries = await self._upstream_info(file.package) or []
        names = {gem_filename(file.package, e.version, e.platform) for e in entries}
        return file.filename in names

    async def _upstream_info(self, name: str) -> list[InfoEntry] | None:
        """The upstream's ``/info`` entries (``None``: it has no such gem), checksums learnt."""
        body = await self._upstream(f"info/{name}", keep=True)
        if body is None:
            return None
        url = self._upstream_url(f"info/{name}")
        try:
            entries = parse_info(body.decode(), url)
        except (UnicodeDecodeError, FeedError) as exc:
            raise UpstreamFailed(url, "status", f"info is not a compact index: {exc}") from exc
        for entry in entries:
            if entry.checksum:
                filename = gem_filename(name, entry.version, entry.platform)
                gem_url = self._upstream_url(f"gems/{filename}")
                ref = FileRef(gem_url, {"sha256": entry.checksum}, package=name)
                self.registry.refs.put(filename, ref)
        return entries

    async def info(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request)
        if isinstance(name, web.Response):
            return name
        try:
            entries = await self._upstream_info(name)
            if entries is None:
                return _not_found(source_headers("upstream"))
            kept = withdraw_info(entries, name, await self.withdrawn(name))
            return _text(render_info(kept), source_headers("upstream"))
        except UpstreamFailed as exc:
            error = exc
        headers = source_headers("archive", error=error)
        body = await self.archived_info(name)
        if body is None:
            hold = await self.mirror.archive.package_hold(ECOSYSTEM, name)
            if hold is not None:
                return _not_found(headers, hold)
            return _failed(error, headers, self.registry.settings.down_seconds)
        return _text(body, headers)

    def _filename(self, request: web.Request, suffix: str) -> str | web.Response:
        filename = request.match_info["filename"]
        if not filename.endswith(suffix) or not _FILENAME.fullmatch(filename) or ".." in filename:
            return web.Response(status=400, text=f"400 Bad Request: not a *{suffix} file name\n")
        return filename

    async def quick(self, request: web.Request) -> web.StreamResponse:
        filename = self._filename(request, ".gemspec.rz")
        if isinstance(filename, web.Response):
            return filename
        gem = filename.removesuffix(".gemspec.rz") + ".gem"
        archived = await self.mirror.archive.find_file(ECOSYSTEM, filename=gem)
        if archived is not None and archived.hold is not None:
            return _not_found({}, archived.hold)
        absent = False
        try:
            body = await self._upstream(f"quick/Marshal.4.8/{filename}")
            if body is not None:
                return web.Response(
                    body=body, content_type=GEM_TYPE, headers=source_headers("upstream")
                )
            absent = True
            error = UpstreamFailed(
                self._upstream_url(f"quick/Marshal.4.8/{filename}"), "status", "HTTP 404"
            )
        except UpstreamFailed as exc:
            error = exc
        headers = source_headers("archive", error=error)
        if archived is None:
            if absent:
                return _not_found(headers)
            return _failed(error, headers, self.registry.settings.down_seconds)
        extra = await self.mirror.archive.package_extra(ECOSYSTEM, archived.package) or {}
        entry = recorded_entry(extra, _key(archived.package, gem), archived.digests.get("sha256"))
        when = archived.published_at or archived.uploaded_at
        date = when.strftime("%Y-%m-%d") if when else None
        return web.Response(
            body=quick_gemspec(archived.package, entry, date=date),
            content_type=GEM_TYPE,
            headers=headers,
        )

    async def _learn(self, filename: str) -> FileRef | None:
        """The upstream location and checksum of ``filename``, from its gem's ``/info``."""
        cached = self.registry.refs.stale(filename)
        if cached is not None:
            return cached.value
        for name, _ in _candidates(filename):
            try:
                validate_name(name)
            except InvalidName:
                continue
            await self._upstream_info(name)
            cached = self.registry.refs.stale(filename)
            if cached is not None:
                return cached.value
        return None

    async def gem(self, request: web.Request) -> web.StreamResponse:
        filename = self._filename(request, ".gem")
        if isinstance(filename, web.Response):
            return filename
        archived = await self.mirror.archive.find_file(ECOSYSTEM, filename=filename)
        if archived is not None and archived.hold is not None:
            return _not_found({}, archived.hold)
        local = await self.serve_local(request, archived, content_type=GEM_TYPE)
        if local is not None:
            return local
        error: UpstreamFailed | None = None
        try:
            if self.registry.upstream is None:
                raise self.registry.offline_error(filename)
            ref = await self._learn(filename)
            if ref is None and archived is not None:
                ref = FileRef(self._upstream_url(f"gems/{filename}"), archived.digests)
            if ref is None:
                return _not_found(source_headers("upstream"))
            fetched = await self.registry.file(ref.url, ref.digests, package=ref.package)
            if fetched.spool is not None:
                headers = source_headers("upstream", verified=fetched.verified)
                return await send_spool(
                    request, fetched.spool, content_type=GEM_TYPE, headers=headers
                )
            if archived is not None:
                return await self._archived(request, archived, removed=True, error=None)
            return _not_found(source_headers("upstream"))
        except UpstreamFailed as exc:
            error = exc
        if archived is None:
            headers = source_headers("archive", error=error)
            if error is None:
                return _not_found(headers)
            return _failed(error, headers, self.registry.settings.down_seconds)
        return await self._archived(request, archived, removed=archived.removed, error=error)

    async def _archived(
        self,
        request: web.Request,
        archived: ArchivedFile,
        *,
        removed: bool,
        error: UpstreamFailed | None,
    ) -> web.StreamResponse:
        return await self.send_archived(
            request, archived, removed=removed, error=error, content_type=GEM_TYPE, refuse=_refuse
        )


def _refuse(exc: ArchiveInvalid, headers: dict[str, str]) -> web.Response:
    """``gem``/``bundle`` report a 502 as a failed download and stop, as they should."""
    return web.Response(
        status=502,
        text=f"502 Bad Gateway: archived copy failed verification: {exc.reason}\n",
        headers=headers,
    )


__all__ = [
    "GemRoutes",
    "fallback_entries",
    "kept_entries",
    "recorded_entry",
    "withdraw_info",
]
