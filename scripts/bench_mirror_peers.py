"""verdaccio and devpi-server for ``bench_mirror.py``: installed, primed from a loopback fake,
run with their upstream down and offline.

Each peer is installed once into ``<scratch>`` (``npm install --prefix <scratch>/verdaccio
verdaccio@6``; ``python3 -m venv <scratch>/devpi`` + ``pip install devpi-server``: the only
network the benchmark uses, and only when the folder lacks them) and reused afterwards. A
run gets the same packages Forage holds by proxying them once from the project's loopback fakes
(:class:`indexers.npm.fake.FakeNpmRegistry`, :class:`indexers.pypi.fake.FakePyPI`) through the
peer's own pull-through cache; then the fake is stopped, so "upstream down" is a connection
refused on the peer's configured upstream. "Offline" restarts the peer with its own offline
setting: devpi ``--offline-mode``; verdaccio has none for reads, so its packages are served with
no ``proxy`` (no uplink is ever asked). Logging is set to warnings in both, as Forage logs no
request either. A peer that cannot be installed raises :class:`PeerUnavailable`, which the
report records instead of figures.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PEERS = ("verdaccio", "devpi")
INSTALL_TIMEOUT = 600


class PeerUnavailable(RuntimeError):
    """A peer could not be installed or started; the message says why."""


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _install(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerUnavailable(f"installing {what} failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PeerUnavailable(f"installing {what} failed: {' / '.join(tail)}")


def install_verdaccio(scratch: Path) -> tuple[list[str], str]:
    """The command that runs verdaccio 6 from ``scratch`` (installed if missing), and its
    version."""
    prefix = scratch / "verdaccio"
    entry = prefix / "node_modules" / "verdaccio" / "bin" / "verdaccio"
    if not entry.exists():
        _install(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), "verdaccio@6"],
            "verdaccio",
        )
    meta = json.loads((entry.parent.parent / "package.json").read_text())
    return ["node", str(entry)], str(meta["version"])


def install_devpi(scratch: Path) -> tuple[Path, str]:
    """The bin directory of a venv holding devpi-server (installed if missing), and its
    version."""
    venv = scratch / "devpi"
    bin_dir = venv / "bin"
    if not (bin_dir / "devpi-server").exists():
        _install([sys.executable, "-m", "venv", str(venv)], "a venv for devpi-server")
        _install([str(bin_dir / "pip"), "install", "-q", "devpi-server"], "devpi-server")
    done = subprocess.run(
        [str(bin_dir / "devpi-server"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    return bin_dir, (done.stdout or done.stderr).strip().split()[-1]


@dataclass
class Server:
    """A peer running in its own session; ``url`` has no trailing slash."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


@contextmanager
def running(command: list[str], *, port: int, ready: str, log: Path) -> Iterator[Server]:
    """Start ``command``, wait until ``ready`` answers, stop it when the block ends."""
    with log.open("ab") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, cwd=log.parent, start_new_session=True
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-1500:]
                raise PeerUnavailable(f"{command[0]} exited with {process.returncode}: {tail}")
            try:
                if httpx.get(server.url + ready, timeout=5).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise PeerUnavailable(f"{command[0]} did not answer {ready} within 120 s")
            time.sleep(0.2)
        yield server
    finally:
        server.stop()


def _get(client: httpx.Client, path: str, **headers: str) -> httpx.Response:
    response = client.get(path, headers=headers)
    if response.status_code != 200:
        raise PeerUnavailable(f"priming {path}: {response.status_code} {response.text[:200]}")
    return response


# -- verdaccio --------------------------------------------------------------------------------


def verdaccio_config(root: Path, uplink: str | None) -> Path:
    """A config with storage under ``root``; ``uplink`` None = offline (no proxy)."""
    proxy = "    proxy: upstream\n" if uplink else ""
    uplinks = f"uplinks:\n  upstream:\n    url: {uplink}/\n" if uplink else "uplinks: {}\n"
    path = root / ("config.yaml" if uplink else "config-offline.yaml")
    path.write_text(
        f"storage: {root / 'storage'}\n"
        "web:\n  enable: false\n"
        f"auth:\n  htpasswd:\n    file: {root / 'htpasswd'}\n"
        f"{uplinks}"
        "packages:\n  '**':\n    access: $all\n    publish: $authenticated\n"
        f"{proxy}"
        "server:\n  keepAliveTimeout: 60\n"
        "middlewares:\n  audit:\n    enabled: false\n"
        "log:\n  type: stdout\n  format: pretty\n  level: warn\n"
    )
    return path


def run_verdaccio(
    command: list[str],
    root: Path,
    fake_app: Any,
    prime: Callable[[httpx.Client], None],
    measure: Callable[[Server, str], dict[str, Any]],
) -> dict[str, Any]:
    """Prime verdaccio from ``fake_app``, stop the fake, measure; restart offline, measure."""
    from indexers.fakeserver import ThreadedServer

    root.mkdir()
    modes: dict[str, Any] = {}
    port = free_port()
    log = root / "verdaccio.log"
    listen = ["--listen", f"127.0.0.1:{port}"]
    with ExitStack() as upstream:
        fake = upstream.enter_context(ThreadedServer(fake_app))
        config = verdaccio_config(root, fake.url)
        with running(
            [*command, "--config", str(config), *listen], port=port, ready="/-/ping", log=log
        ) as server:
            with httpx.Client(base_url=server.url, timeout=300) as client:
                prime(client)
            upstream.close()  # the upstream goes down: connection refused from now on
            modes["upstream_down"] = measure(server, "upstream_down")
    offline = verdaccio_config(root, None)
    with running(
        [*command, "--config", str(offline), *listen], port=port, ready="/-/ping", log=log
    ) as server:
        modes["offline"] = measure(server, "offline")
    return modes


def prime_npm(names: list[str], tarballs: list[str], packuments: list[str]) -> Callable[..., None]:
    """Ask verdaccio for each packument (both forms) and tarball once, as npm would."""
    from bench_mirror_load import NPM_ACCEPT

    def prime(client: httpx.Client) -> None:
        for name in names:
            _get(client, f"/{name}", accept="application/json")
        for path in packuments:
            _get(client, path, accept="application/json")
            _get(client, path, accept=NPM_ACCEPT)
        for path in tarballs:
            _get(client, path)

    return prime


# -- devpi ------------------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
INDEX = "/root/upstream"


def run_devpi(
    bin_dir: Path,
    root: Path,
    fake_app: Any,
    prime: Callable[[httpx.Client], None],
    measure: Callable[[Server, str], dict[str, Any]],
) -> dict[str, Any]:
    """Create a mirror index of ``fake_app`` in a fresh devpi, prime it, stop the fake,
    measure; restart with ``--offline-mode``, measure."""
    from indexers.fakeserver import ThreadedServer

    root.mkdir()
    serverdir = root / "server"
    logging = root / "logging.json"
    logging.write_text(json.dumps(LOGGING))
    init = subprocess.run(
        [str(bin_dir / "devpi-init"), "--serverdir", str(serverdir), "--no-root-pypi"],
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode != 0:
        raise PeerUnavailable(f"devpi-init failed: {init.stderr[-500:]}")
    port = free_port()
    base = [
        str(bin_dir / "devpi-server"),
        "--serverdir",
        str(serverdir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--logger-cfg",
        str(logging),
    ]
    modes: dict[str, Any] = {}
    log = root / "devpi.log"
    with ExitStack() as upstream:
        fake = upstream.enter_context(ThreadedServer(fake_app))
        with running(base, port=port, ready="/+api", log=log) as server:
            with httpx.Client(base_url=server.url, timeout=300) as client:
                _create_mirror(client, f"{fake.url}/simple/")
                prime(client)
            upstream.close()  # the upstream goes down: connection refused from now on
            modes["upstream_down"] = measure(server, "upstream_down")
    with running([*base, "--offline-mode"], port=port, ready="/+api", log=log) as server:
        modes["offline"] = measure(server, "offline")
    return modes


def _create_mirror(client: httpx.Client, mirror_url: str) -> None:
    """Log in as root (devpi-init's empty password) and create a mirror index of the fake."""
    login = client.post("/+login", json={"user": "root", "password": ""})
    if login.status_code != 200:
        raise PeerUnavailable(f"devpi login: {login.status_code} {login.text[:200]}")
    token = login.json()["result"]["password"]
    auth = base64.b64encode(f"root:{token}".encode()).decode()
    created = client.put(
        INDEX,
        json={"type": "mirror", "mirror_url": mirror_url},
        headers={"X-Devpi-Auth": auth, "accept": "application/json"},
    )
    if created.status_code not in (200, 201):
        raise PeerUnavailable(f"devpi index: {created.status_code} {created.text[:200]}")


def prime_pypi(page: str, wheels: int) -> Callable[[httpx.Client], None]:
    """Ask devpi for the project's page and ``wheels`` of its wheels once, as pip would."""
    from bench_mirror_load import PIP_ACCEPT, discover_files

    def prime(client: httpx.Client) -> None:
        _get(client, page, accept=PIP_ACCEPT)
        _get(client, page, accept="text/html")
        for path in discover_files(str(client.base_url).rstrip("/"), page, ".whl", wheels):
            _get(client, path)

    return prime
