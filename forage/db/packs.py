"""The tables of the shared block locator (:mod:`forage.archive.locator`): where each block of
an object-stored packed blockstore is, for every host that reads or writes it.

``block_packs`` has one row per pack (named by the SHA-256 of its index, see
:mod:`storage.packformat`), ``recorded`` once its blocks are listed in ``pack_blocks`` and
false while a writer has only noted it as expected (the crash-recovery note of
:class:`storage.locator.BlockLocator`). ``pack_blocks`` maps each block's multihash to its
pack, offset and length; a deleted block keeps its row, marked, until a compaction rewrites
its pack.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from forage.db.engine import Base, BigIntPK, utcnow

#: A pack's name: 32 bytes of SHA-256.
PACK_NAME_BYTES = 32
#: A multihash's longest length in a pack index (its length is one byte).
MULTIHASH_MAX = 255


class BlockPack(Base):
    """One pack in the blockstore's object store (or one a writer is about to put there)."""

    __tablename__ = "block_packs"
    __table_args__ = (
        sa.UniqueConstraint("name"),
        sa.Index(None, "recorded"),
        sa.CheckConstraint(f"length(name) = {PACK_NAME_BYTES}", name="name_length"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[bytes] = mapped_column(sa.LargeBinary(PACK_NAME_BYTES))
    recorded: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    noted: Mapped[datetime] = mapped_column(default=utcnow)


class PackBlock(Base):
    """Where one block is: ``length`` bytes at ``start`` in its pack."""

    __tablename__ = "pack_blocks"
    __table_args__ = (
        sa.Index(None, "pack_id"),
        sa.CheckConstraint("start >= 0 AND length >= 0", name="position"),
        sa.CheckConstraint(
            f"length(multihash) BETWEEN 1 AND {MULTIHASH_MAX}", name="multihash_length"
        ),
    )

    multihash: Mapped[bytes] = mapped_column(sa.LargeBinary(MULTIHASH_MAX), primary_key=True)
    pack_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("block_packs.id"))
    start: Mapped[int] = mapped_column(sa.BigInteger)
    length: Mapped[int] = mapped_column(sa.Integer)
    deleted: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
