"""The Maven indexer: the Maven Indexer's incremental chunks as the feed, the repository layout
for each artifact's versions and files.

Change signal. A Maven repository has no change feed of its own; what exists:

1. The Maven Indexer's index, published beside the repository at ``/.index/``
   (https://repo.maven.apache.org/maven2/.index/, format in ``apache/maven-indexer``'s
   ``IndexDataWriter``/``IndexDataReader`` and ``indexer-reader``'s ``ChunkReader``; see
   :mod:`.indexdata`): a properties file naming the newest numbered chunk, and gzip'd chunks,
   each the artifacts added or deleted since the one before, with their sha1.
2. The search service (``https://search.maven.org/solrsearch/select?q=...&core=gav&sort=
   timestamp desc``; https://central.sonatype.org/search/rest-api-guide/): a Solr query API
   documented for searching, not for replication: its ``sort`` is not part of the
   documented API, ``start`` offsets shift while artifacts are published, rows are capped
   and requests rate-limited, and it is a separate service from the repository.
3. Polling every watched artifact's ``maven-metadata.xml`` (no way to learn new artifacts).

Forage follows (1), as repository managers and IDEs (Nexus, Artifactory's "remote index",
Eclipse/IntelliJ) do: it is the one signal that is part of the repository itself (mirrors
carry it), it has a durable, gap-detectable position (the chunk number, within a
``chain-id``), names deletions, and costs one small request when nothing changed. Its cost is
cadence: Central publishes a chunk about once a week, so lookups of newer releases go through
the backfill import, which reads the layout directly.

Feed semantics: the cursor is the last chunk read (:class:`MavenCursor`, exclusive); one page
is one chunk, its records in chunk order, one :class:`Change` per ``(GROUP/ARTIFACT,
version)`` added (``version`` set) and one without a version per artifact deleted; SNAPSHOT
versions are left out. A page whose chunk is the newest is ``done``; an empty page means no
newer chunk. When the chunk after the cursor is no longer published or the chain was rebuilt
(a new ``chain-id``), the gap is logged and the cursor moves to the oldest chunk still
published (or the head): the reconcile sweep, whose inventory is every published chunk, and
backfill lookups cover what was skipped.

Versions: ``maven-metadata.xml`` lists an artifact's versions; per version, the directory
listing names its files (POM, main artifact, classifiers such as ``-sources``/``-javadoc``,
each with checksum sidecars); a repository without listings gets the POM and the main
artifact of its ``packaging``. Each file's digest is its strongest sidecar (sha512 > sha256 >
sha1 > md5), fetched here and checked by the archiver; a mismatch fails the archive. A POM's
``<relocation>`` is kept as the release's ``deprecated`` note (``relocated to g:a:v``) and in
``extra["relocations"]``; the relocation POM is archived like any file, and clients follow it
to the new coordinates, which Forage indexes on their own. SNAPSHOTs a repository lists are
read (their newest timestamped build, from the version-level ``maven-metadata.xml``) and left
out by the registry's ``development`` setting, off by default; the index never carries them.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx

from indexers.base import Indexer, parse_position, redact
from indexers.errors import FeedError, IndexerError, InvalidName, InvalidPosition, PackageNotFound
from indexers.maven.coords import (
    ECOSYSTEM,
    SIDECARS,
    artifact_dir,
    check_version,
    file_path,
    is_prerelease,
    is_snapshot,
    normalize_name,
    parse_file_name,
    parse_sidecar,
    split_name,
)
from indexers.maven.documents import (
    DocumentError,
    Entry,
    Pom,
    parse_listing,
    parse_metadata,
    parse_pom,
    snapshot_build,
)
from indexers.maven.indexdata import (
    PROPERTIES,
    IndexFormatError,
    IndexProperties,
    Record,
    chunk_name,
    parse_properties,
    read_chunk,
)
from indexers.types import (
    Artifact,
    Change,
    Inventory,
    InventoryEntry,
    PackageInfo,
    Page,
    Release,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MavenCursor:
    """The last chunk read and the index chain it belongs to."""

    chunk: int
    chain: str = ""


def record_changes(records: list[Record]) -> tuple[Change, ...]:
    """One change per artifact version added, one per artifact deleted, in chunk order."""
    changes: dict[tuple[str, str | None], Change] = {}
    for record in records:
        try:
            name = normalize_name(f"{record.group}/{record.artifact}")
            version = None if record.deleted else check_version(record.version)
        except InvalidName as exc:
            log.warning("skipping index record %s: %s", record, exc.reason)
            continue
        if version is not None and is_snapshot(version):
            continue
        changes.setdefault((name, version), Change(name=name, version=version))
    return tuple(changes.values())


class MavenIndexer(Indexer[MavenCursor]):
    """A Maven repository (``repository_url``, the ``maven2`` base) and its index
    (``index_url``, on Central ``<repository_url>/.index``); see the module docstring."""

    ecosystem = ECOSYSTEM
    cursor_type = MavenCursor
    default_interval = timedelta(hours=1)
    release_removed = "version no longer in maven-metadata.xml"
    package_removed = "maven-metadata.xml gone"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        repository_url: str,
        index_url: str,
        concurrency: int = 8,
    ) -> None:
        super().__init__(client)
        self.repository_url = repository_url.rstrip("/")
        self.index_url = index_url.rstrip("/")
        self.concurrency = concurrency

    @staticmethod
    def normalize_name(name: str) -> str:
        return normalize_name(name)

    @staticmethod
    def is_prerelease(version: str) -> bool:
        return is_prerelease(version)

    # -- the feed -------------------------------------------------------------------------------

    async def properties(self) -> IndexProperties:
        url = f"{self.index_url}/{PROPERTIES}"
        response = await self.get(url)
        try:
            return parse_properties(response.content.decode("latin-1"))
        except IndexFormatError as exc:
            raise FeedError(redact(url), str(exc)) from exc

    async def chunk(self, number: int) -> list[Record]:
        """The records of one chunk (its compressed body is held while it is read)."""
        url = f"{self.index_url}/{chunk_name(number)}"
        response = await self.get(url)
        try:
            return await asyncio.to_thread(lambda: list(read_chunk(io.BytesIO(response.content))))
        except IndexFormatError as exc:
            raise FeedError(redact(url), str(exc)) from exc

    async def start_cursor(self) -> MavenCursor:
        props = await self.properties()
        return MavenCursor(props.last, props.chain_id)

    async def cursor_at(self, position: str) -> MavenCursor:
        """``origin`` is the oldest chunk still published; a number is a chunk number."""
        props = await self.properties()
        where = parse_position(self.ecosystem, position)
        if where is None:
            first = min(props.chunks, default=props.last + 1)
            return MavenCursor(first - 1, props.chain_id)
        if isinstance(where, int):
            return MavenCursor(where, props.chain_id)
        raise InvalidPosition(self.ecosystem, position, "the index is positioned by chunk number")

    def cursor_from_dict(self, data: Mapping[str, Any]) -> MavenCursor:
        chunk, chain = data.get("chunk"), data.get("chain", "")
        if not isinstance(chunk, int) or not isinstance(chain, str):
            raise FeedError("feed_cursors", f"stored Maven cursor is malformed: {dict(data)!r}")
        return MavenCursor(chunk, chain)

    def _next_chunk(self, cursor: MavenCursor, props: IndexProperties) -> int | None:
        if cursor.chain and props.chain_id and cursor.chain != props.chain_id:
            log.warning(
                "maven index chain changed (%s -> %s): the index was rebuilt; continuing at its "
                "head, reconcile covers the rest",
                cursor.chain,
                props.chain_id,
            )
            return None
        later = [n for n in props.chunks if n > cursor.chunk]
        if not later:
            return None
        if min(later) != cursor.chunk + 1:
            log.warning(
                "maven index chunks %d..%d are no longer published; reconcile covers them",
                cursor.chunk + 1,
                min(later) - 1,
            )
        return min(later)

    async def changes(self, cursor: MavenCursor) -> Page[MavenCursor]:
        props = await self.properties()
        head = MavenCursor(props.last, props.chain_id)
        if cursor.chunk >= props.last and cursor.chain in ("", props.chain_id):
            return Page(changes=(), cursor=head, done=True, head=props.last)
        number = self._next_chunk(cursor, props)
        if number is None:
            return Page(changes=(), cursor=head, done=True, head=props.last)
        changes = record_changes(await self.chunk(number))
        return Page(
            changes=changes,
            cursor=MavenCursor(number, props.chain_id),
            done=number >= props.last,
            head=props.last,
        )

    async def inventory(self, after: str | None) -> Inventory:
        """Every chunk still published, oldest first, one a page; ``after`` is the last chunk
        read. (The full index, ``nexus-maven-repository-index.gz``, is not read: on Central it
        is over a gigabyte.)"""
        props = await self.properties()
        done_to = int(after) if after and after.isdigit() else -1
        later = [n for n in props.chunks if n > done_to]
        if not later:
            return Inventory((), None, True)
        number = min(later)
        entries = tuple(
            InventoryEntry(change) for change in record_changes(await self.chunk(number))
        )
        return Inventory(entries, str(number), number >= max(props.chunks))

    # -- one artifact ---------------------------------------------------------------------------

    def _dir_url(self, name: str) -> str:
        return f"{self.repository_url}/{artifact_dir(name)}"

    async def package(self, name: str, *, change: Change | None = None) -> PackageInfo:
        """Every version ``maven-metadata.xml`` lists (plus the one the feed announced, should
        the metadata lag the index), each with its files and digests; SNAPSHOTs are left out
        by the registry's ``development`` setting unless it asks for them."""
        name = normalize_name(name)
        url = f"{self._dir_url(name)}/maven-metadata.xml"
        response = await self.get(url, not_found=(ECOSYSTEM, name))
        try:
            metadata = parse_metadata(response.content)
        except DocumentError as exc:
            raise FeedError(redact(url), str(exc)) from exc
        versions: list[str] = []
        for version in metadata.versions:
            try:
                versions.append(check_version(version))
            except InvalidName as exc:
                log.warning("%s: skipping listed version: %s", name, exc.reason)
        announced = change.version if change is not None else None
        extra = [announced] if announced and announced not in versions else []
        gate = asyncio.Semaphore(self.concurrency)

        async def one(version: str, listed: bool) -> tuple[Release, Pom | None] | None:
            async with gate:
                return await self.release(name, version, listed=listed)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(v, v not in extra)) for v in [*versions, *extra]]
        except ExceptionGroup as failed:
            first = failed.exceptions[0]
            if isinstance(first, IndexerError):
                raise first from None
            raise
        results = [r for r in (task.result() for task in tasks) if r is not None]
        relocations = {
            release.version: {"to": pom.relocation, "message": pom.relocation_message}
            for release, pom in results
            if pom is not None and pom.relocation
        }
        return PackageInfo(
            ecosystem=ECOSYSTEM,
            name=name,
            display_name=name.replace("/", ":"),
            releases=tuple(release for release, _ in results),
            extra={"relocations": relocations} if relocations else {},
        )

    async def release(
        self, name: str, version: str, *, listed: bool = True
    ) -> tuple[Release, Pom | None] | None:
        """One version: its files with their strongest sidecar digest. A listed version whose
        POM is gone is a ``deleted`` release; an unlisted one that is gone is ``None``."""
        group, artifact = split_name(name)
        stem = await self.snapshot_stem(name, version) if is_snapshot(version) else version
        pom_name = f"{artifact}-{stem}.pom"
        pom_url = f"{self.repository_url}/{file_path(name, version, pom_name)}"
        try:
            pom_body = (await self.get(pom_url, not_found=(ECOSYSTEM, name))).content
        except PackageNotFound:
            log.info("%s %s is listed but its POM is gone", name, version)
            return (Release(version=version, artifacts=(), deleted=True), None) if listed else None
        try:
            pom = parse_pom(pom_body, group, artifact, version)
        except DocumentError as exc:
            log.warning("%s %s: %s; taking jar packaging", name, version, exc)
            pom = Pom("jar")
        entries = await self.listing(pom_url.rpartition("/")[0] + "/")
        if entries is None:
            names = [pom_name] + ([f"{artifact}-{stem}.{pom.extension}"] if pom.extension else [])
            files = [Entry(n, None, None) for n in names]
            present: set[str] | None = None
        else:
            files = [e for e in entries if parse_file_name(artifact, stem, e.name)]
            present = {e.name for e in entries}
        artifacts = []
        for entry in files:
            url = f"{self.repository_url}/{file_path(name, version, entry.name)}"
            digests = await self.digest(url, entry.name, present)
            parsed = parse_file_name(artifact, stem, entry.name)
            kind = (parsed.classifier or parsed.extension) if parsed else None
            artifacts.append(
                Artifact(
                    filename=entry.name,
                    url=url,
                    size=entry.size,
                    digests=digests,
                    kind=kind,
                    uploaded_at=entry.modified,
                )
            )
        dated = [e.modified for e in files if e.modified is not None]
        note = None
        if pom.relocation:
            note = f"relocated to {pom.relocation}"
            note += f": {pom.relocation_message}" if pom.relocation_message else ""
        release = Release(
            version=version,
            artifacts=tuple(artifacts),
            published_at=min(dated) if dated else None,
            deprecated=note,
        )
        return release, pom

    async def snapshot_stem(self, name: str, version: str) -> str:
        """The version as a SNAPSHOT's newest files spell it (``1.1-20240101.120000-3`` for
        ``1.1-SNAPSHOT``, from its version-level ``maven-metadata.xml``); the version itself
        for one deployed without timestamps or without that document."""
        url = f"{self._dir_url(name)}/{quote(version, safe='+')}/maven-metadata.xml"
        try:
            build = snapshot_build((await self.get(url, not_found=(ECOSYSTEM, name))).content)
        except (PackageNotFound, DocumentError):
            return version
        return version.removesuffix("SNAPSHOT") + build if build else version

    async def listing(self, url: str) -> list[Entry] | None:
        """A version directory's files, or ``None`` where the repository lists no directories."""
        try:
            response = await self.get(url, not_found=(ECOSYSTEM, url))
        except (PackageNotFound, FeedError):
            return None
        if "html" not in response.headers.get("content-type", "html"):
            return None
        return parse_listing(response.content.decode("utf-8", "replace"))

    async def digest(self, url: str, filename: str, present: set[str] | None) -> dict[str, str]:
        """The strongest checksum sidecar of a file (``{}`` if it has none)."""
        for suffix, algorithm in SIDECARS.items():
            if present is not None and filename + suffix not in present:
                continue
            try:
                response = await self.get(url + suffix, not_found=(ECOSYSTEM, filename))
            except PackageNotFound:
                continue
            value = parse_sidecar(response.content.decode("ascii", "replace"), algorithm)
            if value is None:
                log.warning("malformed %s sidecar at %s", algorithm, redact(url + suffix))
                continue
            return {algorithm: value}
        return {}


__all__ = ["MavenCursor", "MavenIndexer", "record_changes"]
