"""Read the TOML file and ``FORAGE_*`` variables into a validated :class:`Config` (the rules
are in :mod:`forage.config`)."""

from __future__ import annotations

import logging
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from forage.config.registries import (
    RegistriesConfig,
    RegistryConfig,
    check_patterns,
    read_pattern_file,
)
from forage.config.sections import (
    BACKEND_NAME,
    MAX_PIN_ORIGINS,
    PIN_BACKEND_TYPES,
    SECTIONS,
    Config,
    DatabaseConfig,
    DataConfig,
    FilecoinConfig,
    PinBackendConfig,
    PinningConfig,
    ServerConfig,
)
from forage.config.values import (
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    ENV_ALIASES,
    ENV_PREFIX,
    Secret,
    check_url,
    env_name,
    mask_url_password,
    netloc,
)
from forage.errors import ConfigError, ConfigErrors
from indexers import ECOSYSTEMS

log = logging.getLogger("forage.config")


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
    problems: list[ConfigError] = []
    known = {name for name, _ in SECTIONS} | {"registries"}
    for name in document:
        if name not in known:
            problems.append(
                ConfigError(name, f"unknown section; known: {', '.join(sorted(known))}")
            )

    def checked(build: Any, *build_args: Any, fallback: Any) -> Any:
        # Every mistake is collected, so the operator fixes them all in one round.
        try:
            return build(*build_args)
        except ConfigError as exc:
            problems.append(exc)
            return fallback

    sections: dict[str, Any] = {}
    for name, cls in SECTIONS:
        table = checked(_table, document, name, fallback={})
        sections[name] = checked(_build, cls, name, table, environ, base_dir, fallback=cls())
    sections["data"] = replace(sections["data"], dir=sections["data"].dir.resolve())
    registries_table = checked(_table, document, "registries", fallback={})
    for name in registries_table:
        if name not in ECOSYSTEMS:
            from forage.lookup.keys import near_ecosystem_hint

            known = f"; known registries: {', '.join(sorted(ECOSYSTEMS))}"
            reason = f"unknown registry{near_ecosystem_hint(name) or known}"
            problems.append(ConfigError(f"registries.{name}", reason))
    registries = {}
    for name in ECOSYSTEMS:
        prefix = f"registries.{name}"
        table = checked(_table, registries_table, name, fallback={})
        registry = checked(_build_registry, name, prefix, table, environ, base_dir, fallback=None)
        registries[name] = registry or _build_registry(name, prefix, {}, {}, base_dir)
    sections["registries"] = RegistriesConfig(MappingProxyType(registries))
    server = sections["server"]
    sections["server"] = checked(_with_token, server, document, environ, fallback=server)
    filecoin = sections["filecoin"]
    sections["filecoin"] = checked(_with_filecoin, filecoin, fallback=filecoin)
    pinning = sections["pinning"]
    pinning_table = checked(_table, document, "pinning", fallback={})
    sections["pinning"] = checked(
        _with_pin_backends, pinning, pinning_table, environ, base_dir, fallback=pinning
    )
    database = sections["database"]
    sections["database"] = checked(
        _with_database_url, database, sections["data"], fallback=database
    )
    if sections["jobs"].backoff_cap < sections["jobs"].backoff_base:
        problems.append(
            ConfigError("jobs.backoff_cap", "must not be smaller than jobs.backoff_base")
        )
    ConfigErrors.raise_all(problems)
    return Config(**sections, source=source)


def _table(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, f"must be a table, got {type(value).__name__}")
    return value


def _warn_unknown_variables(environ: Mapping[str, str], document: Mapping[str, Any]) -> None:
    known = set(ENV_ALIASES) | {CONFIG_ENV}
    for name, cls in SECTIONS:
        known.update(env_name(f"{name}.{f.name}") for f in fields(cls))
    pinning = document.get("pinning")
    backends = pinning.get("backends") if isinstance(pinning, dict) else None
    for backend in backends if isinstance(backends, dict) else ():
        prefix = f"pinning.backends.{backend}"
        known.update(env_name(f"{prefix}.{f.name}") for f in fields(PinBackendConfig))
    for name, eco in ECOSYSTEMS.items():
        keys = [f.name for f in fields(RegistryConfig)] + list(eco.endpoint_keys)
        known.update(env_name(f"registries.{name}.{key}") for key in keys)
    for var in environ:
        if var.startswith(ENV_PREFIX) and var not in known:
            log.warning("ignoring unknown configuration variable %s", var)


def _build(
    cls: type, prefix: str, table: Mapping[str, Any], environ: Mapping[str, str], base_dir: Path
) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    problems = [
        ConfigError(f"{prefix}.{key}", f"unknown setting; known: {', '.join(sorted(names))}")
        for key in table
        if key not in names
    ]
    secrets = getattr(cls, "SECRETS", ())
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.metadata.get("filled_by_loader"):
            continue
        key = f"{prefix}.{f.name}"
        var = env_name(key)
        if f.name in secrets and f.name in table:
            problems.append(
                ConfigError(
                    key,
                    f"secrets are not read from the config file; set {var} or {prefix}.token_file",
                )
            )
            continue
        if var in environ:
            raw, origin, rel = environ[var], f" (from {var})", Path.cwd()
        elif f.name in table:
            raw, origin, rel = table[f.name], "", base_dir
        else:
            continue
        try:
            value = _coerce(hints[f.name], raw, key, origin, rel, from_env=var in environ)
            _check_bounds(value, f.metadata, key, origin)
        except ConfigError as exc:
            problems.append(exc)
            continue
        values[f.name] = value
    ConfigErrors.raise_all(problems)
    return cls(**values)


def _build_registry(
    ecosystem: str,
    prefix: str,
    table: Mapping[str, Any],
    environ: Mapping[str, str],
    base_dir: Path,
) -> RegistryConfig:
    rest = dict(table)
    endpoints: dict[str, str | None] = {}
    for key in ECOSYSTEMS[ecosystem].endpoint_keys:
        var = env_name(f"{prefix}.{key}")
        raw = rest.pop(key, None)
        origin = ""
        if var in environ:
            raw, origin = environ[var], f" (from {var})"
        if raw is not None and not isinstance(raw, str):
            raise ConfigError(f"{prefix}.{key}", f"must be a string, got {raw!r}{origin}")
        endpoints[key] = raw or None
    section: RegistryConfig = _build(RegistryConfig, prefix, rest, environ, base_dir)
    section = replace(section, ecosystem=ecosystem, endpoints=MappingProxyType(endpoints))
    given = [k for k, url in endpoints.items() if url]
    if given and len(given) < len(endpoints):
        missing = [f"{prefix}.{k}" for k, url in endpoints.items() if not url]
        raise ConfigError(
            missing[0],
            "missing: a registry needs all its endpoints; also set "
            + ", ".join(missing)
            + " (or "
            + ", ".join(env_name(k) for k in missing)
            + ")",
        )
    for key, url in endpoints.items():
        if url:
            check_url(url, f"{prefix}.{key}", allow_http=section.allow_http)
    hosts = tuple(h.strip().lower() for h in section.download_hosts)
    for host in hosts:
        if not host or "/" in host or "@" in host:
            raise ConfigError(
                f"{prefix}.download_hosts", f"{host!r} is not a host name (or name:port)"
            )
    if not hosts and given:
        hosts = tuple(dict.fromkeys(netloc(u) for u in section.endpoint_urls()))
    return replace(_checked_selection(section, prefix), download_hosts=hosts)


def _checked_selection(section: RegistryConfig, prefix: str) -> RegistryConfig:
    """Validate the registry's selection: patterns well formed, list files readable."""
    section = replace(
        section,
        allow=check_patterns(section.allow, f"{prefix}.allow"),
        deny=check_patterns(section.deny, f"{prefix}.deny"),
        files=check_patterns(section.files, f"{prefix}.files"),
    )
    for key in ("allow_file", "deny_file"):
        path = getattr(section, key)
        if path is not None:
            read_pattern_file(path, f"{prefix}.{key}")
    return section


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
        if not BACKEND_NAME.fullmatch(name):
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
    check_url(backend.url, f"{prefix}.url", allow_http=backend.allow_http, loopback_http=True)
    if backend.gateway:
        gateway = backend.gateway
        check_url(gateway, f"{prefix}.gateway", allow_http=backend.allow_http, loopback_http=True)
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
            check_url(url, f"filecoin.{name}_url", allow_http=filecoin.allow_http)
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


__all__ = ["find_config_file", "load_config"]
