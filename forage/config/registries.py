"""``[registries.<name>]``: one table per ecosystem registered in :mod:`indexers.ecosystems`.

Every table has the same settings (download hosts, poll interval, pool size, size cap, plain
http) plus the endpoint URLs its ecosystem declares (``registry_url`` and ``replicate_url`` for
npm, ...), readable as ``section.endpoints[key]`` or as attributes (``section.registry_url``).
A table with no endpoint set is *unconfigured*: nothing contacts that registry.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from forage.config.values import bounded, filled_by_loader, section_dict
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
    """

    download_hosts: tuple[str, ...] = ()
    interval: float | None = bounded(None, low=1)
    max_connections: int = bounded(10, low=1, high=1000)
    max_download_size: int = bounded(2 * 1024**3, low=1)
    allow_http: bool = False
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

    def url(self, key: str) -> str:
        """An endpoint's URL (the registry must be configured)."""
        value = self.endpoints[key]
        if not value:
            raise KeyError(f"registries.{self.ecosystem}.{key} is not set")
        return value

    @property
    def configured(self) -> bool:
        return bool(self.endpoints) and all(self.endpoints.values())

    def to_dict(self, *, reveal: bool = False) -> dict[str, Any]:
        """The table as plain values: the shared settings, then the endpoints."""
        return {**section_dict(self, reveal=reveal), **self.endpoints}


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


__all__ = ["RegistriesConfig", "RegistryConfig"]
