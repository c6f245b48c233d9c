"""``forage demo``: the whole system on one machine, with no network, in seconds.

What it does, in order:

1. Starts local registries shaped like npm (a registry with its ``_changes`` replica), PyPI
   (simple, JSON and XML-RPC APIs) and the Go module proxy (index, GOPROXY, checksum
   database), and a Kubo node for pinning: the fakes of :mod:`forage.fakes`, speaking the
   real wire formats on 127.0.0.1 with ports the OS picks.
2. Writes a ``forage.toml`` in a new temporary directory pointing at them (plain ``http``
   allowed, the Kubo node as the pinning backend ``local-kubo``, watcher and pin-check
   intervals of a second), with the SQLite database and blockstore beside it.
3. Starts Forage as ``forage run`` does (:func:`forage.runtime.run.start`): HTTP server, worker,
   scheduler. The scheduler's watchers start each feed at its head, as on a real registry.
4. Publishes :data:`PACKAGES` on the local registries; the watchers see them, import jobs
   record them, archive jobs download, verify and content-address every file, and the pin
   check pins the archives on the Kubo node.
5. When every file is archived and pinned, asks the HTTP API for a batch lookup of
   :data:`KEYS` (both key spellings) and hands the answer, the web page's URL and the
   config's path to ``on_ready``; then stops (``once``) or serves until SIGINT/SIGTERM.

Nothing leaves 127.0.0.1, and the temporary directory is removed when the demo ends.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from forage.config import Config, load_config
from forage.db.models import Archive, ArchiveStatus, FeedCursor, JobRecord, JobState, Pin, PinStatus
from forage.errors import ForageError
from forage.fakes.golang import GoEndpoints, GoFake
from forage.fakes.kubo import FakeKubo
from forage.fakes.npm import FakeNpmRegistry
from forage.fakes.pypi import FakePyPI
from forage.fakes.server import start_fake
from forage.jobs.worker import install_signal_handlers
from forage.runtime.run import Running, start

log = logging.getLogger(__name__)

#: What the demo publishes: (ecosystem, name, version).
PACKAGES: tuple[tuple[str, str, str], ...] = (
    ("npm", "left-pad", "1.3.0"),
    ("npm", "@demo/hello", "1.0.0"),
    ("npm", "@demo/hello", "1.1.0"),
    ("pypi", "tinyproj", "0.1.0"),
    ("golang", "example.com/hello", "v1.0.0"),
)
#: Files those releases hold: one tarball per npm version, a wheel and an sdist on PyPI, one
#: module zip on the Go proxy.
EXPECTED_FILES = 6
#: The batch lookup the demo prints, in both key spellings (purl and Forage key).
KEYS: tuple[str, ...] = (
    "pkg:npm/left-pad@1.3.0",
    "npm:@demo/hello:1.1.0",
    "pkg:pypi/tinyproj@0.1.0",
    "go:example.com/hello:v1.0.0",
)
#: The package whose web page the demo points at.
PAGE = "/packages/npm/left-pad"
PIN_BACKEND = "local-kubo"
FEEDS = ("npm", "pypi", "golang")


class DemoError(ForageError):
    """The demo did not reach its end state in time; the message says what was missing."""


@dataclass(frozen=True, slots=True)
class DemoReport:
    """What the demo shows once everything is archived and pinned."""

    url: str
    page_url: str
    config_path: Path
    lookup: Mapping[str, Any]
    archived: int
    pinned: int
    seconds: float


@dataclass(frozen=True, slots=True)
class _Fakes:
    npm: FakeNpmRegistry
    pypi: FakePyPI
    golang: GoFake
    kubo: FakeKubo
    urls: Mapping[str, str]


@asynccontextmanager
async def _serve_fakes() -> AsyncIterator[_Fakes]:
    npm, pypi, golang, kubo = FakeNpmRegistry(), FakePyPI(), GoFake(), FakeKubo()
    async with AsyncExitStack() as stack:
        urls = {}
        for name, app in (
            ("npm", npm.make_app()),
            ("pypi", pypi.make_app()),
            ("golang", golang.app()),
            ("kubo", kubo.app()),
        ):
            server = await start_fake(app)
            stack.push_async_callback(server.close)
            urls[name] = server.url
        yield _Fakes(npm, pypi, golang, kubo, urls)


def demo_config(directory: Path, urls: Mapping[str, str]) -> Path:
    """Write the demo's ``forage.toml`` into ``directory``, pointing at the fakes' ``urls``."""
    go = GoEndpoints.at(urls["golang"])
    text = f"""\
# Written by `forage demo`: every upstream is a local fake on 127.0.0.1.
[data]
dir = "data"

[jobs]
poll_interval = 0.1
backoff_base = 1
backoff_cap = 5

[schedule]
leader_poll = 0.5
pin_check = 1
build_pieces = 0
stats = 0
reverify = 0

[pinning]
check_interval = 1

[pinning.backends.{PIN_BACKEND}]
type = "kubo"
url = "{urls["kubo"]}"

[registries.npm]
registry_url = "{urls["npm"]}"
replicate_url = "{urls["npm"]}/registry"
allow_http = true
interval = 1

[registries.pypi]
index_url = "{urls["pypi"]}/simple"
json_url = "{urls["pypi"]}/pypi"
xmlrpc_url = "{urls["pypi"]}/pypi"
allow_http = true
interval = 1

[registries.golang]
index_url = "{go.index_url}"
proxy_url = "{go.proxy_url}"
sumdb_url = "{go.sumdb_url}"
allow_http = true
interval = 1
"""
    path = directory / "forage.toml"
    path.write_text(text, encoding="utf-8")
    return path


def publish(fakes: _Fakes) -> None:
    """Publish :data:`PACKAGES` on the fakes (after the watchers hold their cursors)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for ecosystem, name, version in PACKAGES:
        if ecosystem == "npm":
            fakes.npm.publish(name, version, files={"index.js": f"// {name} {version}\n".encode()})
        elif ecosystem == "pypi":
            fakes.pypi.release(name, version)
        else:
            fakes.golang.add_version(
                name,
                version,
                files={"go.mod": f"module {name}\n\ngo 1.21\n", "hello.go": "package hello\n"},
                feed_at=now,
            )


def _count(running: Running, query: Any) -> int:
    with running.sessionmaker() as session:
        return int(session.execute(query).scalar_one())


def _progress(running: Running) -> tuple[int, int]:
    archived = _count(
        running,
        sa.select(sa.func.count()).where(Archive.status == ArchiveStatus.ARCHIVED),
    )
    pinned = _count(
        running,
        sa.select(sa.func.count()).where(
            Pin.backend == PIN_BACKEND, Pin.status == PinStatus.PINNED
        ),
    )
    return archived, pinned


def _problems(running: Running) -> str:
    with running.sessionmaker() as session:
        dead = session.execute(
            sa.select(JobRecord.kind, JobRecord.last_error).where(JobRecord.state == JobState.DEAD)
        ).all()
    if not dead:
        return "no job failed; the machine may be too slow"
    return "; ".join(f"{kind} job: {error}" for kind, error in dead[:5])


async def _until(check: Callable[[], Any], *, deadline: float, what: str, running: Running) -> Any:
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            problems = await asyncio.to_thread(_problems, running)
            raise DemoError(f"gave up waiting for {what}: {problems}")
        if running.stopping.is_set():
            raise DemoError(f"stopped while waiting for {what}")
        await asyncio.sleep(0.1)


async def _lookup(url: str) -> Mapping[str, Any]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(f"{url}/api/v1/lookup", json={"keys": list(KEYS)})
        response.raise_for_status()
        answer: Mapping[str, Any] = response.json()
        return answer


async def run_demo(
    *,
    once: bool,
    host: str = "127.0.0.1",
    port: int = 0,
    within: float = 120.0,
    progress: Callable[[str], None] | None = None,
    on_ready: Callable[[DemoReport], Awaitable[None] | None] | None = None,
) -> DemoReport:
    """Run the demo (see the module docstring); return its report once it ends.

    ``progress`` receives one line per step; ``on_ready`` (a function or a coroutine
    function) the report as soon as it exists, while the server still runs. Raises
    :class:`DemoError` if the pipeline does not finish within ``within`` seconds.
    """
    say = progress or (lambda line: log.info("%s", line))
    started = time.monotonic()
    deadline = started + within
    with tempfile.TemporaryDirectory(prefix="forage-demo-") as temporary:
        directory = Path(temporary)
        async with _serve_fakes() as fakes:
            say(
                "local registries: npm {npm}, PyPI {pypi}, Go {golang}; Kubo {kubo}".format(
                    **fakes.urls
                )
            )
            config_path = demo_config(directory, fakes.urls)
            config: Config = load_config(config_path, environ={})
            async with start(config, host=host, port=port) as running:
                assert running.url is not None
                say(f"forage running at {running.url} (config {config_path})")
                await _until(
                    lambda: (
                        _count(
                            running,
                            sa.select(sa.func.count()).where(FeedCursor.feed.in_(FEEDS)),
                        )
                        == len(FEEDS)
                    ),
                    deadline=deadline,
                    what="the watchers to start",
                    running=running,
                )
                publish(fakes)
                say(
                    f"published {len(PACKAGES)} releases ({EXPECTED_FILES} files); "
                    "watching, importing, archiving, pinning..."
                )
                archived, pinned = await _until(
                    lambda: (lambda a_p: a_p if min(a_p) >= EXPECTED_FILES else None)(
                        _progress(running)
                    ),
                    deadline=deadline,
                    what=f"{EXPECTED_FILES} files archived and pinned",
                    running=running,
                )
                say(f"{archived} files archived and {pinned} pinned on {PIN_BACKEND}")
                report = DemoReport(
                    url=running.url,
                    page_url=running.url + PAGE,
                    config_path=config_path,
                    lookup=await _lookup(running.url),
                    archived=archived,
                    pinned=pinned,
                    seconds=time.monotonic() - started,
                )
                if on_ready is not None:
                    shown = on_ready(report)
                    if inspect.isawaitable(shown):
                        await shown
                if not once:
                    remove = install_signal_handlers(running.stop, running.abort)
                    try:
                        await running.wait()
                    finally:
                        remove()
    return report
