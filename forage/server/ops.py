"""Operations endpoints: ``GET /healthz`` and Prometheus ``GET /metrics``.

``/healthz`` answers 200 when the database answers a query, the blockstore accepts a
write and every background part of this process (its scheduler and worker under ``forage
run``, :mod:`forage.jobs.health`) can work, else 503; the body names each check
(``{"status": "ok", "checks": {"database": {"ok": true, "ms": 0.4}, "blockstore": {...},
"scheduler": {"ok": true, "state": "leading"}}}``), lists the failing ones in ``down`` and
gives only each error's class: details go to the log, and ``pid`` names the process that
answered (one of several under ``forage serve --processes``). ``/metrics`` is the text
exposition format (https://prometheus.io/docs/instrumenting/exposition_formats/) of
:class:`~forage.server.metrics.Metrics`:
index gauges, process metrics, and per-route request latency recorded by this module's
middleware, with lookups (``/api/v1/lookup*``, ``/packages/lookup``) also in their own
histogram.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.orm import Session, sessionmaker

from forage.jobs.health import Monitored
from forage.server.metrics import Metrics
from forage.server.state import BLOCKSTORE, SESSIONMAKER
from storage import Block, Blockstore, block_cid

log = logging.getLogger(__name__)

METRICS = web.AppKey("metrics", Metrics)
#: The background parts running in this process, which ``/healthz`` reports on.
PARTS = web.AppKey("parts", list[Monitored])
#: Route paths whose latency is also recorded as lookup latency.
LOOKUP_ROUTES = ("/api/v1/lookup", "/packages/lookup")
#: Seconds a health check may take before it counts as failed.
CHECK_TIMEOUT = 5.0
#: What a blockstore without a directory stores to prove it is writable (one tiny block).
PROBE = b"forage healthz probe\n"


def setup(app: web.Application) -> None:
    """Add ``/healthz``, ``/metrics`` and the request-timing middleware."""
    app[METRICS] = Metrics(app[SESSIONMAKER])
    app[PARTS] = []
    app.middlewares.append(measure)
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", metrics, name="metrics")


def route_label(request: web.Request) -> str:
    """The route's path template (``/api/v1/cids/{cid}``), bounded in number unlike paths."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def measure(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """Time every request and count it by route, method and status."""
    started = time.perf_counter()
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = route_label(request)
        request.config_dict[METRICS].observe_request(
            route=route,
            method=request.method,
            status=status,
            seconds=time.perf_counter() - started,
            lookup=route.startswith(LOOKUP_ROUTES),
        )


def ping_database(factory: sessionmaker[Session]) -> None:
    """Run ``SELECT 1``."""
    with factory() as session:
        session.execute(sa.select(1)).scalar_one()


def probe_blockstore(blockstore: Blockstore) -> None:
    """Prove the blockstore takes writes: a temporary file in its directory (created and
    removed), or for a store without one, a tiny block put and found again. A store in a
    bucket is also asked whether the bucket answers and accepts its credentials."""
    check = getattr(blockstore, "check", None)
    if callable(check):
        check()
    root = getattr(blockstore, "root", None)
    if isinstance(root, Path):
        fd, name = tempfile.mkstemp(prefix=".healthz-", dir=root)
        try:
            os.write(fd, PROBE)
        finally:
            os.close(fd)
            os.unlink(name)
        return
    block = Block(block_cid(PROBE), PROBE)
    blockstore.put(block)
    if not blockstore.has(block.cid):
        raise OSError("probe block written but not found")


async def _check(name: str, fn: Callable[..., None], *args: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout=CHECK_TIMEOUT)
    except Exception as exc:
        log.warning("health check %s failed: %s: %s", name, type(exc).__name__, exc)
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


async def healthz(request: web.Request) -> web.Response:
    """200 if the database answers, the blockstore is writable and every background part of
    this process works, else 503 naming what does not."""
    database, blockstore = await asyncio.gather(
        _check("database", ping_database, request.config_dict[SESSIONMAKER]),
        _check("blockstore", probe_blockstore, request.config_dict[BLOCKSTORE]),
    )
    checks: dict[str, dict[str, Any]] = {"database": database, "blockstore": blockstore}
    for part in request.config_dict[PARTS]:
        health = part.health()
        checks[health.part] = health.to_json()
    down = [name for name, check in checks.items() if not check["ok"]]
    body: dict[str, Any] = {
        "status": "unavailable" if down else "ok",
        "checks": checks,
        "pid": os.getpid(),  # which of several server processes answered
    }
    if down:
        body["down"] = down
    return web.json_response(
        body, status=503 if down else 200, headers={"Cache-Control": "no-store"}
    )


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus text exposition of this process's metrics."""
    body, content_type = await asyncio.to_thread(request.config_dict[METRICS].render)
    response = web.Response(body=body, headers={"Cache-Control": "no-store"})
    response.headers["Content-Type"] = content_type
    return response
