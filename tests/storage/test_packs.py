"""The packed blockstore: one pack per batch, a locator beside the packs, crash safety.

Crash tests kill a real writer process with SIGKILL (mid-write, and between a pack's rename
and its locator record) and reopen the store as the next process would.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import (
    Block,
    BlockNotFound,
    Blockstore,
    FilesystemBlockstore,
    IntegrityError,
    PackedBlockstore,
    SQLiteLocator,
    block_cid,
    export_car,
    import_file,
    read_car,
    read_file,
    rebuild_locator,
    verify_block,
    walk_dag,
)
from storage.locator import BlockLocator
from storage.packformat import FOOTER_SIZE, MAGIC, pack_name, read_pack_index
from storage.packs import STALE_NOTE

ROOT = Path(__file__).resolve().parents[2]


def blob(size: int, seed: int) -> bytes:
    """Incompressible bytes, different for every seed."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def pack_files(store: PackedBlockstore) -> list[Path]:
    return sorted(store.packs.rglob("*.pack"))


def test_it_is_a_blockstore_and_its_locator_a_locator(tmp_path: Path) -> None:
    store = PackedBlockstore(tmp_path, durable=False)
    assert isinstance(store, Blockstore)
    assert isinstance(store.locator, BlockLocator)


def test_a_batch_is_one_pack_with_its_index_and_footer(tmp_path: Path) -> None:
    store = PackedBlockstore(tmp_path)
    data = blob(1_000_000, 1)
    with store.batch() as batch:
        root = import_file(data, sink=batch).cid
    (path,) = pack_files(store)
    raw = path.read_bytes()
    assert raw.endswith(MAGIC)
    entries = read_pack_index(str(path))
    blocks = list(walk_dag(store, root))
    assert {e.multihash for e in entries} == {bytes(b.cid.digest) for b in blocks}
    assert len(entries) == 5  # four 256 KiB leaves and their root, each once
    # Blocks back to back from offset 0, in put order; the index follows, then the footer.
    assert [e.offset for e in entries] == [sum(e.length for e in entries[:i]) for i in range(5)]
    index_end = len(raw) - FOOTER_SIZE
    data_end = entries[-1].offset + entries[-1].length
    assert pack_name(raw[data_end:index_end]) == path.stem  # named by its index
    assert path.parent.name == path.stem[2:4] and path.parent.parent.name == path.stem[:2]
    for entry in entries:
        cid = next(b.cid for b in blocks if bytes(b.cid.digest) == entry.multihash)
        verify_block(cid, raw[entry.offset : entry.offset + entry.length])
    assert b"".join(read_file(store, root)) == data
    assert sorted(map(str, store.iterate())) == sorted(str(block_cid(b.data)) for b in blocks)
    assert os.listdir(tmp_path / "staging") == []


def test_put_get_has_delete_and_put_again(tmp_path: Path) -> None:
    store = PackedBlockstore(tmp_path, durable=False)
    block = Block(block_cid(b"hello"), b"hello")
    assert not store.has(block.cid)
    with pytest.raises(BlockNotFound):
        store.get(block.cid)
    store.put(block)
    store.put(block)  # stored already: no second pack
    assert store.has(block.cid) and store.get(block.cid).data == b"hello"
    assert len(pack_files(store)) == 1
    store.delete(block.cid)
    store.delete(block.cid)  # absent: nothing happens
    assert not store.has(block.cid) and list(store.iterate()) == []
    with pytest.raises(BlockNotFound):
        store.get_trusted(block.cid)
    store.put(block)  # a deleted block put again is found again
    assert store.get(block.cid).data == b"hello" and len(list(store.iterate())) == 1


def test_a_failed_batch_leaves_nothing_and_an_identical_one_writes_nothing(
    tmp_path: Path,
) -> None:
    store = PackedBlockstore(tmp_path, durable=False)
    data = blob(3_000_000, 2)  # more than a batch keeps in memory: a temporary file exists
    with pytest.raises(RuntimeError), store.batch() as batch:
        cid = import_file(data, sink=batch).cid
        assert os.listdir(tmp_path / "staging") != []
        raise RuntimeError("digest mismatch")
    assert not store.has(cid) and pack_files(store) == [] and os.listdir(tmp_path / "staging") == []
    for _ in range(2):
        with store.batch() as batch:
            import_file(data, sink=batch)
    assert len(pack_files(store)) == 1


def test_get_verifies_and_get_trusted_does_not(tmp_path: Path) -> None:
    store = PackedBlockstore(tmp_path, durable=False)
    data = blob(600_000, 3)
    with store.batch() as batch:
        root = import_file(data, sink=batch).cid
    leaf = list(walk_dag(store, root))[1].cid
    location = store.locate(leaf)
    assert location is not None
    with open(store.pack_path(location.pack), "r+b") as fh:
        fh.seek(location.offset + 10)
        fh.write(b"X")
    with pytest.raises(IntegrityError):
        store.get(leaf)
    damaged = store.get_trusted(leaf).data
    assert len(damaged) == location.length and damaged[10:11] == b"X"
    with pytest.raises(IntegrityError):
        b"".join(read_file(store, root))


_WRITER = """
import os, sys, hashlib
from storage import PackedBlockstore, import_file, SQLiteLocator
root, mode = sys.argv[1], sys.argv[2]

class DiesBeforeRecording(SQLiteLocator):
    def record(self, pack, entries):
        os.kill(os.getpid(), 9)  # after the pack's rename, before its entries are recorded

class DiesAfterNoting(SQLiteLocator):
    def expect(self, packs):
        super().expect(packs)
        os.kill(os.getpid(), 9)  # the pack sealed in staging and noted, not renamed

kinds = {"record": DiesBeforeRecording, "expect": DiesAfterNoting}
path = os.path.join(root, "locator.sqlite")
locator = kinds[mode](path) if mode in kinds else None
store = PackedBlockstore(root, locator=locator)
seed = 0
while True:
    seed += 1
    data = b"".join(hashlib.sha256(b"%d:%d" % (seed, i)).digest() for i in range(40_000))
    with store.batch() as batch:
        import_file(data, sink=batch)
    print(seed, flush=True)
"""


def _reopened_reads_everything(root: Path) -> dict[str, int]:
    """Open the store as the next process would; every listed block must read and verify,
    and every pack on disk must be recorded."""
    store = PackedBlockstore(root)
    listed = list(store.iterate())
    for cid in listed:
        assert store.has(cid)
        store.get(cid)  # verifies
    packs = pack_files(store)
    for path in packs:
        assert store.locator.recorded(path.stem)
        assert {e.multihash for e in read_pack_index(str(path))} <= {
            bytes(cid.digest) for cid in listed
        }
    return {
        "blocks": len(listed),
        "packs": len(packs),
        "staging": len(os.listdir(root / "staging")),
    }


def test_a_writer_killed_mid_write_leaves_only_whole_packs(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), "plain"],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    try:
        assert writer.stdout is not None
        for _ in range(3):  # three packs committed, the fourth being written
            assert writer.stdout.readline().strip()
        time.sleep(0.02)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        if writer.stdout is not None:
            writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    found = _reopened_reads_everything(tmp_path)
    assert found["packs"] >= 3 and found["blocks"] == found["packs"] * 6  # 5 leaves + root
    assert found["staging"] == 0  # the killed writer's temporary pack was removed


def test_a_crash_between_rename_and_record_loses_no_pack(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WRITER, str(tmp_path), "record"], cwd=ROOT, timeout=120
    )
    assert done.returncode == -signal.SIGKILL
    (path,) = sorted(tmp_path.joinpath("packs").rglob("*.pack"))  # in place, not recorded
    locator = SQLiteLocator(tmp_path / "locator.sqlite")
    assert [name for name, _ in locator.expected()] == [path.stem]
    assert not locator.recorded(path.stem)
    locator.close()
    found = _reopened_reads_everything(tmp_path)  # opening records it
    assert (found["packs"], found["blocks"]) == (1, 6)


def test_a_stale_note_of_a_pack_that_never_came_is_dropped(tmp_path: Path) -> None:
    PackedBlockstore(tmp_path).close()
    locator = SQLiteLocator(tmp_path / "locator.sqlite")
    fresh, stale = "aa" * 32, "bb" * 32
    locator.expect([fresh, stale])
    locator.close()
    with sqlite3.connect(tmp_path / "locator.sqlite") as db:
        old = time.time() - STALE_NOTE - 1
        db.execute("UPDATE packs SET noted = ? WHERE name = ?", (old, bytes.fromhex(stale)))
    store = PackedBlockstore(tmp_path)
    assert [name for name, _ in store.locator.expected()] == [fresh]  # may still arrive


def test_the_locator_is_rebuilt_from_the_packs(tmp_path: Path) -> None:
    store = PackedBlockstore(tmp_path, durable=False)
    files = {seed: blob(300_000 * seed, seed) for seed in (1, 2, 3)}
    roots = {}
    for seed, data in files.items():
        with store.batch() as batch:
            roots[seed] = import_file(data, sink=batch).cid
    before = sorted(map(str, store.iterate()))
    store.close()
    for name in ("locator.sqlite", "locator.sqlite-wal", "locator.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    damaged = tmp_path / "packs" / "00" / "00" / ("00" * 32 + ".pack")
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a pack")
    store = PackedBlockstore(tmp_path, durable=False)
    assert list(store.iterate()) == []
    report = rebuild_locator(store)
    assert (report.recorded, report.known, report.damaged) == (3, 0, (damaged.stem,))
    assert report.blocks == len(before)
    assert sorted(map(str, store.iterate())) == before
    for seed, data in files.items():
        assert b"".join(read_file(store, roots[seed])) == data
    again = rebuild_locator(store)
    assert (again.recorded, again.known, again.blocks) == (0, 3, 0)


def test_a_flatfs_store_beside_is_read_through(tmp_path: Path) -> None:
    flatfs = FilesystemBlockstore(tmp_path, durable=False)
    old = Block(block_cid(b"old"), b"old")
    both = Block(block_cid(b"both"), b"both")
    flatfs.put(old)
    flatfs.put(both)
    store = PackedBlockstore(tmp_path, durable=False, legacy=flatfs)
    store.put(both)
    new = Block(block_cid(b"new"), b"new")
    store.put(new)
    assert store.get(old.cid).data == b"old" and store.get_trusted(old.cid).data == b"old"
    assert sorted(map(str, store.iterate())) == sorted(str(b.cid) for b in (old, both, new))
    assert not flatfs.has(new.cid)  # writes go to packs
    store.delete(old.cid)
    assert not store.has(old.cid) and not flatfs.has(old.cid)


def test_opening_reports_an_unusable_directory(tmp_path: Path) -> None:
    from storage import BlockstoreError

    (tmp_path / "file").write_text("x")
    with pytest.raises(BlockstoreError, match="opening blockstore"):
        PackedBlockstore(tmp_path / "file")


def test_a_car_exported_from_packs_is_the_flatfs_one(tmp_path: Path) -> None:
    data = blob(1_100_000, 6)
    cars = []
    stores: list[Blockstore] = [
        PackedBlockstore(tmp_path / "packed", durable=False),
        FilesystemBlockstore(tmp_path / "flatfs", durable=False),
    ]
    for store in stores:
        with store.batch() as batch:
            root = import_file(data, sink=batch).cid
        out = io.BytesIO()
        export_car(store, root, out)
        cars.append(out.getvalue())
    assert cars[0] == cars[1]
    assert [b.cid for b in read_car(io.BytesIO(cars[0]))] == [
        b.cid for b in walk_dag(stores[0], root)
    ]


def test_a_lost_pack_makes_its_blocks_absent_until_stored_again(tmp_path: Path) -> None:
    store = PackedBlockstore(tmp_path, durable=False)
    data = blob(700_000, 7)
    with store.batch() as batch:
        root = import_file(data, sink=batch).cid
    (path,) = pack_files(store)
    path.unlink()
    assert store.has(root)  # the locator does not know yet
    with pytest.raises(BlockNotFound):
        store.get(root)
    assert not store.has(root)  # reading found the pack gone
    with store.batch() as batch:  # a repair: the same blocks again
        import_file(data, sink=batch)
    assert b"".join(read_file(store, root)) == data


@pytest.mark.parametrize("damaged", [False, True])
def test_a_sealed_pack_left_in_staging_is_verified_and_moved_into_place(
    tmp_path: Path, damaged: bool
) -> None:
    """What a power cut after the commit's sync leaves (the rename undone): a sealed pack in a
    dead writer's staging and its note. Opening moves it into place only if every block
    verifies; a damaged one is removed with the rest of the dead writer's staging."""
    done = subprocess.run(
        [sys.executable, "-c", _WRITER, str(tmp_path), "expect"], cwd=ROOT, timeout=120
    )
    assert done.returncode == -signal.SIGKILL
    (staged,) = (tmp_path / "staging").rglob("*pack")
    assert list((tmp_path / "packs").rglob("*.pack")) == []
    if damaged:
        raw = bytearray(staged.read_bytes())
        raw[1000] ^= 0xFF
        staged.write_bytes(bytes(raw))
    found = _reopened_reads_everything(tmp_path)
    assert (found["packs"], found["blocks"]) == ((0, 0) if damaged else (1, 6))
    assert found["staging"] == 0
