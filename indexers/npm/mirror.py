"""The npm registry protocol under ``/npm/``: packuments (full and abbreviated) and tarballs.

What npm asks (``npm/pacote:lib/registry.js``, observed with npm 11, see
``research/registries.md`` §1.3): ``GET <registry>/<name>`` with ``@scope%2fname`` for scoped
names, ``Accept: application/json`` for the full packument (npm 11's tree builder always
asks for it) or ``application/vnd.npm.install-v1+json`` for the abbreviated "corgi" document
(``npm/registry:docs/responses/package-metadata.md``); then each tarball at exactly its
``dist.tarball``. Every ``dist.tarball`` is rewritten to ``<forage>/npm/<name>/-/<file>``,
so tarballs come through Forage whatever the client; ``dist.integrity``, ``shasum`` and
``signatures`` are kept (the signatures sign ``name@version:integrity``, not the URL).

Upstream first: the full packument is fetched (and cached), and the abbreviated form derived
from it here. When the upstream fails, the packument is rebuilt from the index: archived
versions the registry has not removed, each version document read from its archived
tarball's ``package.json`` (dependencies, bin, engines) with ``dist`` from the index's digests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from indexers.base import parse_time
from indexers.digests import parse_sri, to_sri
from indexers.errors import ArchiveInvalid, InvalidDigest, InvalidName, UpstreamFailed
from indexers.mirror.failures import unavailable
from indexers.mirror.registry import (
    EcosystemRoutes,
    FileRef,
    RegistryMirror,
    source_headers,
)
from indexers.mirror.rows import ArchivedFile, PackageRows, Withdrawn
from indexers.mirror.spool import send_spool
from indexers.npm.indexer import escape_name, validate_name
from indexers.npm.manifest import npm_manifest

log = logging.getLogger(__name__)

ECOSYSTEM = "npm"
PREFIX = "/npm"
CORGI = "application/vnd.npm.install-v1+json"
JSON = "application/json"
TARBALL = "application/octet-stream"

#: Version fields the abbreviated document keeps (npm/registry package-metadata.md).
CORGI_FIELDS = (
    "name",
    "version",
    "deprecated",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "bundleDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bin",
    "directories",
    "dist",
    "engines",
    "cpu",
    "os",
    "funding",
    "license",
    "_hasShrinkwrap",
    "hasInstallScript",
)
#: Longest tarball file name accepted in a request.
MAX_FILENAME = 255
_FILENAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~+-")


def not_found(message: str = "Not found", **headers: str) -> web.Response:
    """The registry's own 404 body."""
    return web.json_response({"error": message}, status=404, headers=headers)


def bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def failed(error: UpstreamFailed, headers: dict[str, str], retry_after: float) -> web.Response:
    """Neither the upstream nor the archive has it: a 5xx that npm retries and then reports
    as a registry failure, where a 404 makes it say the package does not exist
    (:mod:`indexers.mirror.failures`)."""
    answer = unavailable(error, headers, retry_after=retry_after)
    return web.json_response(
        {"error": answer.message}, status=answer.status, headers=answer.headers
    )


def check_filename(filename: str) -> str:
    """Return a tarball file name if it is plain (no path, no dot-dot, URL-safe), else raise."""
    if not filename or len(filename) > MAX_FILENAME:
        raise InvalidName(ECOSYSTEM, filename, "tarball name empty or too long")
    if filename.startswith(".") or ".." in filename or not set(filename) <= _FILENAME_CHARS:
        raise InvalidName(ECOSYSTEM, filename, "not a plain tarball file name")
    return filename


def wants_corgi(request: web.Request) -> bool:
    """Whether the client asked for the abbreviated document (pacote's corgi Accept)."""
    return CORGI in request.headers.get("Accept", "")


def tarball_url(base: str, name: str, filename: str) -> str:
    return f"{base}{PREFIX}/{name}/-/{quote(filename)}"


def abbreviate(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The corgi form of a full packument: install fields only, no ``time``."""
    versions = doc.get("versions") or {}
    times = doc.get("time") or {}
    return {
        "name": doc.get("name"),
        "modified": times.get("modified") if isinstance(times, dict) else None,
        "dist-tags": doc.get("dist-tags") or {},
        "versions": {
            version: {key: manifest[key] for key in CORGI_FIELDS if key in manifest}
            for version, manifest in versions.items()
            if isinstance(manifest, dict)
        },
    }


def rewrite_packument(
    doc: dict[str, Any], *, name: str, base: str, refs: RegistryMirror
) -> dict[str, Any]:
    """Point every ``dist.tarball`` at Forage, remembering the upstream URL and digests."""
    for manifest in (doc.get("versions") or {}).values():
        dist = manifest.get("dist") if isinstance(manifest, dict) else None
        if not isinstance(dist, dict):
            continue
        tarball = dist.get("tarball")
        if not isinstance(tarball, str) or not tarball:
            continue
        filename = unquote(urlsplit(tarball).path.rsplit("/", 1)[-1])
        digests: dict[str, str] = {}
        try:
            if isinstance(dist.get("integrity"), str):
                digests.update(parse_sri(dist["integrity"]))
            if isinstance(dist.get("shasum"), str):
                digests.setdefault("sha1", dist["shasum"].lower())
        except InvalidDigest as exc:
            log.warning("npm %s: ignoring a malformed digest: %s", name, exc)
        refs.refs.put((name, filename), FileRef(tarball, digests))
        dist["tarball"] = tarball_url(base, name, filename)
    return doc


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _is_prerelease(version: str) -> bool:
    return "-" in version.split("+", 1)[0]


def _version_manifest(
    rows: PackageRows, file: ArchivedFile, manifest: bytes, deprecated: str | None, *, base: str
) -> dict[str, Any]:
    """One version's document: its archived ``package.json`` (compact JSON) with ``dist``
    from the index."""
    loaded = json.loads(manifest)
    version: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    dist: dict[str, Any] = {"tarball": tarball_url(base, rows.name, file.filename)}
    with contextlib.suppress(InvalidDigest):
        dist["integrity"] = to_sri(file.digests)
    if "sha1" in file.digests:
        dist["shasum"] = file.digests["sha1"]
    version.update(name=rows.name, version=file.version, dist=dist)
    version["_id"] = f"{rows.name}@{file.version}"
    if deprecated:
        version["deprecated"] = deprecated
    return version


def fallback_packument(
    rows: PackageRows,
    manifests: Mapping[str, bytes],
    *,
    base: str,
    corgi: bool,
    cutoff: datetime | None = None,
) -> bytes | None:
    """The packument (full, or abbreviated with ``corgi``) rebuilt from the index and the
    archived manifests (each tarball's ``package.json`` as compact JSON, by CID), without the
    versions published after ``cutoff``; ``None`` when nothing is archived.

    Written one version at a time: a package with 10,000 versions never holds more than one
    version's document as objects, only the JSON text.
    """
    files: dict[str, ArchivedFile] = {}
    for file in sorted(rows.listed_files(), key=lambda f: (f.published_at is None, f.version)):
        files[file.version] = file
    if not files:
        return None
    times = {v: stamp for v, file in files.items() if (stamp := _iso(file.published_at))}
    stamps = sorted(times.values())
    ends = {"created": stamps[0], "modified": stamps[-1]} if stamps else {}
    if cutoff is not None:
        fresh = {v for v, stamp in times.items() if (t := parse_time(stamp)) and t > cutoff}
        files = {v: file for v, file in files.items() if v not in fresh}
        times = {v: stamp for v, stamp in times.items() if v not in fresh}
    given = dict(rows.extra.get("dist_tags") or {})
    tags = {t: v for t, v in given.items() if isinstance(v, str) and v in files}
    tags = _with_latest(tags, files, times)
    deprecated = {v.number: v.deprecated for v in rows.versions if v.deprecated}
    name = rows.display_name or rows.name
    if corgi:
        head = {"name": name, "modified": ends.get("modified"), "dist-tags": tags}
    else:
        head = {"_id": rows.name, "name": name, "dist-tags": tags}
    out = [_dumps(head)[:-1], b', "versions": {']
    for index, (number, file) in enumerate(files.items()):
        version = _version_manifest(
            rows, file, manifests.get(file.cid, b"{}"), deprecated.get(number), base=base
        )
        if corgi:
            version = {key: version[key] for key in CORGI_FIELDS if key in version}
        out += [b", " if index else b"", _dumps(number), b": ", _dumps(version)]
    out.append(b"}")
    if not corgi:
        out += [b', "time": ', _dumps({**ends, **times})]
    out.append(b"}")
    return b"".join(out)


def kept_packument(
    body: bytes, rows: PackageRows, *, name: str, base: str, refs: RegistryMirror
) -> dict[str, Any] | None:
    """The last good upstream packument (issue 16) with only the versions whose tarballs
    are archived and not removed (``None``: unusable, or nothing left)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("versions"), dict):
        return None
    doc = rewrite_packument(doc, name=name, base=base, refs=refs)
    archived = {file.version for file in rows.listed_files()}
    doc = drop_versions(doc, set(doc["versions"]) - archived)
    if not doc.get("versions"):
        return None
    times = doc.get("time")
    doc["dist-tags"] = _with_latest(
        dict(doc.get("dist-tags") or {}), doc["versions"], times if isinstance(times, dict) else {}
    )
    return doc


def _with_latest(
    tags: dict[str, Any], versions: Collection[str], times: Mapping[str, Any]
) -> dict[str, Any]:
    """``tags`` with a ``latest``: the newest release left when none names one (a
    pre-release only when nothing else is)."""
    if "latest" not in tags and versions:
        releases = [v for v in versions if not _is_prerelease(v)] or list(versions)
        tags["latest"] = max(releases, key=lambda v: (str(times.get(v, "")), v))
    return tags


def drop_versions(doc: dict[str, Any], dropped: Collection[str]) -> dict[str, Any]:
    """``doc`` without the ``dropped`` versions: their manifests, ``time`` entries and the
    dist-tags naming them; ``latest`` then names the newest release left (a pre-release only
    when nothing else is)."""
    versions = doc.get("versions")
    if not dropped or not isinstance(versions, dict):
        return doc
    kept = {v: manifest for v, manifest in versions.items() if v not in dropped}
    if len(kept) == len(versions):
        return doc
    given = doc.get("time")
    times: dict[str, Any] = given if isinstance(given, dict) else {}
    tags = {tag: v for tag, v in dict(doc.get("dist-tags") or {}).items() if v not in dropped}
    tags = _with_latest(tags, kept, times)
    cooled = {key: value for key, value in times.items() if key not in dropped}
    return {**doc, "versions": kept, "time": cooled, "dist-tags": tags}


def cool_packument(doc: dict[str, Any], cutoff: datetime | None) -> dict[str, Any]:
    """``doc`` without the versions published after ``cutoff`` (a cooldown); versions
    without a time stay."""
    times, versions = doc.get("time"), doc.get("versions")
    if cutoff is None or not isinstance(versions, dict) or not isinstance(times, dict):
        return doc
    fresh = {
        version
        for version in versions
        if (published := parse_time(times.get(version))) is not None and published > cutoff
    }
    return drop_versions(doc, fresh)


def withdraw_packument(doc: dict[str, Any], withdrawn: Withdrawn) -> dict[str, Any]:
    """An upstream packument without the versions the index knows were unpublished or
    otherwise withdrawn, so a lagging upstream cannot offer them again."""
    return drop_versions(doc, withdrawn.versions)


def _dumps(document: Any) -> bytes:
    return json.dumps(document).encode()


class NpmRoutes(EcosystemRoutes):
    """The handlers, bound to the application's
    :class:`~indexers.mirror.registry.MirrorContext`."""

    ecosystem = ECOSYSTEM
    prefix = PREFIX + "/"

    def setup(self, app: web.Application) -> None:
        app.router.add_get(PREFIX + "/{tail:.*}", self.dispatch)

    @staticmethod
    def listing_path(name: str) -> str:
        return f"{PREFIX}/{escape_name(name)}"

    @staticmethod
    def file_path(name: str, version: str, filename: str, digests: Mapping[str, str]) -> str:
        return f"{PREFIX}/{name}/-/{quote(filename)}"

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        tail = request.path[len(PREFIX) + 1 :]
        if tail.startswith("-/") or not tail:
            return not_found()
        if "/-/" in tail:
            name, _, filename = tail.partition("/-/")
            try:
                return await self.tarball(request, validate_name(name), check_filename(filename))
            except InvalidName as exc:
                return bad_request(str(exc))
        try:
            name = validate_name(tail)
        except InvalidName as exc:
            version = None
            head, _, last = tail.rpartition("/")
            try:
                name, version = validate_name(head), last
            except InvalidName:
                return bad_request(str(exc))
            return await self.version_document(request, name, version)
        return await self.packument(request, name)

    # -- packuments -------------------------------------------------------------------------

    async def upstream_offers(self, file: ArchivedFile) -> bool | None:
        """Whether the upstream packument still lists the tarball's version."""
        doc = await self.upstream_doc(file.package, "")
        return doc is not None and file.version in (doc.get("versions") or {})

    def _upstream_url(self, name: str) -> str:
        return f"{self.registry.base_url}/{escape_name(name)}"

    async def upstream_doc(self, name: str, base: str) -> dict[str, Any] | None:
        """The upstream's packument with Forage tarball URLs (``None``: the registry's 404).

        Raises ``UpstreamFailed`` when the upstream cannot answer with a JSON object.
        """
        url = self._upstream_url(name)
        answer, _ = await self.registry.document(url, headers={"accept": JSON}, keep=True)
        if answer.absent:
            return None
        try:
            doc = json.loads(answer.body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise UpstreamFailed(url, "status", "packument is not a JSON object")
        return rewrite_packument(doc, name=name, base=base, refs=self.registry)

    async def fallback_body(self, name: str, base: str, *, corgi: bool) -> bytes | None:
        """The archive's packument, rendered once per change of the index (``None``: 404) by
        one request while any others arriving meanwhile wait for it."""
        stamp = await self.registry.remembered(
            ("stamp", name), lambda: self.mirror.archive.package_stamp(ECOSYSTEM, name)
        )
        if stamp is None:
            return None
        cutoff = self.registry.cutoff()
        minute = cutoff.replace(second=0, microsecond=0) if cutoff else None
        url = self._upstream_url(name)
        kept = self.registry.last_good.stamp(url)
        key = ("packument", name, base, corgi, stamp, minute, kept)
        cached = self.registry.rendered.fresh(key)
        if cached is not None:
            return cached.value or None

        async def render() -> bytes:
            body = await self._render_fallback(name, base, corgi=corgi, minute=minute, kept=kept)
            self.registry.rendered.put(key, body)
            return body

        body: bytes = await self.registry.flights.run(key, render)
        return body or None

    async def _render_fallback(
        self, name: str, base: str, *, corgi: bool, minute: datetime | None, kept: Any
    ) -> bytes:
        rows = await self.mirror.archive.package_rows(ECOSYSTEM, name)
        if rows is None or rows.hold is not None:
            return b""
        url = self._upstream_url(name)
        last = await self.registry.last_good.read(url) if kept else None
        if last is not None:
            doc = await asyncio.to_thread(
                kept_packument, last, rows, name=name, base=base, refs=self.registry
            )
            if doc is not None:
                doc = cool_packument(doc, minute)
                return await asyncio.to_thread(_dumps, abbreviate(doc) if corgi else doc)
        manifests = await self._manifests(rows.listed_files())
        body = await asyncio.to_thread(
            fallback_packument, rows, manifests, base=base, corgi=corgi, cutoff=minute
        )
        log.debug("npm %s: fallback packument rendered from %d manifests", name, len(manifests))
        return body or b""

    async def _manifests(self, files: list[ArchivedFile]) -> dict[str, bytes]:
        """Each archived tarball's ``package.json`` as compact JSON, by CID (``{}`` for one
        that cannot be read): read once per process, kept as text, not objects."""
        found: dict[str, bytes] = {}
        missing: list[str] = []
        for file in files:
            cached = self.registry.derived.fresh(("manifest", file.cid))
            if cached is not None:
                found[file.cid] = cached.value
            else:
                missing.append(file.cid)

        def read_all() -> dict[str, bytes]:
            out: dict[str, bytes] = {}
            for cid in missing:
                try:
                    manifest = npm_manifest(self.mirror.archive.chunks(cid), cid)
                    out[cid] = json.dumps(manifest, separators=(",", ":")).encode()
                except ArchiveInvalid as exc:
                    log.warning("npm fallback: no manifest from %s: %s", cid, exc)
                    out[cid] = b"{}"
            return out

        if missing:
            for cid, manifest in (await asyncio.to_thread(read_all)).items():
                self.registry.derived.put(("manifest", cid), manifest)
                found[cid] = manifest
        return found

    async def packument(self, request: web.Request, name: str) -> web.StreamResponse:
        corgi = wants_corgi(request)
        base = self.mirror.public_base(str(request.url.origin()))
        content_type = CORGI if corgi else JSON
        try:
            doc = await self.upstream_doc(name, base)
        except UpstreamFailed as exc:
            headers = source_headers("archive", error=exc)
            body = await self.fallback_body(name, base, corgi=corgi)
            if body is None:
                return await self._unavailable(name, exc, headers)
            return web.Response(body=body, content_type=content_type, headers=headers)
        headers = source_headers("upstream")
        if doc is None:
            return not_found(**headers)
        withdrawn = await self.withdrawn(name)
        if withdrawn.hold is not None:
            return not_found(f"{name} is not served: {withdrawn.hold}", **headers)
        doc = withdraw_packument(doc, withdrawn)
        doc = cool_packument(doc, self.registry.cutoff())
        body = await asyncio.to_thread(_dumps, abbreviate(doc) if corgi else doc)
        return web.Response(body=body, content_type=content_type, headers=headers)

    async def version_document(
        self, request: web.Request, name: str, version: str
    ) -> web.StreamResponse:
        base = self.mirror.public_base(str(request.url.origin()))
        error: UpstreamFailed | None = None
        try:
            doc = await self.upstream_doc(name, base)
            headers = source_headers("upstream")
        except UpstreamFailed as exc:
            error = exc
            headers = source_headers("archive", error=exc)
            body = await self.fallback_body(name, base, corgi=False)
            doc = json.loads(body) if body else None
        if doc is None and error is not None:
            return await self._unavailable(name, error, headers)
        if doc is None:
            return not_found(**headers)
        tags = cool_packument(doc, self.registry.cutoff()).get("dist-tags") or {}
        target = tags.get(version, version)
        manifest = (doc.get("versions") or {}).get(target)
        if not isinstance(manifest, dict) and error is not None:
            return failed(error, headers, self.registry.settings.down_seconds)
        if not isinstance(manifest, dict):
            return not_found("version not found", **headers)
        return web.json_response(manifest, headers=headers)

    # -- tarballs ---------------------------------------------------------------------------

    async def tarball(self, request: web.Request, name: str, filename: str) -> web.StreamResponse:
        archive = self.mirror.archive
        archived = await archive.find_file(ECOSYSTEM, name=name, filename=filename)
        hold = archived.hold if archived else await archive.package_hold(ECOSYSTEM, name)
        if hold is not None:
            return not_found(f"{name} is not served: {hold}")
        local = await self.serve_local(request, archived, content_type=TARBALL)
        if local is not None:
            return local
        error: UpstreamFailed | None = None
        try:
            ref = await self._ref(request, name, filename, archived)
            if ref is not None:
                fetched = await self.registry.file(ref.url, ref.digests, package=name)
                if fetched.spool is not None:
                    return await send_spool(
                        request,
                        fetched.spool,
                        content_type=TARBALL,
                        headers=source_headers("upstream", verified=fetched.verified),
                    )
                if archived is not None:
                    return await self.serve_archived(request, archived, removed=True)
                return not_found(**source_headers("upstream"))
        except UpstreamFailed as exc:
            error = exc
        if archived is None:
            headers = source_headers("archive", error=error)
            if error is None:
                return not_found(**headers)
            return failed(error, headers, self.registry.settings.down_seconds)
        return await self.serve_archived(request, archived, removed=archived.removed, error=error)

    async def _unavailable(
        self, name: str, error: UpstreamFailed, headers: dict[str, str]
    ) -> web.Response:
        """No listing from the upstream nor the archive: a held package is still a 404."""
        hold = await self.mirror.archive.package_hold(ECOSYSTEM, name)
        if hold is not None:
            return not_found(f"{name} is not served: {hold}", **headers)
        return failed(error, headers, self.registry.settings.down_seconds)

    async def _ref(
        self, request: web.Request, name: str, filename: str, archived: ArchivedFile | None
    ) -> FileRef | None:
        """Where upstream serves the tarball and its digests: learnt from a packument, else
        the index, else (after reading the packument) nothing."""
        if self.registry.upstream is None:
            raise self.registry.offline_error(f"{name}/-/{filename}")
        cached = self.registry.refs.stale((name, filename))
        if cached is not None:
            return cached.value
        if archived is not None:
            return FileRef(archived.url, archived.digests)
        await self.upstream_doc(name, self.mirror.public_base(str(request.url.origin())))
        cached = self.registry.refs.stale((name, filename))
        return cached.value if cached is not None else None

    async def serve_archived(
        self,
        request: web.Request,
        archived: ArchivedFile,
        *,
        removed: bool,
        error: UpstreamFailed | None = None,
    ) -> web.StreamResponse:
        if archived.hold is not None:
            return not_found(f"not served: {archived.hold}")
        return await self.send_archived(
            request, archived, removed=removed, error=error, content_type=TARBALL, refuse=_refuse
        )


def _refuse(exc: ArchiveInvalid, headers: dict[str, str]) -> web.Response:
    """npm's answer for an archived copy that fails verification."""
    return web.json_response(
        {"error": f"archived copy failed verification: {exc.reason}"}, status=502, headers=headers
    )


__all__ = [
    "CORGI",
    "CORGI_FIELDS",
    "NpmRoutes",
    "abbreviate",
    "check_filename",
    "cool_packument",
    "fallback_packument",
    "kept_packument",
    "rewrite_packument",
    "withdraw_packument",
]
