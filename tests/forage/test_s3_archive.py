"""Forage with its blockstore in an S3 bucket: a real ``rclone serve s3`` on loopback, a
fake npm registry, the real import and archive jobs, the real HTTP server.

``[data] blocks = "s3://forage/<prefix>"`` writes each archive as one pack object in the
bucket, located through the database; the gateway (raw blocks, CAR) and the npm mirror
(first read verified, then trusted) serve the bytes back identical. A damaged object is
refused by ``get`` and still read by ``get_trusted``; an unreachable endpoint or a wrong
secret stops ``forage`` with one line naming the bucket and endpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from forage.archive.blocks import open_blockstore
from forage.archive.objectstore import open_object_blockstore, s3_credentials
from forage.archive.records import unarchived_ids
from forage.archive.runner import archive_many
from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker, upgrade
from forage.db.models import Archive, ArchiveStatus
from forage.db.packs import BlockPack, PackBlock
from forage.errors import ConfigError
from forage.fakes.files import FakeFileServer
from forage.index.ingest import import_package
from forage.jobs.worker import JobContext, job_context
from forage.server.app import make_app
from indexers.fakeserver import serve
from indexers.npm.fake import FakeNpmRegistry, NpmTarball
from storage import MemoryBlockstore, compute_cid, export_car, import_file, read_file, walk_dag
from storage.errors import BlockstoreError, IntegrityError
from storage.objectpacks import ObjectPackedBlockstore
from tests.forage.test_archive import drain, forage, npm_artifact, package, record
from tests.forage.test_archive import write_config as archive_config
from tests.s3server import BUCKET, S3Server, free_port, start_rclone

ROOT = Path(__file__).resolve().parents[2]
CAR = {"Accept": "application/vnd.ipld.car"}
RAW = {"Accept": "application/vnd.ipld.raw"}


def write_config(
    tmp_path: Path, db_url: str, server: S3Server, prefix: str, *, npm: str = "", secret: str = ""
) -> Path:
    """A forage.toml with the blocks in the bucket, credentials in an AWS credentials file."""
    credentials = tmp_path / "s3-credentials"
    credentials.write_text(
        "[default]\n"
        f"aws_access_key_id = {server.access_key}\n"
        f"aws_secret_access_key = {secret or server.secret_key}\n"
    )
    text = (
        f'[database]\nurl = "{db_url}"\n\n'
        f'[data]\ndir = "{tmp_path / "data"}"\nblocks = "s3://{BUCKET}/{prefix}"\n'
        f's3_endpoint = "{server.endpoint}"\ns3_credentials_file = "{credentials}"\n\n'
        "[mirror]\noffline = true\n"
    )
    if npm:
        text += f'\n[registries.npm]\nregistry_url = "{npm}"\nreplicate_url = "{npm}/registry"\n'
        text += "allow_http = true\n"
    path = tmp_path / "forage.toml"
    path.write_text(text)
    return path


@dataclass
class Archived:
    config: Config
    ctx: JobContext
    store: ObjectPackedBlockstore
    tarball: NpmTarball
    cid: str


@asynccontextmanager
async def archived_in_s3(
    tmp_path: Path, db_url: str, server: S3Server, prefix: str
) -> AsyncIterator[Archived]:
    """Publish a package whose tarball spans several blocks, import and archive it."""
    registry = FakeNpmRegistry()
    tarball = registry.publish("big-pkg", "1.0.0", files={"data.bin": os.urandom(900_000)})
    async with serve(registry.make_app()) as upstream:
        config = load_config(
            write_config(tmp_path, db_url, server, prefix, npm=upstream.url), environ={}
        )
        engine = make_engine(config.database)
        try:
            async with job_context(config, make_sessionmaker(engine)) as ctx:
                assert isinstance(ctx.blockstore, ObjectPackedBlockstore)
                await import_package(ctx, "npm", "big-pkg")
                with ctx.sessionmaker() as session:
                    ids = unarchived_ids(session)
                outcomes = await archive_many(ctx, ids, concurrency=2)
                assert [o.status for o in outcomes] == [ArchiveStatus.ARCHIVED]
                with ctx.sessionmaker() as session:
                    cid = session.scalars(sa.select(Archive.cid)).one()
                assert cid is not None
                yield Archived(config, ctx, ctx.blockstore, tarball, cid)
                ctx.blockstore.close()
        finally:
            engine.dispose()


async def test_an_archive_in_the_bucket_is_served_byte_identical(
    migrated_url: str, tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    async with archived_in_s3(tmp_path, migrated_url, s3_server, s3_prefix) as done:
        # One pack object in the bucket, located through the database; nothing local but
        # the (empty) staging area.
        packs = sorted((s3_server.root / BUCKET / s3_prefix).rglob("*.pack"))
        assert len(packs) == 1
        with done.ctx.sessionmaker() as session:
            names = session.scalars(sa.select(BlockPack.name)).all()
        assert [name.hex() for name in names] == [packs[0].stem]
        assert not list((tmp_path / "data" / "blocks").rglob("*.pack"))
        assert not (tmp_path / "data" / "blocks" / "locator.sqlite").exists()

        expected = MemoryBlockstore()
        root = import_file(done.tarball.data, sink=expected).cid
        assert str(root) == done.cid
        assert len(list(walk_dag(expected, root))) > 2  # a root and several leaves
        car = io.BytesIO()
        export_car(expected, root, car)

        app = make_app(done.config, sessionmaker=done.ctx.sessionmaker, blockstore=done.store)
        async with serve(app) as running, httpx.AsyncClient(base_url=running.url) as client:
            served = await client.get(f"/ipfs/{done.cid}", headers=CAR)
            assert served.status_code == 200
            assert served.content == car.getvalue()
            for block in walk_dag(expected, root):
                raw = await client.get(f"/ipfs/{block.cid}", headers=RAW)
                assert raw.status_code == 200 and raw.content == block.data
            # The mirror: the first answer reads every block verified, the next trusted.
            for _ in range(2):
                tgz = await client.get(f"/npm{done.tarball.path}")
                assert tgz.status_code == 200
                assert tgz.content == done.tarball.data


async def test_a_damaged_object_is_refused_by_get_and_read_by_get_trusted(
    migrated_url: str, tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    async with archived_in_s3(tmp_path, migrated_url, s3_server, s3_prefix) as done:
        leaf = list(walk_dag(done.store, done.cid))[1].cid
        location = done.store.locate(leaf)
        assert location is not None
        # The bytes go bad where the service keeps them (rclone's backing directory).
        (path,) = (s3_server.root / BUCKET / s3_prefix).rglob(f"{location.pack}.pack")
        with open(path, "r+b") as file:  # noqa: ASYNC230  (a test's local file)
            file.seek(location.offset + 100)
            original = file.read(1)
            file.seek(location.offset + 100)
            file.write(bytes([original[0] ^ 0xFF]))
        with pytest.raises(IntegrityError):
            done.store.get(leaf)
        trusted = done.store.get_trusted(leaf)
        assert len(trusted.data) == location.length
        assert trusted.data[100] == original[0] ^ 0xFF
        app = make_app(done.config, sessionmaker=done.ctx.sessionmaker, blockstore=done.store)
        async with serve(app) as running, httpx.AsyncClient(base_url=running.url) as client:
            refused = await client.get(f"/ipfs/{leaf}", headers=RAW)
            assert refused.status_code >= 500 and refused.content != trusted.data


def test_an_unreachable_endpoint_is_one_line_naming_it(
    tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    down = S3Server((f"http://127.0.0.1:{free_port()}",), s3_server.root)
    database = f"sqlite:///{tmp_path / 'forage.db'}"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "forage", "-c"),
            *(str(write_config(tmp_path, database, down, s3_prefix)), "worker", "--once"),
        ],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            "AWS_MAX_ATTEMPTS": "1",  # what is unreachable stays so: say it at once
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"s3://{BUCKET}/{s3_prefix} at {down.endpoint}" in line
    assert "endpoint unreachable" in line


def test_a_wrong_secret_names_the_bucket_and_endpoint_not_the_secret(
    tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    secret = "wrong-secret-for-the-test"
    path = write_config(tmp_path, f"sqlite:///{tmp_path}/f.db", s3_server, s3_prefix, secret=secret)
    with pytest.raises(BlockstoreError) as refused:
        open_blockstore(load_config(path, environ={}))
    message = str(refused.value)
    assert "access refused" in message and s3_server.endpoint in message
    assert f"s3://{BUCKET}/{s3_prefix}" in message and secret not in message


def test_credentials_from_the_environment_win_and_missing_ones_say_what_to_set(
    tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    path = write_config(
        tmp_path, f"sqlite:///{tmp_path}/f.db", s3_server, s3_prefix, secret="wrong"
    )
    data = load_config(path, environ={}).data
    good = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": "right"}
    key, secret, token = s3_credentials(data, good)
    assert (key.reveal(), secret.reveal(), token) == (s3_server.access_key, "right", None)
    key, secret, _ = s3_credentials(data, {})  # the file's
    assert secret.reveal() == "wrong"
    bare = dataclasses.replace(data, s3_credentials_file=None)
    with pytest.raises(ConfigError, match=r"AWS_ACCESS_KEY_ID.*data\.s3_credentials_file"):
        s3_credentials(bare, {})
    (tmp_path / "s3-credentials").write_text("[other]\naws_access_key_id = x\n")
    with pytest.raises(ConfigError, match=r"has no \[default\] profile"):
        s3_credentials(data, {})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('blocks = "s3://"', "does not name a valid bucket"),
        ('blocks = "s3://Bad_Bucket/x"', "does not name a valid bucket"),
        ('blocks = "s3://forage/../x"', "invalid key prefix"),
        ('blocks = "tape"', "must be one of packed, flatfs or an s3://bucket/prefix URL"),
        ('blocks = "s3://forage"\ns3_endpoint = "http://10.1.2.3:9000"', "data.s3_allow_http"),
        ('locator = "cloud"', "must be one of file, database"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, settings: str, message: str) -> None:
    path = tmp_path / "forage.toml"
    path.write_text(f"[data]\n{settings}\n")
    with pytest.raises(ConfigError) as failed:
        load_config(path, environ={})
    assert message in str(failed.value)


def test_plain_http_elsewhere_than_loopback_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "forage.toml"
    path.write_text(
        '[data]\nblocks = "s3://forage/a/b"\ns3_endpoint = "http://10.1.2.3:9000"\n'
        "s3_allow_http = true\n"
    )
    data = load_config(path, environ={}).data
    assert data.s3_location == ("forage", "a/b") and data.shared_locator


async def test_healthz_asks_the_bucket(migrated_url: str, tmp_path: Path, s3_prefix: str) -> None:
    """With the blocks in a bucket, ``/healthz`` fails when the service goes away, though
    the local staging directory is still writable."""
    with start_rclone(tmp_path / "own-s3") as server:
        path = write_config(tmp_path, migrated_url, server, s3_prefix)
        config = load_config(path, environ={})
        store = open_object_blockstore(
            config, tmp_path / "data" / "blocks", environ={"AWS_MAX_ATTEMPTS": "1"}
        )
        engine = make_engine(config.database)
        app = make_app(config, sessionmaker=make_sessionmaker(engine), blockstore=store)
        try:
            async with serve(app) as running, httpx.AsyncClient(base_url=running.url) as client:
                healthy = await client.get("/healthz")
                assert healthy.status_code == 200
                assert healthy.json()["checks"]["blockstore"]["ok"] is True
                server.stop()
                down = await client.get("/healthz")
                assert down.status_code == 503
                assert down.json()["checks"]["blockstore"] == {
                    "ok": False,
                    "error": "ObjectStoreUnavailable",
                }
        finally:
            store.close()
            engine.dispose()


async def test_a_flatfs_store_migrates_into_the_bucket_and_its_locator_is_rebuilt(
    tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    url = f"sqlite:///{tmp_path / 'forage.db'}"
    engine = make_engine(url)
    upgrade(engine)
    files = {f"f{i}.tgz": os.urandom(150_000 + 200_000 * i) for i in range(4)}
    host = FakeFileServer()
    async with serve(host.make_app()) as running:
        flat = load_config(
            archive_config(tmp_path, url, running.url), environ={"FORAGE_DATA_BLOCKS": "flatfs"}
        )
        for name, data in files.items():
            link = running.url + host.add(name, data)
            record(url, package("npm", name[:-4], {"1.0.0": npm_artifact(link, data, name)}))
        async with forage(flat) as ctx:
            assert (await drain(ctx)).done == len(files)
    blocks = tmp_path / "data" / "blocks"
    assert list((blocks / "blocks").rglob("*.data"))
    config = write_config(tmp_path, url, s3_server, s3_prefix)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "forage", "-c", str(config), "blocks", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    migrated = await asyncio.to_thread(run, "migrate", "--no-progress")
    assert migrated.returncode == 0, migrated.stderr
    assert not list((blocks / "blocks").rglob("*.data"))  # every block moved
    in_bucket = list((s3_server.root / BUCKET / s3_prefix).rglob("*.pack"))
    assert len(in_bucket) == len(files)

    def read_back() -> None:
        store = open_blockstore(load_config(config, environ={}))
        try:
            for data in files.values():
                assert b"".join(read_file(store, compute_cid(data))) == data
        finally:
            store.close()

    read_back()
    with engine.begin() as connection:  # the locator lost: the packs say where blocks are
        connection.execute(sa.delete(PackBlock))
        connection.execute(sa.delete(BlockPack))
    engine.dispose()
    rebuilt = await asyncio.to_thread(run, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.startswith(f"recorded {len(files)} pack(s)")
    read_back()
