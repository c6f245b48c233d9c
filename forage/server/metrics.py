"""What Forage counts: a snapshot of the index for logs and Prometheus metrics.

:func:`snapshot` reads, in one transaction, the numbers an operator watches: jobs by kind
and state, archives by status and their bytes, pins by backend and status, and per registry
its feed (head, cursor, lag in seconds) and its packages, versions and files known,
archived, pending, failed and removed, as :func:`forage.index.status.registry_status` computes
them for ``forage status`` and ``/api/v1/stats``. The scheduler's ``stats`` task logs it;
``GET /metrics``
(:mod:`forage.server.ops`) exports it through :class:`IndexCollector`, which queries at
scrape time (cached for a few seconds) so every process serving HTTP reports the same
numbers whatever process did the work.

:class:`Metrics` is one process's Prometheus registry (no global registry, so tests and
several apps in one process never collide): the index collector, process metrics, and
request latency histograms fed by the HTTP middleware, lookup latency among them. Under
``forage serve --processes N`` it is prometheus_client's multiprocess mode instead: the
request counts and latencies are the sums over every server process (those that died
included), and there are no process metrics.
https://prometheus.github.io/client_python/multiprocess/
Exposition format: https://prometheus.io/docs/instrumenting/exposition_formats/ (written by
``prometheus_client``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from forage.db.engine import utcnow
from forage.db.models import (
    Archive,
    ArchiveStatus,
    Artifact,
    JobRecord,
    JobState,
    Pin,
)
from forage.index.status import (
    FILE_STATES,
    IMPORT_STATES,
    ROW_STATES,
    RegistryStatus,
    registry_status,
)

log = logging.getLogger(__name__)

#: Set (by ``forage serve --processes``) before prometheus_client is imported, it makes
#: every process record its counters and histograms in files of that directory.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Latency buckets (seconds) for HTTP requests and lookups: 1 ms to 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The index's numbers at ``taken_at``."""

    taken_at: datetime
    artifacts: int
    archives: Mapping[str, int]
    archive_bytes: int
    pins: Mapping[tuple[str, str], int]
    jobs: Mapping[tuple[str, str], int]
    registries: Mapping[str, RegistryStatus]

    @property
    def packages(self) -> dict[str, int]:
        """Packages known per registry."""
        return {name: row.packages["known"] for name, row in self.registries.items()}

    def summary(self) -> dict[str, Any]:
        """Flat totals for one log line (``jobs_queued``, ``archives_archived``, ...)."""
        out: dict[str, Any] = {
            "packages": sum(self.packages.values()),
            "artifacts": self.artifacts,
            "archive_bytes": self.archive_bytes,
        }
        for status in ArchiveStatus:
            out[f"archives_{status.value}"] = self.archives.get(status.value, 0)
        for state in JobState:
            out[f"jobs_{state.value}"] = sum(
                n for (_kind, s), n in self.jobs.items() if s == state.value
            )
        out["pins_pinned"] = sum(n for (_b, s), n in self.pins.items() if s == "pinned")
        for registry, row in self.registries.items():
            out[f"files_pending_{registry}"] = row.files["pending"]
            if row.feed is not None and row.feed.lag_seconds is not None:
                out[f"lag_seconds_{registry}"] = row.feed.lag_seconds
        return out


def snapshot(session: Session) -> Snapshot:
    """Count what the index holds now (a handful of aggregate queries)."""
    taken_at = utcnow()
    artifacts = session.execute(sa.select(sa.func.count()).select_from(Artifact)).scalar_one()
    archives = {
        str(getattr(status, "value", status)): int(n)
        for status, n in session.execute(
            sa.select(Archive.status, sa.func.count()).group_by(Archive.status)
        )
    }
    archive_bytes = session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(Archive.size), 0)).where(
            Archive.status == ArchiveStatus.ARCHIVED
        )
    ).scalar_one()
    pins = {
        (str(backend), str(getattr(status, "value", status))): int(n)
        for backend, status, n in session.execute(
            sa.select(Pin.backend, Pin.status, sa.func.count()).group_by(Pin.backend, Pin.status)
        )
    }
    jobs = {
        (str(kind), str(getattr(state, "value", state))): int(n)
        for kind, state, n in session.execute(
            sa.select(JobRecord.kind, JobRecord.state, sa.func.count()).group_by(
                JobRecord.kind, JobRecord.state
            )
        )
    }
    return Snapshot(
        taken_at=taken_at,
        artifacts=int(artifacts),
        archives=archives,
        archive_bytes=int(archive_bytes),
        pins=pins,
        jobs=jobs,
        registries=registry_status(session, now=taken_at),
    )


class IndexCollector(Collector):
    """Exports :func:`snapshot` as gauges, querying at most every ``max_age`` seconds.

    When the database cannot be read, only ``forage_database_up 0`` is exported: a scrape
    never fails because the database does.
    """

    def __init__(self, sessionmaker: sessionmaker[Session], *, max_age: float = 5.0) -> None:
        self.sessionmaker = sessionmaker
        self.max_age = max_age
        self._lock = threading.Lock()
        self._cached: tuple[float, Snapshot] | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def _snapshot(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.max_age:
                return self._cached[1]
            with self.sessionmaker() as session:
                taken = snapshot(session)
            self._cached = (now, taken)
            return taken

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("forage_database_up", "Whether the last index query succeeded")
        try:
            snap = self._snapshot()
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the index: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _gauge(
            "forage_packages", "Packages known, per registry", ["ecosystem"], snap.packages
        )
        artifacts = GaugeMetricFamily("forage_artifacts", "Artifacts (files) known")
        artifacts.add_metric([], snap.artifacts)
        yield artifacts
        archives = {status.value: snap.archives.get(status.value, 0) for status in ArchiveStatus}
        yield _gauge("forage_archives", "Archives by status", ["status"], archives)
        archived = GaugeMetricFamily(
            "forage_archive_bytes", "Bytes of archived artifacts (sum of archive sizes)"
        )
        archived.add_metric([], snap.archive_bytes)
        yield archived
        yield _gauge("forage_pins", "Pins by backend and status", ["backend", "status"], snap.pins)
        kinds = sorted({kind for kind, _state in snap.jobs})
        jobs = {(k, s.value): snap.jobs.get((k, s.value), 0) for k in kinds for s in JobState}
        yield _gauge("forage_jobs", "Jobs by kind and state", ["kind", "state"], jobs)
        yield from _registry_gauges(snap)


def _registry_gauges(snap: Snapshot) -> Iterator[Metric]:
    """Per registry: counts by state, and the feed's lag, head, cursor and last write."""
    rows = snap.registries
    for table, states, what in (
        ("packages", ROW_STATES, "Packages"),
        ("versions", ROW_STATES, "Versions"),
        ("files", FILE_STATES, "Files (artifacts)"),
        ("imports", IMPORT_STATES, "Import jobs"),
    ):
        yield _gauge(
            f"forage_registry_{table}",
            f"{what} per registry by state, as forage status counts them (known is the total)",
            ["registry", "state"],
            {(name, s): getattr(row, table)[s] for name, row in rows.items() for s in states},
        )
    lag = GaugeMetricFamily(
        "forage_feed_lag_seconds",
        "Upper bound on how long the oldest unread feed entry has waited; 0 while the last "
        "page reached the head",
        labels=["registry"],
    )
    at_head = GaugeMetricFamily(
        "forage_feed_at_head", "1 while the last page reached the head", labels=["registry"]
    )
    head = GaugeMetricFamily(
        "forage_feed_head",
        "The feed's newest position as last reported (seq, serial, or Unix time of a timestamp)",
        labels=["registry"],
    )
    cursor = GaugeMetricFamily(
        "forage_feed_cursor",
        "The position each watcher's cursor stands at, in the head's units",
        labels=["registry"],
    )
    age = GaugeMetricFamily(
        "forage_feed_age_seconds",
        "Seconds since each watcher last wrote its cursor",
        labels=["registry"],
    )
    for registry, row in rows.items():
        feed = row.feed
        if feed is None:
            continue
        if feed.lag_seconds is not None:
            lag.add_metric([registry], feed.lag_seconds)
        at_head.add_metric([registry], 1 if feed.at_head else 0)
        for family, position in ((head, feed.head), (cursor, feed.position)):
            number = _position_number(position)
            if number is not None:
                family.add_metric([registry], number)
        age.add_metric([registry], max(0.0, (snap.taken_at - feed.updated_at).total_seconds()))
    yield from (lag, at_head, head, cursor, age)


def _position_number(position: Any) -> float | None:
    """A feed position as a gauge value: a number as is, a timestamp as Unix time."""
    if isinstance(position, bool):
        return None
    if isinstance(position, int | float):
        return float(position)
    if isinstance(position, str):
        try:
            return datetime.fromisoformat(position).timestamp()
        except ValueError:
            return None
    return None


def _gauge(
    name: str, documentation: str, labels: list[str], values: Mapping[Any, int]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


class Metrics:
    """One process's metrics: the index gauges, process metrics, and request latencies."""

    def __init__(self, sessionmaker: sessionmaker[Session], *, max_age: float = 5.0) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(IndexCollector(sessionmaker, max_age=max_age))
        own: CollectorRegistry | None = self.registry
        if MULTIPROCESS_ENV in os.environ:
            # Several server processes: each records into files of that directory and the
            # exposition sums them; one process's CPU and memory would misrepresent the rest.
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            own = None
        else:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "forage_http_requests",
            "HTTP requests answered, by route, method and status",
            ["route", "method", "status"],
            registry=own,
        )
        self.request_seconds = Histogram(
            "forage_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.lookup_seconds = Histogram(
            "forage_lookup_duration_seconds",
            "Time to answer a lookup request (batch, lockfile or legacy), by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )

    def observe_request(
        self, *, route: str, method: str, status: int, seconds: float, lookup: bool
    ) -> None:
        """Record one answered request."""
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)
        if lookup:
            self.lookup_seconds.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (queries the database: call in a thread)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
