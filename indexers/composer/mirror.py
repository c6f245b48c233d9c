"""The Composer repository protocol under ``/composer/``: ``packages.json``, p2 files, dists.

What Composer 2 asks (``composer/composer:src/Composer/Repository/ComposerRepository.php``):
``<repo>/packages.json``, whose ``metadata-url`` (``%package%`` replaced by the lower-cased
name) gives ``p2/VENDOR/NAME.json`` and ``p2/VENDOR/NAME~dev.json`` (a 404 is "no such
package"); a document marked ``"minified": "composer/2.0"`` is expanded, others are read as
they are. ``notify-batch`` is where it POSTs what it installed. Each dist is downloaded at
exactly its ``dist.url`` and checked against ``dist.shasum`` (sha1) when that is not empty.

Forage answers ``packages.json`` itself (its own ``metadata-url`` and ``notify-batch``, so a
client never reaches the upstream or Packagist's download counter; the upstream's
``available-packages``/``-patterns`` passed on; when the upstream is down, the archive's
package names as ``available-packages``). p2 files come from the upstream when it answers,
expanded, without the versions the index knows were deleted or that a cooldown holds back,
every ``dist.url`` rewritten to ``<forage>/composer/dists/VENDOR/NAME/VERSION/FILE``, and kept
on disk as the last good ones. Otherwise the last good p2 file is served with only the versions
whose dists are archived and not removed (``dist.shasum`` the archive's); without one, p2 files
are rebuilt from the index: each archived version not removed, its package fields read
from the ``composer.json`` inside its archived dist, its dist pointing at Forage with the
reference and sha1 the registry published.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from indexers.base import parse_time
from indexers.composer.manifest import composer_manifest
from indexers.composer.metadata import (
    ECOSYSTEM,
    dist_digests,
    dist_filename,
    is_dev,
    p2_versions,
    validate_name,
)
from indexers.errors import ArchiveInvalid, FeedError, InvalidName, UpstreamFailed
from indexers.mirror.failures import unavailable
from indexers.mirror.listings import outage_listing
from indexers.mirror.registry import EcosystemRoutes, FileRef, source_headers
from indexers.mirror.rows import ArchivedFile, PackageRows
from indexers.mirror.spool import send_spool

log = logging.getLogger(__name__)

PREFIX = "/composer"
ZIP = "application/zip"
#: Longest dist path segment accepted in a request.
MAX_SEGMENT = 255


def not_found(message: str = "Not Found", **headers: str) -> web.Response:
    return web.json_response({"status": "error", "message": message}, status=404, headers=headers)


def bad_request(message: str) -> web.Response:
    return web.json_response({"status": "error", "message": message}, status=400)


def failed(error: UpstreamFailed, headers: dict[str, str], retry_after: float) -> web.Response:
    """Neither the upstream nor the archive has it: a 5xx Composer reports as a failed
    download of the repository, not "could not find package" (:mod:`indexers.mirror.failures`)."""
    answer = unavailable(error, headers, retry_after=retry_after)
    body = {"status": "error", "message": answer.message}
    return web.json_response(body, status=answer.status, headers=answer.headers)


def dist_path(name: str, version: str, filename: str) -> str:
    return f"{PREFIX}/dists/{name}/{quote(version, safe='')}/{quote(filename, safe='')}"


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%S+00:00") if moment else None


def _keep(entry: Mapping[str, Any], dropped: frozenset[str], cutoff: datetime | None) -> bool:
    version = entry.get("version")
    if not isinstance(version, str) or version in dropped:
        return False
    published = parse_time(entry.get("time"))
    return cutoff is None or published is None or published <= cutoff


def fallback_entries(
    rows: PackageRows, manifests: Mapping[str, dict[str, Any]], *, base: str, dev: bool
) -> list[dict[str, Any]]:
    """The p2 entries the archive can serve: archived, not removed, newest first."""
    references = rows.extra.get("references")
    refs: Mapping[str, Any] = references if isinstance(references, dict) else {}
    files = [f for f in rows.listed_files() if is_dev(f.version) == dev]
    files.sort(key=lambda f: (f.published_at is not None, f.published_at or 0), reverse=True)
    entries = []
    for file in files:
        entry: dict[str, Any] = {"name": rows.name, **manifests.get(file.cid, {})}
        entry["version"] = file.version
        dist: dict[str, Any] = {
            "url": base + dist_path(rows.name, file.version, file.filename),
            "type": file.filename.rsplit(".", 1)[-1],
            "shasum": file.digests.get("sha1", ""),
        }
        if isinstance(refs.get(file.version), str):
            dist["reference"] = refs[file.version]
        entry["dist"] = dist
        stamp = _iso(file.published_at)
        if stamp:
            entry["time"] = stamp
        entries.append(entry)
    return entries


def kept_entries(
    body: bytes, rows: PackageRows, *, base: str, dev: bool, cutoff: datetime | None
) -> list[dict[str, Any]]:
    """The entries of the last good upstream p2 file (issue 16) whose dists are archived
    and not removed, each dist pointing at Forage with the archive's sha1 (what Composer
    checks the download against); a cooldown applies as upstream."""
    try:
        entries = p2_versions(json.loads(body), rows.name, rows.name)
    except (ValueError, FeedError):
        return []
    files = {f.version: f for f in rows.listed_files() if is_dev(f.version) == dev}
    kept = []
    for entry in entries:
        file = files.get(str(entry.get("version")))
        if file is None or not _keep(entry, frozenset(), cutoff):
            continue
        given = entry.get("dist")
        dist = dict(given) if isinstance(given, dict) else {}
        dist["url"] = base + dist_path(rows.name, file.version, file.filename)
        dist["shasum"] = file.digests.get("sha1", "")
        kept.append({**entry, "dist": dist})
    return kept


class ComposerRoutes(EcosystemRoutes):
    """The handlers, bound to the application's
    :class:`~indexers.mirror.registry.MirrorContext`."""

    ecosystem = ECOSYSTEM
    prefix = PREFIX + "/"

    def setup(self, app: web.Application) -> None:
        app.router.add_get(PREFIX + "/packages.json", self.root)
        app.router.add_post(PREFIX + "/downloads/", self.downloads)
        app.router.add_get(PREFIX + "/p2/{tail:.*}", self.p2)
        app.router.add_get(PREFIX + "/dists/{tail:.*}", self.dist)

    @staticmethod
    def listing_path(name: str) -> str:
        return f"{PREFIX}/p2/{name}.json"

    @staticmethod
    def file_path(name: str, version: str, filename: str, digests: Mapping[str, str]) -> str:
        return dist_path(name, version, filename)

    def _base(self, request: web.Request) -> str:
        return self.mirror.public_base(str(request.url.origin()))

    # -- packages.json --------------------------------------------------------------------

    async def _upstream_root(self) -> dict[str, Any]:
        """The upstream's ``packages.json`` (``{}`` when it has none)."""
        url = f"{self.registry.base_url}/packages.json"
        answer, _ = await self.registry.document(url)
        if answer.absent:
            return {}
        try:
            doc = json.loads(answer.body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise UpstreamFailed(url, "status", "packages.json is not a JSON object")
        return doc

    async def root(self, request: web.Request) -> web.Response:
        base = self._base(request)
        doc: dict[str, Any] = {
            "packages": [],
            "metadata-url": f"{base}{PREFIX}/p2/%package%.json",
            "notify-batch": f"{base}{PREFIX}/downloads/",
        }
        try:
            upstream = await self._upstream_root()
            headers = source_headers("upstream")
            for key in ("available-packages", "available-package-patterns"):
                if isinstance(upstream.get(key), list) and upstream[key]:
                    doc[key] = upstream[key]
        except UpstreamFailed as exc:
            headers = source_headers("archive", error=exc)
            names = await self.mirror.archive.package_names(ECOSYSTEM)
            if names:
                doc["available-packages"] = names
        return web.json_response(doc, headers=headers)

    async def downloads(self, request: web.Request) -> web.Response:
        """Composer's install notifications: accepted and dropped (Forage counts nothing)."""
        return web.json_response({"status": "success"}, status=201)

    # -- p2 files -------------------------------------------------------------------------

    async def _metadata_url(self, file: str) -> str:
        """The upstream's URL of a p2 file (its ``metadata-url``, else ``/p2/``)."""
        template = (await self._upstream_root()).get("metadata-url")
        if not isinstance(template, str) or "%package%" not in template:
            return f"{self.registry.base_url}/p2/{file}.json"
        if template.startswith("/"):
            origin = str(self.registry.base_url).split("/", 3)
            template = "/".join(origin[:3]) + template
        return template.replace("%package%", file)

    async def upstream_entries(
        self, name: str, *, dev: bool, base: str
    ) -> list[dict[str, Any]] | None:
        """The upstream's entries of one p2 file, expanded, dists pointing at Forage
        (``None``: the registry's 404). Raises ``UpstreamFailed``."""
        url = await self._metadata_url(f"{name}~dev" if dev else name)
        kept_as = self._kept_url(name, dev=dev)
        answer, _ = await self.registry.document(url, keep=True, kept_as=kept_as)
        if answer.absent:
            return None
        try:
            entries = p2_versions(json.loads(answer.body), name, url)
        except (ValueError, FeedError) as exc:
            raise UpstreamFailed(url, "status", f"not a p2 document: {exc}") from exc
        for entry in entries:
            dist, version = entry.get("dist"), entry.get("version")
            if not isinstance(dist, dict) or not isinstance(version, str):
                continue
            upstream_url = dist.get("url")
            if not isinstance(upstream_url, str) or not upstream_url:
                continue
            filename = dist_filename(name, version, str(dist.get("type") or "zip"))
            digests = dist_digests(dist, f"{name} {version}")
            self.registry.refs.put((name, version), FileRef(upstream_url, digests))
            entry["dist"] = {**dist, "url": base + dist_path(name, version, filename)}
        return entries

    def _kept_url(self, name: str, *, dev: bool) -> str:
        """What a p2 file is kept under: its place on the upstream, whatever ``metadata-url``
        said (in an outage nothing says where it was)."""
        return f"{self.registry.base_url}/p2/{name}{'~dev' if dev else ''}.json"

    async def upstream_offers(self, file: ArchivedFile) -> bool | None:
        """Whether the upstream's p2 file still lists the dist's version."""
        dev = is_dev(file.version)
        entries = await self.upstream_entries(file.package, dev=dev, base="") or []
        return any(entry.get("version") == file.version for entry in entries)

    async def archived_p2(self, name: str, *, dev: bool, base: str) -> bytes | None:
        """The p2 file without the upstream: the last good one filtered by the archive,
        else rebuilt from the index (``None``: unknown, held or deleted, or nothing to list)."""

        async def render(rows: PackageRows, kept: bytes | None, cutoff: datetime | None) -> bytes:
            if rows.hold is not None or rows.deleted:
                return b""
            entries = kept_entries(kept, rows, base=base, dev=dev, cutoff=cutoff) if kept else []
            if not entries:
                files = [f for f in rows.listed_files() if is_dev(f.version) == dev]
                manifests = {file.cid: await self._manifest(file) for file in files}
                rebuilt = fallback_entries(rows, manifests, base=base, dev=dev)
                entries = [e for e in rebuilt if _keep(e, frozenset(), cutoff)]
            if not entries:
                return b""
            return (await asyncio.to_thread(json.dumps, {"packages": {name: entries}})).encode()

        url = self._kept_url(name, dev=dev)
        return await outage_listing(self, name, url=url, variant=(dev, base), render=render)

    async def _manifest(self, file: ArchivedFile) -> dict[str, Any]:
        cached = self.registry.derived.fresh(("composer.json", file.cid))
        if cached is not None:
            found: dict[str, Any] = cached.value
            return found

        def read() -> dict[str, Any]:
            try:
                return composer_manifest(self.mirror.archive.chunks(file.cid), file.cid)
            except ArchiveInvalid as exc:
                log.warning("composer fallback: no composer.json from %s: %s", file.cid, exc)
                return {}

        manifest = await asyncio.to_thread(read)
        self.registry.derived.put(("composer.json", file.cid), manifest)
        return manifest

    async def p2(self, request: web.Request) -> web.StreamResponse:
        tail = unquote(request.match_info["tail"])
        if not tail.endswith(".json"):
            return not_found()
        file = tail[: -len(".json")]
        dev = file.endswith("~dev")
        try:
            name = validate_name(file.removesuffix("~dev"))
        except InvalidName as exc:
            return bad_request(str(exc))
        base = self._base(request)
        try:
            entries = await self.upstream_entries(name, dev=dev, base=base)
        except UpstreamFailed as exc:
            headers = source_headers("archive", error=exc)
            body = await self.archived_p2(name, dev=dev, base=base)
            if body is not None:
                return web.Response(body=body, content_type="application/json", headers=headers)
            if await self.mirror.archive.package_hold(ECOSYSTEM, name) is None:
                return failed(exc, headers, self.registry.settings.down_seconds)
            return not_found(**headers)
        headers = source_headers("upstream")
        if entries is None:
            return not_found(**headers)
        withdrawn = await self.withdrawn(name)
        if withdrawn.hold is not None:
            return not_found(f"{name} is not served: {withdrawn.hold}", **headers)
        cutoff = self.registry.cutoff()
        entries = [e for e in entries if _keep(e, withdrawn.versions, cutoff)]
        text = await asyncio.to_thread(json.dumps, {"packages": {name: entries}})
        return web.Response(body=text.encode(), content_type="application/json", headers=headers)

    # -- dists ----------------------------------------------------------------------------

    async def dist(self, request: web.Request) -> web.StreamResponse:
        parts = request.rel_url.raw_path[len(PREFIX + "/dists/") :].split("/")
        if len(parts) != 4 or any(not p or len(p) > MAX_SEGMENT for p in parts):
            return bad_request("expected /composer/dists/VENDOR/NAME/VERSION/FILE")
        vendor, package, version, filename = (unquote(p) for p in parts)
        try:
            name = validate_name(f"{vendor}/{package}")
        except InvalidName as exc:
            return bad_request(str(exc))
        if "/" in filename or filename.startswith(".") or "\x00" in version + filename:
            return bad_request("not a plain dist file name")
        archive = self.mirror.archive
        hold = await archive.package_hold(ECOSYSTEM, name)
        if hold is not None:
            return not_found(f"{name} is not served: {hold}")
        archived = await archive.find_file(ECOSYSTEM, name=name, version=version, filename=filename)
        local = await self.serve_local(request, archived, content_type=ZIP)
        if local is not None:
            return local
        error: UpstreamFailed | None = None
        try:
            ref = await self._ref(request, name, version, archived)
            if ref is not None:
                fetched = await self.registry.file(ref.url, ref.digests, package=name)
                if fetched.spool is not None:
                    headers = source_headers("upstream", verified=fetched.verified)
                    return await send_spool(
                        request, fetched.spool, content_type=ZIP, headers=headers
                    )
                if archived is not None:
                    return await self._archived(request, archived, removed=True, error=None)
                return not_found(**source_headers("upstream"))
        except UpstreamFailed as exc:
            error = exc
        if archived is None:
            headers = source_headers("archive", error=error)
            if error is None:
                return not_found(**headers)
            return failed(error, headers, self.registry.settings.down_seconds)
        return await self._archived(request, archived, removed=archived.removed, error=error)

    async def _ref(
        self, request: web.Request, name: str, version: str, archived: ArchivedFile | None
    ) -> FileRef | None:
        """Where the upstream serves the dist and what it must hash to: learnt from a p2
        file, else the index, else (after reading the p2 file) nothing. A dist the registry
        published no digest for is held to the sha256 Forage recorded at its first download."""
        if self.registry.upstream is None:
            raise self.registry.offline_error(f"{name} {version}")
        cached = self.registry.refs.stale((name, version))
        if cached is None and archived is None:
            await self.upstream_entries(name, dev=is_dev(version), base=self._base(request))
            cached = self.registry.refs.stale((name, version))
        ref = cached.value if cached is not None else None
        if archived is None:
            return ref
        if ref is None:
            return FileRef(archived.url, archived.digests)
        return ref if ref.digests else FileRef(ref.url, archived.digests)

    async def _archived(
        self,
        request: web.Request,
        archived: ArchivedFile,
        *,
        removed: bool,
        error: UpstreamFailed | None,
    ) -> web.StreamResponse:
        return await self.send_archived(
            request, archived, removed=removed, error=error, content_type=ZIP, refuse=_refuse
        )


def _refuse(exc: ArchiveInvalid, headers: dict[str, str]) -> web.Response:
    """The answer for an archived copy that fails verification (never its bytes)."""
    return web.json_response(
        {"status": "error", "message": f"archived copy failed verification: {exc.reason}"},
        status=502,
        headers=headers,
    )


__all__ = ["ComposerRoutes", "dist_path", "fallback_entries", "kept_entries"]
