"""Aggregation: pack archives that are in no piece yet into Filecoin pieces.

A piece is one CARv1 file under ``<data.dir>/pieces/<piece CID>.car``, made to fit a deal of
``filecoin.piece_target_size`` padded bytes (its payload at most 127/128 of that), and
served to storage providers at ``GET /pieces/{piece_cid}`` (:mod:`forage.server.pieces`).
Its layout, in the depth-first order of a "filecoin-deterministic" CAR:

- the header, whose one root is a UnixFS directory (dag-pb);
- the root directory block, linking shard directories ``000000``, ``000001``... of at most
  :data:`SHARD_ENTRIES` entries each (so no directory block nears the 1 MiB block limit);
- for each shard: its directory block, then for each member archive, in archive-id order,
  every block of its DAG (depth-first, each block once *within the member*). The shard
  entry names the member ``<archive id, 12 digits>-<filename>``, with the DAG size as Tsize.

Each member's blocks are one contiguous run of CAR sections, recorded in ``piece_members``
as its byte ``offset`` and ``length`` in the CAR (= the deal payload): anyone holding the piece
can cut that range out and read it as the CAR sections of that archive, and anyone can check
the whole piece against its piece CID. The piece CID (CommP, :mod:`storage.commp`) is
computed while the CAR is written, in one pass; the file is written under a temporary name,
renamed to its piece CID, and only then recorded, with its members, in one transaction (the
unique ``piece_members.archive_id`` makes a race between two builders end in a rolled-back
transaction, whose file is removed).

How far this follows FRC-0058 (Verifiable Data Aggregation,
https://github.com/filecoin-project/FIPs/blob/master/FRCs/frc-0058.md): it takes the goal
that every member be found inside the deal by offset and length, and that the deal's data be
an ordinary CAR that storage providers index without aggregation support. It does *not*
make each member a separately committed data segment (Fr32-padded to a power of two, aligned,
listed in a Data Segment Index at the end of the deal): for package archives, mostly a few
KiB to a few MiB, that alignment costs about 40% of the space on average, the index limits a
1 GiB deal to 8192 members, and the deal would no longer be a CAR. So there are no
per-member piece CIDs and no inclusion proofs (PoDSI); a member is verified by fetching the
piece (or its byte range) and checking blocks against CIDs and the piece against its CID.

Planning reads only each member's internal DAG nodes (raw leaves' sizes come from their
links), so it is cheap; writing streams every block once. Memory holds the plan (about 200
bytes per member) and one block, never a member's bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa
from multiformats import CID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from forage.config import Config
from forage.db.engine import utcnow
from forage.db.models import Archive, ArchiveStatus, Artifact, Deal, DealState, Piece, PieceMember
from forage.errors import JobError, PermanentJobError
from forage.jobs.queue import Job
from forage.jobs.worker import JobContext
from storage import (
    BlockNotFound,
    BlockSource,
    Blockstore,
    CommP,
    PBLink,
    PBNode,
    StorageError,
    UnixFSData,
    block_cid,
    decode_pbnode,
    encode_car_header,
    encode_pbnode,
    encode_unixfs,
    parse_cid,
    walk_dag,
)

log = logging.getLogger(__name__)

#: Job kind: build every piece that is due (payload ``{}``, or ``{"partial": true}``).
BUILD_PIECES = "build_pieces"
PIECES_DIR = "pieces"
#: Entries per shard directory, and shards in the root: at most about a million members.
SHARD_ENTRIES = 1024
MAX_SHARDS = 1024
#: Codes of the multicodecs met in archive DAGs.
_RAW, _DAG_PB, _IDENTITY = 0x55, 0x70, 0x00
#: The UnixFS ``Data`` of a directory (Type = 1, https://specs.ipfs.tech/unixfs/).
_DIRECTORY_DATA = encode_unixfs(UnixFSData(type=1))
#: Upper bounds on directory overhead not counted member by member: a shard's own section
#: (length prefix, 36-byte CID, Data field) and its link in the root; the root's section.
_SHARD_OVERHEAD = 128
_ROOT_OVERHEAD = 64
#: Archives read per planning query.
_BATCH = 500
#: Temporary piece files older than this are left by dead builders and removed.
_ORPHAN_AGE = timedelta(hours=1)
_WRITE_BUFFER = 1 << 20


class PieceBuildError(JobError):
    """A piece could not be built (the blockstore disagrees with the plan, a write failed);
    ``archive_id`` names the member at fault, when one is."""

    def __init__(self, message: str, *, archive_id: int | None = None) -> None:
        super().__init__(message)
        self.archive_id = archive_id


@dataclass(frozen=True, slots=True)
class PlannedMember:
    """An archive chosen for a piece: its DAG size (for the directory) and CAR extent."""

    archive_id: int
    cid: CID
    name: str
    dag_size: int
    extent: int
    archived_at: datetime | None


@dataclass(frozen=True, slots=True)
class BuiltPiece:
    """A piece written and recorded."""

    piece_id: int
    piece_cid: str
    padded_size: int
    car_root: str
    car_size: int
    members: int
    path: Path


def pieces_dir(config: Config) -> Path:
    """Where piece files live."""
    return config.data.dir / PIECES_DIR


def piece_path(config: Config, piece_cid: str) -> Path:
    """The file of a piece, named by its (v1) piece CID."""
    return pieces_dir(config) / f"{parse_cid(piece_cid)}.car"


def _archive_cid(text: str) -> CID:
    """Parse an archive's CID; base32 CIDv1 text (what archives store) skips multiformats'
    slow text path (about 5 ms a CID), which matters when planning a million members."""
    if text.startswith("b") and text[1:].islower():
        body = text[1:].upper()
        try:
            return parse_cid(base64.b32decode(body + "=" * (-len(body) % 8)))
        except binascii.Error:
            pass
    return parse_cid(text)


def member_name(archive_id: int, filename: str) -> str:
    """A member's directory entry: unique, sorted like archive ids, readable."""
    return f"{archive_id:012d}-{filename.replace('/', '_')}"


def _uvarint(value: int) -> bytes:
    """Unsigned LEB128, the CAR section length prefix (multiformats' encoder is ~20x slower)."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _section_size(cid_length: int, data_length: int) -> int:
    return len(_uvarint(cid_length + data_length)) + cid_length + data_length


def member_size(source: Blockstore, cid: CID, *, size: int | None = None) -> tuple[int, int]:
    """``(CAR extent, DAG size)`` of an archive, reading only its internal nodes.

    The extent counts each distinct block once, as the piece writer (``walk_dag``) does; the
    DAG size is the root's cumulative size (Tsize). A raw leaf's size comes from its parent's
    link, and a raw root's (a one-chunk file) from ``size``, the archive's; the writer checks
    them.
    """
    root = parse_cid(cid)
    extent, seen = 0, set()
    stack: list[tuple[CID, int | None]] = [(root, size)]
    dag_size = 0
    while stack:
        node, size = stack.pop()
        key = (node.codec.code, bytes(node.digest))
        if key in seen:
            continue
        seen.add(key)
        cid_length = len(bytes(node))
        if node.hashfun.code == _IDENTITY:
            data_length = len(bytes(node.raw_digest))
        elif node.codec.code == _RAW and size is not None:
            if node == root and not source.has(node):
                raise BlockNotFound(node)
            data_length = size
        else:
            block = source.get(node)
            data_length = len(block.data)
            if node.codec.code == _DAG_PB:
                links = decode_pbnode(block.data).links
                if node == root:
                    dag_size = data_length + sum(link.tsize or 0 for link in links)
                stack.extend((link.cid, link.tsize) for link in reversed(links))
        if node == root and node.codec.code != _DAG_PB:
            dag_size = data_length
        extent += _section_size(cid_length, data_length)
    return extent, dag_size


def _link_size(member: PlannedMember) -> int:
    return len(encode_pbnode(PBNode(links=(_member_link(member),))))


def _member_link(member: PlannedMember) -> PBLink:
    return PBLink(hash=bytes(member.cid), name=member.name, tsize=member.dag_size)


def _candidates(
    session: Session, after: int
) -> Sequence[sa.Row[tuple[int, str, int, str, datetime]]]:
    packed = sa.select(PieceMember.archive_id).where(PieceMember.archive_id == Archive.id)
    return session.execute(
        sa.select(Archive.id, Archive.cid, Archive.size, Artifact.filename, Archive.archived_at)
        .join(Artifact, Artifact.id == Archive.artifact_id)
        .where(
            Archive.status == ArchiveStatus.ARCHIVED,
            Archive.cid.is_not(None),
            Archive.id > after,
            ~packed.exists(),
        )
        .order_by(Archive.id)
        .limit(_BATCH)
    ).all()


@dataclass(frozen=True, slots=True)
class Plan:
    """The members of the next piece, and whether more were waiting than fit."""

    members: tuple[PlannedMember, ...]
    estimate: int
    full: bool


def plan_piece(
    sessionmaker: sessionmaker[Session],
    source: Blockstore,
    *,
    capacity: int,
    exclude: Collection[int] = (),
) -> Plan:
    """Choose the archives of the next piece: in id order, as many as fit in ``capacity``
    payload bytes. An archive too big for any piece of this size goes alone into a bigger
    one. An archive whose blocks are missing is skipped (and logged), as are ``exclude``."""
    header = len(encode_car_header([block_cid(b"", codec=_DAG_PB)]))
    total = header + _ROOT_OVERHEAD
    members: list[PlannedMember] = []
    after = 0
    while True:
        with sessionmaker() as session:
            rows = _candidates(session, after)
        if not rows:
            return Plan(tuple(members), total, full=False)
        for archive_id, cid_text, size, filename, archived_at in rows:
            after = archive_id
            if archive_id in exclude:
                continue
            try:
                cid = _archive_cid(cid_text)
                extent, dag_size = member_size(source, cid, size=size)
            except (StorageError, OSError) as exc:
                log.error("archive %d (%s) cannot be packed: %s", archive_id, cid_text, exc)
                continue
            member = PlannedMember(
                archive_id, cid, member_name(archive_id, filename), dag_size, extent, archived_at
            )
            added = extent + _link_size(member)
            if len(members) % SHARD_ENTRIES == 0:
                added += _SHARD_OVERHEAD
            if members and (total + added > capacity or len(members) >= SHARD_ENTRIES * MAX_SHARDS):
                return Plan(tuple(members), total, full=True)
            members.append(member)
            total += added
            if total > capacity:  # one archive bigger than a whole piece: it goes alone
                return Plan(tuple(members), total, full=True)


class _PieceWriter:
    """Writes CAR bytes to a file and into CommP at once, counting them."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._buffer = bytearray()
        self.commp = CommP()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= _WRITE_BUFFER:
            self.flush()

    def section(self, cid: bytes, data: bytes) -> None:
        self.write(_uvarint(len(cid) + len(data)))
        self.write(cid)
        self.write(data)

    def flush(self) -> None:
        if self._buffer:
            self._out.write(self._buffer)
            self.commp.update(self._buffer)
            self._buffer = bytearray()


def _directory(links: Sequence[PBLink]) -> tuple[CID, bytes]:
    data = encode_pbnode(PBNode(links=tuple(links), data=_DIRECTORY_DATA))
    return block_cid(data, codec=_DAG_PB), data


def _shards(members: Sequence[PlannedMember]) -> Iterator[Sequence[PlannedMember]]:
    for start in range(0, len(members), SHARD_ENTRIES):
        yield members[start : start + SHARD_ENTRIES]


def _root(members: Sequence[PlannedMember]) -> tuple[CID, bytes]:
    links = []
    for index, shard in enumerate(_shards(members)):
        cid, data = _directory([_member_link(m) for m in shard])
        tsize = len(data) + sum(m.dag_size for m in shard)
        links.append(PBLink(hash=bytes(cid), name=f"{index:06d}", tsize=tsize))
    return _directory(links)


@dataclass(frozen=True, slots=True)
class _Written:
    root: CID
    size: int
    commp: CommP
    extents: tuple[tuple[int, int, int], ...]


def write_piece(source: BlockSource, members: Sequence[PlannedMember], out: BinaryIO) -> _Written:
    """Write the CAR of ``members`` to ``out``; return its root, size, CommP and each
    member's ``(archive id, offset, length)``."""
    writer = _PieceWriter(out)
    root, root_data = _root(members)
    writer.write(encode_car_header([root]))
    writer.section(bytes(root), root_data)
    extents = []
    for shard in _shards(members):
        cid, data = _directory([_member_link(m) for m in shard])
        writer.section(bytes(cid), data)
        for member in shard:
            offset = writer.size
            try:
                for block in walk_dag(source, member.cid):
                    writer.section(bytes(block.cid), block.data)
            except StorageError as exc:
                raise PieceBuildError(
                    f"archive {member.archive_id} ({member.cid}) cannot be read: {exc}",
                    archive_id=member.archive_id,
                ) from exc
            length = writer.size - offset
            if length != member.extent:
                raise PieceBuildError(
                    f"archive {member.archive_id} ({member.cid}) wrote {length} bytes, its "
                    f"DAG's links and size promised {member.extent}",
                    archive_id=member.archive_id,
                )
            extents.append((member.archive_id, offset, length))
    writer.flush()
    return _Written(root, writer.size, writer.commp, tuple(extents))


def _record(
    sessionmaker: sessionmaker[Session], written: _Written, piece_cid: str, padded: int
) -> int:
    with sessionmaker.begin() as session:
        piece = Piece(
            piece_cid=piece_cid,
            padded_size=padded,
            car_root=str(written.root),
            car_size=written.size,
        )
        session.add(piece)
        session.flush()
        session.execute(
            sa.insert(PieceMember),
            [
                {"piece_id": piece.id, "archive_id": a, "offset": o, "length": n}
                for a, o, n in written.extents
            ],
        )
        return piece.id


def build_piece(
    config: Config,
    sessionmaker: sessionmaker[Session],
    source: Blockstore,
    members: Sequence[PlannedMember],
) -> BuiltPiece:
    """Write the piece of ``members``, name it by its piece CID, and record it."""
    directory = pieces_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".building-{uuid.uuid4().hex}.car"
    try:
        with open(temporary, "wb") as out:
            written = write_piece(source, members, out)
            out.flush()
            os.fsync(out.fileno())
        info = written.commp.piece_info()
        path = piece_path(config, info.cid_v1)
        os.replace(temporary, path)
    except PieceBuildError:
        temporary.unlink(missing_ok=True)
        raise
    except (OSError, StorageError) as exc:
        temporary.unlink(missing_ok=True)
        raise PieceBuildError(f"piece of {len(members)} archives not written: {exc}") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    try:
        piece_id = _record(sessionmaker, written, info.cid_v1, info.padded_size)
    except IntegrityError as exc:
        with sessionmaker() as session:
            kept = session.execute(
                sa.select(Piece.id).where(Piece.piece_cid == info.cid_v1)
            ).scalar_one_or_none()
        if kept is None:
            path.unlink(missing_ok=True)
        raise PieceBuildError(
            f"piece {info.cid_v1} not recorded: another builder packed some of its archives"
        ) from exc
    log.info(
        "piece %s built: %d archives, %d CAR bytes in %d padded, root %s",
        info.cid_v1,
        len(members),
        written.size,
        info.padded_size,
        written.root,
    )
    return BuiltPiece(
        piece_id, info.cid_v1, info.padded_size, str(written.root), written.size, len(members), path
    )


def remove_orphans(config: Config, sessionmaker: sessionmaker[Session], *, now: datetime) -> int:
    """Remove piece files a killed builder left: temporary ones, and ones never recorded,
    once older than an hour (younger ones may belong to a builder still at work)."""
    directory = pieces_dir(config)
    if not directory.is_dir():
        return 0
    cutoff = (now - _ORPHAN_AGE).timestamp()
    removed = 0
    for path in directory.glob("*.car"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime > cutoff:
                continue
            if not path.name.startswith(".building-"):
                with sessionmaker() as session:
                    known = session.execute(
                        sa.select(Piece.id).where(Piece.piece_cid == path.name[: -len(".car")])
                    ).first()
                if known is not None:
                    continue
            path.unlink()
            removed += 1
            log.warning("removed orphaned piece file %s", path.name)
    return removed


def build_pieces(
    config: Config,
    sessionmaker: sessionmaker[Session],
    source: Blockstore,
    *,
    partial: bool = False,
    now: datetime | None = None,
    progress: Callable[[BuiltPiece], object] | None = None,
) -> list[BuiltPiece]:
    """Build every piece that is due: each full one, then the last partial one if it reaches
    ``piece_min_fill``, its oldest archive has waited ``piece_max_wait``, or ``partial``;
    ``progress(piece)`` after each one built."""
    filecoin = config.filecoin
    now = now or utcnow()
    remove_orphans(config, sessionmaker, now=now)
    capacity = filecoin.piece_target_size // 128 * 127
    built: list[BuiltPiece] = []
    broken: set[int] = set()
    while True:
        plan = plan_piece(sessionmaker, source, capacity=capacity, exclude=broken)
        if not plan.members:
            return built
        if not plan.full and not partial:
            oldest = min((m.archived_at for m in plan.members if m.archived_at), default=now)
            waited = now - oldest >= timedelta(seconds=filecoin.piece_max_wait)
            if plan.estimate < filecoin.piece_min_fill * capacity and not waited:
                log.info(
                    "%d archives (about %d bytes) wait for a fuller piece",
                    len(plan.members),
                    plan.estimate,
                )
                return built
        try:
            built.append(build_piece(config, sessionmaker, source, plan.members))
            if progress is not None:
                progress(built[-1])
        except PieceBuildError as exc:
            if exc.archive_id is None or exc.archive_id in broken:
                raise
            log.error("%s; planning again without it", exc)
            broken.add(exc.archive_id)
            continue
        if not plan.full:
            return built


async def build_pieces_job(ctx: JobContext, job: Job) -> None:
    """Handler of ``build_pieces`` jobs."""
    if ctx.blockstore is None:
        raise PermanentJobError("build_pieces needs the blockstore")
    await asyncio.to_thread(
        build_pieces,
        ctx.config,
        ctx.sessionmaker,
        ctx.blockstore,
        partial=bool(job.payload.get("partial", False)),
    )


@dataclass(frozen=True, slots=True)
class PieceSummary:
    """A piece with its member count and deals, for listings."""

    piece_cid: str
    padded_size: int
    car_size: int
    car_root: str
    members: int
    active_deals: int
    created_at: datetime


def list_pieces(session: Session, *, limit: int = 100) -> list[PieceSummary]:
    """The newest pieces first."""
    members = (
        sa.select(sa.func.count())
        .where(PieceMember.piece_id == Piece.id)
        .correlate(Piece)
        .scalar_subquery()
    )
    active = (
        sa.select(sa.func.count(sa.distinct(Deal.deal_id)))
        .where(Deal.piece_id == Piece.id, Deal.state == DealState.ACTIVE)
        .correlate(Piece)
        .scalar_subquery()
    )
    rows = session.execute(
        sa.select(Piece, members, active).order_by(Piece.id.desc()).limit(limit)
    ).all()
    return [
        PieceSummary(p.piece_cid, p.padded_size, p.car_size, p.car_root, m, a, p.created_at)
        for p, m, a in rows
    ]
