"""The OpenAPI 3.1 document of the JSON API, served at ``/api/openapi.json``.

The document (``openapi.json``, package data next to this module) is written by hand and
kept honest by ``tests/forage/test_openapi.py``, which checks that it is valid OpenAPI 3.1
(https://spec.openapis.org/oas/v3.1.0), that it lists exactly the routes the API serves,
and that real responses match its schemas.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from aiohttp import web

DOCUMENT = "openapi.json"
PATH = "/api/openapi.json"


@functools.cache
def document_bytes() -> bytes:
    """The document as shipped (read once)."""
    return resources.files("forage.server").joinpath(DOCUMENT).read_bytes()


def load_document() -> dict[str, Any]:
    """The document, parsed (a fresh copy each call: callers may change it)."""
    document: dict[str, Any] = json.loads(document_bytes())
    return document


async def serve_document(request: web.Request) -> web.Response:
    """``GET /api/openapi.json``."""
    return web.Response(
        body=document_bytes(),
        content_type="application/json",
        headers={"Access-Control-Allow-Origin": "*"},
    )


def setup(app: web.Application) -> None:
    """Serve the document."""
    app.router.add_get(PATH, serve_document)
