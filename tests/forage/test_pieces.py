"""Aggregation into pieces, on SQLite and PostgreSQL, with archives imported for real into a
filesystem blockstore. What is shown: a built piece's file hashes (CommP, recomputed from the
file) to the recorded piece CID and padded size, reads as a valid CAR whose root directory
lists every member, and each member's recorded (offset, length) cuts out exactly that
archive's blocks; pieces fill up to the target size and a partial one waits for more archives
or for ``piece_max_wait``; a second run packs nothing twice; an archive bigger than the target
gets a piece of its own, one with missing blocks is skipped; a race on an archive ends in an
error with no file left; ``GET /pieces/{cid}`` serves the file with ranges; the job runs
through the worker."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.orm import Session, sessionmaker

from forage.archive.blocks import open_blockstore
from forage.cli import main
from forage.config import Config, load_config
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import Archive, Piece, PieceMember
from forage.filecoin.pieces import (
    BUILD_PIECES,
    PieceBuildError,
    build_piece,
    build_pieces,
    build_pieces_job,
    list_pieces,
    piece_path,
    plan_piece,
)
from forage.jobs import queue as jobs
from forage.jobs.queue import RetryPolicy
from forage.jobs.worker import JobContext, Worker
from forage.server.app import make_app
from storage import (
    FilesystemBlockstore,
    MemoryBlockstore,
    decode_pbnode,
    encode_car_header,
    import_file,
    parse_cid,
    piece_cid_v2,
    piece_commitment,
    read_car,
    read_file,
    walk_dag,
)
from tests.factories import make_archive

NOW = datetime(2025, 3, 1, tzinfo=UTC)
KIB = 1024


@dataclass
class Env:
    config: Config
    sessionmaker: sessionmaker[Session]
    blockstore: FilesystemBlockstore
    contents: dict[int, bytes]

    def archive(self, data: bytes, *, archived_at: datetime = NOW) -> int:
        """Import ``data`` into the blockstore and record an archived archive of it."""
        with self.blockstore.batch() as batch:
            result = import_file(data, sink=batch)
        with self.sessionmaker.begin() as session:
            row = make_archive(
                session, cid=str(result.cid), size=len(data), archived_at=archived_at
            )
            archive_id = row.id
        self.contents[archive_id] = data
        return archive_id


def make_env(tmp_path: Path, url: str, **filecoin: object) -> Env:
    settings = {"piece_target_size": 64 * KIB, "piece_min_fill": 0.9, **filecoin}
    lines = [f'[database]\nurl = "{url}"\n', f'[data]\ndir = "{tmp_path / "data"}"\n', "[filecoin]"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    (tmp_path / "forage.toml").write_text("\n".join(lines) + "\n")
    config = load_config(tmp_path / "forage.toml", environ={})
    engine = make_engine(config.database)
    return Env(config, make_sessionmaker(engine), open_blockstore(config), {})


@pytest.fixture
def env(tmp_path: Path, migrated_url: str) -> Iterator[Env]:
    built = make_env(tmp_path, migrated_url)
    yield built
    built.sessionmaker.kw["bind"].dispose()


def payload(seed: int, size: int) -> bytes:
    """Deterministic bytes that do not repeat within 256 KiB chunks."""
    block = b"".join(f"{seed}:{i};".encode() for i in range(size // 4 + 1))
    return block[:size]


def check_piece(env: Env, piece: Piece) -> list[PieceMember]:
    """Everything a storage provider or a verifier can check about a piece file."""
    path = piece_path(env.config, piece.piece_cid)
    raw = path.read_bytes()
    info = piece_commitment(raw, implementation="python" if len(raw) < 4096 else "auto")
    assert (info.cid_v1, info.padded_size, info.payload_size) == (
        piece.piece_cid,
        piece.padded_size,
        piece.car_size,
    )
    reader = read_car(io.BytesIO(raw))
    assert [str(root) for root in reader.roots] == [piece.car_root]
    blocks = {str(block.cid): block for block in reader}  # every block verified on the way
    root = decode_pbnode(blocks[piece.car_root].data)
    with env.sessionmaker() as session:
        members = list(
            session.scalars(
                sa.select(PieceMember)
                .where(PieceMember.piece_id == piece.id)
                .order_by(PieceMember.offset)
            )
        )
        cids = {m.archive_id: session.get(Archive, m.archive_id).cid for m in members}  # type: ignore[union-attr]
    listed = [
        link.cid
        for shard in root.links
        for link in decode_pbnode(blocks[str(shard.cid)].data).links
    ]
    assert [str(cid) for cid in listed] == [cids[m.archive_id] for m in members]
    for member in members:
        cid = parse_cid(cids[member.archive_id])
        extent = raw[member.offset : member.offset + member.length]
        sections = list(read_car(io.BytesIO(encode_car_header([cid]) + extent)))
        expected = [str(block.cid) for block in walk_dag(env.blockstore, cid)]
        assert [str(block.cid) for block in sections] == expected
        alone = MemoryBlockstore()
        for block in sections:
            alone.put(block)
        assert b"".join(read_file(alone, cid)) == env.contents[member.archive_id]
    return members


def pieces(env: Env) -> list[Piece]:
    with env.sessionmaker() as session:
        return list(session.scalars(sa.select(Piece).order_by(Piece.id)))


def test_built_piece_is_a_verifiable_car_of_its_members(env: Env) -> None:
    ids = [
        env.archive(b""),
        env.archive(payload(1, 900)),
        env.archive(payload(2, 600 * KIB)),  # three raw leaves under a dag-pb root
        env.archive(bytes(300 * KIB)),  # two leaves, the first chunk twice: stored once
    ]
    env.config = load_config(
        env.config.source, environ={"FORAGE_FILECOIN_PIECE_TARGET_SIZE": str(2 << 20)}
    )
    built = build_pieces(env.config, env.sessionmaker, env.blockstore, partial=True, now=NOW)
    assert [b.members for b in built] == [4]
    (piece,) = pieces(env)
    # A partial piece is padded to its own power of two, at most the target.
    assert (piece.piece_cid, piece.padded_size) == (built[0].piece_cid, 1 << 20)
    assert built[0].path == piece_path(env.config, piece.piece_cid)
    members = check_piece(env, piece)
    assert sorted(m.archive_id for m in members) == ids
    assert built[0].car_size == os.path.getsize(built[0].path)


def test_pieces_fill_to_the_target_and_a_partial_one_waits(env: Env) -> None:
    ids = [env.archive(payload(i, 10 * KIB)) for i in range(14)]
    built = build_pieces(env.config, env.sessionmaker, env.blockstore, now=NOW)
    capacity = 64 * KIB // 128 * 127
    assert len(built) == 2  # 6 archives of 10 KiB fill a 64 KiB piece; 2 left are too few
    for piece in pieces(env):
        assert piece.padded_size == 64 * KIB
        assert capacity - 11 * KIB < piece.car_size <= capacity  # no room left for one more
        check_piece(env, piece)
    with env.sessionmaker() as session:
        packed = set(session.scalars(sa.select(PieceMember.archive_id)))
    waiting = sorted(set(ids) - packed)
    assert len(waiting) == 2 and waiting == ids[-2:]
    # Not yet due: a second run an hour later builds nothing and packs nothing twice.
    assert (
        build_pieces(env.config, env.sessionmaker, env.blockstore, now=NOW + timedelta(hours=1))
        == []
    )
    # Once the oldest waiting archive has waited piece_max_wait (7 days), it goes out.
    late = build_pieces(env.config, env.sessionmaker, env.blockstore, now=NOW + timedelta(days=7))
    assert [b.members for b in late] == [2]
    (last,) = [p for p in pieces(env) if p.piece_cid == late[0].piece_cid]
    assert sorted(m.archive_id for m in check_piece(env, last)) == waiting
    assert build_pieces(env.config, env.sessionmaker, env.blockstore, partial=True, now=NOW) == []


def test_an_archive_bigger_than_the_target_gets_its_own_piece(env: Env) -> None:
    small = env.archive(payload(7, 5 * KIB))
    big = env.archive(payload(8, 300 * KIB))
    built = build_pieces(env.config, env.sessionmaker, env.blockstore, partial=True, now=NOW)
    assert [b.members for b in built] == [1, 1]
    by_size = sorted(pieces(env), key=lambda p: p.padded_size)
    assert [p.padded_size for p in by_size] == [8 * KIB, 512 * KIB]
    assert [[m.archive_id for m in check_piece(env, p)] for p in by_size] == [[small], [big]]


def test_archives_with_missing_blocks_are_skipped(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    good = env.archive(payload(3, 2 * KIB))
    broken = env.archive(payload(4, 3 * KIB))  # one block: its root is gone
    torn = env.archive(payload(5, 300 * KIB))  # two leaves: its second leaf is gone
    with env.sessionmaker() as session:
        cid = session.get(Archive, broken).cid  # type: ignore[union-attr]
        torn_cid = parse_cid(session.get(Archive, torn).cid)  # type: ignore[union-attr]
    env.blockstore.delete(parse_cid(cid))
    env.blockstore.delete(list(walk_dag(env.blockstore, torn_cid))[-1].cid)
    env.config = load_config(
        env.config.source, environ={"FORAGE_FILECOIN_PIECE_TARGET_SIZE": str(1 << 20)}
    )
    built = build_pieces(env.config, env.sessionmaker, env.blockstore, partial=True, now=NOW)
    assert [b.members for b in built] == [1]
    assert [m.archive_id for m in check_piece(env, pieces(env)[0])] == [good]
    assert f"archive {broken} ({cid}) cannot be packed" in caplog.text
    assert f"archive {torn} ({torn_cid}) cannot be read" in caplog.text
    assert "planning again without it" in caplog.text
    assert list((env.config.data.dir / "pieces").glob(".building-*")) == []


def test_a_race_on_an_archive_leaves_no_file(env: Env) -> None:
    env.archive(payload(5, 4 * KIB))
    plan = plan_piece(env.sessionmaker, env.blockstore, capacity=60 * KIB)
    build_piece(env.config, env.sessionmaker, env.blockstore, plan.members)
    extra = env.archive(payload(6, 4 * KIB))  # the second plan differs: a new piece CID
    rival = plan_piece(env.sessionmaker, env.blockstore, capacity=60 * KIB)
    assert [m.archive_id for m in rival.members] == [extra]
    with pytest.raises(PieceBuildError, match="another builder packed some of its archives"):
        build_piece(env.config, env.sessionmaker, env.blockstore, (*plan.members, *rival.members))
    assert len(pieces(env)) == 1
    files = sorted(p.name for p in (env.config.data.dir / "pieces").iterdir())
    assert files == [f"{pieces(env)[0].piece_cid}.car"]


def test_orphaned_files_are_removed_once_old(env: Env) -> None:
    directory = env.config.data.dir / "pieces"
    directory.mkdir(parents=True)
    old_temp, young_temp = directory / ".building-old.car", directory / ".building-young.car"
    unrecorded = directory / "baga6ea4seaqunrecorded.car"
    for path in (old_temp, young_temp, unrecorded):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    os.utime(old_temp, (hours_ago, hours_ago))
    os.utime(unrecorded, (hours_ago, hours_ago))
    build_pieces(env.config, env.sessionmaker, env.blockstore, now=datetime.now(UTC))
    assert sorted(p.name for p in directory.iterdir()) == [".building-young.car"]


async def test_get_pieces_serves_the_file_with_ranges(env: Env) -> None:
    env.archive(payload(9, 20 * KIB))
    (built,) = build_pieces(env.config, env.sessionmaker, env.blockstore, partial=True, now=NOW)
    raw = built.path.read_bytes()
    app = make_app(env.config, sessionmaker=env.sessionmaker, blockstore=env.blockstore)
    async with TestClient(TestServer(app)) as client:
        whole = await client.get(f"/pieces/{built.piece_cid}")
        assert whole.status == 200
        assert await whole.read() == raw
        assert whole.headers["Content-Type"] == "application/vnd.ipld.car; version=1"
        assert whole.headers["Accept-Ranges"] == "bytes"
        part = await client.get(f"/pieces/{built.piece_cid}", headers={"Range": "bytes=100-199"})
        assert part.status == 206
        assert await part.read() == raw[100:200]
        assert part.headers["Content-Range"] == f"bytes 100-199/{len(raw)}"
        head = await client.head(f"/piece/{built.piece_cid}")
        assert (head.status, int(head.headers["Content-Length"])) == (200, len(raw))
        commp = piece_commitment(raw).commp
        v2 = piece_cid_v2(commp, built.padded_size, payload_size=len(raw))
        assert await (await client.get(f"/pieces/{v2}")).read() == raw
        beyond = await client.get(
            f"/pieces/{built.piece_cid}", headers={"Range": f"bytes={len(raw)}-"}
        )
        assert beyond.status == 416
        unknown = piece_cid_v2(bytes(32), 1 << 20)  # well-formed, but no such piece here
        assert (await client.get(f"/pieces/{unknown}")).status == 404
        bad = await client.get("/pieces/bafkqaaa")  # a CID, but not of a piece
        assert bad.status == 400
        assert "not a piece CID" in (await bad.json())["error"]["message"]
        built.path.unlink()
        gone = await client.get(f"/pieces/{built.piece_cid}")
        assert gone.status == 404
        assert "its file is missing" in (await gone.json())["error"]["message"]


async def test_build_pieces_job_runs_in_the_worker(env: Env) -> None:
    for i in range(3):
        env.archive(payload(20 + i, 3 * KIB))
    with env.sessionmaker.begin() as session:
        jobs.enqueue(session, BUILD_PIECES, {"partial": True}, dedup_key=BUILD_PIECES)
    context = JobContext(env.config, env.sessionmaker, owner="test", blockstore=env.blockstore)
    worker = Worker(context, {BUILD_PIECES: build_pieces_job}, concurrency=1, policy=RetryPolicy())
    stats = await worker.run(mode="drain")
    assert (stats.done, stats.dead) == (1, 0)
    with env.sessionmaker() as session:
        (summary,) = list_pieces(session)
    assert (summary.members, summary.active_deals) == (3, 0)
    check_piece(env, pieces(env)[0])


def test_cli_builds_and_lists_pieces(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = datetime.now(UTC)  # archived just now: not yet due by piece_max_wait
    ids = [env.archive(payload(30 + i, 2 * KIB), archived_at=fresh) for i in range(2)]
    config = ["-c", str(env.config.source)]
    assert main([*config, "pieces", "build"]) == 0  # 2 small archives: too few, they wait
    assert "0 piece(s) built" in capsys.readouterr().err
    assert main([*config, "pieces", "build", "--partial"]) == 0
    out, err = capsys.readouterr()
    piece_cid, padded, car_size, members = out.split()
    assert "1 piece(s) built" in err and int(members) == len(ids)
    (piece,) = pieces(env)
    assert (piece.piece_cid, piece.padded_size, piece.car_size) == (
        piece_cid,
        int(padded),
        int(car_size),
    )
    assert main([*config, "pieces"]) == 0
    assert piece_cid in capsys.readouterr().out
