"""Configuration: TOML file, FORAGE_* overrides, validation errors that name the key, secrets
kept out of repr, and registries that say exactly what to set when unconfigured."""

from __future__ import annotations

from pathlib import Path

import pytest

from forage.cli import main
from forage.config import Config, Secret, env_name, load_config
from forage.errors import ConfigError
from indexers import ECOSYSTEMS

NPM_TOML = """
[registries.npm]
registry_url = "https://registry.example.test/"
replicate_url = "https://replicate.example.test/registry"
"""

#: How configuration errors list the registries Forage knows.
KNOWN = ", ".join(sorted(ECOSYSTEMS))


@pytest.fixture(autouse=True)
def _in_empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No stray ./forage.toml may leak into a test.
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "forage.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No forage.toml in the working directory: defaults, data under ./forage-data, SQLite there.
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.source is None
    assert config.data.dir == tmp_path / "forage-data"
    assert config.database.url == f"sqlite:///{tmp_path / 'forage-data' / 'forage.db'}"
    assert config.database.is_sqlite
    assert config.jobs.max_attempts == 10
    assert config.server.api_token is None
    assert config.configured_registries() == ()


def test_file_is_found_in_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[worker]\nconcurrency = 7\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.worker.concurrency == 7
    assert config.source == Path("forage.toml")


def test_forage_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[worker]\nconcurrency = 3\n")
    assert load_config(environ={"FORAGE_CONFIG": str(path)}).worker.concurrency == 3


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "[jobs\nmax_attempts = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, environ={})


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[jobs]\nmax_attempts = 4\nlease_seconds = 60\n")
    config = load_config(
        path, environ={"FORAGE_JOBS_MAX_ATTEMPTS": "6", "FORAGE_WORKER_CONCURRENCY": "2"}
    )
    assert config.jobs.max_attempts == 6  # variable wins
    assert config.jobs.lease_seconds == 60.0  # file value kept
    assert config.worker.concurrency == 2


def test_env_name_mapping_rule() -> None:
    assert env_name("database.url") == "FORAGE_DATABASE_URL"
    assert env_name("registries.npm.registry_url") == "FORAGE_REGISTRIES_NPM_REGISTRY_URL"


def test_relative_paths_in_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write(conf_dir, '[data]\ndir = "state"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(path, environ={})
    assert config.data.dir == conf_dir / "state"
    # From the environment, relative to the working directory.
    config = load_config(path, environ={"FORAGE_DATA_DIR": "elsewhere"})
    assert config.data.dir == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("toml", "environ", "key", "fragment"),
    [
        ("[jobs]\nmax_attempts = 0\n", {}, "jobs.max_attempts", "must be >= 1"),
        ("[jobs]\nmax_attempts = 'x'\n", {}, "jobs.max_attempts", "must be an integer"),
        ("", {"FORAGE_JOBS_MAX_ATTEMPTS": "many"}, "jobs.max_attempts", "FORAGE_JOBS_MAX_ATTEMPTS"),
        ("[server]\nport = 70000\n", {}, "server.port", "must be <= 65535"),
        ("[worker]\nconcurency = 2\n", {}, "worker.concurency", "unknown setting"),
        ("[wokrer]\n", {}, "wokrer", "unknown section"),
        ("[registries.nuget]\n", {}, "registries.nuget", f"known registries: {KNOWN}"),
        ("[jobs]\nbackoff_base = 100\nbackoff_cap = 10\n", {}, "jobs.backoff_cap", "smaller"),
        ("", {"FORAGE_DATABASE_URL": "mysql://x/y"}, "database.url", "unsupported database"),
        ("", {"FORAGE_DATABASE_URL": "sqlite:///:memory:"}, "database.url", "in-memory"),
        (
            "",
            {"FORAGE_REGISTRIES_NPM_ALLOW_HTTP": "maybe"},
            "registries.npm.allow_http",
            "true or false",
        ),
    ],
)
def test_invalid_values_name_the_key(
    tmp_path: Path, toml: str, environ: dict[str, str], key: str, fragment: str
) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_postgres_url_is_normalized_and_password_masked() -> None:
    config = load_config(environ={"FORAGE_DATABASE_URL": "postgresql://forage:hunter2@db/forage"})
    assert config.database.url == "postgresql+psycopg://forage:hunter2@db/forage"
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config.to_dict())
    assert config.to_dict(reveal=True)["database"]["url"].endswith("hunter2@db/forage")


def test_api_token_from_environment_is_masked() -> None:
    config = load_config(environ={"FORAGE_API_TOKEN": "s3cret-token"})
    assert isinstance(config.server.api_token, Secret)
    assert config.server.api_token.reveal() == "s3cret-token"
    assert "s3cret-token" not in repr(config)
    assert "s3cret-token" not in str(config.server.api_token)
    assert config.to_dict()["server"]["api_token"] == "********"


def test_api_token_from_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-a-file\n", encoding="utf-8")
    path = write(tmp_path, f'[server]\ntoken_file = "{token}"\n')
    config = load_config(path, environ={})
    assert config.server.api_token == Secret("from-a-file")
    # The variable wins over the file.
    config = load_config(path, environ={"FORAGE_SERVER_API_TOKEN": "from-env"})
    assert config.server.api_token == Secret("from-env")


def test_unreadable_or_empty_token_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, f'[server]\ntoken_file = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(path, environ={})
    assert info.value.key == "server.token_file"
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    path = write(tmp_path, f'[server]\ntoken_file = "{tmp_path / "empty"}"\n')
    with pytest.raises(ConfigError, match="is empty"):
        load_config(path, environ={})


def test_token_in_the_file_is_refused(tmp_path: Path) -> None:
    # A config file tends to be committed or shared; secrets come from elsewhere.
    path = write(tmp_path, '[server]\napi_token = "oops"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "server.api_token"
    assert "FORAGE_SERVER_API_TOKEN" in str(info.value)
    assert "oops" not in str(info.value)


def test_unconfigured_registry_says_what_to_set(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), environ={})
    with pytest.raises(ConfigError) as info:
        config.registry("pypi")
    message = str(info.value)
    for key in ("index_url", "json_url", "xmlrpc_url"):
        assert f"registries.pypi.{key}" in message
        assert f"FORAGE_REGISTRIES_PYPI_{key.upper()}" in message
    with pytest.raises(ConfigError, match=f"known registries: {KNOWN}"):
        config.registry("nuget")


def test_configured_registry_gets_download_hosts_from_its_endpoints(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, NPM_TOML), environ={})
    npm = config.registry("npm")
    assert npm.registry_url == "https://registry.example.test/"  # type: ignore[attr-defined]
    assert npm.download_hosts == ("registry.example.test", "replicate.example.test")
    assert config.configured_registries() == ("npm",)


def test_explicit_download_hosts_are_lowercased(tmp_path: Path) -> None:
    toml = NPM_TOML + 'download_hosts = ["Files.Example.test", "cdn.example.test:8443"]\n'
    config = load_config(write(tmp_path, toml), environ={})
    assert config.registry("npm").download_hosts == ("files.example.test", "cdn.example.test:8443")
    env = {"FORAGE_REGISTRIES_NPM_DOWNLOAD_HOSTS": "a.example.test, b.example.test"}
    config = load_config(write(tmp_path, NPM_TOML), environ=env)
    assert config.registry("npm").download_hosts == ("a.example.test", "b.example.test")


def test_partly_configured_registry_is_an_error_on_load(tmp_path: Path) -> None:
    toml = '[registries.golang]\nproxy_url = "https://proxy.example.test"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, toml), environ={})
    assert info.value.key == "registries.golang.index_url"
    assert "registries.golang.sumdb_url" in str(info.value)


def test_plain_http_endpoint_needs_allow_http(tmp_path: Path) -> None:
    toml = NPM_TOML.replace("https://registry.example.test/", "http://127.0.0.1:9/")
    with pytest.raises(ConfigError, match="allow_http") as info:
        load_config(write(tmp_path, toml), environ={})
    assert info.value.key == "registries.npm.registry_url"
    config = load_config(write(tmp_path, toml + "allow_http = true\n"), environ={})
    assert config.registry("npm").download_hosts[0] == "127.0.0.1:9"


def test_credentials_in_endpoint_urls_are_refused(tmp_path: Path) -> None:
    toml = NPM_TOML.replace("https://registry.", "https://user:pw@registry.")
    with pytest.raises(ConfigError, match="credentials"):
        load_config(write(tmp_path, toml), environ={})


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.worker = None  # type: ignore[misc]


def test_config_command_prints_masked_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, NPM_TOML + "[worker]\nconcurrency = 9\n")
    monkeypatch.setenv("FORAGE_API_TOKEN", "very-secret")
    assert main(["--config", str(path), "config"]) == 0
    out = capsys.readouterr().out
    assert "very-secret" not in out
    assert 'api_token = "********"' in out
    assert "concurrency = 9" in out
    assert 'registry_url = "https://registry.example.test/"' in out
    assert "[registries.npm]" in out


def test_cli_maps_config_errors_to_usage_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[jobs]\nmax_attempts = -1\n")
    assert main(["--config", str(path), "config"]) == 2
    assert "jobs.max_attempts" in capsys.readouterr().err
