"""The mirror's shared machinery: a :class:`RegistryMirror` per ecosystem in one :class:`Mirror`.

A registry mirror asks its upstream first and falls back to the archive (issue 7, "Fallback
rules"). Metadata documents are fetched whole under the total deadline, cached
(:class:`~forage.mirror.upstream.MetadataCache`) and shared between concurrent requests
(single flight). Files are streamed from the upstream into a spool while hashed against the
registry's digests and only served once they pass; a digest mismatch counts as an upstream
failure. Archived files are read and re-verified the same way
(:func:`forage.mirror.archive.load_verified`). Each response carries:

- ``Forage-Source``: ``upstream``, ``archive`` or ``archive-removed`` (an exact request for a
  file of a release the registry removed);
- ``Forage-Upstream-Error``: why the upstream was not used, when it was not;
- ``Forage-Verified``: the digest algorithms a served file was checked against.

Database reads run in threads on the application's sessionmaker, one short session each.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy.orm import Session, sessionmaker

from forage.archive.download import HostPolicy
from forage.config import Config, MirrorConfig
from forage.errors import UpstreamFailed
from forage.mirror.archive import ArchivedFile, load_verified
from forage.mirror.spool import Spool
from forage.mirror.upstream import Answer, Deadline, MetadataCache, SingleFlight, Upstream
from indexers import DigestMismatch, DigestVerifier, InvalidArchive, redact, verify_go_zip
from indexers.digests import HASHERS
from storage import BlockSource

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
    """Where the upstream serves a file and the digests its document published for it."""

    url: str
    digests: Mapping[str, str]


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
    """One ecosystem's upstream (``None`` when offline or unconfigured) and caches."""

    def __init__(
        self,
        ecosystem: str,
        *,
        upstream: Upstream | None,
        base_url: str | None,
        settings: MirrorConfig,
        spool_dir: Path | None = None,
    ) -> None:
        self.ecosystem = ecosystem
        self.upstream = upstream
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

    def new_spool(self) -> Spool:
        return Spool(memory=self.settings.spool_memory, directory=self.spool_dir)

    def offline_error(self, url: str) -> UpstreamFailed:
        return UpstreamFailed(redact(url), "offline", "no upstream configured (archive only)")

    async def document(
        self, url: str, *, headers: Mapping[str, str] | None = None
    ) -> tuple[Answer, bool]:
        """The upstream's answer for ``url`` and whether it came from the cache.

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
            return answer

        return await self.flights.run(("document", url), fetch), False

    async def file(self, url: str, digests: Mapping[str, str]) -> Fetched:
        """Download ``url`` into a spool and check it against ``digests`` (single flight).

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
                if "h1" in digests:
                    await asyncio.to_thread(_check_zip, spool, digests["h1"], url)
                    verified.append("h1")
            except (DigestMismatch, InvalidArchive) as exc:
                log.warning("upstream %s served bytes that fail their digest: %s", url, exc)
                raise UpstreamFailed(redact(url), "digest", str(exc)) from exc
            return Fetched(answer, spool, tuple(verified))

        result: Fetched = await self.flights.run(("file", url), fetch)
        return result

    async def archived(self, source: BlockSource, file: ArchivedFile) -> Spool:
        """The archive's bytes of ``file``, re-verified (``ArchiveInvalid`` otherwise)."""

        async def load() -> Spool:
            spool = self.new_spool()
            await asyncio.to_thread(load_verified, source, file, spool)
            return spool

        result: Spool = await self.flights.run(("archive", file.cid, file.artifact_id), load)
        return result


def _check_zip(spool: Spool, h1: str, url: str) -> None:
    with spool.open() as reader:
        verify_go_zip(reader, h1, url=redact(url))


@dataclass
class Mirror:
    """Everything the mirror routes share: settings, database, blockstore, registries."""

    config: Config
    sessionmaker: sessionmaker[Session]
    blockstore: BlockSource
    client: httpx.AsyncClient
    registries: dict[str, RegistryMirror] = field(default_factory=dict)

    @property
    def settings(self) -> MirrorConfig:
        return self.config.mirror

    async def query(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(session, *args, **kwargs)`` in a thread, in a short session of its own."""

        def run() -> T:
            with self.sessionmaker() as session:
                return fn(session, *args, **kwargs)

        return await asyncio.to_thread(run)

    def public_base(self, origin: str) -> str:
        """The URL prefix clients reach Forage at (``mirror.public_url`` or the request's)."""
        return (self.settings.public_url or origin).rstrip("/")


#: Which configured endpoint is each ecosystem's mirror upstream.
UPSTREAM_ENDPOINTS: Mapping[str, str] = {
    "npm": "registry_url",
    "pypi": "index_url",
    "golang": "proxy_url",
}


def build_mirror(
    config: Config,
    *,
    sessionmaker: sessionmaker[Session],
    blockstore: BlockSource,
    client: httpx.AsyncClient,
    clock: Callable[[], float] | None = None,
) -> Mirror:
    """Assemble the mirror: an :class:`Upstream` for every configured registry unless offline."""
    settings = config.mirror
    deadline = Deadline.from_config(settings)
    mirror = Mirror(config, sessionmaker, blockstore, client)
    spool_dir = config.data.dir / "mirror-spool"
    spool_dir.mkdir(parents=True, exist_ok=True)
    for ecosystem, endpoint in UPSTREAM_ENDPOINTS.items():
        section = getattr(config.registries, ecosystem)
        base = getattr(section, endpoint) if section.configured else None
        upstream = None
        if base and not settings.offline:
            policy = HostPolicy.of(
                section.download_hosts,
                max_size=section.max_download_size,
                allow_http=section.allow_http,
            )
            extra = {"clock": clock} if clock is not None else {}
            upstream = Upstream(
                client,
                deadline=deadline,
                policy=policy,
                down_seconds=settings.down_seconds,
                **extra,
            )
        mirror.registries[ecosystem] = RegistryMirror(
            ecosystem, upstream=upstream, base_url=base, settings=settings, spool_dir=spool_dir
        )
    return mirror


__all__ = [
    "SOURCE",
    "UPSTREAM_ENDPOINTS",
    "UPSTREAM_ERROR",
    "VERIFIED",
    "Fetched",
    "FileRef",
    "Mirror",
    "RegistryMirror",
    "build_mirror",
    "source_headers",
    "verified_algorithms",
]
