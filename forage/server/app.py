"""Build the aiohttp application: shared state, error handling, every route module.

Each module named in ``ROUTE_MODULES`` (full module names: the API, gateway and pages here,
the mirror and pieces elsewhere in ``forage``) has ``setup(app: web.Application) -> None``. Errors
never leak as tracebacks: an unexpected exception is logged and answered with a JSON 500 that
names no internals. Requests with large bodies run within a memory budget
(:mod:`forage.server.budget`). Server docs: https://docs.aiohttp.org/en/stable/web_advanced.html
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from sqlalchemy.orm import Session, sessionmaker

from forage.config import Config
from forage.errors import InvalidKey, NotFound
from forage.server import budget
from forage.server.state import BLOCKSTORE, CONFIG, SESSIONMAKER
from storage.blockstore import Blockstore
from storage.errors import InvalidCID

log = logging.getLogger(__name__)

#: Modules whose ``setup(app)`` adds routes, in order.
ROUTE_MODULES: tuple[str, ...] = (
    "forage.server.ops",
    "forage.server.api",
    "forage.server.openapi",
    "forage.server.gateway",
    "forage.server.pages",
    "forage.server.pieces",
    "forage.mirror",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Headers of an HTTP error that its JSON rendering keeps.
_KEPT_HEADERS = (hdrs.ALLOW, hdrs.RETRY_AFTER, hdrs.WWW_AUTHENTICATE)


def json_error(status: int, message: str, **extra: object) -> web.Response:
    """An error body every API client can parse: ``{"error": {"status", "message", ...}}``."""
    return web.json_response(
        {"error": {"status": status, "message": message, **extra}}, status=status
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn HTTP errors into JSON bodies (keeping ``Allow``, ``Retry-After`` and
    ``WWW-Authenticate``), malformed keys and CIDs into 400s, ``NotFound`` into 404s, and
    anything unexpected into a logged 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        error: Exception = exc
    except Exception as exc:
        error = exc
    if request.writer.output_size > 0:
        # Part of a response is already on the wire: a second one would corrupt it. Raising
        # lets aiohttp close the connection, so the client sees a cut body.
        log.error("error while streaming %s %s", request.method, request.path, exc_info=error)
        raise error
    return _error_response(request, error)


def _error_response(request: web.Request, error: Exception) -> web.Response:
    if isinstance(error, web.HTTPException):
        response = json_error(error.status, error.reason if error.text is None else error.text)
        for name in _KEPT_HEADERS:
            if name in error.headers:
                response.headers[name] = error.headers[name]
        return response
    if isinstance(error, InvalidKey | InvalidCID):
        return json_error(400, str(error))
    if isinstance(error, NotFound):
        return json_error(404, str(error))
    log.error("unhandled error answering %s %s", request.method, request.path, exc_info=error)
    return json_error(500, "internal server error")


def make_app(
    config: Config, *, sessionmaker: sessionmaker[Session], blockstore: Blockstore
) -> web.Application:
    """The whole HTTP server as one application."""
    app = web.Application(
        middlewares=[error_middleware, budget.budget_middleware],
        client_max_size=config.server.max_body_size,
    )
    app[CONFIG] = config
    budget.setup(app)
    app[SESSIONMAKER] = sessionmaker
    app[BLOCKSTORE] = blockstore
    for name in ROUTE_MODULES:
        importlib.import_module(name).setup(app)
    return app
