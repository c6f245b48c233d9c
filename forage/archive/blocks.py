"""The one blockstore a Forage installation uses, opened from its configuration.

Archived bytes live as UnixFS blocks under ``<data.dir>/blocks``, in one of two layouts
(``[data] blocks``): ``packed`` (:class:`~storage.packs.PackedBlockstore`, one pack file per
archive, ``blocks/packs/``) or ``flatfs`` (:class:`~storage.flatfs.FilesystemBlockstore`, one
file per block, ``blocks/blocks/``). Unset, a directory that holds a flatfs store and no packs
stays flatfs (existing stores keep working untouched) and any other is packed. A packed store
beside a flatfs one (``forage blocks migrate`` under way, or ``blocks = "packed"`` set before
migrating) reads the blocks not packed yet from the flatfs store.

Workers write the store; the HTTP server, the mirror and the piece builder read it. Every
process opens the same directory; writes are atomic, so several processes may share it.
"""

from __future__ import annotations

from pathlib import Path

from forage.config import Config
from storage.flatfs import FilesystemBlockstore
from storage.locator import BlockLocator
from storage.packs import PACKS_DIR, PackedBlockstore

BLOCKS_DIR = "blocks"
#: Where a flatfs store keeps its blocks, under the blockstore's directory.
FLATFS_DIR = "blocks"


def blockstore_path(config: Config) -> Path:
    """Where the blockstore of this configuration lives."""
    return config.data.dir / BLOCKS_DIR


def has_flatfs(root: Path) -> bool:
    """Whether ``root`` holds a flatfs store."""
    return (root / FLATFS_DIR).is_dir()


def blockstore_layout(config: Config) -> str:
    """The layout ``open_blockstore`` uses: the configured one, else ``flatfs`` for a
    directory holding a flatfs store and no packs, else ``packed``."""
    if config.data.blocks is not None:
        return config.data.blocks
    root = blockstore_path(config)
    if has_flatfs(root) and not (root / PACKS_DIR).is_dir():
        return "flatfs"
    return "packed"


def open_packed(
    root: Path, *, durable: bool = True, locator: BlockLocator | None = None
) -> PackedBlockstore:
    """The packed store at ``root``, reading through to a flatfs store beside it, if any
    (``locator``: the SQLite one beside the packs unless given).

    The packed store opens first: its recovery may need sealed packs a crash left in the
    staging area, which opening the flatfs store cleans."""
    store = PackedBlockstore(root, durable=durable, locator=locator)
    if has_flatfs(root):
        store.legacy = FilesystemBlockstore(root, durable=durable)
    return store


def open_packed_store(config: Config) -> PackedBlockstore:
    """The configured packed store, whatever ``data.blocks`` says of the layout: in a bucket
    (:mod:`forage.archive.objectstore`; staging, and a flatfs store being migrated, under
    ``<data.dir>/blocks``) or local, its locator in the database with ``data.locator``;
    reading through to a flatfs store beside it, if any. ``forage blocks`` opens this one
    too, so migrated blocks are recorded where servers and workers look for them."""
    root = blockstore_path(config)
    if config.data.in_bucket:
        from forage.archive.objectstore import open_object_blockstore

        store: PackedBlockstore = open_object_blockstore(config, root)
        if has_flatfs(root):
            store.legacy = FilesystemBlockstore(root)
        return store
    if config.data.shared_locator:
        from forage.archive.objectstore import open_locator

        return open_packed(root, locator=open_locator(config))
    return open_packed(root)


def open_blockstore(config: Config) -> FilesystemBlockstore | PackedBlockstore:
    """Open (creating it if needed) the configured blockstore (:func:`open_packed_store`
    unless the layout is flatfs)."""
    if blockstore_layout(config) == "flatfs":
        return FilesystemBlockstore(blockstore_path(config))
    return open_packed_store(config)
