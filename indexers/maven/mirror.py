"""The Maven repository layout served under ``/maven2/``, for ``mvn`` (a ``<mirror>`` in
``settings.xml``), Gradle and any repository client.

- ``GROUP/as/path/ARTIFACT/maven-metadata.xml``: the upstream's, without what the index knows
  was withdrawn (and releases younger than a cooldown), kept on disk as the last good one;
  when the upstream fails, that one listing only the archived versions the registry has not
  removed, else rendered from the index: those versions in publication order.
- ``.../VERSION/FILE``: upstream first, checked against the digests the index holds for it
  (else against the upstream's strongest sidecar); on any failure, bad bytes included, the
  archived copy, re-verified. A file the upstream no longer has is served from the archive as
  ``archive-removed``.
- ``FILE.md5|.sha1|.sha256|.sha512`` (and the metadata's): never passed through. A file's
  sidecar is the digest Forage verified its bytes against, or the digest of the bytes Forage
  serves for it, computed once per content and kept; the metadata's is the digest of the
  document Forage serves. So ``mvn --strict-checksums`` checks what Forage verified.

Errors have a one-line text body. What the upstream does not have is a 404: a repository
client moves on to its next repository. What neither the upstream nor the archive can give is a
5xx (:mod:`indexers.mirror.failures`): Maven reports it as a transfer error, which its resolver
does not cache, where a 404 in an outage would be cached as "not found" in the local repository
until the update interval passes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from indexers.errors import ArchiveInvalid, InvalidName, UpstreamFailed
from indexers.maven.coords import (
    ECOSYSTEM,
    SIDECARS,
    artifact_dir,
    check_version,
    file_path,
    is_snapshot,
    normalize_name,
    parse_sidecar,
    split_name,
)
from indexers.maven.documents import DocumentError, parse_metadata, render_metadata
from indexers.mirror.failures import unavailable
from indexers.mirror.listings import kept_versions, outage_listing
from indexers.mirror.registry import EcosystemRoutes, source_headers, verified_algorithms
from indexers.mirror.rows import ArchivedFile, PackageRows
from indexers.mirror.spool import Spool, send_spool

PREFIX = "/maven2/"
METADATA = "maven-metadata.xml"
TEXT = "text/plain"
XML = "text/xml"
CONTENT_TYPES = {"pom": XML, "xml": XML, "jar": "application/java-archive"}


def not_found(message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=404, text=message[:500] + "\n", content_type=TEXT, headers=headers)


def failed(error: UpstreamFailed, headers: dict[str, str], retry_after: float) -> web.Response:
    answer = unavailable(error, headers, retry_after=retry_after)
    return web.Response(
        status=answer.status, text=answer.message + "\n", content_type=TEXT, headers=answer.headers
    )


def hash_spool(spool: Spool) -> dict[str, str]:
    """Every sidecar digest of a spool's bytes, in one pass (blocking)."""
    hashers = {algorithm: hashlib.new(algorithm) for algorithm in SIDECARS.values()}
    with spool.open() as reader:
        while chunk := reader.read(1 << 20):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {algorithm: hasher.hexdigest() for algorithm, hasher in hashers.items()}


def fallback_versions(rows: PackageRows) -> list[str]:
    """Archived versions a fallback ``maven-metadata.xml`` lists: not removed, in publication
    order (the order Central's metadata keeps), undated ones first."""
    listed = {f.version for f in rows.listed_files()}
    dated = [(v.published_at is not None, v.published_at, v.number) for v in rows.versions]
    return [
        number
        for *_, number in sorted(dated, key=lambda d: (d[0], d[1] or 0, d[2]))
        if number in listed
    ]


def kept_metadata(body: bytes, rows: PackageRows, cooled: Callable[[str], bool]) -> bytes | None:
    """The last good upstream ``maven-metadata.xml`` (issue 16) listing only the archived
    versions the registry has not removed (and ``cooled``), in its own order and with its
    own ``lastUpdated``; byte for byte the kept one when nothing is left out (``None``:
    unusable, or nothing left)."""
    try:
        metadata = parse_metadata(body)
    except DocumentError:
        return None
    archived = kept_versions(rows)
    versions = [v for v in metadata.versions if v in archived and cooled(v)]
    if not versions:
        return None
    if len(versions) == len(metadata.versions):
        return body
    group, artifact = split_name(rows.name)
    try:
        updated = datetime.strptime(metadata.last_updated or "", "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        updated = None
    return render_metadata(
        metadata.group or group,
        metadata.artifact or artifact,
        versions,
        is_snapshot=is_snapshot,
        updated=updated,
    )


@dataclass(frozen=True, slots=True)
class Obtained:
    """A file's verified bytes and who answered."""

    spool: Spool
    headers: dict[str, str]
    digests: Mapping[str, str]


class MavenRoutes(EcosystemRoutes):
    """The handlers, bound to the application's
    :class:`~indexers.mirror.registry.MirrorContext`."""

    ecosystem = ECOSYSTEM
    prefix = PREFIX

    def setup(self, app: web.Application) -> None:
        app.router.add_get(PREFIX + "{tail:.+}", self.dispatch)

    @staticmethod
    def listing_path(name: str) -> str:
        return f"{PREFIX}{artifact_dir(name)}/{METADATA}"

    @staticmethod
    def file_path(name: str, version: str, filename: str, digests: Mapping[str, str]) -> str:
        return PREFIX + file_path(name, version, filename)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = request.path[len(PREFIX) :].split("/")
        if any(part in ("", ".", "..") for part in parts) or len(parts) < 3:
            return not_found(f"not found: {request.path[:200]}")
        last, algorithm = parts[-1], None
        for suffix, name in SIDECARS.items():
            if last.endswith(suffix):
                last, algorithm = last.removesuffix(suffix), name
                break
        try:
            if last == METADATA:
                name = normalize_name(".".join(parts[:-2]) + "/" + parts[-2])
                return await self.metadata(name, "/".join(parts[:-1]), algorithm)
            if len(parts) < 4:
                return not_found(f"not found: {request.path[:200]}")
            name = normalize_name(".".join(parts[:-3]) + "/" + parts[-3])
            version = check_version(parts[-2])
        except InvalidName as exc:
            return not_found(f"not found: {exc}")
        if algorithm is None:
            return await self.file(request, name, version, last)
        return await self.sidecar(name, version, last, algorithm)

    def _url(self, path: str) -> str:
        return f"{self.registry.base_url}/{path}"

    # -- maven-metadata.xml -----------------------------------------------------------------------

    async def metadata(self, name: str, directory: str, algorithm: str | None) -> web.Response:
        body, headers, error = await self.metadata_body(name, directory)
        if body is None and error is not None:
            return failed(error, headers, self.registry.settings.down_seconds)
        if body is None:
            return not_found(f"not found: {directory}/{METADATA}", headers)
        if algorithm is not None:
            return web.Response(
                text=hashlib.new(algorithm, body).hexdigest(), content_type=TEXT, headers=headers
            )
        return web.Response(body=body, content_type=XML, headers=headers)

    async def metadata_body(
        self, name: str, directory: str
    ) -> tuple[bytes | None, dict[str, str], UpstreamFailed | None]:
        """The metadata document Forage serves for ``directory`` (``None``: none) and the
        upstream failure that made it come from the archive."""
        withdrawn = await self.withdrawn(name)
        if withdrawn.hold is not None:
            return None, source_headers("archive"), None
        url = self._url(f"{directory}/{METADATA}")
        try:
            answer, _ = await self.registry.document(url, keep=True)
        except UpstreamFailed as exc:
            body = await outage_listing(self, name, url=url, variant=METADATA, render=self._render)
            return body, source_headers("archive", error=exc), exc
        headers = source_headers("upstream")
        if answer.absent:
            return None, headers, None
        if not withdrawn and self.registry.cutoff() is None:
            return answer.body, headers, None
        try:
            metadata = parse_metadata(answer.body)
        except DocumentError:
            return answer.body, headers, None
        rows = await self.mirror.archive.package_rows(ECOSYSTEM, name)
        dates = {v.number: v.published_at for v in rows.versions} if rows else {}
        kept = [
            v
            for v in metadata.versions
            if v not in withdrawn.versions and self.registry.cooled(dates.get(v))
        ]
        group, artifact = split_name(name)
        body = render_metadata(
            metadata.group or group, metadata.artifact or artifact, kept, is_snapshot=is_snapshot
        )
        return body, headers, None

    async def _render(
        self, rows: PackageRows, kept: bytes | None, cutoff: datetime | None
    ) -> bytes | None:
        """The metadata without the upstream: the last good one filtered by the archive,
        else rendered from the index (:func:`~indexers.mirror.listings.outage_listing`)."""
        if rows.hold is not None:
            return None
        dates = {v.number: v.published_at for v in rows.versions}

        def cooled(version: str) -> bool:
            published = dates.get(version)
            return cutoff is None or published is None or published <= cutoff

        body = kept_metadata(kept, rows, cooled) if kept else None
        if body is not None:
            return body
        versions = [v for v in fallback_versions(rows) if cooled(v)]
        if not versions:
            return None
        group, artifact = split_name(rows.name)
        return render_metadata(group, artifact, versions, is_snapshot=is_snapshot)

    async def upstream_offers(self, file: ArchivedFile) -> bool | None:
        """Whether the upstream's ``maven-metadata.xml`` still lists the file's version (a
        SNAPSHOT's is not always listed there: that says nothing)."""
        url = self._url(f"{artifact_dir(file.package)}/{METADATA}")
        answer, _ = await self.registry.document(url, keep=True)
        if answer.absent:
            return False
        try:
            listed = parse_metadata(answer.body).versions
        except DocumentError:
            return None
        if file.version in listed:
            return True
        return None if is_snapshot(file.version) else False

    # -- files ------------------------------------------------------------------------------------

    async def upstream_digests(self, url: str) -> dict[str, str]:
        """The strongest sidecar the upstream publishes for ``url`` (``{}``: none)."""
        for suffix, algorithm in SIDECARS.items():
            answer, _ = await self.registry.document(url + suffix)
            if answer.absent:
                continue
            value = parse_sidecar(answer.body.decode("ascii", "replace"), algorithm)
            if value is not None:
                return {algorithm: value}
        return {}

    async def obtain(
        self, name: str, version: str, filename: str
    ) -> tuple[Obtained | web.Response, ArchivedFile | None]:
        """The file's verified bytes: the upstream's, else the archive's (see the module
        docstring); a 404 response when the upstream has none, a 5xx when neither can give
        them."""
        if (await self.withdrawn(name)).hold is not None:
            return not_found(f"not found: {name} is not served"), None
        archived = await self.mirror.archive.find_file(ECOSYSTEM, name=name, filename=filename)
        if archived is not None and archived.version != version:
            archived = None
        url = self._url(file_path(name, version, filename))
        error: UpstreamFailed | None = None
        removed = archived.removed if archived else False
        local = await self.local_file(archived)
        if archived is not None and local is not None:  # verified bytes never change
            return Obtained(*local, archived.digests), archived
        try:
            digests = dict(archived.digests) if archived else await self.upstream_digests(url)
            fetched = await self.registry.file(url, digests, package=name)
            if fetched.spool is not None:
                headers = source_headers("upstream", verified=fetched.verified)
                return Obtained(fetched.spool, headers, digests), archived
            removed = True
        except UpstreamFailed as exc:
            error = exc
        if archived is None:
            headers = source_headers("upstream" if error is None else "archive", error=error)
            if error is not None:
                return failed(error, headers, self.registry.settings.down_seconds), None
            return not_found(f"not found: {name} {version} {filename}", headers), None
        try:
            spool = await self.registry.archived(archived)
        except ArchiveInvalid as exc:
            headers = source_headers("archive", error=error)
            text = f"502 Bad Gateway: archived copy failed verification: {exc.reason}\n"
            return web.Response(status=502, text=text, content_type=TEXT, headers=headers), archived
        headers = source_headers(
            "archive-removed" if removed else "archive",
            error=error,
            verified=verified_algorithms(archived.digests),
        )
        return Obtained(spool, headers, archived.digests), archived

    def _sums_key(self, digests: Mapping[str, str]) -> tuple[str, ...] | None:
        strong = [(a, v) for a, v in sorted(digests.items()) if a in ("sha512", "sha256", "sha1")]
        return ("maven-sums", *strong[0]) if strong else None

    async def _remember_sums(self, obtained: Obtained) -> dict[str, str]:
        sums = await asyncio.to_thread(hash_spool, obtained.spool)
        key = self._sums_key(obtained.digests)
        if key is not None:
            self.registry.derived.put(key, sums)
        return sums

    async def file(
        self, request: web.Request, name: str, version: str, filename: str
    ) -> web.StreamResponse:
        obtained, _ = await self.obtain(name, version, filename)
        if isinstance(obtained, web.Response):
            return obtained
        await self._remember_sums(obtained)
        kind = filename.rpartition(".")[2]
        content_type = CONTENT_TYPES.get(kind, "application/octet-stream")
        return await send_spool(
            request, obtained.spool, content_type=content_type, headers=obtained.headers
        )

    async def sidecar(self, name: str, version: str, filename: str, algorithm: str) -> web.Response:
        """The digest Forage verified the file against, or that of the bytes it serves."""
        archived = await self.mirror.archive.find_file(ECOSYSTEM, name=name, filename=filename)
        known: Mapping[str, str] = {}
        if archived is not None and archived.version == version:
            known = archived.digests
            headers = source_headers("archive")
        else:
            try:
                known = await self.upstream_digests(self._url(file_path(name, version, filename)))
                headers = source_headers("upstream")
            except UpstreamFailed as exc:
                headers = source_headers("archive", error=exc)
        if algorithm in known:
            return web.Response(text=known[algorithm], content_type=TEXT, headers=headers)
        key = self._sums_key(known)
        cached = self.registry.derived.fresh(key) if key is not None else None
        if cached is not None:
            return web.Response(text=cached.value[algorithm], content_type=TEXT, headers=headers)
        obtained, _ = await self.obtain(name, version, filename)
        if isinstance(obtained, web.Response):
            return obtained
        sums = await self._remember_sums(obtained)
        return web.Response(text=sums[algorithm], content_type=TEXT, headers=obtained.headers)


__all__ = ["MavenRoutes", "fallback_versions", "hash_spool", "kept_metadata"]
