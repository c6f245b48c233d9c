"""Several hosts on one machine that share nothing but PostgreSQL and the bucket.

Two network namespaces stand for two hosts, each joined to the machine by a veth pair with a
/30 of its own (the test creates them and removes them). On the machine's side of each pair
listen the shared services: a real ``rclone serve s3``, the session's PostgreSQL (reached
through a small TCP relay, as the cluster listens on 127.0.0.1 only) and a fake npm registry.
A ``forage worker`` in the first namespace imports and archives a package into the bucket; a
``forage serve`` in the second, with a data directory of its own, serves its bytes through
the trustless gateway and the npm mirror. Nothing else connects them: their data directories
are apart, and neither namespace reaches the other's address.

Needs root and ``ip`` (iproute2): skipped without them, a failure under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from pytest_socket import socket_allow_hosts

from forage.db.engine import make_engine
from forage.db.models import Archive
from forage.db.packs import BlockPack
from indexers.fakeserver import ThreadedServer
from indexers.npm.fake import FakeNpmRegistry
from storage import MemoryBlockstore, export_car, import_file
from tests.conftest import PostgresServer
from tests.s3server import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server, free_port, start_rclone

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]


def _cannot(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the multi-host test must run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Host:
    """A network namespace joined to the machine: ``address`` inside it, ``gateway`` the
    machine's end of its veth pair."""

    namespace: str
    address: str
    gateway: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    """``count`` namespaces, each with a veth pair in a /30 of 10.251.<random>.0/24."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        _cannot("network namespaces need root and ip (iproute2)")
    subnet = f"10.251.{random.randrange(256)}"
    tag = f"{os.getpid() % 100000}"
    made: list[Host] = []
    try:
        for index in range(count):
            host = Host(f"forage-{tag}-{index}", f"{subnet}.{4 * index + 2}", "")
            host = Host(host.namespace, host.address, f"{subnet}.{4 * index + 1}")
            outside, inside = f"fh{tag}h{index}", f"fh{tag}n{index}"
            try:
                _ip("netns", "add", host.namespace)
            except RuntimeError as exc:
                _cannot(f"cannot create a network namespace here: {exc}")
            made.append(host)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", host.namespace)
            _ip("addr", "add", f"{host.gateway}/30", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/30", "dev", inside)
            _ip("-n", host.namespace, "link", "set", inside, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        yield made
    finally:
        for host in made:  # removing a namespace removes the veth pair in it
            subprocess.run(["ip", "netns", "del", host.namespace], check=False)


class Relay:
    """Forwards TCP connections accepted on ``hosts`` (one port for all) to
    ``127.0.0.1:target``: how the namespaces reach the session's PostgreSQL."""

    def __init__(self, hosts: list[str], target: int) -> None:
        self.target = target
        self.port = free_port(hosts[0])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        for host in hosts:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, self.port))
            listener.listen(64)
            self._sockets.append(listener)
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until either end closes."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


def config_for(
    host: Host, data_dir: Path, database: str, s3: S3Server, npm: str, *, port: int = 8080
) -> Path:
    """One host's forage.toml: its own data directory, the shared database and bucket."""
    data_dir.mkdir(parents=True)
    path = data_dir / "forage.toml"
    path.write_text(
        f'[database]\nurl = "{database}"\n\n'
        f'[data]\ndir = "{data_dir}"\nblocks = "s3://{BUCKET}/shared"\n'
        f's3_endpoint = "http://{host.gateway}:{s3.endpoint.rsplit(":", 1)[1]}"\n'
        "s3_allow_http = true\n\n"
        f'[server]\nhost = "{host.address}"\nport = {port}\n\n'
        "[mirror]\noffline = true\n\n"
        f'[registries.npm]\nregistry_url = "{npm}"\nreplicate_url = "{npm}/registry"\n'
        "allow_http = true\n"
    )
    return path


def forage(host: Host, config: Path, *args: str) -> list[str]:
    return host.command(sys.executable, "-m", "forage", "-q", "-c", str(config), *args)


def test_a_worker_on_one_host_archives_and_a_server_on_another_serves(
    tmp_path: Path, postgres_server: PostgresServer, _postgres_template: str
) -> None:
    registry = FakeNpmRegistry()
    tarball = registry.publish("spread", "1.0.0", files={"blob.bin": os.urandom(700_000)})
    name = postgres_server.create_database(template=_postgres_template)
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    with contextlib.ExitStack() as stack:
        worker_host, server_host = stack.enter_context(hosts(2))
        gateways = [worker_host.gateway, server_host.gateway]
        s3 = stack.enter_context(start_rclone(tmp_path / "bucket", hosts=("127.0.0.1", *gateways)))
        relay = Relay(gateways, postgres_server.port)
        stack.callback(relay.close)
        npm_url = stack.enter_context(
            ThreadedServer(registry.make_app(), host=worker_host.gateway)
        ).url

        def database(host: Host) -> str:
            return f"postgresql+psycopg://{postgres_server.user}@{host.gateway}:{relay.port}/{name}"

        worker_config = config_for(
            worker_host, tmp_path / "worker", database(worker_host), s3, npm_url
        )
        port = 8080
        server_config = config_for(
            server_host, tmp_path / "server", database(server_host), s3, npm_url, port=port
        )
        # The worker's host imports and archives.
        for args in (("import", "npm", "spread"), ("worker", "--drain")):
            done = subprocess.run(
                forage(worker_host, worker_config, *args),
                cwd=ROOT,
                env=environment,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert done.returncode == 0, done.stderr
        engine = make_engine(postgres_server.url(name))
        with engine.connect() as connection:
            cid = connection.scalar(sa.select(Archive.cid))
            packs = connection.scalar(sa.select(sa.func.count()).select_from(BlockPack))
        engine.dispose()
        assert cid is not None and packs == 1
        assert len(list((tmp_path / "bucket" / BUCKET / "shared").rglob("*.pack"))) == 1

        # The other host serves it, from the bucket, through the database's locator.
        server = subprocess.Popen(
            forage(server_host, server_config, "serve"),
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        stack.callback(_stop, server)
        socket_allow_hosts(["127.0.0.1", server_host.address])
        base = f"http://{server_host.address}:{port}"
        _wait_for(base, server)
        expected = MemoryBlockstore()
        root = import_file(tarball.data, sink=expected).cid
        car = io.BytesIO()
        export_car(expected, root, car)
        assert str(root) == cid
        with httpx.Client(base_url=base, timeout=30) as client:
            served = client.get(f"/ipfs/{cid}", headers={"Accept": "application/vnd.ipld.car"})
            assert served.status_code == 200 and served.content == car.getvalue()
            mirrored = client.get(f"/npm{tarball.path}")
            assert mirrored.status_code == 200 and mirrored.content == tarball.data
        # The worker's host cannot reach the server's: the bytes came through the bucket.
        probe = f"import socket; socket.create_connection(({server_host.address!r}, {port}), 2)"
        reach = subprocess.run(
            worker_host.command(sys.executable, "-c", probe), capture_output=True, check=False
        )
        assert reach.returncode != 0 and b"unreachable" in reach.stderr
        # Neither host wrote a pack or a locator of its own.
        for data_dir in (tmp_path / "worker", tmp_path / "server"):
            assert not list(data_dir.rglob("*.pack"))
            assert not list(data_dir.rglob("locator.sqlite"))
    postgres_server.drop_database(name)


def _wait_for(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            assert server.stderr is not None
            raise AssertionError(f"forage serve exited: {server.stderr.read().decode()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("forage serve did not answer")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr is not None:
        process.stderr.close()
