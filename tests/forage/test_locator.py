"""The block locator in Forage's database (``forage.archive.locator``), on SQLite and
PostgreSQL: the ``BlockLocator`` contract, several hosts recording at once, and a packed
store (local packs here; packs in S3 in ``test_s3_archive``) that uses it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from forage.archive.locator import DatabaseLocator
from forage.db.engine import make_engine
from forage.db.packs import BlockPack
from storage import PackedBlockstore, import_file, read_file
from storage.errors import BlockstoreError
from storage.locator import BlockLocation, BlockLocator
from storage.packformat import IndexEntry


@pytest.fixture
def locator(migrated_url: str) -> Iterator[DatabaseLocator]:
    located = DatabaseLocator(make_engine(migrated_url))
    try:
        yield located
    finally:
        located.close()


def entries(*multihashes: bytes, length: int = 10) -> list[IndexEntry]:
    return [IndexEntry(m, i * length, length) for i, m in enumerate(multihashes)]


PACK_A, PACK_B = "aa" * 32, "bb" * 32


def test_it_is_a_block_locator(locator: DatabaseLocator) -> None:
    assert isinstance(locator, BlockLocator)


def test_record_find_forget_and_record_again(locator: DatabaseLocator) -> None:
    assert locator.find(b"\x12\x20one") is None
    locator.record(PACK_A, entries(b"\x12\x20one", b"\x12\x20two"))
    assert locator.find(b"\x12\x20two") == BlockLocation(PACK_A, 10, 10)
    assert locator.recorded(PACK_A) and not locator.recorded(PACK_B)
    # A block already located stays where it is...
    locator.record(PACK_B, entries(b"\x12\x20two", b"\x12\x20six", length=7))
    assert locator.find(b"\x12\x20two") == BlockLocation(PACK_A, 10, 10)
    assert locator.find(b"\x12\x20six") == BlockLocation(PACK_B, 7, 7)
    # ...unless it was deleted: then the new pack holds it.
    locator.forget([b"\x12\x20one", b"\x12\x20two"])
    assert locator.find(b"\x12\x20one") is None
    assert sorted(locator.multihashes()) == [b"\x12\x20six"]
    locator.record(PACK_B, entries(b"\x12\x20two", b"\x12\x20six", length=7))
    assert locator.find(b"\x12\x20two") == BlockLocation(PACK_B, 0, 7)
    locator.record(PACK_B, entries(b"\x12\x20two", b"\x12\x20six", length=7))  # idempotent
    assert sorted(locator.multihashes()) == [b"\x12\x20six", b"\x12\x20two"]


def test_expected_packs_until_recorded_or_abandoned(locator: DatabaseLocator) -> None:
    before = time.time()
    locator.expect([PACK_A, PACK_B])
    locator.expect([PACK_A])  # noted twice: one note
    noted = dict(locator.expected())
    assert sorted(noted) == [PACK_A, PACK_B]
    assert all(before - 1 <= when <= time.time() + 1 for when in noted.values())
    locator.record(PACK_A, entries(b"\x12\x20one"))
    assert [name for name, _ in locator.expected()] == [PACK_B]
    locator.abandon(PACK_A)  # recorded: not abandoned
    assert locator.recorded(PACK_A)
    locator.abandon(PACK_B)
    assert locator.expected() == [] and not locator.recorded(PACK_B)


def test_multihashes_pages_through_many_blocks(locator: DatabaseLocator) -> None:
    import forage.archive.locator as module

    many = [b"\x12\x20" + i.to_bytes(4, "big") for i in range(25)]
    locator.record(PACK_A, entries(*many))
    original, module.PAGE = module.PAGE, 10
    try:
        assert list(locator.multihashes()) == sorted(many)
    finally:
        module.PAGE = original


def test_hosts_recording_the_same_blocks_at_once_agree(migrated_url: str) -> None:
    """Two hosts (each its own engine) record packs sharing blocks concurrently: both succeed
    and every block ends up located exactly once, in one of the two packs."""
    shared = [b"\x12\x20s" + i.to_bytes(4, "big") for i in range(500)]
    hosts = [DatabaseLocator(make_engine(migrated_url)) for _ in range(2)]
    errors: list[BaseException] = []

    def write(index: int) -> None:
        name = ("cc" if index else "dd") * 32
        try:
            hosts[index].expect([name])
            hosts[index].record(name, entries(*shared, f"own{index}".encode()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        found = {hosts[0].find(m).pack for m in shared}  # type: ignore[union-attr]
        assert found <= {"cc" * 32, "dd" * 32} and len(found) >= 1
        assert len(list(hosts[1].multihashes())) == len(shared) + 2
        assert hosts[1].expected() == []
    finally:
        for host in hosts:
            host.close()


def test_a_packed_store_keeps_its_locator_in_the_database(
    migrated_url: str, tmp_path: Path
) -> None:
    engine = make_engine(migrated_url)
    store = PackedBlockstore(tmp_path / "blocks", durable=False, locator=DatabaseLocator(engine))
    data = bytes(range(256)) * 4000
    with store.batch() as batch:
        root = import_file(data, sink=batch).cid
    assert b"".join(read_file(store, root)) == data
    assert not (tmp_path / "blocks" / "locator.sqlite").exists()
    with engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(BlockPack)) == 1
    store.close()


def test_an_unreachable_database_is_a_blockstore_error_without_the_password() -> None:
    engine = make_engine("postgresql://forage:hunter2@127.0.0.1:1/forage")
    locator = DatabaseLocator(engine)
    with pytest.raises(BlockstoreError, match="block locator in postgresql") as failed:
        locator.find(b"\x12\x20x")
    assert "hunter2" not in str(failed.value)
    locator.close()
