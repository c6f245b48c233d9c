"""``[registries.<name>]``: one table per ecosystem registered in :mod:`indexers.ecosystems`.

Every table has the same settings (download hosts, poll interval, pool size, size cap, plain
http) plus the endpoint URLs its ecosystem declares (``registry_url`` and ``replicate_url`` for
npm, ...), readable as ``section.endpoints[key]`` or as attributes (``section.registry_url``).
A table with no endpoint set is *unconfigured*: nothing contacts that registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from forage.config.values import bounded, filled_by_loader, section_dict
from forage.errors import ConfigError
from indexers import ECOSYSTEMS


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """One registry's settings.

    ``download_hosts`` are the only hosts artifact downloads (and their redirects) may touch,
    as ``name`` or ``name:port``; when empty it defaults to the hosts of the endpoint URLs.
    ``interval`` is the watcher's poll period in seconds (``None``: the indexer's default).
    ``max_connections`` bounds the registry's shared HTTP pool. ``allow_http`` permits plain
    ``http`` endpoints and downloads (loopback fakes, private mirrors). ``ecosystem`` and
    ``endpoints`` (every endpoint key the ecosystem declares, ``None`` where unset) are filled
    by the loader.

    What to archive (:mod:`forage.index.selection`, applied alike by the watcher, bootstrap,
    backfill imports, reconcile and ``prime``): ``allow``/``deny`` are package-name glob
    patterns (``fnmatch``, on the registry's canonical name; deny wins; no allow means all),
    ``allow_file``/``deny_file`` files of more, one per line (``#`` comments);
    ``prereleases`` false leaves pre-releases out (by the ecosystem's own rules);
    ``development`` true archives the files of development versions too, moving builds
    recorded without files by default (Packagist dev branches ``dev-*``/``*-dev``, Maven
    SNAPSHOTs: the ecosystem's ``is_development``; other registries have none); ``newest``
    keeps the N most recently published versions of each package; ``max_file_size`` leaves
    out files the registry says are larger; ``files`` are file-name glob patterns a file must
    match (PyPI: ``*-none-any.whl``, ``*manylinux*x86_64.whl``, ``*.tar.gz``).
    ``cooldown_days`` keeps releases younger than that out of the mirror's listings and
    ``latest`` (0: none).
    """

    download_hosts: tuple[str, ...] = ()
    interval: float | None = bounded(None, low=1)
    max_connections: int = bounded(10, low=1, high=1000)
    max_download_size: int = bounded(2 * 1024**3, low=1)
    allow_http: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    allow_file: Path | None = None
    deny_file: Path | None = None
    prereleases: bool = True
    development: bool = False
    newest: int | None = bounded(None, low=1)
    max_file_size: int | None = bounded(None, low=1)
    files: tuple[str, ...] = ()
    cooldown_days: float = bounded(0.0, low=0, high=3650)
    ecosystem: str = filled_by_loader("")
    endpoints: Mapping[str, str | None] = field(
        default_factory=lambda: MappingProxyType({}), metadata={"filled_by_loader": True}
    )

    @classmethod
    def unconfigured(cls, ecosystem: str) -> RegistryConfig:
        """The table of a registered ecosystem that the configuration does not mention."""
        keys = ECOSYSTEMS[ecosystem].endpoint_keys
        return cls(ecosystem=ecosystem, endpoints=MappingProxyType(dict.fromkeys(keys)))

    def __getattr__(self, name: str) -> Any:
        if name != "endpoints" and name in self.endpoints:
            return self.endpoints[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def endpoint_keys(self) -> tuple[str, ...]:
        return tuple(self.endpoints)

    def endpoint_urls(self) -> tuple[str, ...]:
        """The configured endpoint URLs, in the order the ecosystem declares them."""
        return tuple(url for url in self.endpoints.values() if url)

    @property
    def configured(self) -> bool:
        return bool(self.endpoints) and all(self.endpoints.values())

    def to_dict(self, *, reveal: bool = False) -> dict[str, Any]:
        """The table as plain values: the shared settings, then the endpoints."""
        return {**section_dict(self, reveal=reveal), **self.endpoints}


#: Longest name pattern accepted in a selection.
MAX_PATTERN = 512


def check_patterns(patterns: Iterable[str], key: str) -> tuple[str, ...]:
    """Return glob patterns stripped, or a ``ConfigError`` naming ``key`` for an empty, huge or
    control-character pattern."""
    checked = []
    for raw in patterns:
        pattern = raw.strip()
        if not pattern or len(pattern) > MAX_PATTERN:
            raise ConfigError(key, f"{raw[:80]!r} is not a pattern (1 to {MAX_PATTERN} chars)")
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in pattern):
            raise ConfigError(key, f"{pattern[:80]!r} holds a control character")
        checked.append(pattern)
    return tuple(checked)


def read_pattern_file(path: Path, key: str) -> tuple[str, ...]:
    """The names or patterns of a list file: one per line, blank lines and ``#`` comments
    skipped; a ``ConfigError`` naming ``key`` when it cannot be read or holds a bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(key, f"cannot read {path}: {reason}") from exc
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return check_patterns((line for line in lines if line), f"{key} ({path})")


def _every_registry() -> Mapping[str, RegistryConfig]:
    return MappingProxyType({name: RegistryConfig.unconfigured(name) for name in ECOSYSTEMS})


@dataclass(frozen=True, slots=True)
class RegistriesConfig:
    """``[registries.*]``: every registered ecosystem's table, keyed by purl type (also readable
    as attributes: ``config.registries.npm``)."""

    by_name: Mapping[str, RegistryConfig] = field(default_factory=_every_registry)

    def __getattr__(self, name: str) -> RegistryConfig:
        if name != "by_name" and name in self.by_name:
            return self.by_name[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def get(self, name: str) -> RegistryConfig | None:
        return self.by_name.get(name)

    def items(self) -> Iterator[tuple[str, RegistryConfig]]:
        return iter(self.by_name.items())


__all__ = [
    "MAX_PATTERN",
    "RegistriesConfig",
    "RegistryConfig",
    "check_patterns",
    "read_pattern_file",
]
