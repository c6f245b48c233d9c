"""Observability: ``/healthz``, Prometheus ``/metrics`` and structured log lines.

What is shown: the health check answers 200 only while the database answers and the
blockstore takes writes, naming the failing part otherwise (503); ``/metrics`` reports the
numbers the database holds (jobs by state, archive bytes, feed lag) and request latency by
route, lookups in their own histogram; log lines in the JSON and logfmt formats are one line
per event and carry the ids of the job being run.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker, utcnow
from forage.db.models import ArchiveStatus, FeedCursor
from forage.jobs import queue as jobs
from forage.jobs.queue import Job
from forage.logs import (
    ContextFilter,
    JsonFormatter,
    LogfmtFormatter,
    TextFormatter,
    log_context,
    with_job_context,
)
from forage.server.app import make_app
from storage import FilesystemBlockstore
from tests.factories import make_archive, make_artifact, make_package, make_version


def config_for(tmp_path: Path, url: str) -> Config:
    path = tmp_path / "forage.toml"
    path.write_text(f'[database]\nurl = "{url}"\n\n[data]\ndir = "{tmp_path / "data"}"\n')
    return load_config(path, environ={})


@asynccontextmanager
async def client_for(config: Config, *, engine: Any = None) -> AsyncIterator[TestClient[Any, Any]]:
    engine = engine or make_engine(config.database)
    store = FilesystemBlockstore(config.data.dir / "blocks", durable=False)
    app = make_app(config, sessionmaker=make_sessionmaker(engine), blockstore=store)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        engine.dispose()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# -- /healthz ----------------------------------------------------------------------------------


async def test_healthz_names_the_part_that_fails(migrated_url: str, tmp_path: Path) -> None:
    config = config_for(tmp_path, migrated_url)
    async with client_for(config) as client:
        response = await client.get("/healthz")
        body = await response.json()
        assert response.status == 200
        assert body["status"] == "ok"
        assert body["checks"]["database"]["ok"] and body["checks"]["blockstore"]["ok"]
        assert response.headers["Cache-Control"] == "no-store"
        # The probe leaves nothing behind in the blockstore.
        assert not list((tmp_path / "data" / "blocks").glob(".healthz-*"))

        # The blockstore's directory disappears (an unmounted disk): 503, blockstore named.
        shutil.rmtree(tmp_path / "data" / "blocks")
        response = await client.get("/healthz")
        body = await response.json()
        assert response.status == 503 and body["status"] == "unavailable"
        assert body["checks"]["database"]["ok"] is True
        assert body["checks"]["blockstore"] == {"ok": False, "error": "FileNotFoundError"}


async def test_healthz_reports_an_unreachable_database(tmp_path: Path) -> None:
    config = config_for(tmp_path, f"sqlite:///{tmp_path / 'data' / 'forage.db'}")
    (tmp_path / "not-a-database").mkdir()
    # SQLite cannot open a directory: every query fails as with a database that is down.
    engine = make_engine(f"sqlite:///{tmp_path / 'not-a-database'}")
    async with client_for(config, engine=engine) as client:
        response = await client.get("/healthz")
        body = await response.json()
    assert response.status == 503
    assert body["checks"]["database"] == {"ok": False, "error": "OperationalError"}
    assert body["checks"]["blockstore"]["ok"] is True


# -- /metrics ----------------------------------------------------------------------------------


async def test_metrics_report_what_the_database_holds(migrated_url: str, tmp_path: Path) -> None:
    config = config_for(tmp_path, migrated_url)
    engine = make_engine(config.database)
    with make_sessionmaker(engine).begin() as session:
        npm = make_package(session, ecosystem="npm")
        make_package(session, ecosystem="pypi")
        sizes = []
        for _ in range(3):
            archive = make_archive(
                session, artifact=make_artifact(session, version=make_version(session, package=npm))
            )
            sizes.append(archive.size)
        make_archive(session, status=ArchiveStatus.FAILED)
        make_artifact(session)  # never archived
        for kind in ("archive", "archive", "import"):
            jobs.enqueue(session, kind, {})
        dead = jobs.enqueue(session, "pin", {}, max_attempts=1)
        assert (
            jobs.claim(session, owner="w", limit=1, policy=jobs.RetryPolicy(), kinds=["pin"])[0].id
            == dead
        )
        jobs.fail(session, dead, owner="w", error="gone", policy=jobs.RetryPolicy())
        session.add(
            FeedCursor(
                feed="npm",
                cursor={"seq": 10},
                caught_up_at=utcnow() - timedelta(seconds=125),
                updated_at=utcnow() - timedelta(seconds=90),
            )
        )
    async with client_for(config, engine=engine) as client:
        response = await client.get("/metrics")
        text = await response.text()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    values = samples(text)
    assert values[("forage_database_up", ())] == 1
    assert values[("forage_archive_bytes", ())] == sum(sizes)
    assert values[("forage_archives", (("status", "archived"),))] == 3
    assert values[("forage_archives", (("status", "failed"),))] == 1
    assert values[("forage_artifacts", ())] == 5
    # The failed archive and the lone artifact bring their own npm packages.
    assert values[("forage_packages", (("ecosystem", "npm"),))] == 3
    assert values[("forage_packages", (("ecosystem", "pypi"),))] == 1
    assert values[("forage_jobs", (("kind", "archive"), ("state", "queued")))] == 2
    assert values[("forage_jobs", (("kind", "import"), ("state", "queued")))] == 1
    assert values[("forage_jobs", (("kind", "pin"), ("state", "dead")))] == 1
    assert values[("forage_jobs", (("kind", "pin"), ("state", "queued")))] == 0
    # Not at the head: the lag runs from the last time the watcher was there.
    assert 124 <= values[("forage_feed_lag_seconds", (("registry", "npm"),))] < 185
    assert values[("forage_feed_cursor", (("registry", "npm"),))] == 10
    assert 89 <= values[("forage_feed_age_seconds", (("registry", "npm"),))] < 150


async def test_request_latency_is_recorded_by_route_with_lookups_apart(
    migrated_url: str, tmp_path: Path
) -> None:
    config = config_for(tmp_path, migrated_url)
    async with client_for(config) as client:
        lookup = await client.post("/api/v1/lookup", json={"keys": ["pkg:npm/left-pad@1.3.0"]})
        assert lookup.status == 200
        assert (await client.get("/api/v1/cids/not-a-cid")).status == 400
        assert (await client.get("/no/such/page")).status == 404
        values = samples(await (await client.get("/metrics")).text())
    lookup_route = (("route", "/api/v1/lookup"),)
    assert values[("forage_lookup_duration_seconds_count", lookup_route)] == 1
    assert (
        values[
            ("forage_http_requests_total", (("method", "POST"), *lookup_route, ("status", "200")))
        ]
        == 1
    )
    cid_route = (("method", "GET"), ("route", "/api/v1/cids/{cid}"), ("status", "400"))
    assert values[("forage_http_requests_total", cid_route)] == 1
    # Paths that match no route share one label, so label values stay bounded.
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert values[("forage_http_requests_total", unmatched)] == 1
    assert (
        "forage_lookup_duration_seconds_count",
        (("route", "/api/v1/cids/{cid}"),),
    ) not in values


# -- structured logs -----------------------------------------------------------------------------


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"forage.test_ops.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


async def test_json_lines_carry_the_ids_of_the_job_being_run() -> None:
    logger, stream = capture(JsonFormatter())

    async def handler(ctx: Any, job: Job) -> None:
        logger.info("recorded %s", "left-pad", extra={"fields": {"new_versions": 2}})
        try:
            raise ValueError("bad\nbytes")
        except ValueError:
            logger.exception("archive failed")

    job = Job(
        id=42,
        kind="import",
        payload={"ecosystem": "npm", "name": "left-pad", "artifact_id": 7},
        attempt=2,
        max_attempts=10,
        dedup_key=None,
        lease_owner="w",
        lease_expires_at=utcnow(),
        created_at=utcnow(),
    )
    await with_job_context(handler)(None, job)
    logger.info("after the job")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # the traceback stays on its event's line
    first, second, third = (json.loads(line) for line in lines)
    assert first["msg"] == "recorded left-pad" and first["level"] == "info"
    assert (first["job"], first["kind"], first["attempt"]) == (42, "import", 2)
    assert (first["package"], first["artifact"], first["new_versions"]) == ("npm/left-pad", 7, 2)
    assert first["ts"].endswith("Z")
    assert second["job"] == 42 and "ValueError: bad\nbytes" in second["error"]
    assert "job" not in third  # the context ended with the job


def test_logfmt_quotes_what_needs_quoting_and_text_appends_fields() -> None:
    logger, stream = capture(LogfmtFormatter())
    with log_context(task="stats", scheduler="host:1:ab"):
        logger.warning('say "hi" to %s', "you all", extra={"fields": {"n": 3, "ok": True}})
    line = stream.getvalue().strip()
    assert line.startswith("ts=") and "\n" not in line
    assert " level=warning logger=forage.test_ops." in line
    assert 'msg="say \\"hi\\" to you all" task=stats scheduler=host:1:ab n=3 ok=true' in line

    logger, stream = capture(TextFormatter())
    with log_context(job=5):
        logger.info("done")
    assert stream.getvalue().rstrip().endswith("INFO " + logger.name + " done [job=5]")


def test_the_cli_logs_json_when_asked(tmp_path: Path) -> None:
    config = tmp_path / "forage.toml"
    config.write_text('[logging]\nformat = "json"\n')  # the embedded database, made on first use
    result = subprocess.run(
        [sys.executable, "-m", "forage", "-c", str(config), "scheduler", "--run", "prune_jobs"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    [ran] = [e for e in events if e["msg"].startswith("task prune_jobs ran")]
    assert (ran["task"], ran["pruned"], ran["logger"]) == ("prune_jobs", 0, "forage.jobs.scheduler")
    # --log-format wins over the file.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "forage",
            "-c",
            str(config),
            "--log-format",
            "logfmt",
            "scheduler",
            "--run",
            "prune_jobs",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert any(
        line.startswith("ts=") and " task=prune_jobs " in line and line.endswith(" pruned=0")
        for line in result.stderr.splitlines()
    )


@pytest.mark.parametrize("fmt", ["text", "logfmt", "json"])
def test_every_format_is_accepted_by_the_configuration(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "forage.toml"
    path.write_text(f'[logging]\nformat = "{fmt}"\n')
    assert load_config(path, environ={}).logging.format == fmt
