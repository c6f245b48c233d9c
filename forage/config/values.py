"""The pieces every configuration table is made of: variable names, secrets, field helpers
and the rendering of a section as plain values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from forage.errors import ConfigError

ENV_PREFIX = "FORAGE_"
CONFIG_ENV = "FORAGE_CONFIG"
DEFAULT_CONFIG_FILE = "forage.toml"
#: Short aliases for variables people type often.
ENV_ALIASES: Mapping[str, str] = {"FORAGE_API_TOKEN": "server.api_token"}
MASK = "********"


class Secret:
    """A string that does not show itself in ``repr``, ``str`` or logs; call :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def env_name(key: str) -> str:
    """Return the ``FORAGE_*`` variable that overrides dotted ``key``."""
    return ENV_PREFIX + key.upper().replace(".", "_").replace("-", "_")


def bounded(default: Any, *, low: float | None = None, high: float | None = None) -> Any:
    return field(default=default, metadata={"min": low, "max": high})


def filled_by_loader(default: Any) -> Any:
    return field(default=default, metadata={"filled_by_loader": True})


def mask_url_password(url: str) -> str:
    """Replace the password of a URL (if any) by a mask."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{netloc[1]}"))


def netloc(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host


#: Hosts whose plain-http services (a local node, gateway or S3 server) need no ``allow_http``.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def check_url(
    url: str,
    key: str,
    *,
    allow_http: bool,
    loopback_http: bool = False,
    allow_key: str = "allow_http",
) -> None:
    """``url`` must be https, or http given ``allow_http`` (named ``allow_key`` in the hint)
    or, with ``loopback_http``, on a loopback host; it carries no credentials."""
    parts = urlsplit(url)
    if loopback_http and (parts.hostname or "") in LOOPBACK_HOSTS:
        allow_http = True
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        hint = "" if allow_http else f" (set {allow_key} = true for a plain-http upstream)"
        raise ConfigError(key, f"must be an {' or '.join(schemes)} URL, got {url!r}{hint}")
    if parts.username or parts.password:
        raise ConfigError(key, "credentials in the URL are not allowed")


def section_dict(section: Any, *, reveal: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(section):
        if f.metadata.get("filled_by_loader"):
            continue
        value = getattr(section, f.name)
        if isinstance(value, Secret):
            value = value.reveal() if reveal else MASK
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "ENV_ALIASES",
    "ENV_PREFIX",
    "MASK",
    "Secret",
    "bounded",
    "check_url",
    "env_name",
    "filled_by_loader",
    "mask_url_password",
    "netloc",
    "section_dict",
]
