"""The sparse registry protocol under ``/cargo/``: ``config.json``, index files, ``.crate``s.

What cargo asks (``rust-lang/cargo:src/cargo/sources/registry/http_remote.rs``, observed with
cargo 1.95 by source replacement, ``registry = "sparse+http://HOST/cargo/index/"``):
``GET <index>/config.json``, then each crate's index file at its path (``se/rd/serde``), then
each ``.crate`` at ``dl`` with ``/{crate}/{version}/download`` appended; a 404 or 410 says
"no such crate"; the download is checked against the line's ``cksum`` by cargo too.
Forage's ``config.json`` points ``dl`` at ``/cargo/api/v1/crates``, so every ``.crate`` comes
through Forage.

Upstream first: the upstream's index file is passed on as it is, except versions the index
knows crates.io withdrew, which are marked ``"yanked":true`` (cargo keeps yanked versions
out of new resolutions and still fetches them for a lockfile that pins them, so they stay
listed); each line's ``cksum`` and the upstream's ``dl`` say where and what each ``.crate``
is; the index file is kept on disk as the last good one. When the upstream fails, that file
is served with only the archived versions' lines (withdrawn ones yanked, ``cksum`` the
archive's); without one, it is rebuilt from the index: the archived versions' lines as
crates.io wrote them (kept at import), yanked ones marked. A ``.crate`` is served
only after its bytes matched the ``cksum``: from the upstream, else from the archive.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from indexers.cargo.sparse import (
    ECOSYSTEM,
    canonical,
    download_url,
    dump_line,
    index_path,
    is_sha256,
    name_of_path,
    parse_lines,
    validate_name,
)
from indexers.errors import ArchiveInvalid, InvalidName, UpstreamFailed
from indexers.mirror.failures import unavailable
from indexers.mirror.listings import outage_listing
from indexers.mirror.registry import EcosystemRoutes, FileRef, source_headers
from indexers.mirror.rows import ArchivedFile, PackageRows, Withdrawn
from indexers.mirror.spool import send_spool

log = logging.getLogger(__name__)

PREFIX = "/cargo"
INDEX = f"{PREFIX}/index/"
DOWNLOADS = f"{PREFIX}/api/v1/crates"
INDEX_TYPE = "text/plain"
CRATE_TYPE = "application/gzip"
#: Longest version string accepted in a download path.
MAX_VERSION = 128


def not_found(detail: str = "Not Found", **headers: str) -> web.Response:
    """crates.io's error body."""
    return web.json_response({"errors": [{"detail": detail}]}, status=404, headers=headers)


def bad_request(detail: str) -> web.Response:
    return web.json_response({"errors": [{"detail": detail}]}, status=400)


def failed(error: UpstreamFailed, headers: dict[str, str], retry_after: float) -> web.Response:
    """The answer when neither the upstream nor the archive has it: a 5xx cargo reports and
    retries as a spurious network error (:mod:`indexers.mirror.failures`)."""
    answer = unavailable(error, headers, retry_after=retry_after)
    body = {"errors": [{"detail": answer.message}]}
    return web.json_response(body, status=answer.status, headers=answer.headers)


def withdraw_index(body: bytes, withdrawn: Withdrawn) -> bytes:
    """An upstream index file with the versions the index knows were withdrawn marked
    yanked (byte for byte the upstream's when there is nothing to mark)."""
    if not withdrawn.versions:
        return body
    out: list[bytes] = []
    for raw in body.splitlines():
        line = next(parse_lines(raw), None) if raw.strip() else None
        if line is not None and line.get("vers") in withdrawn.versions and not line.get("yanked"):
            raw = dump_line({**line, "yanked": True})
        if raw.strip():
            out.append(raw)
    return b"".join(raw + b"\n" for raw in out)


def _spelling(file: ArchivedFile) -> str:
    """The crate's published spelling, from its ``.crate`` file name."""
    suffix = f"-{file.version}.crate"
    return file.filename[: -len(suffix)] if file.filename.endswith(suffix) else file.package


def fallback_index(rows: PackageRows) -> bytes:
    """The index file of what the archive holds: every archived version's line as crates.io
    wrote it, ``cksum`` the archive's, withdrawn versions yanked; empty when nothing is."""
    given = rows.extra.get("lines")
    lines: Mapping[str, Any] = given if isinstance(given, dict) else {}
    files = {f.version: f for f in rows.files if is_sha256(f.digests.get("sha256"))}
    order = [v for v in lines if v in files] + [v for v in files if v not in lines]
    out: list[bytes] = []
    for version in order:
        file = files[version]
        stored = lines.get(version)
        line: dict[str, Any] = dict(stored) if isinstance(stored, dict) else {}
        if not line:
            log.warning("cargo fallback: no index line kept for %s %s", rows.name, version)
            line = {"name": _spelling(file), "vers": version, "deps": [], "features": {}}
        line["cksum"] = file.digests["sha256"]
        line["yanked"] = line.get("yanked") is True or file.yanked or file.removed
        out.append(dump_line(line) + b"\n")
    return b"".join(out)


def kept_index(body: bytes, rows: PackageRows) -> bytes | None:
    """The last good upstream index file (issue 16) with only the lines of archived
    versions, each line byte for byte the upstream's unless it must change: withdrawn
    versions marked yanked (cargo still fetches them for a lockfile that pins them), ``cksum``
    the archive's (``None``: no line left)."""
    files = {f.version: f for f in rows.files if is_sha256(f.digests.get("sha256"))}
    out: list[bytes] = []
    for raw in body.splitlines():
        line = next(parse_lines(raw), None) if raw.strip() else None
        file = files.get(str(line.get("vers"))) if line is not None else None
        if line is None or file is None:
            continue
        yanked = line.get("yanked") is True or file.yanked or file.removed
        if line.get("cksum") != file.digests["sha256"] or yanked != line.get("yanked"):
            raw = dump_line({**line, "cksum": file.digests["sha256"], "yanked": yanked})
        out.append(raw + b"\n")
    return b"".join(out) or None


class CargoRoutes(EcosystemRoutes):
    """The handlers, bound to the application's
    :class:`~indexers.mirror.registry.MirrorContext`."""

    ecosystem = ECOSYSTEM
    prefix = PREFIX + "/"

    def setup(self, app: web.Application) -> None:
        app.router.add_get(INDEX + "config.json", self.config)
        app.router.add_get(INDEX + "{path:.+}", self.index_file)
        app.router.add_get(DOWNLOADS + "/{name}/{version}/download", self.download)

    @staticmethod
    def listing_path(name: str) -> str:
        return INDEX + index_path(name)

    @staticmethod
    def file_path(name: str, version: str, filename: str, digests: Mapping[str, str]) -> str:
        suffix = f"-{version}.crate"
        spelled = filename[: -len(suffix)] if filename.endswith(suffix) else name
        return f"{DOWNLOADS}/{spelled}/{version}/download"

    async def config(self, request: web.Request) -> web.StreamResponse:
        """Forage's ``config.json``: downloads come back here, whoever answers them."""
        base = self.mirror.public_base(str(request.url.origin()))
        return web.json_response({"dl": base + DOWNLOADS}, headers=source_headers("archive"))

    # -- index files ------------------------------------------------------------------------

    async def upstream_template(self) -> str:
        """The upstream's ``dl`` (``UpstreamFailed`` when its ``config.json`` is unusable)."""
        url = f"{self.registry.base_url}/config.json"
        answer, _ = await self.registry.document(url)
        try:
            doc = json.loads(answer.body) if not answer.absent else None
        except ValueError:
            doc = None
        dl = doc.get("dl") if isinstance(doc, dict) else None
        if not isinstance(dl, str) or not dl:
            raise UpstreamFailed(url, "status", "config.json has no 'dl'")
        return dl

    async def upstream_offers(self, file: ArchivedFile) -> bool | None:
        """Whether the crate's upstream index file still lists the version (yanked or not)."""
        body = await self.upstream_index(file.package)
        lines = parse_lines(body) if body is not None else []
        return any(line is not None and line.get("vers") == file.version for line in lines)

    def _index_url(self, name: str) -> str:
        return f"{self.registry.base_url}/{index_path(name)}"

    async def upstream_index(self, name: str) -> bytes | None:
        """The upstream's index file of ``name`` (``None``: crates.io's 404), each line's
        download location remembered. Raises ``UpstreamFailed``."""
        answer, _ = await self.registry.document(self._index_url(name), keep=True)
        if answer.absent:
            return None
        template = await self.upstream_template()
        for line in parse_lines(answer.body):
            if line is None or not is_sha256(line.get("cksum")):
                continue
            spelled, version = line.get("name"), line.get("vers")
            if isinstance(spelled, str) and isinstance(version, str):
                where = download_url(template, spelled, version, line["cksum"])
                self.registry.refs.put((name, version), FileRef(where, {"sha256": line["cksum"]}))
        return answer.body

    async def index_file(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        try:
            validate_name(path.rpartition("/")[2])
        except InvalidName as exc:
            return bad_request(str(exc))
        name = name_of_path(path)
        if name is None:
            return not_found("not a crate's index path")
        try:
            body = await self.upstream_index(name)
        except UpstreamFailed as exc:
            return await self.fallback(name, exc)
        headers = source_headers("upstream")
        if body is None:
            return not_found(**headers)
        withdrawn = await self.withdrawn(name)
        if withdrawn.hold is not None:
            return not_found(f"{name} is not served: {withdrawn.hold}", **headers)
        body = withdraw_index(body, withdrawn)
        return web.Response(body=body, content_type=INDEX_TYPE, headers=headers)

    async def fallback(self, name: str, error: UpstreamFailed) -> web.StreamResponse:
        """The last good index file filtered by the archive, else the index's own."""
        headers = source_headers("archive", error=error)

        async def render(rows: PackageRows, kept: bytes | None, _: object) -> bytes | None:
            if rows.hold is not None:
                return None
            body = await asyncio.to_thread(kept_index, kept, rows) if kept else None
            return body or await asyncio.to_thread(fallback_index, rows)

        url = self._index_url(name)
        body = await outage_listing(self, name, url=url, variant="index", render=render)
        if not body:
            hold = await self.mirror.archive.package_hold(ECOSYSTEM, name)
            if hold is not None:
                return not_found(f"{name} is not served: {hold}", **headers)
            return failed(error, headers, self.registry.settings.down_seconds)
        return web.Response(body=body, content_type=INDEX_TYPE, headers=headers)

    # -- downloads --------------------------------------------------------------------------

    async def download(self, request: web.Request) -> web.StreamResponse:
        version = request.match_info["version"]
        try:
            name = canonical(request.match_info["name"])
        except InvalidName as exc:
            return bad_request(str(exc))
        if not version or len(version) > MAX_VERSION or not version.isprintable():
            return bad_request("not a version")
        hold = await self.mirror.archive.package_hold(ECOSYSTEM, name)
        if hold is not None:
            return not_found(f"{name} is not served: {hold}")
        archived = await self.mirror.archive.find_file(ECOSYSTEM, name=name, version=version)
        local = await self.serve_local(request, archived, content_type=CRATE_TYPE)
        if local is not None:
            return local
        error: UpstreamFailed | None = None
        try:
            ref = await self._ref(name, version, archived)
            if ref is not None:
                fetched = await self.registry.file(ref.url, ref.digests, package=name)
                if fetched.spool is not None:
                    headers = source_headers("upstream", verified=fetched.verified)
                    return await send_spool(
                        request, fetched.spool, content_type=CRATE_TYPE, headers=headers
                    )
                if archived is not None:
                    return await self.serve_archived(request, archived, removed=True)
                return not_found(**source_headers("upstream"))
            if archived is None:
                return not_found(**source_headers("upstream"))
        except UpstreamFailed as exc:
            error = exc
        if archived is None:
            if error is None:
                return not_found(**source_headers("archive"))
            headers = source_headers("archive", error=error)
            return failed(error, headers, self.registry.settings.down_seconds)
        return await self.serve_archived(request, archived, removed=archived.removed, error=error)

    async def _ref(self, name: str, version: str, archived: ArchivedFile | None) -> FileRef | None:
        """Where the upstream serves the ``.crate`` and its ``cksum``: learnt from an index
        file, else the index's row, else (after reading the index file) nothing."""
        if self.registry.upstream is None:
            raise self.registry.offline_error(f"{name}/{version}")
        cached = self.registry.refs.stale((name, version))
        if cached is not None:
            return cached.value
        if archived is not None:
            return FileRef(archived.url, archived.digests)
        await self.upstream_index(name)
        cached = self.registry.refs.stale((name, version))
        return cached.value if cached is not None else None

    async def serve_archived(
        self,
        request: web.Request,
        archived: ArchivedFile,
        *,
        removed: bool,
        error: UpstreamFailed | None = None,
    ) -> web.StreamResponse:
        return await self.send_archived(
            request, archived, removed=removed, error=error, content_type=CRATE_TYPE, refuse=_refuse
        )


def _refuse(exc: ArchiveInvalid, headers: dict[str, str]) -> web.Response:
    """cargo's answer for an archived copy that fails verification (a 502 it reports)."""
    detail = f"archived copy failed verification: {exc.reason}"
    return web.json_response({"errors": [{"detail": detail}]}, status=502, headers=headers)


__all__ = ["CargoRoutes", "fallback_index", "kept_index", "withdraw_index"]
