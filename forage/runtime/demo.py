"""``forage demo``: the whole system on one machine, with no network, in seconds.

What it does, in order:

1. Starts a local registry for every registered ecosystem (npm with its ``_changes``
   replica, PyPI's simple, JSON and XML-RPC APIs, the Go module index, proxy and checksum
   database, crates.io's sparse index, RubyGems' compact index, Packagist, a Maven
   repository with its index, and whatever home is added next) and a Kubo node for pinning:
   each ecosystem's fake (the ``fake`` module of its home in ``indexers``) and
   :mod:`forage.fakes.kubo`, speaking the real wire formats on 127.0.0.1 with ports the OS
   picks.
2. Writes a ``forage.toml`` in a new temporary directory pointing at them (plain ``http``
   allowed, the Kubo node as the pinning backend ``local-kubo``, watcher and pin-check
   intervals of a second), with the SQLite database and blockstore beside it.
3. Starts Forage as ``forage run`` does (:func:`forage.runtime.run.start`): HTTP server, worker,
   scheduler. The scheduler's watchers start each feed at its head, as on a real registry.
4. Publishes :data:`PACKAGES` on the local registries; the watchers see them, import jobs
   record them, archive jobs download, verify and content-address every file, and the pin
   check pins the archives on the Kubo node.
5. When every release is recorded and each of its files archived and pinned, asks the HTTP
   API for a batch lookup of
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
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from forage.config import Config, load_config
from forage.db.models import (
    Archive,
    ArchiveStatus,
    Artifact,
    FeedCursor,
    JobRecord,
    JobState,
    Pin,
    PinStatus,
    Version,
)
from forage.errors import ForageError
from forage.fakes.kubo import FakeKubo
from forage.jobs.worker import install_signal_handlers
from forage.lookup.keys import Key
from forage.runtime.run import Running, start
from indexers import ECOSYSTEMS, FakeRegistry
from indexers.fakeserver import start_fake

log = logging.getLogger(__name__)

#: Releases chosen by hand to show key spellings (a scoped npm name, a Go module path).
_CHOSEN: tuple[tuple[str, str, str], ...] = (
    ("npm", "left-pad", "1.3.0"),
    ("npm", "@demo/hello", "1.0.0"),
    ("npm", "@demo/hello", "1.1.0"),
    ("pypi", "tinyproj", "0.1.0"),
    ("golang", "example.com/hello", "v1.0.0"),
)


def _sample(ecosystem: str) -> tuple[str, str, str]:
    """A release of an ecosystem the demo has no chosen one for: its fake's first example
    name (canonical spelling) at its first sample version."""
    fake = ECOSYSTEMS[ecosystem].fake()
    return ecosystem, fake.NAME_EXAMPLES[0][1], fake.SAMPLE_VERSIONS[0]


#: What the demo publishes: (ecosystem, name, version), one release at least per ecosystem.
PACKAGES: tuple[tuple[str, str, str], ...] = _CHOSEN + tuple(
    _sample(name) for name in ECOSYSTEMS if name not in {e for e, _, _ in _CHOSEN}
)
#: The batch lookup the demo prints, in both key spellings (purl and Forage key): every
#: release but ``@demo/hello`` 1.0.0.
KEYS: tuple[str, ...] = (
    "pkg:npm/left-pad@1.3.0",
    "npm:@demo/hello:1.1.0",
    "pkg:pypi/tinyproj@0.1.0",
    "go:example.com/hello:v1.0.0",
    *(Key(e, n, v).purl() for e, n, v in PACKAGES[len(_CHOSEN) :]),
)
#: The package whose web page the demo points at.
PAGE = "/packages/npm/left-pad"
PIN_BACKEND = "local-kubo"
#: The registries the demo runs: every one :data:`PACKAGES` names, each as its loopback fake.
FEEDS = tuple(dict.fromkeys(ecosystem for ecosystem, _, _ in PACKAGES))


class DemoError(ForageError):
    """The demo did not reach its end state in time; the message says what was missing."""


@dataclass(frozen=True, slots=True)
class DemoReport:
    """What the demo shows once everything is archived and pinned."""

    url: str
    page_url: str
    config_path: Path
    lookup: Mapping[str, Any]
    #: Files the published releases hold (the fakes decide: PyPI a wheel and an sdist, Maven
    #: a POM and a jar, one file elsewhere), each archived and pinned.
    files: int
    archived: int
    pinned: int
    seconds: float


@dataclass(frozen=True, slots=True)
class _Fakes:
    registries: Mapping[str, FakeRegistry]
    kubo: FakeKubo
    urls: Mapping[str, str]


@asynccontextmanager
async def _serve_fakes() -> AsyncIterator[_Fakes]:
    registries = {name: ECOSYSTEMS[name].fake() for name in FEEDS}
    kubo = FakeKubo()
    apps = [(name, fake.make_app()) for name, fake in registries.items()]
    async with AsyncExitStack() as stack:
        urls = {}
        for name, app in (*apps, ("kubo", kubo.app())):
            server = await start_fake(app)
            stack.push_async_callback(server.close)
            urls[name] = server.url
        yield _Fakes(registries, kubo, urls)


def _registry_tables(fakes: _Fakes) -> str:
    tables = []
    for name, fake in fakes.registries.items():
        endpoints = fake.config_endpoints(fakes.urls[name])
        lines = [f"[registries.{name}]", *(f'{k} = "{url}"' for k, url in endpoints.items())]
        lines += ["allow_http = true", "interval = 1"]
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)


def demo_config(directory: Path, fakes: _Fakes) -> Path:
    """Write the demo's ``forage.toml`` into ``directory``, pointing at the ``fakes``."""
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
url = "{fakes.urls["kubo"]}"

{_registry_tables(fakes)}"""
    path = directory / "forage.toml"
    path.write_text(text, encoding="utf-8")
    return path


def publish(fakes: _Fakes) -> None:
    """Publish :data:`PACKAGES` on the fakes (after the watchers hold their cursors)."""
    for ecosystem, name, version in PACKAGES:
        fakes.registries[ecosystem].publish_release(name, version)


def _count(running: Running, query: Any) -> int:
    with running.sessionmaker() as session:
        return int(session.execute(query).scalar_one())


def _progress(running: Running) -> tuple[int, int, int] | None:
    """``(files, archived, pinned)`` once every release is recorded (with its files, in the
    same transaction) and every file archived and pinned; ``None`` before."""
    versions = _count(running, sa.select(sa.func.count()).select_from(Version))
    files = _count(running, sa.select(sa.func.count()).select_from(Artifact))
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
    done = versions >= len(PACKAGES) and files and archived == files and pinned == files
    return (files, archived, pinned) if done else None


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
            shown = ", ".join(f"{ECOSYSTEMS[name].title} {fakes.urls[name]}" for name in FEEDS)
            say(f"local registries: {shown}; Kubo {fakes.urls['kubo']}")
            config_path = demo_config(directory, fakes)
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
                    f"published {len(PACKAGES)} releases on {len(FEEDS)} registries; "
                    "watching, importing, archiving, pinning..."
                )
                files, archived, pinned = await _until(
                    lambda: _progress(running),
                    deadline=deadline,
                    what=f"{len(PACKAGES)} releases recorded, their files archived and pinned",
                    running=running,
                )
                say(f"{archived} files archived and {pinned} pinned on {PIN_BACKEND}")
                report = DemoReport(
                    url=running.url,
                    page_url=running.url + PAGE,
                    config_path=config_path,
                    lookup=await _lookup(running.url),
                    files=files,
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
