"""Packs in an object store: the packed blockstore on a local directory of objects and on a
real S3-compatible server (``rclone serve s3`` on loopback).

The same packs as a local packed store (names, keys, bytes), the same guarantees: one object
per batch, nothing visible before the whole object is, a pack put but not recorded (a crash)
recorded on the next open, blocks verified by ``get`` and not by ``get_trusted``, the
locator rebuilt from the objects.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import (
    Block,
    BlockNotFound,
    Blockstore,
    IntegrityError,
    PackedBlockstore,
    SQLiteLocator,
    block_cid,
    export_car,
    import_file,
    read_file,
    walk_dag,
)
from storage.objectpacks import (
    ObjectPackedBlockstore,
    pack_key,
    read_object_index,
    rebuild_object_locator,
)
from storage.objects import DirectoryObjects, ObjectStore
from storage.packformat import IndexEntry, encode_index, pack_footer, pack_name
from storage.s3 import S3Objects
from tests.s3server import BUCKET, S3Server


def blob(size: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


@pytest.fixture(params=["directory", "s3"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "directory":
        store: ObjectStore = DirectoryObjects(tmp_path / "objects", durable=False)
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        store = S3Objects(
            BUCKET,
            request.getfixturevalue("s3_prefix"),
            endpoint=server.endpoint,
            access_key=server.access_key,
            secret_key=server.secret_key,
        )
    try:
        yield store
    finally:
        store.close()


def open_store(objects: ObjectStore, tmp_path: Path, name: str = "host") -> ObjectPackedBlockstore:
    """A store on ``objects`` with its own staging directory and a locator file."""
    return ObjectPackedBlockstore(
        objects, tmp_path / name, locator=SQLiteLocator(tmp_path / "locator.sqlite")
    )


def test_a_batch_is_one_object_read_back_verified(objects: ObjectStore, tmp_path: Path) -> None:
    store = open_store(objects, tmp_path)
    assert isinstance(store, Blockstore)
    data = blob(1_000_000, 1)
    with store.batch() as batch:
        root = import_file(data, sink=batch).cid
    (key,) = list(objects.keys())
    name = key.rsplit("/", 1)[1].removesuffix(".pack")
    assert key == pack_key(name) == f"packs/{name[:2]}/{name[2:4]}/{name}.pack"
    blocks = list(walk_dag(store, root))
    entries = read_object_index(objects, name)
    assert {e.multihash for e in entries} == {bytes(b.cid.digest) for b in blocks}
    assert len(entries) == 5  # four 256 KiB leaves and their root
    assert b"".join(read_file(store, root)) == data
    assert [store.get(b.cid).data for b in blocks] == [b.data for b in blocks]
    assert store.commit_stats.batches == 1
    assert os.listdir(tmp_path / "host" / "staging") == []
    # The same blocks again write nothing; a deleted block put again is found again.
    with store.batch() as batch:
        import_file(data, sink=batch)
    assert len(list(objects.keys())) == 1
    store.delete(blocks[1].cid)
    assert not store.has(blocks[1].cid)
    store.put(blocks[1])
    assert store.get(blocks[1].cid).data == blocks[1].data
    store.close()


def test_another_host_reads_what_one_wrote(objects: ObjectStore, tmp_path: Path) -> None:
    writer = open_store(objects, tmp_path, "one")
    data = blob(700_000, 2)
    with writer.batch() as batch:
        root = import_file(data, sink=batch).cid
    reader = open_store(objects, tmp_path, "two")  # own staging, same objects and locator
    assert b"".join(read_file(reader, root)) == data
    writer.close()
    reader.close()


def test_a_corrupt_object_is_refused_by_get_and_read_by_get_trusted(
    objects: ObjectStore, tmp_path: Path
) -> None:
    store = open_store(objects, tmp_path)
    data = blob(600_000, 3)
    with store.batch() as batch:
        root = import_file(data, sink=batch).cid
    leaf = list(walk_dag(store, root))[1].cid
    location = store.locate(leaf)
    assert location is not None
    key = pack_key(location.pack)
    size = objects.size(key)
    assert size is not None
    raw = bytearray(objects.get_range(key, 0, size))
    raw[location.offset + 10] ^= 0xFF
    objects.put(key, bytes(raw))  # the object's bytes damaged where they are kept
    with pytest.raises(IntegrityError):
        store.get(leaf)
    damaged = store.get_trusted(leaf).data
    assert len(damaged) == location.length and damaged[10] == raw[location.offset + 10]
    with pytest.raises(IntegrityError):
        b"".join(read_file(store, root))
    store.close()


def test_a_pack_put_but_not_recorded_is_recorded_on_open(
    objects: ObjectStore, tmp_path: Path
) -> None:
    """What a writer killed between its PUT and its record leaves behind."""
    blocks = [Block(block_cid(data), data) for data in (b"one", b"two", b"three")]
    entries, offset = [], 0
    for block in blocks:
        entries.append(IndexEntry(bytes(block.cid.digest), offset, len(block.data)))
        offset += len(block.data)
    index = encode_index(entries)
    name = pack_name(index)
    body = b"".join(b.data for b in blocks) + index + pack_footer(offset, index, len(entries))
    locator = SQLiteLocator(tmp_path / "locator.sqlite")
    locator.expect([name])
    objects.put(pack_key(name), body)
    locator.close()
    store = open_store(objects, tmp_path)
    assert store.locator.recorded(name) and store.locator.expected() == []
    assert [store.get(b.cid).data for b in blocks] == [b"one", b"two", b"three"]
    store.close()


def test_a_lost_locator_is_rebuilt_from_the_objects(objects: ObjectStore, tmp_path: Path) -> None:
    store = open_store(objects, tmp_path)
    roots = {}
    for seed in (4, 5):
        with store.batch() as batch:
            roots[seed] = import_file(blob(400_000 * seed, seed), sink=batch).cid
    listed = sorted(map(str, store.iterate()))
    store.close()
    os.unlink(tmp_path / "locator.sqlite")
    objects.put("packs/00/00/not-a-pack.txt", b"ignored")  # not a pack's key
    fresh = open_store(objects, tmp_path)
    assert list(fresh.iterate()) == []
    report = rebuild_object_locator(fresh)
    assert (report.recorded, report.known, report.blocks, report.damaged) == (
        2,
        0,
        len(listed),
        (),
    )
    assert sorted(map(str, fresh.iterate())) == listed
    for seed, root in roots.items():
        assert b"".join(read_file(fresh, root)) == blob(400_000 * seed, seed)
    assert rebuild_object_locator(fresh).known == 2
    fresh.close()


def test_a_missing_pack_makes_its_blocks_absent(objects: ObjectStore, tmp_path: Path) -> None:
    store = open_store(objects, tmp_path)
    block = Block(block_cid(b"gone"), b"gone")
    store.put(block)
    (key,) = list(objects.keys())
    objects.delete(key)
    with pytest.raises(BlockNotFound):
        store.get(block.cid)
    assert not store.has(block.cid)  # forgotten, so a repair may store it again
    store.put(block)
    assert store.get(block.cid).data == b"gone"
    store.close()


def test_a_local_packed_store_copied_into_objects_is_the_same_store(tmp_path: Path) -> None:
    local = PackedBlockstore(tmp_path / "local", durable=False)
    data = blob(900_000, 6)
    with local.batch() as batch:
        root = import_file(data, sink=batch).cid
    car = io.BytesIO()
    export_car(local, root, car)
    local.close()
    # Its packs directory is a tree of objects; its locator file, the locator.
    shutil.copytree(tmp_path / "local" / "packs", tmp_path / "objects" / "packs")
    objects = DirectoryObjects(tmp_path / "objects")
    store = ObjectPackedBlockstore(
        objects, tmp_path / "host", locator=SQLiteLocator(tmp_path / "local" / "locator.sqlite")
    )
    assert b"".join(read_file(store, root)) == data
    again = io.BytesIO()
    export_car(store, root, again)
    assert again.getvalue() == car.getvalue()
    store.close()
