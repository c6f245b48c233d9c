"""Bearer tokens for the write API: reads are public, every write and admin action is not.

Clients send ``Authorization: Bearer <token>`` (RFC 6750,
https://www.rfc-editor.org/rfc/rfc6750) with the token configured as ``server.api_token``
(``FORAGE_API_TOKEN``). The comparison takes the same time whatever the guess
(:func:`hmac.compare_digest`), so the token cannot be found byte by byte by timing answers.
Without a configured token every write is refused: no accidental open write API.
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from forage.server.state import CONFIG

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REALM = "forage"


def json_http_error(
    cls: type[web.HTTPError],
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **arguments: Any,
) -> web.HTTPError:
    """An aiohttp HTTP error whose body is the API's JSON error shape (``arguments`` are the
    class's own, such as ``max_size`` of a 413)."""
    status = cls.status_code
    body = json.dumps({"error": {"status": status, "message": message}})
    return cls(text=body, content_type="application/json", headers=headers, **arguments)


def _unauthorized(message: str, *, error: str | None = None) -> web.HTTPError:
    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    return json_http_error(
        web.HTTPUnauthorized, message, headers={hdrs.WWW_AUTHENTICATE: challenge}
    )


def check_token(request: web.Request) -> None:
    """Raise 401 (no or wrong token) or 403 (no token configured) unless the request carries
    the configured bearer token."""
    configured = request.app[CONFIG].server.api_token
    if configured is None:
        raise json_http_error(
            web.HTTPForbidden,
            "writes are disabled: this server has no API token "
            "(set FORAGE_API_TOKEN or server.token_file)",
        )
    scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise _unauthorized("this action needs 'Authorization: Bearer <token>'")
    expected = configured.reveal().encode("utf-8")
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected):
        raise _unauthorized("invalid token", error="invalid_token")


def requires_token(handler: Handler) -> Handler:
    """Decorate a write or admin handler so it runs only for the configured token."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        check_token(request)
        return await handler(request)

    return guarded
