"""The mirror's shared machinery: a :class:`RegistryMirror` per ecosystem in one
:class:`MirrorContext`, the part every ecosystem's mirror protocol builds on.

A registry mirror asks its upstream first and falls back to the archive (issue 7, "Fallback
rules"). Metadata documents are fetched whole under the total deadline, cached
(:class:`~indexers.mirror.upstream.MetadataCache`) and shared between concurrent requests
(single flight). Files are streamed from the upstream into a spool while hashed against the
registry's digests (and any whole-file check the ecosystem registers, such as Go's ``h1:``)
and only served once they pass; a digest mismatch counts as an upstream failure.

Issue 16: a file Forage verified never changes, so an archived file is served from the archive
without asking the upstream (:meth:`EcosystemRoutes.serve_local`), whose answer then only
matters for listings and removals, read at the metadata TTL (:meth:`EcosystemRoutes.offered`).
The :class:`ArchiveIndex` the application provides checks archived bytes against their
digests once per archive per process (and its scheduled ``reverify`` samples them). Every file
the mirror fetches and verifies is archived in the same pass (:meth:`RegistryMirror.keep`, in
the background: its failure is logged, never the client's), and an ecosystem may keep the last
good listing on disk (:mod:`indexers.mirror.documents`) to serve, filtered, in an outage. Each
response carries:

- ``Forage-Source``: ``upstream``, ``archive`` or ``archive-removed`` (an exact request for a
  file of a release the registry removed);
- ``Forage-Upstream-Error``: why the upstream was not used, when it was not;
- ``Forage-Verified``: the digest algorithms a served file was checked against.

What the mirror needs from the application is two small Protocols: :class:`MirrorSettings`
(deadlines, cache sizes) and :class:`ArchiveIndex` (the index's rows and the archive's verified
bytes); ``forage`` implements both over its configuration, database and blockstore.
"""

from __future__ import annotations

import asyncio
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from aiohttp import web

from indexers.base import redact
from indexers.digests import HASHERS, DigestVerifier
from indexers.ecosystem import FileCheck
from indexers.errors import ArchiveInvalid, DigestMismatch, InvalidArchive, UpstreamFailed
from indexers.mirror.documents import LastGood
from indexers.mirror.rows import ArchivedFile, PackageRows, Withdrawn
from indexers.mirror.spool import Spool, send_spool
from indexers.mirror.upstream import Answer, MetadataCache, SingleFlight, Upstream


class MirrorSettings(Protocol):
    """The mirror's settings (``forage``'s ``[mirror]`` table is one)."""

    @property
    def offline(self) -> bool: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def first_byte_timeout(self) -> float: ...
    @property
    def deadline(self) -> float: ...
    @property
    def min_rate(self) -> int: ...
    @property
    def rate_grace(self) -> float: ...
    @property
    def down_seconds(self) -> float: ...
    @property
    def metadata_ttl(self) -> float: ...
    @property
    def negative_ttl(self) -> float: ...
    @property
    def cache_entries(self) -> int: ...
    @property
    def spool_memory(self) -> int: ...
    @property
    def public_url(self) -> str | None: ...


class ArchiveIndex(Protocol):
    """What the mirror reads from the archive; the application implements it.

    Every method runs its own short read (off the event loop). ``load_verified`` and ``chunks``
    raise :class:`~indexers.errors.ArchiveInvalid` for bytes that are missing, damaged or fail
    their upstream digests: such bytes are never served.
    """

    async def package_stamp(self, ecosystem: str, name: str) -> Hashable | None:
        """A value that changes whenever a listing of ``name`` may (``None``: unknown)."""

    async def package_rows(self, ecosystem: str, name: str) -> PackageRows | None:
        """Everything a fallback listing of ``name`` needs (``None``: unknown package)."""

    async def package_extra(self, ecosystem: str, name: str) -> dict[str, Any] | None:
        """The registry metadata the index keeps for ``name`` (``None``: unknown package)."""

    async def package_hold(self, ecosystem: str, name: str) -> str | None:
        """Why ``name`` must never be served (``None``: no hold, or unknown)."""

    async def package_withdrawn(self, ecosystem: str, name: str) -> Withdrawn | None:
        """The hold, removed versions and removed files of ``name`` (``None``: unknown)."""

    async def package_names(self, ecosystem: str) -> list[str]:
        """The ecosystem's packages the registry has not deleted, sorted."""

    async def find_file(
        self,
        ecosystem: str,
        *,
        name: str | None = None,
        filename: str | None = None,
        version: str | None = None,
        sha256: str | None = None,
    ) -> ArchivedFile | None:
        """The archived file matching every filter given, or ``None``."""

    async def indexed_digests(
        self, ecosystem: str, *, name: str, version: str
    ) -> Mapping[str, str] | None:
        """The upstream digests the index holds for ``name@version``'s file, archived or not
        (``None``: not indexed); for an ecosystem with one file per version."""

    async def load_verified(self, file: ArchivedFile, spool: Spool) -> None:
        """Read ``file``'s archived bytes into ``spool``, checked against its digests (once
        per archive per process: a verified archive never changes)."""

    def chunks(self, cid: str) -> Iterator[bytes]:
        """The archived bytes of ``cid``, each block checked against its CID (blocking)."""

    async def keep(self, ecosystem: str, name: str, url: str, spool: Spool) -> str:
        """Archive the verified bytes in ``spool`` of the file at ``url`` of package ``name``
        (pull-through); returns how it ended, for the log."""


log = logging.getLogger(__name__)

T = TypeVar("T")

SOURCE = "Forage-Source"
UPSTREAM_ERROR = "Forage-Upstream-Error"
VERIFIED = "Forage-Verified"

#: Largest metadata document read from an upstream (npm packuments reach tens of MB).
MAX_DOCUMENT_SIZE = 256 * 1024**2
#: How many upstream file locations (learnt from upstream documents) are remembered.
MAX_FILE_REFS = 200_000
#: Seconds a listing's index stamp is reused: a listing may lag the index by this much.
RECENT_TTL = 1.0


@dataclass(frozen=True, slots=True)
class FileRef:
    """Where the upstream serves a file and the digests its document published for it (and
    the package whose document it was, where the file's route does not say)."""

    url: str
    digests: Mapping[str, str]
    package: str | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """A file answer from the upstream: verified bytes in ``spool``, or an absent answer."""

    answer: Answer
    spool: Spool | None
    verified: tuple[str, ...] = ()


def source_headers(
    source: str, *, error: UpstreamFailed | None = None, verified: tuple[str, ...] | None = None
) -> dict[str, str]:
    """The headers that say who answered (see the module docstring)."""
    headers = {SOURCE: source}
    if error is not None:
        headers[UPSTREAM_ERROR] = f"{error.kind}: {error.reason}"[:300]
    if verified is not None:
        headers[VERIFIED] = ",".join(verified) or "none"
    return headers


def verified_algorithms(digests: Mapping[str, str]) -> tuple[str, ...]:
    """The algorithms of ``digests`` a served file is checked against, strongest first."""
    order = ("sha512", "sha384", "sha256", "blake2b_256", "sha1", "md5", "h1")
    return tuple(name for name in order if name in digests)


class RegistryMirror:
    """One ecosystem's upstream (``None`` when offline or unconfigured) and caches.

    ``cooldown`` keeps releases younger than it out of listings and ``latest`` (as pnpm's
    ``minimumReleaseAge`` and uv's ``exclude-newer`` do on the client): :meth:`cutoff` is the
    newest publish time a listing may show, ``None`` without a cooldown. ``endpoints`` are
    the registry's configured endpoints (for an ecosystem that serves more than one of its
    services); ``cache_dir`` is where it may keep immutable upstream answers on disk.
    """

    def __init__(
        self,
        ecosystem: str,
        *,
        upstream: Upstream | None,
        base_url: str | None,
        settings: MirrorSettings,
        archive: ArchiveIndex,
        file_checks: Mapping[str, FileCheck] | None = None,
        spool_dir: Path | None = None,
        cooldown: timedelta | None = None,
        endpoints: Mapping[str, str | None] | None = None,
        cache_dir: Path | None = None,
        documents_dir: Path | None = None,
    ) -> None:
        self.ecosystem = ecosystem
        self.endpoints = dict(endpoints or {})
        self.cache_dir = cache_dir
        #: The last good listings kept on disk (:mod:`indexers.mirror.documents`).
        self.last_good = LastGood(documents_dir)
        self.cooldown = cooldown if cooldown else None
        self.upstream = upstream
        self.archive = archive
        self.file_checks = dict(file_checks or {})
        self.base_url = base_url.rstrip("/") if base_url else None
        self.settings = settings
        self.spool_dir = spool_dir
        self.documents: MetadataCache[Answer] = MetadataCache(
            ttl=settings.metadata_ttl,
            negative_ttl=settings.negative_ttl,
            max_entries=settings.cache_entries,
        )
        #: Rendered bodies, keyed by everything they depend on (never stale by time).
        self.rendered: MetadataCache[bytes] = MetadataCache(
            ttl=math.inf, negative_ttl=0, max_entries=settings.cache_entries
        )
        #: Upstream file locations and digests learnt from upstream documents.
        self.refs: MetadataCache[FileRef] = MetadataCache(
            ttl=math.inf, negative_ttl=0, max_entries=MAX_FILE_REFS
        )
        #: Values derived from immutable archived bytes (npm manifests), keyed by CID.
        self.derived: MetadataCache[Any] = MetadataCache(
            ttl=math.inf, negative_ttl=0, max_entries=max(settings.cache_entries, 20_000)
        )
        #: Short-lived answers from the index (listing stamps), so a burst of requests for
        #: one listing makes one query a second, not one each.
        self.recent: MetadataCache[Any] = MetadataCache(
            ttl=RECENT_TTL, negative_ttl=RECENT_TTL, max_entries=settings.cache_entries
        )
        self.flights: SingleFlight[Any] = SingleFlight()
        #: Whether the upstream's listing still offers an archived file (and why it could not
        #: say), so a file served from the archive costs a listing read once per TTL at most.
        self.offers: MetadataCache[tuple[bool | None, UpstreamFailed | None]] = MetadataCache(
            ttl=settings.metadata_ttl,
            negative_ttl=settings.negative_ttl,
            max_entries=settings.cache_entries,
        )
        #: Pull-through archives and kept documents under way (:meth:`background`).
        self.keeping: set[asyncio.Task[None]] = set()

    async def remembered(self, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        """``await factory()``, reused for :data:`RECENT_TTL` seconds and shared in flight."""
        cached = self.recent.fresh(key)
        if cached is not None:
            value: T = cached.value
            return value

        async def load() -> T:
            result = await factory()
            self.recent.put(key, result)
            return result

        loaded: T = await self.flights.run(("recent", key), load)
        return loaded

    def cutoff(self) -> datetime | None:
        """Releases published after this stay out of listings (``None``: no cooldown)."""
        return datetime.now(UTC) - self.cooldown if self.cooldown else None

    def cooled(self, published: datetime | None) -> bool:
        """Whether a release published at ``published`` is old enough to list (an unknown
        time is: Forage only hides what it knows to be fresh)."""
        cutoff = self.cutoff()
        return cutoff is None or published is None or published <= cutoff

    def new_spool(self) -> Spool:
        return Spool(memory=self.settings.spool_memory, directory=self.spool_dir)

    def offline_error(self, url: str) -> UpstreamFailed:
        return UpstreamFailed(redact(url), "offline", "no upstream configured (archive only)")

    async def document(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        keep: bool = False,
        kept_as: str | None = None,
    ) -> tuple[Answer, bool]:
        """The upstream's answer for ``url`` and whether it came from the cache; with
        ``keep``, a 200 answer fetched now is kept on disk as the last good one (under
        ``kept_as``, for a document whose URL only the upstream can tell).

        Raises ``UpstreamFailed`` when the upstream cannot answer (or there is none).
        """
        if self.upstream is None:
            raise self.offline_error(url)
        cached = self.documents.fresh(url)
        if cached is not None:
            return cached.value, True
        upstream = self.upstream

        async def fetch() -> Answer:
            answer = await upstream.fetch(url, headers=headers, max_size=MAX_DOCUMENT_SIZE)
            if answer.status == 200 or answer.absent:
                self.documents.put(url, answer, negative=answer.absent)
            if keep and answer.status == 200:
                self.background(self.last_good.keep(kept_as or url, answer.body))
            return answer

        return await self.flights.run(("document", url), fetch), False

    async def file(
        self, url: str, digests: Mapping[str, str], *, package: str | None = None
    ) -> Fetched:
        """Download ``url`` into a spool and check it against ``digests`` (single flight);
        verified bytes of a ``package``'s file are archived in the background (:meth:`keep`).

        Raises ``UpstreamFailed`` (``kind="digest"`` for bytes that do not match).
        """
        if self.upstream is None:
            raise self.offline_error(url)
        upstream = self.upstream
        byte_digests = {k: v for k, v in digests.items() if k in HASHERS}

        async def fetch() -> Fetched:
            spool = self.new_spool()
            verifier = DigestVerifier(redact(url), byte_digests)

            def sink(chunk: bytes) -> None:
                verifier.update(chunk)
                spool.write(chunk)

            answer = await upstream.download(url, sink, headers={"accept-encoding": "identity"})
            if answer.absent:
                return Fetched(answer, None)
            spool.finish()
            try:
                check = verifier.finish()
                verified = list(check.verified)
                for algorithm, expected in digests.items():
                    checker = self.file_checks.get(algorithm)
                    if checker is not None:
                        await asyncio.to_thread(_check_file, checker, spool, expected, url)
                        verified.append(algorithm)
            except (DigestMismatch, InvalidArchive) as exc:
                log.warning("upstream %s served bytes that fail their digest: %s", url, exc)
                raise UpstreamFailed(redact(url), "digest", str(exc)) from exc
            if package is not None:
                self.keep(package, url, spool)
            return Fetched(answer, spool, tuple(verified))

        key = ("file", url, tuple(sorted(digests.items())))
        result: Fetched = await self.flights.run(key, fetch)
        return result

    def keep(self, package: str, url: str, spool: Spool) -> None:
        """Archive verified bytes in a task of their own (issue 16, pull-through): whatever
        happens there (a full disk, a database error) is logged, never the client's."""

        async def run() -> None:
            try:
                outcome = await self.archive.keep(self.ecosystem, package, url, spool)
            except Exception:
                log.exception("pull-through archive of %s failed", redact(url))
            else:
                log.debug("pull-through %s: %s", redact(url), outcome)

        self.background(run())

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the response that asked for it (:meth:`settle` waits)."""
        task = asyncio.create_task(work)
        self.keeping.add(task)
        task.add_done_callback(self.keeping.discard)

    async def settle(self) -> None:
        """Wait for the pull-through archives under way (at shutdown, and in tests)."""
        while self.keeping:
            await asyncio.wait(list(self.keeping))

    async def archived(self, file: ArchivedFile) -> Spool:
        """The archive's bytes of ``file``, re-verified (``ArchiveInvalid`` otherwise)."""

        async def load() -> Spool:
            spool = self.new_spool()
            await self.archive.load_verified(file, spool)
            return spool

        result: Spool = await self.flights.run(("archive", file.cid, file.artifact_id), load)
        return result


async def _quietly(work: Awaitable[Any]) -> None:
    """Await ``work`` in the background: its outcome is recorded where it ends, an
    unexpected error only logged."""
    try:
        await work
    except Exception:
        log.exception("background listing check failed")


def _check_file(check: FileCheck, spool: Spool, expected: str, url: str) -> None:
    with spool.open() as reader:
        check(reader, expected, redact(url))


@dataclass
class MirrorContext:
    """Everything an ecosystem's mirror routes share: settings, the archive, the registries."""

    settings: MirrorSettings
    archive: ArchiveIndex
    registries: dict[str, RegistryMirror] = field(default_factory=dict)

    def public_base(self, origin: str) -> str:
        """The URL prefix clients reach Forage at (``mirror.public_url`` or the request's)."""
        return (self.settings.public_url or origin).rstrip("/")


class EcosystemRoutes(ABC):
    """Base of an ecosystem's mirror protocol: aiohttp routes over the shared machinery.

    Subclasses set ``ecosystem`` (the purl type) and ``prefix`` (where the routes live, such
    as ``/npm/``), and implement :meth:`setup`, :meth:`listing_path` and :meth:`file_path`.
    """

    ecosystem: ClassVar[str]
    prefix: ClassVar[str]

    def __init__(self, mirror: MirrorContext) -> None:
        self.mirror = mirror
        self.registry = mirror.registries[self.ecosystem]

    @abstractmethod
    def setup(self, app: web.Application) -> None:
        """Add the routes to ``app``."""

    @staticmethod
    @abstractmethod
    def listing_path(name: str) -> str:
        """The path a client asks for the listing of ``name`` (packument, simple page...)."""

    @staticmethod
    @abstractmethod
    def file_path(name: str, version: str, filename: str, digests: Mapping[str, str]) -> str:
        """The path a client downloads one file of a release at."""

    async def withdrawn(self, name: str) -> Withdrawn:
        """What the index knows the registry withdrew from ``name`` (empty: nothing, or an
        unknown package), to filter an upstream listing by; shared like an index stamp."""
        found = await self.registry.remembered(
            ("withdrawn", name), lambda: self.mirror.archive.package_withdrawn(self.ecosystem, name)
        )
        return found or Withdrawn()

    async def upstream_offers(self, file: ArchivedFile) -> bool | None:
        """Whether the upstream's listing of ``file``'s package still offers it (``None``:
        this ecosystem's listing does not say; only the index's removals count).

        Raises ``UpstreamFailed`` when the listing cannot be read.
        """
        return None

    async def offered(self, file: ArchivedFile) -> tuple[bool | None, UpstreamFailed | None]:
        """:meth:`upstream_offers`, read at most once per metadata TTL (and shared in flight),
        with the error that kept the upstream from answering.

        While the upstream is failing (its last request failed and its skip window, if any,
        has passed) the archived file does not wait on it: the last answer stands, with the
        last failure, and the listing is read again in the background (issue 16).
        """
        upstream = self.registry.upstream
        if upstream is None:
            return None, self.registry.offline_error(file.url)
        key = (file.package, file.version, file.filename)
        cached = self.registry.offers.fresh(key)
        if cached is not None:
            return cached.value

        async def check() -> tuple[bool | None, UpstreamFailed | None]:
            try:
                found: tuple[bool | None, UpstreamFailed | None] = (
                    await self.upstream_offers(file),
                    None,
                )
            except UpstreamFailed as exc:
                found = (None, exc)
            self.registry.offers.put(key, found, negative=found[1] is not None)
            return found

        failing = upstream.failing()
        if failing is not None and upstream.down() is None:
            self.registry.background(_quietly(self.registry.flights.run(("offers", key), check)))
            stale = self.registry.offers.stale(key)
            return (stale.value[0] if stale is not None else None), failing
        result: tuple[bool | None, UpstreamFailed | None] = await self.registry.flights.run(
            ("offers", key), check
        )
        return result

    async def local_file(self, file: ArchivedFile | None) -> tuple[Spool, dict[str, str]] | None:
        """The archived bytes of ``file`` and the headers to serve them with, without asking
        the upstream for them (issue 16): bytes Forage verified never change, and removals
        reach the index at the metadata TTL. ``None`` when there is no servable copy (none,
        held, or damaged: then the upstream is asked)."""
        spool = await self.local_spool(file)
        if file is None or spool is None:
            return None
        offered, error = await self.offered(file)
        headers = source_headers(
            "archive-removed" if file.removed or offered is False else "archive",
            error=error,
            verified=verified_algorithms(file.digests),
        )
        return spool, headers

    async def local_spool(self, file: ArchivedFile | None) -> Spool | None:
        """The archived bytes of ``file`` for serving them locally (``None``: no copy, a
        held package, or a copy that fails verification, which is logged)."""
        if file is None or file.hold is not None:
            return None
        try:
            return await self.registry.archived(file)
        except ArchiveInvalid as exc:
            log.error("%s archive of %s is not servable: %s", self.ecosystem, file.filename, exc)
            return None

    async def serve_local(
        self, request: web.Request, file: ArchivedFile | None, *, content_type: str
    ) -> web.StreamResponse | None:
        """Serve :meth:`local_file` (``None``: no servable copy)."""
        local = await self.local_file(file)
        if local is None:
            return None
        spool, headers = local
        return await send_spool(request, spool, content_type=content_type, headers=headers)

    async def send_archived(
        self,
        request: web.Request,
        file: ArchivedFile,
        *,
        removed: bool,
        error: UpstreamFailed | None,
        content_type: str,
        refuse: Callable[[ArchiveInvalid, dict[str, str]], web.StreamResponse],
    ) -> web.StreamResponse:
        """Send ``file``'s archived bytes, re-verified, with the headers saying who answered;
        ``refuse(exc, headers)`` is the ecosystem's answer when the copy fails verification."""
        try:
            spool = await self.registry.archived(file)
        except ArchiveInvalid as exc:
            log.error("%s archive of %s is not servable: %s", self.ecosystem, file.filename, exc)
            return refuse(exc, source_headers("archive", error=error))
        headers = source_headers(
            "archive-removed" if removed else "archive",
            error=error,
            verified=verified_algorithms(file.digests),
        )
        return await send_spool(request, spool, content_type=content_type, headers=headers)


__all__ = [
    "SOURCE",
    "UPSTREAM_ERROR",
    "VERIFIED",
    "ArchiveIndex",
    "EcosystemRoutes",
    "Fetched",
    "FileRef",
    "MirrorContext",
    "MirrorSettings",
    "RegistryMirror",
    "source_headers",
    "verified_algorithms",
]
