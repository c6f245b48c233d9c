"""One frozen dataclass per table of the configuration file, and :class:`Config`, which holds
them all (see :mod:`forage.config` for the rules every table follows)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from forage.config.registries import RegistriesConfig, RegistryConfig
from forage.config.values import (
    LOOPBACK_HOSTS,
    Secret,
    bounded,
    check_url,
    env_name,
    filled_by_loader,
    mask_url_password,
    section_dict,
)
from forage.errors import ConfigError
from forage.logs import LOG_FORMATS

#: The blockstore layouts ``[data] blocks`` may name (besides an ``s3://bucket/prefix`` URL).
BLOCK_LAYOUTS = ("packed", "flatfs")
#: Where a packed blockstore's locator may be (``[data] locator``).
LOCATORS = ("file", "database")
#: An S3 bucket name (the rules AWS and the S3-compatible services share) and a key prefix.
S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
S3_PREFIX = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")


@dataclass(frozen=True, slots=True)
class DataConfig:
    """``[data]``: where Forage keeps its files (SQLite database, blocks).

    ``blocks`` is the blockstore layout under ``<dir>/blocks``: ``"packed"`` (one pack file
    per archive, :mod:`storage.packs`) or ``"flatfs"`` (one file per block, Kubo's layout).
    Unset, a store that already holds flatfs blocks stays flatfs, and anything else is packed.
    ``"s3://bucket/prefix"`` keeps the packs as objects in an S3-compatible bucket instead
    (:mod:`forage.archive.objectstore`): ``s3_endpoint`` is the service's URL (default
    ``AWS_ENDPOINT_URL``, else AWS; plain ``http`` only on loopback or with
    ``s3_allow_http``), ``s3_region`` its region (default ``AWS_REGION``), and the
    credentials come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or the AWS
    credentials file ``s3_credentials_file``. ``locator`` is where a packed store finds each
    block: ``"file"`` (SQLite beside the packs: one host) or ``"database"`` (Forage's
    database: every host that shares the store); unset, ``database`` for a bucket, else
    ``file``.
    """

    dir: Path = Path("forage-data")
    blocks: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_credentials_file: Path | None = None
    s3_allow_http: bool = False
    locator: str | None = None

    def __post_init__(self) -> None:
        if self.in_bucket:
            self.s3_location  # noqa: B018  (checks the URL)
        elif self.blocks is not None and self.blocks not in BLOCK_LAYOUTS:
            raise ConfigError(
                "data.blocks",
                f"must be one of {', '.join(BLOCK_LAYOUTS)} or an s3://bucket/prefix URL, "
                f"got {self.blocks!r}",
            )
        if self.locator is not None and self.locator not in LOCATORS:
            raise ConfigError(
                "data.locator", f"must be one of {', '.join(LOCATORS)}, got {self.locator!r}"
            )
        if self.s3_endpoint is not None:
            check_s3_endpoint(self.s3_endpoint, "data.s3_endpoint", self.s3_allow_http)

    @property
    def in_bucket(self) -> bool:
        """Whether the blocks live in an S3-compatible bucket."""
        return (self.blocks or "").startswith("s3://")

    @property
    def s3_location(self) -> tuple[str, str]:
        """The bucket and key prefix of an ``s3://bucket/prefix`` ``blocks``."""
        parts = urlsplit(self.blocks or "")
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not S3_BUCKET.fullmatch(bucket) or ".." in bucket:
            raise ConfigError("data.blocks", f"{self.blocks!r} does not name a valid bucket")
        if (prefix and not S3_PREFIX.fullmatch(prefix)) or parts.query or parts.fragment:
            raise ConfigError("data.blocks", f"{self.blocks!r} has an invalid key prefix")
        return bucket, prefix

    @property
    def shared_locator(self) -> bool:
        """Whether a packed store's locator is in the database (see the class docstring)."""
        return self.locator == "database" or (self.locator is None and self.in_bucket)


def check_s3_endpoint(url: str, key: str, allow_http: bool) -> None:
    """An S3 endpoint must be https, or plain http on loopback or with ``s3_allow_http``."""
    check_url(url, key, allow_http=allow_http, loopback_http=True, allow_key="data.s3_allow_http")


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """``[database]``: the SQLAlchemy URL and pool settings.

    ``url`` defaults to ``sqlite:///<data.dir>/forage.db``; ``postgresql://`` and
    ``postgres://`` are normalized to the psycopg 3 driver. ``busy_timeout`` (seconds) is how
    long a SQLite writer waits for the lock. The URL is masked in ``repr`` (it may hold a
    password).
    """

    url: str | None = field(default=None, repr=False)
    busy_timeout: float = bounded(5.0, low=0)
    pool_size: int = bounded(5, low=1, high=1000)
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
    ``lease_seconds`` and is extended by the worker's heartbeat every third of a lease, so it
    can be short: an expired lease makes the job claimable again. ``poll_interval`` is how
    often an idle worker looks for work.

    Bytes that fail verification (a digest mismatch: a CDN serving wrong bytes; an unreadable
    archive) may be right again later: the archive is tried ``mismatch_attempts`` times in
    all, the n-th retry ``mismatch_backoff * 2 ** (n - 1)`` seconds after the failure, then
    its job is dead (within ``max_attempts`` attempts of any kind).
    """

    max_attempts: int = bounded(10, low=1, high=1000)
    backoff_base: float = bounded(30.0, low=0)
    backoff_cap: float = bounded(6 * 3600.0, low=0)
    lease_seconds: float = bounded(30.0, low=0.1)
    poll_interval: float = bounded(1.0, low=0.01)
    mismatch_attempts: int = bounded(3, low=1, high=100)
    mismatch_backoff: float = bounded(3600.0, low=0)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """``[worker]``: how many jobs one worker process runs at once."""

    concurrency: int = bounded(4, low=1, high=1000)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: where ``forage serve`` listens and the token its write API requires.

    ``api_token`` comes from ``FORAGE_API_TOKEN`` (or ``FORAGE_SERVER_API_TOKEN``) or from the
    file named by ``token_file``; never from the TOML file itself. ``max_keys`` bounds the keys
    of one lookup (and the dependencies of one lockfile), ``max_body_size`` a request body in
    bytes. Unknown lookup keys queue backfill imports at most ``backfill_rate`` per second
    (bursts of ``backfill_burst``); a package checked upstream less than ``backfill_recheck``
    seconds ago is not asked for again.

    ``request_memory`` is the memory budget, in bytes, of the request bodies being worked on
    at once (:mod:`forage.server.budget`): a request with a body over 64 KiB is charged its
    size while it runs, and one that does not fit waits up to ``request_wait`` seconds, then
    gets a 503 with ``Retry-After``. A lookup needs a few times its body's size in working
    memory, so the default (two maximal bodies at once) keeps sixteen concurrent 15 MB lookups
    under 400 MiB. It must be at least ``max_body_size``, or the largest body could never run.

    ``processes`` is how many server processes ``forage serve`` runs on its one listening
    socket (0: one per CPU core this process may use), so lookups use more than one core
    (:mod:`forage.server.processes`). Each process has its own memory budget; the backfill
    rate and burst are shared out between them, so the server as a whole keeps to them.
    """

    host: str = "127.0.0.1"
    port: int = bounded(8080, low=1, high=65535)
    api_token: Secret | None = None
    token_file: Path | None = None
    max_keys: int = bounded(10_000, low=1, high=1_000_000)
    max_body_size: int = bounded(16 * 1024**2, low=1024)
    request_memory: int = bounded(32 * 1024**2, low=1024)
    request_wait: float = bounded(60.0, low=0)
    backfill_rate: float = bounded(5.0, low=0)
    backfill_burst: int = bounded(500, low=0)
    backfill_recheck: float = bounded(3600.0, low=0)
    processes: int = bounded(1, low=0, high=1024)

    SECRETS: ClassVar[tuple[str, ...]] = ("api_token",)

    def __post_init__(self) -> None:
        if self.request_memory < self.max_body_size:
            raise ConfigError(
                "server.request_memory",
                f"must be at least server.max_body_size ({self.max_body_size} bytes), got "
                f"{self.request_memory}: a body of the largest size allowed could never run",
            )


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
    ``reconcile`` is how often each configured registry's reconcile sweep is queued
    (:mod:`forage.index.reconcile`). ``optimize`` is how often the planner's statistics are
    refreshed (:mod:`forage.db.statistics`).
    """

    drain_archives: float = bounded(300.0, low=0)
    pin_check: float = bounded(3600.0, low=0)
    build_pieces: float = bounded(3600.0, low=0)
    sync_deals: float = bounded(3600.0, low=0)
    retry_failed: float = bounded(3600.0, low=0)
    reverify: float = bounded(86400.0, low=0)
    stats: float = bounded(300.0, low=0)
    prune_jobs: float = bounded(86400.0, low=0)
    render_answers: float = bounded(60.0, low=0)
    reconcile: float = bounded(86400.0, low=0)
    optimize: float = bounded(3600.0, low=0)
    render_batch: int = bounded(20_000, low=1, high=10_000_000)
    reverify_sample: int = bounded(100, low=1, high=1_000_000)
    batch: int = bounded(1000, low=1, high=1_000_000)
    keep_done_jobs: float = bounded(7 * 86400.0, low=0)
    leader_poll: float = bounded(5.0, low=0.1)


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


#: Pinning backend types: Kubo RPC, IPFS Cluster REST API, IPFS Pinning Service API.
PIN_BACKEND_TYPES = ("kubo", "cluster", "service")
#: A backend name fits ``pins.backend`` (64 characters) and an environment variable name.
BACKEND_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
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
    each request, in seconds. ``gateway`` is the provider's trustless gateway, where
    :mod:`forage.archive.repair` reads blocks back (a Pinning Service or Cluster API has no
    read method; a Kubo backend is read through its RPC).
    """

    name: str = filled_by_loader("")
    type: str = ""
    url: str = ""
    token: Secret | None = None
    token_file: Path | None = None
    origins: tuple[str, ...] = ()
    replication_min: int | None = bounded(None, low=1)
    replication_max: int | None = bounded(None, low=1)
    allow_http: bool = False
    timeout: float = bounded(120.0, low=1)
    gateway: str | None = None

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

    check_interval: float = bounded(60.0, low=1)
    recheck_interval: float = bounded(86400.0, low=1)
    batch_size: int = bounded(500, low=1, high=10_000)
    max_repins: int = bounded(3, low=0, high=100)
    backends: tuple[PinBackendConfig, ...] = filled_by_loader(())

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
class RepairConfig:
    """``[repair]``: where missing or damaged blocks are fetched from before an archive is
    downloaded again from its registry (:mod:`forage.archive.repair`).

    ``gateways`` are IPFS trustless gateways (base URLs: ``https``, or plain ``http`` on
    loopback or with ``allow_http``), tried in order after the pinning backends that can serve
    blocks. Every block is checked against its CID before it is stored. ``timeout`` bounds
    each request, ``deadline`` everything asked of one source for one archive (seconds);
    ``max_block_size`` is the largest block accepted, in bytes.
    """

    gateways: tuple[str, ...] = ()
    allow_http: bool = False
    timeout: float = bounded(30.0, low=0.1)
    deadline: float = bounded(300.0, low=0.1)
    max_block_size: int = bounded(2 << 20, low=1024, high=64 << 20)

    def __post_init__(self) -> None:
        for url in self.gateways:
            check_url(url, "repair.gateways", allow_http=self.allow_http, loopback_http=True)


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
    connect_timeout: float = bounded(3.0, low=0.01)
    first_byte_timeout: float = bounded(10.0, low=0.01)
    deadline: float = bounded(30.0, low=0.01)
    min_rate: int = bounded(20_000, low=0)
    rate_grace: float = bounded(3.0, low=0)
    down_seconds: float = bounded(10.0, low=0)
    metadata_ttl: float = bounded(300.0, low=0)
    negative_ttl: float = bounded(10.0, low=0)
    cache_entries: int = bounded(2000, low=1)
    spool_memory: int = bounded(4 * 1024**2, low=0)


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

    piece_target_size: int = bounded(1 << 30, low=1 << 11, high=1 << 36)
    piece_min_fill: float = bounded(0.9, low=0, high=1)
    piece_max_wait: float = bounded(7 * 86400.0, low=0)
    min_replicas: int = bounded(3, low=1, high=1000)
    genesis_timestamp: int = bounded(1_598_306_400, low=0)
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
    registries: RegistriesConfig = field(default_factory=RegistriesConfig)
    filecoin: FilecoinConfig = FilecoinConfig()
    pinning: PinningConfig = PinningConfig()
    mirror: MirrorConfig = MirrorConfig()
    repair: RepairConfig = RepairConfig()
    source: Path | None = None

    def registry(self, ecosystem: str) -> RegistryConfig:
        """Return the settings of a configured registry, or say exactly what to set."""
        section = self.registries.get(ecosystem)
        if section is None:
            raise ConfigError(
                f"registries.{ecosystem}",
                f"unknown registry; known registries: {', '.join(sorted(self.registries))}",
            )
        if not section.configured:
            keys = [f"registries.{ecosystem}.{k}" for k in section.endpoint_keys]
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
        return tuple(name for name, section in self.registries.items() if section.configured)

    def to_dict(self, *, reveal: bool = False) -> dict[str, Any]:
        """The settings as nested plain values (secrets masked unless ``reveal``)."""
        out: dict[str, Any] = {}
        for name, _cls in SECTIONS:
            out[name] = section_dict(getattr(self, name), reveal=reveal)
        out["registries"] = {
            name: section.to_dict(reveal=reveal) for name, section in self.registries.items()
        }
        if not reveal and self.database.url:
            out["database"]["url"] = self.database.display_url
        out["pinning"]["backends"] = {
            b.name: section_dict(b, reveal=reveal) for b in self.pinning.backends
        }
        return out


SECTIONS: tuple[tuple[str, type], ...] = (
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
    ("repair", RepairConfig),
)


__all__ = [
    "BACKEND_NAME",
    "LOG_FORMATS",
    "LOOPBACK_HOSTS",
    "MAX_PIN_ORIGINS",
    "PIN_BACKEND_TYPES",
    "SECTIONS",
    "Config",
    "DataConfig",
    "DatabaseConfig",
    "FilecoinConfig",
    "JobsConfig",
    "LoggingConfig",
    "MirrorConfig",
    "PinBackendConfig",
    "PinningConfig",
    "RepairConfig",
    "ScheduleConfig",
    "ServerConfig",
    "WorkerConfig",
]
