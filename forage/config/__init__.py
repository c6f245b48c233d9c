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

Modules: :mod:`.values` (variable names, :class:`Secret`, field helpers), :mod:`.sections`
(one dataclass per table, and :class:`Config`), :mod:`.registries` (``[registries.<name>]``,
one table per registered ecosystem, whose endpoint keys its home in ``indexers`` declares) and
:mod:`.loader` (:func:`load_config`).

To add a section: write a frozen dataclass whose fields carry defaults (supported types: str,
int, float, bool, Path, ``tuple[str, ...]``, :class:`Secret`, and ``X | None`` of those; bounds
in ``field(metadata={"min": ..., "max": ...})``), add it as a field of :class:`Config` and to
``SECTIONS``. A field the loader fills itself (from sub-tables, as ``pinning.backends``) is
declared with :func:`~forage.config.values.filled_by_loader` and skipped by the generic reader.
"""

from __future__ import annotations

from forage.config.loader import find_config_file, load_config
from forage.config.registries import RegistriesConfig, RegistryConfig
from forage.config.sections import (
    LOG_FORMATS,
    PIN_BACKEND_TYPES,
    Config,
    DatabaseConfig,
    DataConfig,
    FilecoinConfig,
    JobsConfig,
    LoggingConfig,
    MirrorConfig,
    PinBackendConfig,
    PinningConfig,
    RepairConfig,
    ScheduleConfig,
    ServerConfig,
    WorkerConfig,
)
from forage.config.values import Secret, env_name, mask_url_password

__all__ = [
    "LOG_FORMATS",
    "PIN_BACKEND_TYPES",
    "Config",
    "DataConfig",
    "DatabaseConfig",
    "FilecoinConfig",
    "JobsConfig",
    "LoggingConfig",
    "MirrorConfig",
    "PinBackendConfig",
    "PinningConfig",
    "RegistriesConfig",
    "RegistryConfig",
    "RepairConfig",
    "ScheduleConfig",
    "Secret",
    "ServerConfig",
    "WorkerConfig",
    "env_name",
    "find_config_file",
    "load_config",
    "mask_url_password",
]
