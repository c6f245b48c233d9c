"""The object store contract, on both implementations: a local directory and a real
S3-compatible server (``rclone serve s3`` on loopback, see ``tests/s3server.py``).

The same tests run on each; S3-only ones cover multipart uploads and the errors an operator
meets first (wrong secret, missing bucket, unreachable endpoint), which must name the bucket
and endpoint and never show the secret.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.errors import BlockstoreError, BlockstoreFull, ObjectNotFound, ObjectStoreUnavailable
from storage.objects import DirectoryObjects, ObjectStore
from storage.s3 import S3Objects
from tests.diskfull import fill, small_disk
from tests.s3server import BUCKET, S3Server, free_port


def s3_objects(server: S3Server, prefix: str, **options: object) -> S3Objects:
    return S3Objects(
        BUCKET,
        prefix,
        endpoint=server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["directory", "s3"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "directory":
        store: ObjectStore = DirectoryObjects(tmp_path / "objects")
    else:
        server = request.getfixturevalue("s3_server")
        store = s3_objects(server, request.getfixturevalue("s3_prefix"))
    try:
        yield store
    finally:
        store.close()


def test_both_are_object_stores_and_answer_a_check(objects: ObjectStore) -> None:
    assert isinstance(objects, ObjectStore)
    objects.check()


def test_put_then_read_ranges_size_list_and_delete(objects: ObjectStore) -> None:
    data = os.urandom(100_000)
    objects.put("packs/ab/cd/one.pack", data)
    objects.put("packs/ab/ef/two.pack", b"two")
    objects.put("other/three", b"three")
    assert objects.get_range("packs/ab/cd/one.pack", 0, 100_000) == data
    assert objects.get_range("packs/ab/cd/one.pack", 99_990, 10) == data[99_990:]
    assert objects.get_range("packs/ab/cd/one.pack", 4096, 1) == data[4096:4097]
    assert objects.size("packs/ab/cd/one.pack") == 100_000
    assert objects.size("packs/ab/cd/none.pack") is None
    assert sorted(objects.keys("packs/")) == ["packs/ab/cd/one.pack", "packs/ab/ef/two.pack"]
    assert sorted(objects.keys()) == [
        "other/three",
        "packs/ab/cd/one.pack",
        "packs/ab/ef/two.pack",
    ]
    objects.delete("packs/ab/cd/one.pack")
    objects.delete("packs/ab/cd/one.pack")  # absent: nothing happens
    assert objects.size("packs/ab/cd/one.pack") is None
    assert sorted(objects.keys("packs/")) == ["packs/ab/ef/two.pack"]


def test_a_put_replaces_the_whole_object(objects: ObjectStore, tmp_path: Path) -> None:
    objects.put("a/b", b"x" * 5000)
    source = tmp_path / "source"
    source.write_bytes(b"short")
    objects.put("a/b", source)
    assert objects.size("a/b") == 5
    assert objects.get_range("a/b", 0, 5) == b"short"


def test_absent_objects_and_ranges_past_the_end_are_errors(objects: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        objects.get_range("no/such", 0, 10)
    objects.put("a/b", b"0123456789")
    with pytest.raises(BlockstoreError) as short:
        objects.get_range("a/b", 8, 5)
    assert not isinstance(short.value, ObjectNotFound)
    with pytest.raises(BlockstoreError) as past:
        objects.get_range("a/b", 20, 5)
    assert not isinstance(past.value, ObjectNotFound)


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a//b", "a/../b", ".hidden", "a b"])
def test_keys_that_could_escape_are_refused(objects: ObjectStore, key: str) -> None:
    with pytest.raises(BlockstoreError, match="invalid object key"):
        objects.put(key, b"data")
    assert list(objects.keys()) == []


def test_a_failed_put_leaves_nothing(objects: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(BlockstoreError):
        objects.put("a/b", tmp_path / "missing-source")
    assert objects.size("a/b") is None
    assert list(objects.keys()) == []


def test_a_directory_put_leaves_no_temporary_file(tmp_path: Path) -> None:
    objects = DirectoryObjects(tmp_path)
    source = tmp_path.parent / f"{tmp_path.name}-source"
    source.write_bytes(os.urandom(3 << 20))
    objects.put("x/y/z", source)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["z"]
    assert (tmp_path / "x/y/z").read_bytes() == source.read_bytes()


def test_a_full_disk_is_blockstore_full_and_leaves_nothing(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        objects = DirectoryObjects(disk / "objects")
        fill(disk)
        with pytest.raises(BlockstoreFull):
            objects.put("a/b", os.urandom(1 << 20))
        assert list(objects.keys()) == []
        assert [p.name for p in (disk / "objects").rglob("*") if p.is_file()] == []


def test_a_large_file_goes_up_in_parts_and_reads_back_across_them(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    part = 5 << 20  # S3's smallest part
    objects = s3_objects(s3_server, s3_prefix, multipart_threshold=part, part_size=part)
    source = tmp_path / "large"
    data = os.urandom(2 * part + 12345)
    source.write_bytes(data)
    try:
        objects.put("big/object", source)
        assert objects.size("big/object") == len(data)
        for offset in (0, part - 10, 2 * part - 1, len(data) - 100):
            assert objects.get_range("big/object", offset, 100) == data[offset : offset + 100]
        # What the server keeps is one whole object, not parts.
        stored = s3_server.root / BUCKET / s3_prefix / "big" / "object"
        assert stored.read_bytes() == data
    finally:
        objects.close()


def test_a_wrong_secret_names_the_bucket_and_endpoint_never_the_secret(
    s3_server: S3Server,
) -> None:
    secret = "not-the-right-secret-42"
    objects = S3Objects(
        BUCKET,
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=secret,
    )
    try:
        with pytest.raises(BlockstoreError) as refused:
            objects.check()
        with pytest.raises(BlockstoreError) as refused_put:
            objects.put("a", b"data")
    finally:
        objects.close()
    for error in (refused.value, refused_put.value):
        message = str(error)
        assert not isinstance(error, ObjectStoreUnavailable)  # not worth retrying as is
        assert f"s3://{BUCKET}" in message and s3_server.endpoint in message
        assert "access refused" in message
        assert secret not in message
    assert secret not in repr(objects)


def test_a_missing_bucket_is_named(s3_server: S3Server) -> None:
    objects = S3Objects(
        "no-such-bucket",
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    try:
        with pytest.raises(BlockstoreError, match="bucket 'no-such-bucket' does not exist"):
            objects.check()
        with pytest.raises(BlockstoreError, match="bucket 'no-such-bucket' does not exist"):
            objects.put("a", b"data")
    finally:
        objects.close()


def test_an_unreachable_endpoint_is_unavailable_and_named() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    objects = S3Objects(
        BUCKET, endpoint=endpoint, access_key="a", secret_key="b", timeout=2, attempts=1
    )
    try:
        with pytest.raises(ObjectStoreUnavailable, match="endpoint unreachable") as down:
            objects.get_range("a", 0, 1)
    finally:
        objects.close()
    assert endpoint in str(down.value)
