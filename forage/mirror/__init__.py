"""The package mirror: every registered ecosystem's registry protocol, preferring the live
upstream and falling back to the archive, never serving bytes that fail their registry's
digest (issue 7).

The protocols and the fallback machinery live with the ecosystems (``indexers/<name>/mirror.py``
over :mod:`indexers.mirror`); this package gives them Forage's side: the settings, the index
and blockstore (:class:`~forage.mirror.index.IndexArchive`) and one upstream per configured
registry. ``setup(app)`` (listed in :data:`forage.server.app.ROUTE_MODULES`) builds the shared
:class:`~indexers.mirror.registry.MirrorContext` and adds each ecosystem's routes. Upstream
requests share one ``httpx.AsyncClient``, closed with the application; it ignores proxy
environment variables, so what the mirror reaches is what the configuration says. On SQLite
the mirror reads through its own read-only engine (a deferred ``BEGIN``, ``query_only``): the
application's engine begins every transaction ``IMMEDIATE``, which would make concurrent mirror
reads queue for the write lock. While the application runs, every file the mirror fetches and
verifies is archived in the same pass, its package indexed first if need be
(:mod:`forage.mirror.keep`), and npm's last good packuments are kept under
``<data.dir>/mirror-documents/`` (issue 16). :mod:`forage.mirror.offline` primes, exports and
imports the archive for air-gapped mirrors.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import httpx
from aiohttp import web
from sqlalchemy.orm import Session, sessionmaker

from forage import __version__
from forage.archive.stream import SPOOL_DIR
from forage.config import Config
from forage.db.engine import make_engine, make_sessionmaker
from forage.jobs.worker import job_context
from forage.mirror.index import IndexArchive
from forage.mirror.keep import PullThrough
from forage.server.state import BLOCKSTORE, CONFIG, SESSIONMAKER
from indexers import ECOSYSTEMS, HostPolicy
from indexers.mirror.registry import MirrorContext, RegistryMirror
from indexers.mirror.upstream import Deadline, Upstream, arrival_middleware
from storage import BlockSource

MIRROR = web.AppKey("mirror", MirrorContext)
USER_AGENT = f"forage-mirror/{__version__}"
#: Threads of asyncio's default executor, where the mirror's reads run.
READ_THREADS = min(32, (os.cpu_count() or 1) + 4)


def build_mirror(
    config: Config,
    *,
    sessionmaker: sessionmaker[Session],
    blockstore: BlockSource,
    client: httpx.AsyncClient,
    clock: Callable[[], float] | None = None,
) -> MirrorContext:
    """Assemble the mirror: an :class:`Upstream` for every configured registry unless offline."""
    settings = config.mirror
    deadline = Deadline.from_config(settings)
    archive = IndexArchive(sessionmaker, blockstore)
    mirror = MirrorContext(settings, archive)
    spool_dir = config.data.dir / "mirror-spool"
    spool_dir.mkdir(parents=True, exist_ok=True)
    for name, ecosystem in ECOSYSTEMS.items():
        section = config.registries.by_name[name]
        base = section.endpoints.get(ecosystem.mirror_endpoint) if section.configured else None
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
        mirror.registries[name] = RegistryMirror(
            name,
            upstream=upstream,
            base_url=base,
            settings=settings,
            archive=archive,
            file_checks=ecosystem.file_checks,
            spool_dir=spool_dir,
            cooldown=timedelta(days=section.cooldown_days),
            endpoints=section.endpoints if section.configured else None,
            cache_dir=config.data.dir / "mirror-cache" / name,
            documents_dir=config.data.dir / "mirror-documents" / name,
        )
    return mirror


def _pull_through(
    archive: IndexArchive, mirror: MirrorContext
) -> Callable[[web.Application], AsyncIterator[None]]:
    """While the application runs, the files the mirror fetches are archived as they pass
    (:mod:`forage.mirror.keep`), through a job context of the mirror's own."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        async with job_context(config, app[SESSIONMAKER], owner="mirror") as context:
            archive.pull_through = PullThrough(context, spool_dir=config.data.dir / SPOOL_DIR)
            try:
                yield
            finally:
                for registry in mirror.registries.values():
                    await registry.settle()
                archive.pull_through = None

    return run


def setup(app: web.Application) -> None:
    """Add every registered ecosystem's mirror routes and their shared state to ``app``."""
    config = app[CONFIG]
    connections = sum(section.max_connections for _, section in config.registries.items())
    client = httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        follow_redirects=False,
        trust_env=False,
    )
    sessions = app[SESSIONMAKER]
    engine = None
    if config.database.is_sqlite:
        # A pooled connection for every executor thread: a read past the pool would open
        # (and then close) a connection of its own, which costs more than the read.
        pool = max(config.database.pool_size, READ_THREADS)
        engine = make_engine(dataclasses.replace(config.database, pool_size=pool), read_only=True)
        sessions = make_sessionmaker(engine)
    mirror = build_mirror(config, sessionmaker=sessions, blockstore=app[BLOCKSTORE], client=client)
    app[MIRROR] = mirror
    app.middlewares.append(arrival_middleware)  # single flight counts from each arrival

    async def close(_app: web.Application) -> None:
        await client.aclose()
        if engine is not None:
            engine.dispose()

    app.on_cleanup.append(close)
    if isinstance(mirror.archive, IndexArchive) and not config.mirror.offline:
        app.cleanup_ctx.append(_pull_through(mirror.archive, mirror))
    for ecosystem in ECOSYSTEMS.values():
        ecosystem.mirror()(mirror).setup(app)


__all__ = ["MIRROR", "build_mirror", "setup"]
