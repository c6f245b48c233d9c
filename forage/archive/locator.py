"""``DatabaseLocator``: the :class:`storage.locator.BlockLocator` of a packed blockstore kept
in Forage's own database, so that every host sharing the blockstore's bucket finds every
block (the SQLite locator beside the packs serves the processes of one host only).

Rows live in ``block_packs`` and ``pack_blocks`` (:mod:`forage.db.packs`, migration 0009) and
are read and written with SQLAlchemy Core on a small engine of the locator's own; PostgreSQL
is what several hosts share, and the same code runs on SQLite (one host, packs local or in a
bucket). The contract is the protocol's:

- ``find`` answers only for recorded, undeleted blocks (one indexed query);
- ``record`` is one transaction: the pack's row upserted as recorded, its blocks inserted,
  a block already located kept where it is unless it was deleted (then it moves);
- ``expect`` commits before it returns (a committed PostgreSQL transaction is durable);
- database failures become ``BlockstoreError``, naming the database without its password.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from forage.db.engine import utcnow
from forage.db.packs import BlockPack, PackBlock
from storage.errors import BlockstoreError
from storage.locator import BlockLocation
from storage.packformat import IndexEntry

T = TypeVar("T")

#: Multihashes ``multihashes`` reads per query (short read transactions).
PAGE = 10_000

_packs = BlockPack.__table__
_blocks = PackBlock.__table__


class DatabaseLocator:
    """A ``BlockLocator`` in the ``block_packs``/``pack_blocks`` tables reached by ``engine``
    (closed by :meth:`close` when ``owns_engine``). Every statement is built once, with bound
    parameters, so SQLAlchemy compiles it once: a pack costs three short transactions."""

    def __init__(self, engine: Engine, *, owns_engine: bool = True) -> None:
        self.engine = engine
        self._owns = owns_engine
        self._where = engine.url.render_as_string(hide_password=True)
        name = engine.dialect.name
        if name not in ("postgresql", "sqlite"):
            raise BlockstoreError(f"block locator: unsupported database {name!r}")
        insert: Callable[..., Any] = postgresql.insert if name == "postgresql" else sqlite.insert
        named = _packs.c.name == sa.bindparam("name")
        self._find = (
            sa.select(_packs.c.name, _blocks.c.start, _blocks.c.length)
            .select_from(_blocks.join(_packs, _packs.c.id == _blocks.c.pack_id))
            .where(_blocks.c.multihash == sa.bindparam("multihash"), ~_blocks.c.deleted)
        )
        self._record_pack = (
            insert(_packs)
            .on_conflict_do_update(index_elements=[_packs.c.name], set_={"recorded": True})
            .returning(_packs.c.id)
        )
        blocks = insert(_blocks)
        self._record_blocks = blocks.on_conflict_do_update(
            index_elements=[_blocks.c.multihash],
            set_={
                "pack_id": blocks.excluded.pack_id,
                "start": blocks.excluded.start,
                "length": blocks.excluded.length,
                "deleted": False,
            },
            where=_blocks.c.deleted,
        )
        self._forget = (
            sa.update(_blocks)
            .where(_blocks.c.multihash == sa.bindparam("key"))
            .values(deleted=True)
        )
        self._expect = insert(_packs).on_conflict_do_nothing(index_elements=[_packs.c.name])
        self._expected = sa.select(_packs.c.name, _packs.c.noted).where(~_packs.c.recorded)
        self._abandon = sa.delete(_packs).where(named, ~_packs.c.recorded)
        self._recorded = sa.select(_packs.c.recorded).where(named)
        self._page = (
            sa.select(_blocks.c.multihash)
            .where(_blocks.c.multihash > sa.bindparam("after"), ~_blocks.c.deleted)
            .order_by(_blocks.c.multihash)
            .limit(sa.bindparam("page"))
        )

    def __repr__(self) -> str:
        return f"DatabaseLocator({self._where!r})"

    def _run(self, what: str, work: Callable[[sa.Connection], T], *, write: bool = False) -> T:
        try:
            if write:
                with self.engine.begin() as connection:
                    return work(connection)
            with self.engine.connect() as connection:
                return work(connection)
        except sa.exc.SQLAlchemyError as exc:
            raise BlockstoreError(f"block locator in {self._where}: {what}: {exc}") from exc

    def find(self, multihash: bytes) -> BlockLocation | None:
        """Where the block is, or ``None``."""
        row = self._run(
            "finding a block", lambda c: c.execute(self._find, {"multihash": multihash}).first()
        )
        return None if row is None else BlockLocation(bytes(row[0]).hex(), row[1], row[2])

    def record(self, pack: str, entries: Sequence[IndexEntry]) -> None:
        """Make the blocks of ``pack`` findable, in one transaction."""
        values = {"name": bytes.fromhex(pack), "recorded": True, "noted": utcnow()}

        def work(connection: sa.Connection) -> None:
            pack_id = connection.execute(self._record_pack, values).scalar_one()
            rows = [
                {
                    "multihash": entry.multihash,
                    "pack_id": pack_id,
                    "start": entry.offset,
                    "length": entry.length,
                }
                # In one order on every host: two packs sharing blocks never deadlock.
                for entry in sorted(entries, key=lambda entry: entry.multihash)
            ]
            if rows:
                connection.execute(self._record_blocks, rows)

        self._run(f"recording pack {pack}", work, write=True)

    def forget(self, multihashes: Iterable[bytes]) -> None:
        """Mark blocks deleted."""
        keys = [{"key": multihash} for multihash in multihashes]
        if keys:
            self._run("deleting blocks", lambda c: c.execute(self._forget, keys), write=True)

    def expect(self, packs: Sequence[str]) -> None:
        """Note ``packs`` as about to arrive; committed when this returns."""
        now = utcnow()
        rows = [{"name": bytes.fromhex(pack), "noted": now} for pack in packs]
        if rows:
            self._run("noting packs", lambda c: c.execute(self._expect, rows), write=True)

    def expected(self) -> list[tuple[str, float]]:
        """Packs noted and not recorded, with when they were noted (Unix time)."""
        rows = self._run("listing expected packs", lambda c: c.execute(self._expected).all())
        return [(bytes(name).hex(), _timestamp(noted)) for name, noted in rows]

    def abandon(self, pack: str) -> None:
        """Drop an expected pack's note (never a recorded pack's)."""
        name = {"name": bytes.fromhex(pack)}
        self._run(f"abandoning pack {pack}", lambda c: c.execute(self._abandon, name), write=True)

    def recorded(self, pack: str) -> bool:
        """Whether ``pack``'s entries are recorded."""
        name = {"name": bytes.fromhex(pack)}
        found = self._run(
            f"looking up pack {pack}", lambda c: c.execute(self._recorded, name).scalar()
        )
        return bool(found)

    def multihashes(self) -> Iterator[bytes]:
        """Every undeleted block's multihash, in pages of short queries."""
        after = b""
        while True:
            bounds = {"after": after, "page": PAGE}
            page = self._run(
                "listing blocks", lambda c, b=bounds: c.execute(self._page, b).scalars().all()
            )
            yield from (bytes(multihash) for multihash in page)
            if len(page) < PAGE:
                return
            after = bytes(page[-1])

    def close(self) -> None:
        """Dispose of the engine's connections (when the locator owns it)."""
        if self._owns:
            self.engine.dispose()


def _timestamp(value: datetime) -> float:
    if value.tzinfo is None:  # SQLite through Core: the column type tags it, but be sure
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
