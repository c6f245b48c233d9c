"""What one ecosystem brings to Forage, declared once in its home package.

Each registry Forage follows has one home, ``indexers/<purl type>/``, holding everything
specific to it: the change feed and metadata mapping (its :class:`~indexers.base.Indexer`),
its digests and whole-file checks, its mirror protocol, its lockfile formats, its name and
purl rules and its loopback fake. The home's ``__init__`` builds one :class:`Ecosystem`
value that says where each of those is; :mod:`indexers.ecosystems` lists the homes, and
everything shared (configuration, the job pipeline, lookups, the mirror's fallback rules,
the conformance suite in ``tests/ecosystems/``) works from that list alone.

Adding an ecosystem is: a new home package, and its line in :mod:`indexers.ecosystems`.
The README's "Adding an ecosystem" section is the recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO, TYPE_CHECKING, Any, ClassVar, Protocol

import httpx

from indexers.base import Indexer
from indexers.types import LockEntry

if TYPE_CHECKING:
    from aiohttp import web

    from indexers.mirror.registry import EcosystemRoutes

#: A whole-file check for a digest no hash function computes (Go's ``h1:`` over a module zip):
#: ``check(reader, expected, url)`` returns the digest it computed, or raises ``DigestMismatch``
#: or ``InvalidArchive``.
FileCheck = Callable[[IO[bytes], str, str], str]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream URL a configured registry needs (``[registries.<name>].<key>``)."""

    key: str
    doc: str


@dataclass(frozen=True, slots=True)
class LockfileFormat:
    """A lockfile or manifest format naming one ecosystem's packages.

    A document whose file name is one of ``filenames`` is of this format; otherwise
    ``detect(basename, text)`` decides from its content. ``read(text)`` yields one entry per
    dependency, raising :class:`~indexers.errors.LockfileError` for a document it cannot read
    at all. ``json`` marks formats that are JSON documents (named in the error for JSON that
    no format recognizes).
    """

    name: str
    detect: Callable[[str, str], bool]
    read: Callable[[str], Iterator[LockEntry]]
    filenames: tuple[str, ...] = ()
    json: bool = False


class FakeRegistry(Protocol):
    """A loopback registry of one ecosystem that speaks its real wire format.

    The demo, the tests and the conformance suite drive every ecosystem's fake through this
    one surface; each fake keeps its own richer methods for its own tests.
    """

    #: Names as a user might write them, with the registry's canonical spelling.
    NAME_EXAMPLES: ClassVar[tuple[tuple[str, str], ...]]
    #: Names the registry refuses.
    INVALID_NAMES: ClassVar[tuple[str, ...]]
    #: Two release numbers in the registry's own spelling, older first.
    SAMPLE_VERSIONS: ClassVar[tuple[str, ...]]

    def make_app(self) -> web.Application:
        """The aiohttp application serving every endpoint of the registry."""

    def config_endpoints(self, url: str) -> dict[str, str]:
        """The ``[registries.<name>]`` endpoint values for the app served at ``url``."""

    def publish_release(self, name: str, version: str) -> None:
        """Publish a release of ``name`` with one small file (the feed announces it)."""

    def feed_head(self) -> Any:
        """The feed's newest position, as the indexer reports it in ``Page.head``."""

    def tamper_release(self, name: str, version: str) -> None:
        """Serve other bytes for the release's file than its published digests promise."""

    def withdraw_release(self, name: str, version: str) -> None:
        """Withdraw a published release the registry's own way (PyPI ``remove release``, npm
        unpublish, a Go retraction in a newer version's go.mod)."""

    def release_file(self, name: str, version: str) -> tuple[str, bytes]:
        """The published file of a release: its file name and bytes."""

    def lockfile(self, releases: Sequence[tuple[str, str]]) -> tuple[str, bytes]:
        """A lockfile in this ecosystem's main format naming ``releases``: (file name, bytes)."""


def _no_development(version: str) -> bool:
    """A registry whose every version is a release."""
    return False


def _as_stored(algorithm: str, value: str) -> str:
    """A digest as the index stores it: lowercase hex (Go's ``h1:`` verbatim)."""
    return value


@dataclass(frozen=True, slots=True)
class Ecosystem:
    """One registry's registration: see the module docstring.

    ``name`` is the purl type, Forage's identifier for the ecosystem; ``aliases`` are other
    spellings accepted wherever an ecosystem is named (the 2021 Forage platform names
    included). ``build_indexer(client, endpoints)`` makes the indexer from the configured
    endpoint URLs; ``mirror_endpoint`` is the endpoint the mirror's upstream requests go to.
    ``mirror`` and ``fake`` load their modules on first use, so a process that only looks
    keys up imports no server code. ``rescan_window`` is how many feed positions a watcher
    re-reads behind its cursor (feeds whose entries may land late); ``unlisted_versions``
    marks registries that serve versions they never list (Go pseudo-versions), so imports
    carry the asked-for version.

    Two hooks let shared code apply registry rules it cannot know:

    - ``qualifiers`` are the purl qualifiers that pick files *within* a version (RubyGems
      ``platform``, Maven ``classifier`` and ``type``), and ``file_matches(name, version,
      filename, qualifiers)`` says whether a file of the version is one they name. A lookup
      of a qualified purl answers only the matching files; other qualifiers (and every
      qualifier of an ecosystem without the hook) do not change what a key names, nor do
      those equal to ``qualifier_defaults`` (Maven's ``type=jar``, which SBOM tools write on
      every component: the same purl as none, the whole version).
    - ``is_development(version)`` recognises development versions (Packagist dev branches,
      Maven SNAPSHOTs): moving builds rather than releases, recorded without their files
      unless the registry's ``development`` setting asks for them
      (:mod:`forage.index.selection`).

    Two more tell people how the registry's own tools see a package (the web pages):
    ``install_hint(base_url, name, version)`` is the shell command that installs the version
    through Forage's mirror at ``base_url`` (the server's origin, no trailing slash; ``None``:
    no hint), and ``digest_notation(algorithm, value)`` spells a stored digest as the
    registry's tools print it (npm's SRI; the stored hex or ``h1:`` by default).
    ``version_hint(version)`` says why a looked-up version cannot be one of the registry's
    and what was meant (Go's ``1.0.0`` for ``v1.0.0``), or ``None``.
    """

    name: str
    title: str
    aliases: tuple[str, ...]
    indexer: type[Indexer[Any]]
    endpoints: tuple[Endpoint, ...]
    build_indexer: Callable[[httpx.AsyncClient, Mapping[str, str]], Indexer[Any]]
    mirror_endpoint: str
    mirror: Callable[[], type[EcosystemRoutes]]
    fake: Callable[[], FakeRegistry]
    lockfiles: tuple[LockfileFormat, ...] = ()
    file_checks: Mapping[str, FileCheck] = field(default_factory=dict)
    rescan_window: int = 0
    unlisted_versions: bool = False
    qualifiers: tuple[str, ...] = ()
    qualifier_defaults: Mapping[str, str] = field(default_factory=dict)
    file_matches: Callable[[str, str, str, Mapping[str, str]], bool] | None = None
    is_development: Callable[[str], bool] = field(default=_no_development)
    install_hint: Callable[[str, str, str], str] | None = None
    digest_notation: Callable[[str, str], str] = field(default=_as_stored)
    version_hint: Callable[[str], str | None] | None = None

    @property
    def default_interval(self) -> timedelta:
        """How often a watcher polls the feed unless configured otherwise."""
        return self.indexer.default_interval

    @property
    def endpoint_keys(self) -> tuple[str, ...]:
        return tuple(e.key for e in self.endpoints)

    def normalize_name(self, name: str) -> str:
        """The registry's canonical spelling of ``name``; ``InvalidName`` if it is not one."""
        return self.indexer.normalize_name(name)

    def selecting(self, qualifiers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """The qualifiers among ``qualifiers`` that pick files of a version, sorted (the rest,
        and those at their default, say nothing a missing one does not: dropped)."""
        if self.file_matches is None:
            return ()
        return tuple(
            sorted(
                (k, v)
                for k, v in qualifiers.items()
                if k in self.qualifiers and v and self.qualifier_defaults.get(k) != v
            )
        )

    def selects(
        self, name: str, version: str, filename: str, qualifiers: Mapping[str, str]
    ) -> bool:
        """Whether ``filename`` of the version is a file ``qualifiers`` name (every file when
        none of them picks files)."""
        picked = dict(self.selecting(qualifiers))
        if not picked or self.file_matches is None:
            return True
        return self.file_matches(name, version, filename, picked)


__all__ = [
    "Ecosystem",
    "Endpoint",
    "FakeRegistry",
    "FileCheck",
    "LockfileFormat",
]
