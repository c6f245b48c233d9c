"""The blockstore on S3-compatible object storage, opened from the configuration.

``[data] blocks = "s3://bucket/prefix"`` keeps every pack of the packed layout as one object
in that bucket (:class:`storage.objectpacks.ObjectPackedBlockstore` on
:class:`storage.s3.S3Objects`), with the block locator in Forage's database
(:class:`forage.archive.locator.DatabaseLocator`), so servers and workers on different hosts
share nothing but the database and the bucket; each host stages packs being written under
its own ``<data.dir>/blocks``.

Where the service is and who we are, in the order the AWS tools use:

- endpoint: ``data.s3_endpoint``, else ``AWS_ENDPOINT_URL``, else AWS itself;
- region: ``data.s3_region``, else ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else
  ``us-east-1``;
- credentials: ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (and
  ``AWS_SESSION_TOKEN``), else the ``[default]`` profile of the AWS shared-credentials file
  named by ``data.s3_credentials_file``. They are never logged nor shown by ``forage config``;
- tries per request: ``AWS_MAX_ATTEMPTS``, else 3 (connection errors, 5xx and throttling are
  retried with botocore's jittered backoff).

Opening checks the bucket with one request, so a wrong endpoint, secret or bucket name is one
line at start-up naming the bucket and endpoint, not a failure at the first archive.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path

from forage.archive.locator import DatabaseLocator
from forage.config import Config, DataConfig, Secret
from forage.config.sections import check_s3_endpoint
from forage.errors import ConfigError
from storage.locator import BlockLocator, SQLiteLocator
from storage.objectpacks import ObjectPackedBlockstore
from storage.packs import LOCATOR_FILE
from storage.s3 import S3Objects

DEFAULT_REGION = "us-east-1"
DEFAULT_ATTEMPTS = 3


def s3_endpoint(data: DataConfig, environ: Mapping[str, str]) -> str | None:
    """The S3 endpoint URL (``None``: AWS for the region), checked like every other URL."""
    endpoint = data.s3_endpoint or environ.get("AWS_ENDPOINT_URL") or None
    if endpoint is not None:
        key = "data.s3_endpoint" if data.s3_endpoint else "AWS_ENDPOINT_URL"
        check_s3_endpoint(endpoint, key, data.s3_allow_http)
    return endpoint


def s3_region(data: DataConfig, environ: Mapping[str, str]) -> str:
    return (
        data.s3_region
        or environ.get("AWS_REGION")
        or environ.get("AWS_DEFAULT_REGION")
        or DEFAULT_REGION
    )


def s3_attempts(environ: Mapping[str, str]) -> int:
    raw = environ.get("AWS_MAX_ATTEMPTS")
    if raw is None:
        return DEFAULT_ATTEMPTS
    try:
        attempts = int(raw)
    except ValueError:
        attempts = 0
    if not 1 <= attempts <= 100:
        raise ConfigError("AWS_MAX_ATTEMPTS", f"must be a whole number from 1 to 100, got {raw!r}")
    return attempts


def s3_credentials(
    data: DataConfig, environ: Mapping[str, str]
) -> tuple[Secret, Secret, Secret | None]:
    """Access key, secret and session token, from the environment or the credentials file."""
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    token = environ.get("AWS_SESSION_TOKEN")
    if not (key and secret) and data.s3_credentials_file is not None:
        key, secret, token = _read_credentials_file(data)
    if not (key and secret):
        raise ConfigError(
            "data.blocks",
            f"{data.blocks} needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or data.s3_credentials_file (an AWS credentials file with a [default] profile)",
        )
    return Secret(key), Secret(secret), Secret(token) if token else None


def _read_credentials_file(data: DataConfig) -> tuple[str | None, str | None, str | None]:
    path = data.s3_credentials_file
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as file:  # type: ignore[arg-type]
            parser.read_file(file)
    except OSError as exc:
        raise ConfigError(
            "data.s3_credentials_file", f"cannot read {path}: {exc.strerror}"
        ) from exc
    except configparser.Error as exc:
        raise ConfigError(
            "data.s3_credentials_file", f"{path} is not an AWS credentials file: {exc.message}"
        ) from exc
    if not parser.has_section("default"):
        raise ConfigError("data.s3_credentials_file", f"{path} has no [default] profile")
    profile = parser["default"]
    return (
        profile.get("aws_access_key_id"),
        profile.get("aws_secret_access_key"),
        profile.get("aws_session_token"),
    )


def open_s3_objects(config: Config, environ: Mapping[str, str] | None = None) -> S3Objects:
    """The bucket of ``data.blocks``, checked with one request."""
    data = config.data
    environ = os.environ if environ is None else environ
    bucket, prefix = data.s3_location
    key, secret, token = s3_credentials(data, environ)
    objects = S3Objects(
        bucket,
        prefix,
        endpoint=s3_endpoint(data, environ),
        region=s3_region(data, environ),
        access_key=key.reveal(),
        secret_key=secret.reveal(),
        session_token=token.reveal() if token else None,
        attempts=s3_attempts(environ),
    )
    try:
        objects.check()
    except BaseException:
        objects.close()
        raise
    return objects


def open_locator(config: Config) -> DatabaseLocator:
    """The block locator in the configured database (an engine of its own, a small pool)."""
    import dataclasses

    from forage.db.engine import make_engine

    database = dataclasses.replace(config.database, pool_size=2)
    return DatabaseLocator(make_engine(database))


def open_object_blockstore(
    config: Config, root: os.PathLike[str] | str, environ: Mapping[str, str] | None = None
) -> ObjectPackedBlockstore:
    """The packed blockstore in the configured bucket, staging under ``root``, its locator
    in the database (or, with ``data.locator = "file"``, in SQLite under ``root``: one host)."""
    objects = open_s3_objects(config, environ)
    try:
        if config.data.shared_locator:
            locator: BlockLocator = open_locator(config)
        else:
            os.makedirs(root, exist_ok=True)
            locator = SQLiteLocator(Path(root) / LOCATOR_FILE)
        return ObjectPackedBlockstore(objects, root, locator=locator)
    except BaseException:
        objects.close()
        raise
