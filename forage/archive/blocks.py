"""The one blockstore a Forage installation uses, opened from its configuration.

Archived bytes live as UnixFS blocks in a :class:`~storage.flatfs.FilesystemBlockstore`
under ``<data.dir>/blocks`` (Kubo's flatfs layout). Workers write it; the HTTP server, the
mirror and the piece builder read it. Every process opens the same directory; the store's
writes are atomic, so several processes may share it.
"""

from __future__ import annotations

from pathlib import Path

from forage.config import Config
from storage.flatfs import FilesystemBlockstore

BLOCKS_DIR = "blocks"


def blockstore_path(config: Config) -> Path:
    """Where the blockstore of this configuration lives."""
    return config.data.dir / BLOCKS_DIR


def open_blockstore(config: Config) -> FilesystemBlockstore:
    """Open (creating it if needed) the configured blockstore."""
    return FilesystemBlockstore(blockstore_path(config))
