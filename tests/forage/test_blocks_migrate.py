"""``forage blocks migrate``: a flatfs store built by the real archive path becomes packs,
survives a SIGKILL mid-way, and every archive then reads back through the gateway's CAR."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from forage.archive.blocks import blockstore_layout, open_blockstore
from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker, upgrade
from forage.errors import ConfigError
from forage.fakes.files import FakeFileServer
from forage.server.app import make_app
from indexers.fakeserver import serve
from storage import (
    Block,
    FilesystemBlockstore,
    MemoryBlockstore,
    PackedBlockstore,
    block_cid,
    compute_cid,
    read_car,
    read_file,
)
from tests.forage.test_archive import blob, drain, forage, npm_artifact, package, record
from tests.forage.test_archive import write_config as archive_config

ROOT = Path(__file__).resolve().parents[2]
COUNT = 40


def migrate(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "forage", "-c", str(config), "blocks", "migrate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def flatfs_files(blocks: Path) -> list[Path]:
    return sorted((blocks / "blocks").rglob("*.data"))


async def test_migrate_resumes_after_a_kill_and_every_archive_reads_back(
    tmp_path: Path, http_client: httpx.AsyncClient
) -> None:
    url = f"sqlite:///{tmp_path / 'forage.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    first = blob(700_000, 1)
    files = {f"f{i}.tgz": blob(200_000 + 25_000 * i, 100 + i) for i in range(COUNT)}
    files["shares.tgz"] = first[:524_288] + blob(300_000, 2)  # two leaves in common
    files["first.tgz"] = first
    host = FakeFileServer()
    async with serve(host.make_app()) as running:
        path = archive_config(tmp_path, url, running.url)
        flat = load_config(path, environ={"FORAGE_DATA_BLOCKS": "flatfs"})
        for name, data in files.items():
            record(url, package("npm", name.removesuffix(".tgz"), {"1.0.0": npm_artifact(
                running.url + host.add(name, data), data, name)}))  # fmt: skip
        async with forage(flat) as ctx:
            assert isinstance(ctx.blockstore, FilesystemBlockstore)
            stats = await drain(ctx)
    assert (stats.done, stats.dead) == (len(files), 0)
    blocks = tmp_path / "data" / "blocks"
    loose = Block(block_cid(b"in no archive"), b"in no archive")
    FilesystemBlockstore(blocks).put(loose)
    before = len(flatfs_files(blocks))
    config = load_config(path, environ={})
    assert blockstore_layout(config) == "flatfs"  # unset: an existing flatfs store stays

    refused = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "forage", "-c", str(path), "blocks", "migrate"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "FORAGE_DATA_BLOCKS": "flatfs"},
        timeout=60,
    )
    assert refused.returncode == 2 and "data.blocks" in refused.stderr
    assert len(flatfs_files(blocks)) == before

    killed = migrate(path, "--progress")
    try:
        deadline = time.monotonic() + 60
        while len(flatfs_files(blocks)) == before:  # until an archive has moved
            assert killed.poll() is None, killed.communicate()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.002)
    finally:
        killed.send_signal(signal.SIGKILL)
        finish(killed)
    left = len(flatfs_files(blocks))
    assert 0 < left < before  # killed mid-way: some archives moved, some not
    assert blockstore_layout(config) == "packed"  # packs beside flatfs: read through

    code, out, err = finish(migrate(path, "--no-progress"))
    assert code == 0, err
    assert "nothing left in flatfs" in err
    assert "1 loose block(s)" in out and not (blocks / "blocks").exists()
    code, out, err = finish(migrate(path))
    assert (code, out) == (0, "") and "nothing to migrate" in err

    store = open_blockstore(config)
    assert isinstance(store, PackedBlockstore) and store.legacy is None
    assert store.get(loose.cid).data == loose.data
    packs = sorted((blocks / "packs").rglob("*.pack"))
    assert len(packs) == len(files) + 1  # one per archive, one loose, none twice
    engine = make_engine(url)
    app = make_app(config, sessionmaker=make_sessionmaker(engine), blockstore=store)
    try:
        async with serve(app) as gateway:
            for data in files.values():
                cid = compute_cid(data)
                response = await http_client.get(
                    f"{gateway.url}/ipfs/{cid}?format=car",
                    headers={"Accept": "application/vnd.ipld.car"},
                )
                assert response.status_code == 200
                car = read_car(io.BytesIO(response.content))
                received = MemoryBlockstore()
                for block in car:
                    received.put(block)
                assert car.roots == (cid,)
                assert b"".join(read_file(received, cid)) == data
    finally:
        engine.dispose()
        store.close()
    assert os.listdir(blocks / "staging") == []


def test_the_layout_follows_the_setting_then_what_is_on_disk(tmp_path: Path) -> None:
    def config(blocks: str | None) -> Config:
        path = tmp_path / "forage.toml"
        setting = f'blocks = "{blocks}"\n' if blocks else ""
        path.write_text(f'[data]\ndir = "{tmp_path / "data"}"\n{setting}')
        return load_config(path, environ={})

    with pytest.raises(ConfigError, match=r"data\.blocks.*packed, flatfs"):
        config("s3")
    fresh = open_blockstore(config(None))
    assert isinstance(fresh, PackedBlockstore) and fresh.legacy is None  # a new store: packed
    fresh.close()
    shutil.rmtree(tmp_path / "data")
    FilesystemBlockstore(tmp_path / "data" / "blocks").put(Block(block_cid(b"a"), b"a"))
    assert isinstance(open_blockstore(config(None)), FilesystemBlockstore)  # kept as it is
    packed = open_blockstore(config("packed"))  # chosen before migrating: reads through
    assert isinstance(packed, PackedBlockstore) and packed.legacy is not None
    assert packed.get(block_cid(b"a")).data == b"a"
    packed.close()
    assert blockstore_layout(config(None)) == "packed"  # packs exist now
