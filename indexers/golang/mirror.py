"""The GOPROXY protocol under ``/go/``: ``@v/list``, ``.info``, ``.mod``, ``.zip``, ``@latest``.

Spec: https://go.dev/ref/mod#goproxy-protocol. Paths and versions arrive case-encoded (``!a``
for ``A``; the go command sends ``!`` as ``%21``) and are decoded and checked by
:mod:`indexers.golang.gomod` before anything else sees them. Every "not here" answer is a 404 or 410
with a ``text/plain`` body, never a 5xx: with ``GOPROXY=forage,next`` the go command moves on
to the next proxy only on 404/410 (``research/registries.md`` §3.4).

Upstream first (``registries.golang.proxy_url``). No zip or ``.mod`` whose ``h1:`` Forage
knows reaches a client unchecked: the whole body is spooled and hashed first, against the
``h1:`` the index holds (archived or not), else the checksum database's record (through
:mod:`.checksums`, so it is kept for later); the go.mod ``h1:`` likewise
(``Package.extra["go_mod_h1"]``, else the record). Bytes that fail are replaced by the
verified archive when there is one, else answered ``502`` naming the mismatch -- never a 200.
That 502 is deliberate, unlike an unreachable upstream (a 404, so ``go`` tries the next proxy,
where the other ecosystems answer 5xx: :mod:`indexers.mirror.failures`): bytes that fail their
checksum are a tampering signal, and a 5xx stops ``go`` with the reason rather than quietly
sending it to another source.
The ``.info`` and ``.mod`` of an archived version, like its zip, are served from the archive
without asking the proxy (issue 16): the upstream's own ``.info`` kept on disk, else one with
the recorded time; the kept ``.mod`` when it matches the go.mod ``h1:``, else the ``go.mod``
inside the verified zip (or the synthetic ``module <path>`` a module without one gets). When
the upstream fails, ``list`` is the last good one kept on disk naming only archived versions
the registry has not removed, else the archived tagged versions. ``/go/sumdb/<name>/...`` is
the configured checksum database (:class:`~indexers.golang.checksums.ChecksumProxy`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import zipfile
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from indexers.base import parse_time
from indexers.errors import ArchiveInvalid, InvalidName, UpstreamFailed
from indexers.golang.checksums import ChecksumProxy
from indexers.golang.gomod import (
    check_version,
    escape_path,
    escape_version,
    gomod_h1,
    is_prerelease,
    is_pseudo_version,
    sort_versions,
    unescape_path,
    unescape_version,
)
from indexers.mirror.listings import kept_versions, outage_listing
from indexers.mirror.registry import (
    EcosystemRoutes,
    MirrorContext,
    source_headers,
    verified_algorithms,
)
from indexers.mirror.rows import ArchivedFile, PackageRows, Withdrawn, hold_reason
from indexers.mirror.spool import Spool, send_spool
from indexers.mirror.upstream import Answer

ECOSYSTEM = "golang"
PREFIX = "/go/"
TEXT = "text/plain"
_FILE = re.compile(r"(.+)\.(info|mod|zip)")


def go_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """A proxy-style error: 404/410 with a one-line ``text/plain`` body."""
    return web.Response(
        status=status, text=message.rstrip("\n") + "\n", content_type=TEXT, headers=headers
    )


def info_json(version: str, file: ArchivedFile | None) -> bytes:
    """An ``.info`` document (``Time`` in RFC 3339 when the index knows it)."""
    document: dict[str, str] = {"Version": version}
    when = (file.published_at or file.uploaded_at) if file is not None else None
    if when is not None:
        document["Time"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(document).encode()


def listed_versions(rows: PackageRows) -> list[str]:
    """Archived versions a fallback ``list`` shows: tagged, not removed, semver order."""
    versions = {f.version for f in rows.listed_files() if not is_pseudo_version(f.version)}
    return sort_versions(versions)


def latest_version(rows: PackageRows) -> str | None:
    """The go command's ``@latest`` among what is archived: the highest release, else the
    highest pre-release or pseudo-version."""
    listed = listed_versions(rows)
    releases = [v for v in listed if not is_prerelease(v)]
    if releases:
        return releases[-1]
    every = sort_versions({f.version for f in rows.listed_files()})
    return every[-1] if every else None


def withdraw_listing(answer: Answer, what: str, withdrawn: Withdrawn) -> Answer:
    """The upstream's ``list`` or ``@latest`` without what the index knows was withdrawn
    (retracted or gone versions; everything of a held module, answered 410)."""
    if answer.absent or not withdrawn:
        return answer
    if withdrawn.hold is not None:
        return dataclasses.replace(
            answer, status=410, body=f"not served: {withdrawn.hold}".encode()
        )
    if what == "list":
        listed = answer.body.decode("utf-8", "replace").split()
        kept = [v for v in listed if v not in withdrawn.versions]
        return dataclasses.replace(answer, body="".join(f"{v}\n" for v in kept).encode())
    try:
        latest = json.loads(answer.body)
    except ValueError:
        return answer
    if isinstance(latest, dict) and latest.get("Version") in withdrawn.versions:
        return dataclasses.replace(answer, status=404, body=b"latest version was withdrawn")
    return answer


def kept_list(body: bytes, rows: PackageRows) -> bytes | None:
    """The last good upstream ``list`` (issue 16) naming only archived versions the
    registry has not removed, in its own order (``None``: none left)."""
    archived = kept_versions(rows)
    listed = [v for v in body.decode("utf-8", "replace").split() if v in archived]
    return "".join(f"{v}\n" for v in listed).encode() or None


def kept_info(body: bytes | None, version: str) -> bytes | None:
    """The upstream's own ``.info`` of ``version`` kept on disk, if it is one."""
    try:
        document = json.loads(body) if body else None
    except ValueError:
        return None
    return body if isinstance(document, dict) and document.get("Version") == version else None


def go_mod_of(spool: Spool, path: str, version: str) -> bytes:
    """The ``go.mod`` inside a (verified) module zip, or the synthetic one."""
    with spool.open() as reader, zipfile.ZipFile(reader) as archive:
        try:
            return archive.read(f"{path}@{version}/go.mod")
        except KeyError:
            return f"module {path}\n".encode()


def _cooled(rows: PackageRows, cutoff: datetime | None) -> PackageRows:
    """``rows`` without the files published after ``cutoff`` (a cooldown)."""
    if cutoff is None:
        return rows
    cooled = [f for f in rows.files if (f.published_at or f.uploaded_at or cutoff) <= cutoff]
    return dataclasses.replace(rows, files=tuple(cooled))


async def _render_list(
    rows: PackageRows, kept: bytes | None, cutoff: datetime | None
) -> bytes | None:
    """The ``list`` without the upstream: the last good one filtered by the archive, else
    the archived tagged versions (:func:`~indexers.mirror.listings.outage_listing`)."""
    if rows.hold is not None:
        return None
    rows = _cooled(rows, cutoff)
    body = kept_list(kept, rows) if kept else None
    return body or "".join(f"{v}\n" for v in listed_versions(rows)).encode()


class GoRoutes(EcosystemRoutes):
    """The handlers, bound to the application's
    :class:`~indexers.mirror.registry.MirrorContext`."""

    ecosystem = ECOSYSTEM
    prefix = PREFIX

    def __init__(self, mirror: MirrorContext) -> None:
        super().__init__(mirror)
        upstream = self.registry.upstream
        self.checksums = ChecksumProxy(
            upstream=upstream.sibling() if upstream is not None else None,
            base_url=self.registry.endpoints.get("sumdb_url"),
            cache_dir=self.registry.cache_dir,
            flights=self.registry.flights,
        )

    def setup(self, app: web.Application) -> None:
        app.router.add_get(PREFIX + "{tail:.+}", self.dispatch)

    @staticmethod
    def listing_path(name: str) -> str:
        return f"{PREFIX}{escape_path(name)}/@v/list"

    @staticmethod
    def file_path(name: str, version: str, filename: str, digests: Mapping[str, str]) -> str:
        return f"{PREFIX}{escape_path(name)}/@v/{escape_version(version)}.zip"

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        tail = request.path[len(PREFIX) :]
        if tail.startswith("sumdb/"):
            name, _, rest = tail.removeprefix("sumdb/").partition("/")
            found = await self.checksums.answer(name, rest)
            source = "archive" if found.cached else "upstream"
            return web.Response(
                status=found.status,
                body=found.body,
                content_type=found.content_type,
                headers=source_headers(source, error=found.error),
            )
        if tail.endswith("/@latest"):
            escaped, what = tail.removesuffix("/@latest"), "@latest"
        elif "/@v/" in tail:
            escaped, what = tail.split("/@v/", 1)
        else:
            return go_error(404, f"not found: {tail[:200]}")
        try:
            path = unescape_path(escaped)
            if what in ("list", "@latest"):
                return await self.listing(request, path, what)
            match = _FILE.fullmatch(what)
            if match is None:
                return go_error(404, f"not found: unknown request {what[:100]!r}")
            version = check_version(unescape_version(match.group(1)), path=path)
        except InvalidName as exc:
            return go_error(404, f"not found: {exc}")
        return await self.version_file(request, path, version, match.group(2))

    def _url(self, path: str, suffix: str) -> str:
        return f"{self.registry.base_url}/{escape_path(path)}/{suffix}"

    async def _rows(self, path: str) -> PackageRows | None:
        rows = await self.mirror.archive.package_rows(ECOSYSTEM, path)
        return None if rows is None or rows.hold is not None else rows

    async def upstream_offers(self, file: ArchivedFile) -> bool | None:
        """Whether the proxy still serves the module (a 404/410 list: removed); its list
        leaves pseudo-versions out, so a version missing from it says nothing."""
        # keep=True: whichever of this and the listing fetches the list first keeps it.
        answer, _ = await self.registry.document(self._url(file.package, "@v/list"), keep=True)
        return False if answer.absent else None

    # -- list and @latest ---------------------------------------------------------------------

    async def listing(self, request: web.Request, path: str, what: str) -> web.StreamResponse:
        url = self._url(path, "@v/list" if what == "list" else "@latest")
        try:
            answer, _ = await self.registry.document(url, keep=what == "list")
            answer = withdraw_listing(answer, what, await self.withdrawn(path))
            if self.registry.cutoff() is None or answer.absent:
                return self._pass(answer, "application/json" if what == "@latest" else TEXT)
            return await self.cooled_listing(path, what, answer)
        except UpstreamFailed as exc:
            error = exc
        headers = source_headers("archive", error=error)
        if what == "list":
            body = await outage_listing(self, path, url=url, variant=what, render=_render_list)
            if body is None:
                return go_error(404, f"not found: no archived versions of {path}", headers)
            return web.Response(body=body, content_type=TEXT, headers=headers)
        rows = await self._rows(path)
        if rows is None:
            return go_error(404, f"not found: {path} is not archived", headers)
        rows = _cooled(rows, self.registry.cutoff())
        latest = latest_version(rows)
        if latest is None:
            return go_error(404, f"not found: no archived versions of {path}", headers)
        file = next(f for f in rows.listed_files() if f.version == latest)
        return web.Response(
            body=info_json(latest, file), content_type="application/json", headers=headers
        )

    async def cooled_listing(self, path: str, what: str, answer: Answer) -> web.Response:
        """The upstream's ``list`` or ``@latest`` without versions younger than the cooldown:
        publish times from the index, else from the upstream's ``.info``."""
        if what == "@latest":
            try:
                latest = json.loads(answer.body)
            except ValueError:
                latest = None
            stamp = latest.get("Time") if isinstance(latest, dict) else None
            if self.registry.cooled(parse_time(stamp)):
                return self._pass(answer, "application/json")
            answer, _ = await self.registry.document(self._url(path, "@v/list"))
        listed = [] if answer.absent else answer.body.decode("utf-8", "replace").split()
        kept = await self._old_enough(path, listed)
        if what == "list":
            body = "".join(f"{v}\n" for v in kept)
            return web.Response(text=body, content_type=TEXT, headers=source_headers("upstream"))
        releases = [v for v in kept if not is_prerelease(v)] or kept
        if not releases:
            message = f"not found: no version of {path} is older than the cooldown"
            return go_error(404, message, source_headers("upstream"))
        best = sort_versions(releases)[-1]
        info, _ = await self.registry.document(self._url(path, f"@v/{escape_version(best)}.info"))
        return self._pass(info, "application/json")

    async def _old_enough(self, path: str, versions: list[str]) -> list[str]:
        rows = await self.mirror.archive.package_rows(ECOSYSTEM, path)
        known = {row.number: row.published_at for row in rows.versions} if rows else {}
        kept = []
        for version in versions:
            if version not in known:
                url = self._url(path, f"@v/{escape_version(version)}.info")
                info, _ = await self.registry.document(url)
                try:
                    document = {} if info.absent else json.loads(info.body)
                except ValueError:
                    document = {}
                stamp = document.get("Time") if isinstance(document, dict) else None
                known[version] = parse_time(stamp)
            if self.registry.cooled(known[version]):
                kept.append(version)
        return kept

    def _pass(self, answer: Answer, content_type: str) -> web.Response:
        headers = source_headers("upstream")
        if answer.absent:
            text = answer.body.decode("utf-8", "replace")[:500] or "not found"
            return go_error(answer.status, text, headers)
        return web.Response(body=answer.body, content_type=content_type, headers=headers)

    # -- .info, .mod, .zip ----------------------------------------------------------------------

    async def version_file(
        self, request: web.Request, path: str, version: str, kind: str
    ) -> web.StreamResponse:
        extra = await self.mirror.archive.package_extra(ECOSYSTEM, path)
        hold = hold_reason(extra or {})
        if hold is not None:
            return go_error(410, f"not found: {path} is not served: {hold}")
        archived = await self.mirror.archive.find_file(ECOSYSTEM, name=path, version=version)
        suffix = f"@v/{escape_version(version)}.{kind}"
        url = self._url(path, suffix)
        mod_h1 = ((extra or {}).get("go_mod_h1") or {}).get(version)
        error: UpstreamFailed | None = None
        if kind != "zip" and archived is not None and archived.hold is None:
            # Verified once, never changed: the go.mod is covered by go.sum and the sumdb.
            offered, error = await self.offered(archived)
            removed = archived.removed or offered is False
            answered = await self.from_archive(
                request, archived, kind, path, removed=removed, error=error, mod_h1=mod_h1
            )
            if answered.status == 200:
                return answered
            error = None
        try:
            if kind == "zip":
                local = await self.serve_local(request, archived, content_type="application/zip")
                if local is not None:
                    return local
                zip_h1 = await self.known_h1(path, version, archived)
                digests = {"h1": zip_h1} if zip_h1 else {}
                fetched = await self.registry.file(url, digests, package=path)
                if fetched.spool is not None:
                    headers = source_headers("upstream", verified=fetched.verified)
                    return await send_spool(
                        request, fetched.spool, content_type="application/zip", headers=headers
                    )
                absent = fetched.answer
            else:
                answer, _ = await self.registry.document(url, keep=True)
                if kind == "mod" and mod_h1 is None and not answer.absent:
                    mod_h1 = (await self.checksums.hashes(path, version) or ("", None))[1]
                if not answer.absent:
                    if kind == "mod" and mod_h1 and gomod_h1(answer.body) != mod_h1:
                        raise UpstreamFailed(
                            url, "digest", f"go.mod hashes to {gomod_h1(answer.body)}, not {mod_h1}"
                        )
                    content_type = "application/json" if kind == "info" else TEXT
                    return self._pass(answer, content_type)
                absent = answer
            if archived is None:
                return self._pass(absent, TEXT)
            return await self.from_archive(request, archived, kind, path, removed=True)
        except UpstreamFailed as exc:
            error = exc
        if archived is None and error is not None and error.kind == "digest":
            return go_error(
                502,
                f"bad gateway: the upstream's {kind} of {path}@{version} fails its checksum "
                f"and no verified copy is archived: {error.reason}",
                source_headers("upstream", error=error),
            )
        if archived is None:
            return go_error(
                404,
                f"not found: {path}@{version} is not archived",
                source_headers("archive", error=error),
            )
        return await self.from_archive(
            request, archived, kind, path, removed=archived.removed, error=error, mod_h1=mod_h1
        )

    async def known_h1(self, path: str, version: str, archived: ArchivedFile | None) -> str | None:
        """The zip ``h1:`` Forage knows: the archive's, the index's, else the checksum
        database's (``None``: nobody recorded one, as for a private module)."""
        if archived is not None and "h1" in archived.digests:
            return archived.digests["h1"]
        indexed = await self.mirror.archive.indexed_digests(ECOSYSTEM, name=path, version=version)
        if indexed and "h1" in indexed:
            return indexed["h1"]
        recorded = await self.checksums.hashes(path, version)
        return recorded[0] if recorded else None

    async def from_archive(
        self,
        request: web.Request,
        archived: ArchivedFile,
        kind: str,
        path: str,
        *,
        removed: bool,
        error: UpstreamFailed | None = None,
        mod_h1: str | None = None,
    ) -> web.StreamResponse:
        source = "archive-removed" if removed else "archive"
        url = self._url(path, f"@v/{escape_version(archived.version)}.{kind}")
        kept = await self.registry.last_good.read(url) if kind != "zip" else None
        if kind == "info":
            return web.Response(
                body=kept_info(kept, archived.version) or info_json(archived.version, archived),
                content_type="application/json",
                headers=source_headers(source, error=error),
            )
        if kind == "mod" and kept is not None and mod_h1 and gomod_h1(kept) == mod_h1:
            return web.Response(
                body=kept,
                content_type=TEXT,
                headers=source_headers(source, error=error, verified=("go.mod h1",)),
            )
        verified = verified_algorithms(archived.digests)
        # A zip's go.mod never changes: read from the archive once per process, not per request.
        derived = self.registry.derived.fresh(("go.mod", archived.cid)) if kind == "mod" else None
        if derived is None:
            try:
                spool = await self.registry.archived(archived)
            except ArchiveInvalid as exc:
                return go_error(
                    404,
                    f"not found: archived copy failed verification: {exc.reason}",
                    source_headers("archive", error=error),
                )
            if kind == "zip":
                headers = source_headers(source, error=error, verified=verified)
                return await send_spool(
                    request, spool, content_type="application/zip", headers=headers
                )
            go_mod = await asyncio.to_thread(go_mod_of, spool, path, archived.version)
            self.registry.derived.put(("go.mod", archived.cid), go_mod)
        else:
            go_mod = derived.value
        if mod_h1 and gomod_h1(go_mod) != mod_h1:
            return go_error(
                404,
                "not found: archived go.mod fails its checksum",
                source_headers("archive", error=error),
            )
        checks: Any = (*verified, "go.mod h1") if mod_h1 else verified
        return web.Response(
            body=go_mod,
            content_type=TEXT,
            headers=source_headers(source, error=error, verified=tuple(checks)),
        )


__all__ = [
    "GoRoutes",
    "go_mod_of",
    "info_json",
    "kept_info",
    "kept_list",
    "latest_version",
    "listed_versions",
]
