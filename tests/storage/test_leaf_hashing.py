"""Leaves hashed on several threads (storage.unixfs.leaf_digests) give the very CIDs of the
one-thread path: the published vectors, and random files around every boundary (one leaf,
one read of 16 leaves, one full node of 174 links), CIDv1 and the dag-pb nodes emitted for a
CAR's first pass alike.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading

import pytest

from storage import MemoryBlockstore, import_file, unixfs
from storage.unixfs import UnixFSImporter, leaf_digests
from tests.vectors import content, load

LEAF = 262_144
SIZES = [0, 1, LEAF - 1, LEAF, LEAF + 1, 16 * LEAF, 16 * LEAF + 1, 33 * LEAF - 1]
#: Small leaves reach the 174-link node boundary in little data.
SMALL = 1000


@pytest.fixture(autouse=True)
def _several_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parallel path whatever this machine's cores: on one core import_file would take
    the one-thread path and these tests would compare it with itself."""
    monkeypatch.setattr(unixfs, "hash_workers", lambda: 4)


def one_thread(data: bytes, *, chunk_size: int = LEAF) -> UnixFSImporter:
    importer = UnixFSImporter(emit="none", chunk_size=chunk_size)
    for at in range(0, len(data), 1 << 20):
        importer.update(data[at : at + (1 << 20)])
    importer.finalize()
    return importer


@pytest.mark.parametrize(
    "vector", [v for v in load("unixfs") if v["size"] <= 20 * LEAF], ids=lambda v: str(v["size"])
)
def test_the_vectors_hold_when_leaves_are_hashed_in_parallel(vector: dict[str, object]) -> None:
    data = content(str(vector["content"]), int(str(vector["size"])))
    assert str(import_file(io.BytesIO(data)).cid) == vector["cid_v1_raw_leaves"]


@pytest.mark.parametrize("size", SIZES)
def test_parallel_and_one_thread_agree(size: int) -> None:
    data = random.Random(size).randbytes(size)
    expected = one_thread(data).result
    assert import_file(io.BytesIO(data)) == expected


@pytest.mark.parametrize("leaves", [174, 175, 174 * 174, 174 * 174 + 1])
def test_node_boundaries_agree(leaves: int) -> None:
    data = random.Random(leaves).randbytes(leaves * SMALL - 3)
    expected = one_thread(data, chunk_size=SMALL).result
    assert import_file(io.BytesIO(data), chunk_size=SMALL) == expected


def test_leaves_are_hashed_on_other_threads_in_file_order() -> None:
    data = random.Random(3).randbytes(40 * LEAF + 5)
    seen: set[str] = set()
    real = hashlib.sha256

    def spy(chunk: memoryview) -> bytes:
        seen.add(threading.current_thread().name)
        return real(chunk).digest()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("storage.unixfs._sha256", spy)
        digests = list(leaf_digests(io.BytesIO(data), LEAF, 2))
    assert [length for _, length in digests] == [LEAF] * 40 + [5]
    assert [d for d, _ in digests] == [
        real(data[at : at + LEAF]).digest() for at in range(0, len(data), LEAF)
    ]
    assert seen and all(name.startswith("leaf") for name in seen)


def test_a_cars_internal_nodes_are_the_same_blocks() -> None:
    data = random.Random(4).randbytes(200 * SMALL + 9)
    threaded, single = MemoryBlockstore(), MemoryBlockstore()
    a = import_file(io.BytesIO(data), sink=threaded, leaves=False, chunk_size=SMALL)
    b = import_file(iter([data]), sink=single, leaves=False, chunk_size=SMALL)  # one thread
    assert a == b
    assert len(threaded) == len(single) == 3  # two full nodes of 174 leaves and the root
    for cid in single.iterate():
        assert threaded.get(cid).data == single.get(cid).data
