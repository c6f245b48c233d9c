"""Blockstores (storage.blockstore): one conformance suite for every backend (the filesystem
store in both sync modes), then the filesystem store's layout, corruption checks, concurrency,
crash cleanup, full disks, and durability: a commit returns only once its pages are written
back, and batches committing at once share their syncs."""

from __future__ import annotations

import base64
import ctypes
import inspect
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.blockstore import Blockstore, MemoryBlockstore
from storage.cid import DAG_PB, Block, block_cid, parse_cid
from storage.errors import BlockNotFound, IntegrityError, InvalidCID, StorageError
from storage.flatfs import BATCH_BUFFER, CommitStats, FilesystemBlockstore


def _block(data: bytes, *, codec: int = 0x55) -> Block:
    return Block(block_cid(data, codec=codec), data)


BLOCKS = [_block(b"block %d" % index) for index in range(20)]
#: Blocks that overflow a batch's memory buffer, so most of them are staged as files.
STAGED = [_block(b"staged block %d;" % index * 2048) for index in range(20)]


@pytest.fixture(params=["filesystem", "filesystem-fsync", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blockstore]:
    if request.param == "filesystem":
        yield FilesystemBlockstore(tmp_path / "blocks")
    elif request.param == "filesystem-fsync":
        yield FilesystemBlockstore(tmp_path / "blocks", sync="fsync")
    else:
        yield MemoryBlockstore()


def test_implementations_satisfy_the_protocol_signature_by_signature(store: Blockstore) -> None:
    assert isinstance(store, Blockstore)
    for name in ("has", "get", "put", "delete", "iterate", "batch"):
        expected = list(inspect.signature(getattr(Blockstore, name)).parameters)[1:]
        actual = list(inspect.signature(getattr(store, name)).parameters)
        assert actual == expected, name


def test_put_then_get_returns_the_verified_block(store: Blockstore) -> None:
    block = BLOCKS[0]
    assert not store.has(block.cid)
    store.put(block)
    assert store.has(block.cid)
    assert store.get(block.cid) == block


def test_blocks_are_found_by_multihash_whatever_the_cid_version_or_codec(
    store: Blockstore,
) -> None:
    block = _block(b"\x0a\x02\x08\x01", codec=DAG_PB)
    store.put(block)
    v0 = block_cid(block.data, codec=DAG_PB, version=0)
    raw = block_cid(block.data)
    assert store.has(v0) and store.has(raw)
    assert store.get(v0) == Block(v0, block.data)


def test_missing_block_is_block_not_found(store: Blockstore) -> None:
    with pytest.raises(BlockNotFound) as info:
        store.get(BLOCKS[1].cid)
    assert info.value.cid == BLOCKS[1].cid


def test_put_is_idempotent_and_iterate_yields_each_block_once_as_raw_v1(
    store: Blockstore,
) -> None:
    pb = _block(b"\x0a\x00", codec=DAG_PB)
    for block in [*BLOCKS[:5], BLOCKS[0], pb, pb]:
        store.put(block)
    listed = list(store.iterate())
    assert len(listed) == 6
    assert set(listed) == {block_cid(b.data) for b in [*BLOCKS[:5], pb]}


def test_delete_removes_and_tolerates_absent_blocks(store: Blockstore) -> None:
    store.put(BLOCKS[2])
    store.delete(BLOCKS[2].cid)
    assert not store.has(BLOCKS[2].cid)
    store.delete(BLOCKS[2].cid)
    assert list(store.iterate()) == []


def test_a_batch_becomes_visible_only_on_a_clean_exit(store: Blockstore) -> None:
    with store.batch() as batch:
        for block in BLOCKS[:3]:
            batch.put(block)
        assert not any(store.has(block.cid) for block in BLOCKS[:3])
    assert all(store.get(block.cid) == block for block in BLOCKS[:3])


def test_a_failed_batch_leaves_nothing_behind(store: Blockstore) -> None:
    class DigestMismatch(Exception):
        pass

    with pytest.raises(DigestMismatch), store.batch() as batch:
        batch.put(BLOCKS[3])
        raise DigestMismatch
    assert not store.has(BLOCKS[3].cid)
    assert list(store.iterate()) == []


def test_text_that_is_not_a_cid_never_reaches_the_store(store: Blockstore) -> None:
    for bad in ("../../etc/passwd", "/tmp", "bafy"):
        with pytest.raises(InvalidCID):
            store.has(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidCID):
            store.get(bad)  # type: ignore[arg-type]


def test_cid_text_is_parsed_before_use(store: Blockstore) -> None:
    store.put(BLOCKS[4])
    assert store.has(str(BLOCKS[4].cid))  # type: ignore[arg-type]


# Filesystem store ---------------------------------------------------------------------------


def _key(block: Block) -> str:
    return base64.b32encode(bytes(block.cid.digest)).decode().rstrip("=")


def test_files_follow_flatfs_next_to_last_2_sharding(tmp_path: Path) -> None:
    store = FilesystemBlockstore(tmp_path)
    block = _block(b"hello world\n")
    store.put(block)
    key = _key(block)
    assert key.startswith("CIQ") and len(key) == 55  # sha2-256 multihashes, as in Kubo repos
    path = tmp_path / "blocks" / key[-3:-1] / f"{key}.data"
    assert path.read_bytes() == block.data
    assert list((tmp_path / "staging").iterdir()) == []


def test_a_corrupted_file_is_an_integrity_error(tmp_path: Path) -> None:
    store = FilesystemBlockstore(tmp_path)
    store.put(BLOCKS[5])
    key = _key(BLOCKS[5])
    (tmp_path / "blocks" / key[-3:-1] / f"{key}.data").write_bytes(b"block 5!")
    with pytest.raises(IntegrityError, match=str(BLOCKS[5].cid)):
        store.get(BLOCKS[5].cid)


def test_iterate_skips_stray_files(tmp_path: Path) -> None:
    store = FilesystemBlockstore(tmp_path)
    store.put(BLOCKS[6])
    shard = tmp_path / "blocks" / _key(BLOCKS[6])[-3:-1]
    (shard / "notes.txt").write_text("x")
    (shard / "AAAA.data").write_bytes(b"")  # in the wrong shard for its key
    (tmp_path / "blocks" / "README").write_text("x")
    assert list(store.iterate()) == [block_cid(BLOCKS[6].data)]


def test_put_after_the_batch_ended_is_refused(tmp_path: Path) -> None:
    store = FilesystemBlockstore(tmp_path)
    with store.batch() as batch:
        batch.put(BLOCKS[7])
    with pytest.raises(StorageError, match="already committed"):
        batch.put(BLOCKS[8])


def test_concurrent_threads_writing_the_same_blocks(tmp_path: Path) -> None:
    store = FilesystemBlockstore(tmp_path)
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            if index % 2:
                with store.batch() as batch:
                    for block in BLOCKS:
                        batch.put(block)
            else:
                for block in reversed(BLOCKS):
                    store.put(block)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(map(str, store.iterate())) == sorted(str(block.cid) for block in BLOCKS)
    assert all(store.get(block.cid) == block for block in BLOCKS)
    assert list((tmp_path / "staging").iterdir()) == []


WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from storage import Block, FilesystemBlockstore, block_cid
    root, mode = sys.argv[1], sys.argv[2]
    store = FilesystemBlockstore(root)
    data = [b"staged block %d;" % i * 2048 for i in range(20)]
    blocks = [Block(block_cid(d), d) for d in data]
    with store.batch() as batch:
        for block in blocks:
            batch.put(block)
        print("staged", flush=True)
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "wait":
            sys.stdin.readline()
    print("committed", flush=True)
    """
)


def _writer(root: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_concurrent_processes_writing_the_same_blocks(tmp_path: Path) -> None:
    writers = [_writer(tmp_path, "go") for _ in range(4)]
    outputs = [writer.communicate(timeout=60)[0] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0, 0, 0]
    assert all(output.split() == ["staged", "committed"] for output in outputs)
    store = FilesystemBlockstore(tmp_path)
    assert all(store.get(block.cid) == block for block in STAGED)
    assert list((tmp_path / "staging").iterdir()) == []


def test_staging_of_a_killed_writer_is_removed_when_the_store_is_opened(tmp_path: Path) -> None:
    assert sum(len(block.data) for block in STAGED) > BATCH_BUFFER
    writer = _writer(tmp_path, "kill")
    writer.communicate(timeout=60)
    assert writer.returncode == -signal.SIGKILL
    leftovers = list((tmp_path / "staging").iterdir())
    assert len(leftovers) == 2  # the batch directory and its lock
    assert len(list((tmp_path / "staging").rglob("*.data"))) > 10  # staged blocks
    store = FilesystemBlockstore(tmp_path)
    assert list((tmp_path / "staging").iterdir()) == []
    assert not any(store.has(block.cid) for block in STAGED)


def test_opening_the_store_leaves_a_live_writers_staging_alone(tmp_path: Path) -> None:
    writer = _writer(tmp_path, "wait")
    assert writer.stdout is not None and writer.stdin is not None
    assert writer.stdout.readline() == "staged\n"
    FilesystemBlockstore(tmp_path)
    assert len(list((tmp_path / "staging").iterdir())) == 2
    assert writer.communicate("go\n", timeout=60)[0] == "committed\n"
    assert writer.returncode == 0
    store = FilesystemBlockstore(tmp_path)
    assert all(store.get(block.cid) == block for block in STAGED)


FULL_DISK = textwrap.dedent(
    """
    import json, os, sys
    from storage import Block, BlockstoreFull, FilesystemBlockstore, block_cid
    root = sys.argv[1]
    store = FilesystemBlockstore(root)
    blocks = [Block(block_cid(bytes([i]) * 262144), bytes([i]) * 262144) for i in range(8)]
    report = {}
    try:
        with store.batch() as batch:
            for block in blocks:
                batch.put(block)
    except BlockstoreFull as exc:
        report["error"] = str(exc)
    report["staging"] = os.listdir(os.path.join(root, "staging"))
    report["stored"] = [str(cid) for cid in store.iterate()]
    store.put(blocks[0])  # the space freed by the clean-up is usable again
    report["after"] = store.has(blocks[0].cid)
    print(json.dumps(report))
    """
)


def test_a_full_disk_raises_blockstore_full_and_removes_the_staged_blocks(
    tmp_path: Path,
) -> None:
    """On a real 1 MiB tmpfs (a private mount namespace), a 2 MiB batch fails with
    BlockstoreFull, nothing is left in staging or in the store, and writing works again."""
    root = tmp_path / "small"
    root.mkdir()
    mount = f"mount -t tmpfs -o size=1m tmpfs {root}"
    command = ["unshare", "--mount", "sh", "-c", f'{mount} && exec "$0" -c "$1" "$2"']
    if shutil.which("unshare") is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the full-disk check needs root and unshare under CI")
        pytest.skip("needs root and unshare to mount a small tmpfs")
    done = subprocess.run(
        [*command, sys.executable, FULL_DISK, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode and "mount" in done.stderr and not os.environ.get("CI"):
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "no space left" in report["error"]
    assert report["staging"] == []
    assert report["stored"] == []
    assert report["after"] is True


# Durability --------------------------------------------------------------------------------

_LIBC = ctypes.CDLL(None, use_errno=True)


def _resident_pages(path: Path) -> int:
    """How many of the file's pages sit in the page cache (mincore(2) over a mapping)."""
    size = path.stat().st_size
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        flags = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
        start = ctypes.c_char.from_buffer(mapped)
        try:
            address = ctypes.c_void_p(ctypes.addressof(start))
            assert _LIBC.mincore(address, ctypes.c_size_t(size), flags) == 0, ctypes.get_errno()
        finally:
            del start
    return sum(flag & 1 for flag in flags)


def _unwritten_pages(root: Path) -> int:
    """Pages of stored blocks that are still only in memory: clean pages are dropped from the
    cache on request, pages not yet written back (dirty or in flight) are not."""
    unwritten = 0
    for path in (root / "blocks").rglob("*.data"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        unwritten += _resident_pages(path)
    return unwritten


@pytest.mark.parametrize("sync", ["syncfs", "fsync"])
def test_a_commit_returns_only_once_its_blocks_are_on_disk(tmp_path: Path, sync: str) -> None:
    """After a durable commit (both sync modes) every stored page has been written back; a
    store with durable=False returns with its pages still in memory (the check can fail)."""
    if "tmpfs" in _filesystem_type(tmp_path):
        pytest.skip("tmpfs pages are never written back")
    durable = FilesystemBlockstore(tmp_path / "durable", sync=sync)  # type: ignore[arg-type]
    assert durable.sync == sync
    with durable.batch() as batch:
        for block in STAGED:
            batch.put(block)
    assert _unwritten_pages(tmp_path / "durable") == 0
    fast = FilesystemBlockstore(tmp_path / "fast", durable=False)
    assert fast.sync is None
    with fast.batch() as batch:
        for block in STAGED:
            batch.put(block)
    assert _unwritten_pages(tmp_path / "fast") > 0


def _filesystem_type(path: Path) -> str:
    """The type of the filesystem mounted deepest above ``path`` (from /proc/mounts)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        mount_point, fs_type = line.split()[1:3]
        if str(path).startswith(mount_point) and len(mount_point) > len(best):
            best, kind = mount_point, fs_type
    return kind


@pytest.mark.parametrize("sync", ["syncfs", "fsync"])
def test_batches_committing_at_once_share_their_syncs(tmp_path: Path, sync: str) -> None:
    """Eight threads stage their own blocks and commit at the same moment: every block lands,
    and the commits were made durable in fewer sync rounds than there were batches."""
    store = FilesystemBlockstore(tmp_path, sync=sync)  # type: ignore[arg-type]
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            with store.batch() as batch:
                for number in range(40):
                    data = b"thread %d block %d;" % (index, number) * 1024
                    batch.put(Block(block_cid(data), data))
                start.wait(timeout=30)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(list(store.iterate())) == 8 * 40
    stats = store.commit_stats
    assert stats.batches == 8
    assert 1 <= stats.groups < 8
    assert list((tmp_path / "staging").iterdir()) == []


def test_a_batch_of_blocks_already_stored_still_waits_for_a_sync(tmp_path: Path) -> None:
    """Another writer's rename of the same block may not be durable yet, so a batch that
    found every block in place commits a sync round of its own (durable stores only)."""
    store = FilesystemBlockstore(tmp_path / "a")
    store.put(BLOCKS[9])
    before = store.commit_stats
    with store.batch() as batch:
        batch.put(BLOCKS[9])
    assert store.commit_stats == CommitStats(before.batches + 1, before.groups + 1)
    fast = FilesystemBlockstore(tmp_path / "b", durable=False)
    fast.put(BLOCKS[9])
    fast.put(BLOCKS[9])
    assert fast.commit_stats == CommitStats(1, 1)


def test_small_batches_stay_in_memory_until_they_commit(tmp_path: Path) -> None:
    """Blocks up to BATCH_BUFFER bytes are written once, at commit; past it they are staged
    as files as they come (so memory stays bounded), and a discard removes those files."""
    store = FilesystemBlockstore(tmp_path)
    staging = tmp_path / "staging"
    with store.batch() as batch:
        batch.put(BLOCKS[10])
        assert list(staging.iterdir()) == []
    assert store.get(BLOCKS[10].cid) == BLOCKS[10]
    with pytest.raises(KeyError), store.batch() as batch:
        for block in STAGED:
            batch.put(block)
        assert len(list(staging.rglob("*.data"))) > 10
        raise KeyError("a digest mismatch, say")
    assert list(staging.iterdir()) == []
    assert not any(store.has(block.cid) for block in STAGED)


def test_an_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="unknown sync 'fdatasync'"):
        FilesystemBlockstore(tmp_path, sync="fdatasync")  # type: ignore[arg-type]


def test_parse_cid_is_how_keys_are_made(tmp_path: Path) -> None:
    """A CIDv0 text and the CIDv1 of the same dag-pb bytes land on the same file."""
    store = FilesystemBlockstore(tmp_path)
    data = b"\x0a\x02\x08\x01"
    store.put(Block(parse_cid("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"), data))
    assert store.has(block_cid(data, codec=DAG_PB))
    assert len(list((tmp_path / "blocks").rglob("*.data"))) == 1
