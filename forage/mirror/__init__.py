"""The package mirror: npm, PyPI and Go registry protocols that prefer the live upstream and
fall back to the archive, never serving bytes that fail their registry's digest (issue 7).

``setup(app)`` (listed in :data:`forage.server.app.ROUTE_MODULES`) builds the shared
:class:`~forage.mirror.service.Mirror` from the application's config, sessionmaker and
blockstore, and adds the routes of :mod:`forage.mirror.npm` (``/npm/``),
:mod:`forage.mirror.pypi` (``/pypi/simple/``, ``/pypi/files/``) and :mod:`forage.mirror.golang`
(``/go/``). Upstream requests share one ``httpx.AsyncClient``, closed with the application; it
ignores proxy environment variables, so what the mirror reaches is what the configuration says.
On SQLite the mirror reads through its own read-only engine (a deferred ``BEGIN``,
``query_only``): the application's engine begins every transaction ``IMMEDIATE``, which would
make concurrent mirror reads queue for the write lock.
"""

from __future__ import annotations

import httpx
from aiohttp import web

from forage import __version__
from forage.db.engine import make_engine, make_sessionmaker
from forage.mirror.golang import GoRoutes
from forage.mirror.npm import NpmRoutes
from forage.mirror.pypi import PyPIRoutes
from forage.mirror.service import Mirror, build_mirror
from forage.server.state import BLOCKSTORE, CONFIG, SESSIONMAKER

MIRROR = web.AppKey("mirror", Mirror)
USER_AGENT = f"forage-mirror/{__version__}"


def setup(app: web.Application) -> None:
    """Add the mirror's routes and its shared state to ``app``."""
    config = app[CONFIG]
    connections = sum(
        getattr(config.registries, name).max_connections for name in ("npm", "pypi", "golang")
    )
    client = httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        follow_redirects=False,
        trust_env=False,
    )
    sessions = app[SESSIONMAKER]
    engine = None
    if config.database.is_sqlite:
        engine = make_engine(config.database, read_only=True)
        sessions = make_sessionmaker(engine)
    mirror = build_mirror(config, sessionmaker=sessions, blockstore=app[BLOCKSTORE], client=client)
    app[MIRROR] = mirror

    async def close(_app: web.Application) -> None:
        await client.aclose()
        if engine is not None:
            engine.dispose()

    app.on_cleanup.append(close)
    NpmRoutes(mirror).setup(app)
    PyPIRoutes(mirror).setup(app)
    GoRoutes(mirror).setup(app)


__all__ = ["MIRROR", "setup"]
