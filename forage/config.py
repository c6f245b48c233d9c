"""Forage's configuration: one TOML file plus ``FORAGE_*`` environment overrides.

Read once by :func:`load_config` and passed down explicitly. Each TOML table is one frozen
dataclass, validated on load; every error is a :class:`~forage.errors.ConfigError` naming the
key (and the variable it came from). Format: https://toml.io/en/v1.0.0 (read with ``tomllib``).

Where the file is: ``load_config(path)``, else ``$FORAGE_CONFIG``, else ``./forage.toml`` if
it exists, else defaults only. Relative paths written in the file are taken relative to the
file's directory; those from the environment or the defaults, relative to the working
directory.

Environment mapping rule: the dotted key, upper-cased, dots and dashes turned into
underscores, prefixed with ``FORAGE_``. ``database.url`` is ``FORAGE_DATABASE_URL``,
``jobs.max_attempts`` is ``FORAGE_JOBS_MAX_ATTEMPTS``, ``registries.npm.registry_url`` is
``FORAGE_REGISTRIES_NPM_REGISTRY_URL``. A variable wins over the file. Lists (such as
``download_hosts``) are comma-separated in a variable; booleans are ``true``/``false``/
``1``/``0``. ``FORAGE_API_TOKEN`` is a short alias of ``FORAGE_SERVER_API_TOKEN``.

Secrets (``server.api_token``, ``pinning.backends.<name>.token``) are never read from the TOML
file, which tends to be shared: they come from a variable or from a file named by
``token_file``. They are held in
:class:`Secret`, whose ``repr`` and ``str`` are masked, so they stay out of logs.

Upstream registry endpoints have no default: tests and CI must never reach a public service
by accident. A registry whose table is absent is *unconfigured*; :meth:`Config.registry`
raises a ``ConfigError`` listing exactly which keys (or variables) to set.

To add a section: write a frozen dataclass whose fields carry defaults (supported types: str,
int, float, bool, Path, ``tuple[str, ...]``, :class:`Secret`, and ``X | None`` of those; bounds
in ``field(metadata={"min": ..., "max": ...})``), add it as a field of :class:`Config` and to
``_SECTIONS``. A field the loader fills itself (from sub-tables, as ``pinning.backends``) is
declared with :func:`_filled_by_loader` and skipped by the generic reader.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, overload
from urllib.parse import urlsplit, urlunsplit

from forage.errors import ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "FORAGE_"
CONFIG_ENV = "FORAGE_CONFIG"
DEFAULT_CONFIG_FILE = "forage.toml"
#: Short aliases for variables people type often.
ENV_ALIASES: Mapping[str, str] = {"FORAGE_API_TOKEN": "server.api_token"}
_MASK = "********"


class Secret:
    """A string that does not show itself in ``repr``, ``str`` or logs; call :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def env_name(key: str) -> str:
    """Return the ``FORAGE_*`` variable that overrides dotted ``key``."""
    return ENV_PREFIX + key.upper().replace(".", "_").replace("-", "_")


def _bounded(default: Any, *, low: float | None = None, high: float | None = None) -> Any:
    return field(default=default, metadata={"min": low, "max": high})


def _filled_by_loader(default: Any) -> Any:
    return field(default=default, metadata={"filled_by_loader": True})


@dataclass(frozen=True, slots=True)
class DataConfig:
    """``[data]``: where Forage keeps its files (SQLite database, blocks)."""

    dir: Path = Path("forage-data")


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """``[database]``: the SQLAlchemy URL and pool settings.

    ``url`` defaults to ``sqlite:///<data.dir>/forage.db``; ``postgresql://`` and
    ``postgres://`` are normalized to the psycopg 3 driver. ``busy_timeout`` (seconds) is how
    long a SQLite writer waits for the lock. The URL is masked in ``repr`` (it may hold a
    password).
    """

    url: str | None = field(default=None, repr=False)
    busy_timeout: float = _bounded(5.0, low=0)
    pool_size: int = _bounded(5, low=1, high=1000)
    echo: bool = False

    @property
    def is_sqlite(self) -> bool:
        return (self.url or "").startswith("sqlite")

    @property
    def display_url(self) -> str:
        """The URL with any password masked, for logs and ``forage config``."""
        return mask_url_password(self.url or "")

    def __repr__(self) -> str:
        return (
            f"DatabaseConfig(url={self.display_url!r}, busy_timeout={self.busy_timeout!r}, "
            f"pool_size={self.pool_size!r}, echo={self.echo!r})"
        )


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """``[jobs]``: retry policy and leases of the durable queue (times in seconds).

    A failed job waits ``min(backoff_cap, backoff_base * 2 ** (attempts - 1))``, jittered,
    before its next attempt, and is dead after ``max_attempts``. A running job's lease lasts
    ``lease_seconds`` and is extended by the worker's heartbeat; an expired lease makes the job
    claimable again. ``poll_interval`` is how often an idle worker looks for work.
    """

    max_attempts: int = _bounded(10, low=1, high=1000)
    backoff_base: float = _bounded(30.0, low=0)
    backoff_cap: float = _bounded(6 * 3600.0, low=0)
    lease_seconds: float = _bounded(300.0, low=0.1)
    poll_interval: float = _bounded(1.0, low=0.01)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """``[worker]``: how many jobs one worker process runs at once."""

    concurrency: int = _bounded(4, low=1, high=1000)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: where ``forage serve`` listens and the token its write API requires.

    ``api_token`` comes from ``FORAGE_API_TOKEN`` (or ``FORAGE_SERVER_API_TOKEN``) or from the
    file named by ``token_file``; never from the TOML file itself. ``max_keys`` bounds the keys
    of one lookup (and the dependencies of one lockfile), ``max_body_size`` a request body in
    bytes. Unknown lookup keys queue backfill imports at most ``backfill_rate`` per second
    (bursts of ``backfill_burst``); a package checked upstream less than ``backfill_recheck``
    seconds ago is not asked for again.
    """

    host: str = "127.0.0.1"
    port: int = _bounded(8080, low=1, high=65535)
    api_token: Secret | None = None
    token_file: Path | None = None
    max_keys: int = _bounded(10_000, low=1, high=1_000_000)
    max_body_size: int = _bounded(16 * 1024**2, low=1024)
    backfill_rate: float = _bounded(5.0, low=0)
    backfill_burst: int = _bounded(500, low=0)
    backfill_recheck: float = _bounded(3600.0, low=0)

    SECRETS: ClassVar[tuple[str, ...]] = ("api_token",)


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """``[schedule]``: how often the scheduler's periodic tasks run, in seconds (0: never).

    Each registry's watcher runs every ``registries.<name>.interval`` instead. ``pin_check``
    only backs up the pin check's own rescheduling (``pinning.check_interval``) and runs when
    pinning backends are configured; ``sync_deals`` when a deal source is. ``leader_poll``
    is how often a waiting scheduler tries to become the leader and the leader checks that it
    still is. ``batch`` bounds the jobs one drain queues and one retry run re-queues;
    ``reverify_sample`` is how many archives a re-verification reads back from the
    blockstore; ``keep_done_jobs`` is how long finished jobs stay before pruning.
    ``render_answers`` is how often lookup answers changed or never rendered are rendered
    ahead of lookups (:mod:`forage.lookup.answers`), at most ``render_batch`` a run.
    """

    drain_archives: float = _bounded(300.0, low=0)
    pin_check: float = _bounded(3600.0, low=0)
    build_pieces: float = _bounded(3600.0, low=0)
    sync_deals: float = _bounded(3600.0, low=0)
    retry_failed: float = _bounded(3600.0, low=0)
    reverify: float = _bounded(86400.0, low=0)
    stats: float = _bounded(300.0, low=0)
    prune_jobs: float = _bounded(86400.0, low=0)
    render_answers: float = _bounded(60.0, low=0)
    render_batch: int = _bounded(20_000, low=1, high=10_000_000)
    reverify_sample: int = _bounded(100, low=1, high=1_000_000)
    batch: int = _bounded(1000, low=1, high=1_000_000)
    keep_done_jobs: float = _bounded(7 * 86400.0, low=0)
    leader_poll: float = _bounded(5.0, low=0.1)


#: Log line formats: ``text`` for people, ``logfmt`` (key=value) and ``json`` for machines.
LOG_FORMATS: tuple[str, ...] = ("text", "logfmt", "json")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``[logging]``: ``format`` of log lines, one of :data:`LOG_FORMATS` (``--log-format``
    overrides it)."""

    format: str = "text"

    def __post_init__(self) -> None:
        if self.format not in LOG_FORMATS:
            raise ConfigError(
                "logging.format", f"must be one of {', '.join(LOG_FORMATS)}, got {self.format!r}"
            )


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Settings every registry table shares.

    ``download_hosts`` are the only hosts artifact downloads (and their redirects) may touch,
    as ``name`` or ``name:port``; when empty it defaults to the hosts of the endpoint URLs.
    ``interval`` is the watcher's poll period in seconds (``None``: the indexer's default).
    ``max_connections`` bounds the registry's shared HTTP pool. ``allow_http`` permits plain
    ``http`` endpoints and downloads (loopback fakes, private mirrors).
    """

    download_hosts: tuple[str, ...] = ()
    interval: float | None = _bounded(None, low=1)
    max_connections: int = _bounded(10, low=1, high=1000)
    max_download_size: int = _bounded(2 * 1024**3, low=1)
    allow_http: bool = False

    #: The ecosystem (purl type) and the endpoint keys a configured registry must set.
    ECOSYSTEM: ClassVar[str] = ""
    ENDPOINTS: ClassVar[tuple[str, ...]] = ()

    def endpoint_urls(self) -> tuple[str, ...]:
        """The configured endpoint URLs, in ``ENDPOINTS`` order."""
        return tuple(u for u in (getattr(self, k) for k in self.ENDPOINTS) if u)

    @property
    def configured(self) -> bool:
        return all(getattr(self, k) for k in self.ENDPOINTS)


@dataclass(frozen=True, slots=True)
class NpmConfig(RegistryConfig):
    """``[registries.npm]``: ``registry_url`` serves packuments and tarballs; ``replicate_url``
    is the CouchDB-style replica with ``_changes``."""

    registry_url: str | None = None
    replicate_url: str | None = None

    ECOSYSTEM: ClassVar[str] = "npm"
    ENDPOINTS: ClassVar[tuple[str, ...]] = ("registry_url", "replicate_url")


@dataclass(frozen=True, slots=True)
class PypiConfig(RegistryConfig):
    """``[registries.pypi]``: ``index_url`` is the simple API base (PEP 503/691), ``json_url``
    the JSON API base (``<json_url>/<project>/json``), ``xmlrpc_url`` the XML-RPC endpoint
    whose ``changelog_since_serial`` is the change feed."""

    index_url: str | None = None
    json_url: str | None = None
    xmlrpc_url: str | None = None

    ECOSYSTEM: ClassVar[str] = "pypi"
    ENDPOINTS: ClassVar[tuple[str, ...]] = ("index_url", "json_url", "xmlrpc_url")


@dataclass(frozen=True, slots=True)
class GolangConfig(RegistryConfig):
    """``[registries.golang]``: ``index_url`` is the module index feed, ``proxy_url`` a
    GOPROXY, ``sumdb_url`` the checksum database."""

    index_url: str | None = None
    proxy_url: str | None = None
    sumdb_url: str | None = None

    ECOSYSTEM: ClassVar[str] = "golang"
    ENDPOINTS: ClassVar[tuple[str, ...]] = ("index_url", "proxy_url", "sumdb_url")


@dataclass(frozen=True, slots=True)
class RegistriesConfig:
    """``[registries.*]``: one table per upstream registry, keyed by purl type."""

    npm: NpmConfig = NpmConfig()
    pypi: PypiConfig = PypiConfig()
    golang: GolangConfig = GolangConfig()


#: Pinning backend types: Kubo RPC, IPFS Cluster REST API, IPFS Pinning Service API.
PIN_BACKEND_TYPES = ("kubo", "cluster", "service")
#: A backend name fits ``pins.backend`` (64 characters) and an environment variable name.
_BACKEND_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
#: ``maxItems`` of ``Pin.origins`` in the Pinning Service API.
MAX_PIN_ORIGINS = 20


@dataclass(frozen=True, slots=True)
class PinBackendConfig:
    """``[pinning.backends.<name>]``: one pinning backend, named by its table key.

    ``type`` is ``kubo`` (Kubo RPC), ``cluster`` (IPFS Cluster REST API) or ``service`` (an
    IPFS Pinning Service API provider); ``url`` is its API base. ``token`` comes from
    ``FORAGE_PINNING_BACKENDS_<NAME>_TOKEN`` or the file named by ``token_file``, never from
    the TOML file; a ``service`` needs one. ``origins`` (multiaddrs ending in ``/p2p/<peer
    id>``, at most 20) tell a service or cluster which nodes to fetch the blocks from: the
    operator's own. ``replication_min``/``replication_max`` apply to a cluster. Plain ``http``
    is accepted for loopback hosts, elsewhere only with ``allow_http``. ``timeout`` bounds
    each request, in seconds.
    """

    name: str = _filled_by_loader("")
    type: str = ""
    url: str = ""
    token: Secret | None = None
    token_file: Path | None = None
    origins: tuple[str, ...] = ()
    replication_min: int | None = _bounded(None, low=1)
    replication_max: int | None = _bounded(None, low=1)
    allow_http: bool = False
    timeout: float = _bounded(120.0, low=1)

    SECRETS: ClassVar[tuple[str, ...]] = ("token",)


@dataclass(frozen=True, slots=True)
class PinningConfig:
    """``[pinning]``: where archives are pinned and how their pins are watched.

    Each table under ``[pinning.backends]`` is a backend; every archive is pinned on all of
    them. While a pin is queued or pinning, the batched status check runs every
    ``check_interval`` seconds; a pinned pin is confirmed every ``recheck_interval`` seconds
    (one its backend lost is pinned again). ``batch_size`` pins are asked about per status
    call (each backend splits that as its API needs). A failed pin is re-queued at most
    ``max_repins`` times.
    """

    check_interval: float = _bounded(60.0, low=1)
    recheck_interval: float = _bounded(86400.0, low=1)
    batch_size: int = _bounded(500, low=1, high=10_000)
    max_repins: int = _bounded(3, low=0, high=100)
    backends: tuple[PinBackendConfig, ...] = _filled_by_loader(())

    @property
    def backend_names(self) -> tuple[str, ...]:
        return tuple(backend.name for backend in self.backends)

    def backend(self, name: str) -> PinBackendConfig:
        """The backend called ``name``; an unknown name is an error listing the known ones."""
        for backend in self.backends:
            if backend.name == name:
                return backend
        known = ", ".join(self.backend_names) or "none (add a [pinning.backends.<name>] table)"
        raise ConfigError(f"pinning.backends.{name}", f"no such backend; configured: {known}")


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """``[mirror]``: the npm/PyPI/Go mirror fallback served under ``/npm/``, ``/pypi/``, ``/go/``.

    Upstreams are the registries' own endpoints (``registries.npm.registry_url``,
    ``registries.pypi.index_url``, ``registries.golang.proxy_url``); a registry left
    unconfigured, or ``offline = true``, is served from the archive alone. Every upstream
    request has a deadline: ``connect_timeout`` to connect, ``first_byte_timeout`` for the
    answer to start (and for any stall), a floor of ``min_rate`` bytes/s once
    ``rate_grace`` seconds have passed, and ``deadline`` in all for a metadata document. After
    a failure the upstream is skipped for ``down_seconds``, so clients get the archive's answer
    at once. Upstream metadata is reused for ``metadata_ttl`` seconds (404s for
    ``negative_ttl``); ``cache_entries`` bounds that cache. ``spool_memory`` is how many bytes
    of a file being verified stay in memory before it spills to a temporary file.
    ``public_url`` is the base clients reach Forage at (default: each request's own origin).
    """

    public_url: str | None = None
    offline: bool = False
    connect_timeout: float = _bounded(3.0, low=0.01)
    first_byte_timeout: float = _bounded(10.0, low=0.01)
    deadline: float = _bounded(30.0, low=0.01)
    min_rate: int = _bounded(20_000, low=0)
    rate_grace: float = _bounded(3.0, low=0)
    down_seconds: float = _bounded(10.0, low=0)
    metadata_ttl: float = _bounded(300.0, low=0)
    negative_ttl: float = _bounded(10.0, low=0)
    cache_entries: int = _bounded(2000, low=1)
    spool_memory: int = _bounded(4 * 1024**2, low=0)


@dataclass(frozen=True, slots=True)
class FilecoinConfig:
    """``[filecoin]``: packing archives into pieces, and where deals are looked up.

    ``piece_target_size`` is the padded size of the pieces built (a power of two; a piece's
    CAR fills at most 127/128 of it). A piece short of ``piece_min_fill`` of that is built
    only once its oldest archive has waited ``piece_max_wait`` seconds (or on ``forage pieces
    build --partial``). A piece with fewer than ``min_replicas`` active deals is listed by the
    health report. Deal sources: a Lotus node's JSON-RPC endpoint ``lotus_url`` (``lotus_scan``
    reads ``Filecoin.StateMarketDeals`` to discover deals; off, only deals already known or
    named by the deal service are looked up), and a deal-making service's API
    ``deal_service_url``. Tokens come from ``FORAGE_FILECOIN_LOTUS_TOKEN`` /
    ``FORAGE_FILECOIN_DEAL_SERVICE_TOKEN`` or the files named by ``*_token_file``.
    ``genesis_timestamp`` (Unix seconds; mainnet's by default) turns epochs into dates when no
    Lotus node says otherwise. ``allow_http`` permits plain-http endpoints.
    """

    piece_target_size: int = _bounded(1 << 30, low=1 << 11, high=1 << 36)
    piece_min_fill: float = _bounded(0.9, low=0, high=1)
    piece_max_wait: float = _bounded(7 * 86400.0, low=0)
    min_replicas: int = _bounded(3, low=1, high=1000)
    genesis_timestamp: int = _bounded(1_598_306_400, low=0)
    lotus_url: str | None = None
    lotus_token: Secret | None = None
    lotus_token_file: Path | None = None
    lotus_scan: bool = True
    deal_service_url: str | None = None
    deal_service_token: Secret | None = None
    deal_service_token_file: Path | None = None
    allow_http: bool = False

    SECRETS: ClassVar[tuple[str, ...]] = ("lotus_token", "deal_service_token")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole effective configuration; ``source`` is the file it was read from, if any."""

    data: DataConfig = DataConfig()
    database: DatabaseConfig = DatabaseConfig()
    jobs: JobsConfig = JobsConfig()
    worker: WorkerConfig = WorkerConfig()
    server: ServerConfig = ServerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    logging: LoggingConfig = LoggingConfig()
    registries: RegistriesConfig = RegistriesConfig()
    filecoin: FilecoinConfig = FilecoinConfig()
    pinning: PinningConfig = PinningConfig()
    mirror: MirrorConfig = MirrorConfig()
    source: Path | None = None

    @overload
    def registry(self, ecosystem: Literal["npm"]) -> NpmConfig: ...
    @overload
    def registry(self, ecosystem: Literal["pypi"]) -> PypiConfig: ...
    @overload
    def registry(self, ecosystem: Literal["golang"]) -> GolangConfig: ...
    @overload
    def registry(self, ecosystem: str) -> RegistryConfig: ...
    def registry(self, ecosystem: str) -> RegistryConfig:
        """Return the settings of a configured registry, or say exactly what to set."""
        section = getattr(self.registries, ecosystem, None) if ecosystem in _REGISTRIES else None
        if section is None:
            raise ConfigError(
                f"registries.{ecosystem}",
                f"unknown registry; known registries: {', '.join(sorted(_REGISTRIES))}",
            )
        if not section.configured:
            keys = [f"registries.{ecosystem}.{k}" for k in section.ENDPOINTS]
            raise ConfigError(
                f"registries.{ecosystem}",
                "not configured: upstream endpoints have no default; set "
                + ", ".join(keys)
                + " in the config file (or "
                + ", ".join(env_name(k) for k in keys)
                + ")",
            )
        return section

    def configured_registries(self) -> tuple[str, ...]:
        """The ecosystems whose endpoints are all set."""
        return tuple(name for name in _REGISTRIES if getattr(self.registries, name).configured)

    def to_dict(self, *, reveal: bool = False) -> dict[str, Any]:
        """The settings as nested plain values (secrets masked unless ``reveal``)."""
        out: dict[str, Any] = {}
        for name, _cls in _SECTIONS:
            out[name] = _section_dict(getattr(self, name), reveal=reveal)
        out["registries"] = {
            name: _section_dict(getattr(self.registries, name), reveal=reveal)
            for name in _REGISTRIES
        }
        if not reveal and self.database.url:
            out["database"]["url"] = self.database.display_url
        out["pinning"]["backends"] = {
            b.name: _section_dict(b, reveal=reveal) for b in self.pinning.backends
        }
        return out


_SECTIONS: tuple[tuple[str, type], ...] = (
    ("data", DataConfig),
    ("database", DatabaseConfig),
    ("jobs", JobsConfig),
    ("worker", WorkerConfig),
    ("server", ServerConfig),
    ("filecoin", FilecoinConfig),
    ("pinning", PinningConfig),
    ("schedule", ScheduleConfig),
    ("logging", LoggingConfig),
    ("mirror", MirrorConfig),
)
_REGISTRIES: Mapping[str, type[RegistryConfig]] = {
    "npm": NpmConfig,
    "pypi": PypiConfig,
    "golang": GolangConfig,
}


def mask_url_password(url: str) -> str:
    """Replace the password of a URL (if any) by a mask."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{_MASK}@{netloc[1]}"))


def find_config_file(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str]
) -> Path | None:
    """Pick the file: explicit ``path``, else ``$FORAGE_CONFIG``, else ``./forage.toml``."""
    if path is not None:
        return Path(path)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] = os.environ
) -> Config:
    """Read the TOML file (if any) and ``FORAGE_*`` overrides into a validated :class:`Config`."""
    source = find_config_file(path, environ)
    document: dict[str, Any] = {}
    base_dir = Path.cwd()
    if source is not None:
        try:
            with source.open("rb") as fh:
                document = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(str(source), "config file not found") from exc
        except OSError as exc:
            raise ConfigError(str(source), f"cannot read config file: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(source), f"not valid TOML: {exc}") from exc
        base_dir = source.resolve().parent
    _warn_unknown_variables(environ, document)
    known = {name for name, _ in _SECTIONS} | {"registries"}
    for name in document:
        if name not in known:
            raise ConfigError(name, f"unknown section; known: {', '.join(sorted(known))}")

    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS:
        sections[name] = _build(cls, name, _table(document, name), environ, base_dir)
    sections["data"] = replace(sections["data"], dir=sections["data"].dir.resolve())
    registries_table = _table(document, "registries")
    for name in registries_table:
        if name not in _REGISTRIES:
            raise ConfigError(
                f"registries.{name}",
                f"unknown registry; known registries: {', '.join(sorted(_REGISTRIES))}",
            )
    registries = {
        name: _build_registry(
            cls, f"registries.{name}", _table(registries_table, name), environ, base_dir
        )
        for name, cls in _REGISTRIES.items()
    }
    sections["registries"] = RegistriesConfig(**registries)
    sections["server"] = _with_token(sections["server"], document, environ)
    sections["filecoin"] = _with_filecoin(sections["filecoin"])
    sections["pinning"] = _with_pin_backends(
        sections["pinning"], _table(document, "pinning"), environ, base_dir
    )
    sections["database"] = _with_database_url(sections["database"], sections["data"])
    if sections["jobs"].backoff_cap < sections["jobs"].backoff_base:
        raise ConfigError("jobs.backoff_cap", "must not be smaller than jobs.backoff_base")
    return Config(**sections, source=source)


def _table(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, f"must be a table, got {type(value).__name__}")
    return value


def _warn_unknown_variables(environ: Mapping[str, str], document: Mapping[str, Any]) -> None:
    known = set(ENV_ALIASES) | {CONFIG_ENV}
    for name, cls in _SECTIONS:
        known.update(env_name(f"{name}.{f.name}") for f in fields(cls))
    pinning = document.get("pinning")
    backends = pinning.get("backends") if isinstance(pinning, dict) else None
    for backend in backends if isinstance(backends, dict) else ():
        prefix = f"pinning.backends.{backend}"
        known.update(env_name(f"{prefix}.{f.name}") for f in fields(PinBackendConfig))
    for name, cls in _REGISTRIES.items():
        known.update(env_name(f"registries.{name}.{f.name}") for f in fields(cls))
    for var in environ:
        if var.startswith(ENV_PREFIX) and var not in known:
            log.warning("ignoring unknown configuration variable %s", var)


def _build(
    cls: type, prefix: str, table: Mapping[str, Any], environ: Mapping[str, str], base_dir: Path
) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in table:
        if key not in names:
            raise ConfigError(
                f"{prefix}.{key}", f"unknown setting; known: {', '.join(sorted(names))}"
            )
    secrets = getattr(cls, "SECRETS", ())
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.metadata.get("filled_by_loader"):
            continue
        key = f"{prefix}.{f.name}"
        var = env_name(key)
        if f.name in secrets and f.name in table:
            raise ConfigError(
                key,
                f"secrets are not read from the config file; set {var} or {prefix}.token_file",
            )
        if var in environ:
            raw, origin, rel = environ[var], f" (from {var})", Path.cwd()
        elif f.name in table:
            raw, origin, rel = table[f.name], "", base_dir
        else:
            continue
        value = _coerce(hints[f.name], raw, key, origin, rel, from_env=var in environ)
        _check_bounds(value, f.metadata, key, origin)
        values[f.name] = value
    return cls(**values)


def _build_registry(
    cls: type[RegistryConfig],
    prefix: str,
    table: Mapping[str, Any],
    environ: Mapping[str, str],
    base_dir: Path,
) -> RegistryConfig:
    section: RegistryConfig = _build(cls, prefix, table, environ, base_dir)
    given = [k for k in cls.ENDPOINTS if getattr(section, k)]
    if given and len(given) < len(cls.ENDPOINTS):
        missing = [f"{prefix}.{k}" for k in cls.ENDPOINTS if not getattr(section, k)]
        raise ConfigError(
            missing[0],
            "missing: a registry needs all its endpoints; also set "
            + ", ".join(missing)
            + " (or "
            + ", ".join(env_name(k) for k in missing)
            + ")",
        )
    for k in cls.ENDPOINTS:
        url = getattr(section, k)
        if url:
            _check_url(url, f"{prefix}.{k}", allow_http=section.allow_http)
    hosts = tuple(h.strip().lower() for h in section.download_hosts)
    for host in hosts:
        if not host or "/" in host or "@" in host:
            raise ConfigError(
                f"{prefix}.download_hosts", f"{host!r} is not a host name (or name:port)"
            )
    if not hosts and given:
        hosts = tuple(dict.fromkeys(_netloc(u) for u in section.endpoint_urls()))
    return replace(section, download_hosts=hosts)


def _netloc(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host


def _check_url(url: str, key: str, *, allow_http: bool) -> None:
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        hint = "" if allow_http else " (set allow_http = true for a plain-http upstream)"
        raise ConfigError(key, f"must be an {' or '.join(schemes)} URL, got {url!r}{hint}")
    if parts.username or parts.password:
        raise ConfigError(key, "credentials in the URL are not allowed")


def _with_token(
    server: ServerConfig, document: Mapping[str, Any], environ: Mapping[str, str]
) -> ServerConfig:
    alias = environ.get("FORAGE_API_TOKEN")
    if alias and server.api_token is None:
        server = replace(server, api_token=Secret(alias))
    if server.api_token is None and server.token_file is not None:
        try:
            token = server.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                "server.token_file", f"cannot read {server.token_file}: {exc.strerror}"
            ) from exc
        if not token:
            raise ConfigError("server.token_file", f"{server.token_file} is empty")
        server = replace(server, api_token=Secret(token))
    if server.api_token is not None and not server.api_token.reveal():
        raise ConfigError("server.api_token", "must not be empty")
    return server


def _with_pin_backends(
    pinning: PinningConfig, table: Mapping[str, Any], environ: Mapping[str, str], base_dir: Path
) -> PinningConfig:
    """Read each ``[pinning.backends.<name>]`` table into a checked ``PinBackendConfig``."""
    tables = _table(table, "backends") if "backends" in table else {}
    backends = []
    variables: dict[str, str] = {}
    for name, body in tables.items():
        prefix = f"pinning.backends.{name}"
        if not _BACKEND_NAME.fullmatch(name):
            raise ConfigError(
                prefix, "a backend name is 1-64 of a-z, 0-9, '-' and '_', starting alphanumeric"
            )
        variable = env_name(f"{prefix}.token")
        if variable in variables:
            raise ConfigError(
                prefix, f"backends {variables[variable]!r} and {name!r} share variable {variable}"
            )
        variables[variable] = name
        if not isinstance(body, dict):
            raise ConfigError(prefix, f"must be a table, got {type(body).__name__}")
        if "name" in body:
            raise ConfigError(f"{prefix}.name", "the backend's name is its table key")
        backend = _build(PinBackendConfig, prefix, body, environ, base_dir)
        backends.append(_check_pin_backend(replace(backend, name=name), prefix))
    return replace(pinning, backends=tuple(backends))


def _check_pin_backend(backend: PinBackendConfig, prefix: str) -> PinBackendConfig:
    if backend.type not in PIN_BACKEND_TYPES:
        raise ConfigError(f"{prefix}.type", f"must be one of {', '.join(PIN_BACKEND_TYPES)}")
    if not backend.url:
        raise ConfigError(f"{prefix}.url", "missing: the backend's API base URL")
    loopback = (urlsplit(backend.url).hostname or "") in _LOOPBACK_HOSTS
    _check_url(backend.url, f"{prefix}.url", allow_http=backend.allow_http or loopback)
    if backend.token is None and backend.token_file is not None:
        try:
            token = backend.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{prefix}.token_file", f"cannot read {backend.token_file}: {exc.strerror}"
            ) from exc
        if not token:
            raise ConfigError(f"{prefix}.token_file", f"{backend.token_file} is empty")
        backend = replace(backend, token=Secret(token))
    if backend.token is not None and not backend.token.reveal():
        raise ConfigError(f"{prefix}.token", "must not be empty")
    if backend.type == "service" and backend.token is None:
        raise ConfigError(
            f"{prefix}.token",
            f"a Pinning Service needs an access token; set {env_name(prefix + '.token')} "
            f"or {prefix}.token_file",
        )
    if backend.origins and backend.type == "kubo":
        raise ConfigError(f"{prefix}.origins", "origins apply to cluster and service backends")
    if len(backend.origins) > MAX_PIN_ORIGINS:
        raise ConfigError(f"{prefix}.origins", f"at most {MAX_PIN_ORIGINS} multiaddrs")
    for origin in backend.origins:
        if not origin.startswith("/") or "/p2p/" not in origin:
            raise ConfigError(
                f"{prefix}.origins", f"{origin!r} is not a multiaddr ending in /p2p/<peer id>"
            )
    replication = (backend.replication_min, backend.replication_max)
    if backend.type != "cluster" and replication != (None, None):
        raise ConfigError(f"{prefix}.replication_min", "replication applies to cluster backends")
    low, high = replication
    if low is not None and high is not None and low > high:
        raise ConfigError(f"{prefix}.replication_max", "must not be smaller than replication_min")
    return backend


def _with_filecoin(filecoin: FilecoinConfig) -> FilecoinConfig:
    """Check the piece size and deal endpoints; read token files."""
    size = filecoin.piece_target_size
    if size & (size - 1):
        raise ConfigError("filecoin.piece_target_size", f"must be a power of two, got {size}")
    for name in ("lotus", "deal_service"):
        url = getattr(filecoin, f"{name}_url")
        if url:
            _check_url(url, f"filecoin.{name}_url", allow_http=filecoin.allow_http)
        path = getattr(filecoin, f"{name}_token_file")
        if getattr(filecoin, f"{name}_token") is None and path is not None:
            try:
                token = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"filecoin.{name}_token_file", f"cannot read {path}: {exc.strerror}"
                ) from exc
            if not token:
                raise ConfigError(f"filecoin.{name}_token_file", f"{path} is empty")
            filecoin = replace(filecoin, **{f"{name}_token": Secret(token)})
    return filecoin


def _with_database_url(database: DatabaseConfig, data: DataConfig) -> DatabaseConfig:
    url = database.url
    if not url:
        return replace(database, url=f"sqlite:///{(data.dir / 'forage.db').resolve()}")
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        return replace(database, url="postgresql+psycopg:" + url.split(":", 1)[1])
    if scheme in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        if scheme.startswith("sqlite") and (":memory:" in url or url.rstrip("/").endswith(":")):
            raise ConfigError(
                "database.url", "an in-memory SQLite database is not supported; name a file"
            )
        return database
    raise ConfigError(
        "database.url",
        f"unsupported database {mask_url_password(url)!r}; use sqlite:///PATH "
        "or postgresql://USER@HOST/DB",
    )


def _coerce(hint: Any, raw: Any, key: str, origin: str, rel: Path, *, from_env: bool) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if optional and from_env and raw == "":
        return None

    def bad(expected: str) -> ConfigError:
        return ConfigError(key, f"must be {expected}, got {raw!r}{origin}")

    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if from_env and raw.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if from_env and raw.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise bad("true or false")
    if hint is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if from_env:
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise bad("an integer")
    if hint is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if from_env:
            try:
                return float(raw.strip())
            except ValueError:
                pass
        raise bad("a number")
    if hint is str:
        if isinstance(raw, str):
            return raw
        raise bad("a string")
    if hint is Path:
        if isinstance(raw, str) and raw:
            path = Path(raw).expanduser()
            return path if path.is_absolute() else rel / path
        raise bad("a path")
    if hint is Secret:
        if isinstance(raw, str):
            return Secret(raw)
        raise bad("a string")
    if typing.get_origin(hint) is tuple:
        if from_env:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            return tuple(raw)
        raise bad("a list of strings")
    raise TypeError(f"unsupported config field type {hint!r} for {key}")


def _check_bounds(value: Any, metadata: Mapping[str, Any], key: str, origin: str) -> None:
    if value is None:
        return
    low, high = metadata.get("min"), metadata.get("max")
    if low is not None and value < low:
        raise ConfigError(key, f"must be >= {low}, got {value!r}{origin}")
    if high is not None and value > high:
        raise ConfigError(key, f"must be <= {high}, got {value!r}{origin}")


def _section_dict(section: Any, *, reveal: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(section):
        if f.metadata.get("filled_by_loader"):
            continue
        value = getattr(section, f.name)
        if isinstance(value, Secret):
            value = value.reveal() if reveal else _MASK
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
