"""Content addressing and where bytes go: UnixFS, CIDs, CAR, blockstores, pinning, deals.

``forage`` may use only the names listed in ``__all__``; ``tests/test_exports.py`` guards it.
"""

from __future__ import annotations

from storage.blockstore import (
    BlockSink,
    BlockSource,
    Blockstore,
    FilesystemBlockstore,
    MemoryBlockstore,
)
from storage.car import CarReader, CarWriter, export_car, read_car, write_car_from_file
from storage.cid import Block, block_cid, parse_cid, verify_block
from storage.commp import (
    CommP,
    PieceInfo,
    padded_piece_size,
    piece_cid_v1,
    piece_cid_v2,
    piece_commitment,
)
from storage.dag import read_file, walk_dag
from storage.dagpb import PBLink, PBNode, decode_pbnode, encode_pbnode
from storage.errors import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    BlockFormatError,
    BlockNotFound,
    BlockstoreError,
    BlockstoreFull,
    CarError,
    CarFormatError,
    CarTruncated,
    CommPError,
    ImportSizeError,
    IntegrityError,
    InvalidCID,
    StorageError,
)
from storage.pinning import (
    ClusterPinning,
    KuboPinning,
    PinningBackend,
    PinningService,
    PinRef,
    PinRequest,
    PinState,
)
from storage.unixfs import (
    ImportResult,
    UnixFSData,
    UnixFSImporter,
    compute_cid,
    decode_unixfs,
    encode_unixfs,
    import_file,
)

__all__ = [
    "BackendError",
    "BackendRejected",
    "BackendUnavailable",
    "Block",
    "BlockFormatError",
    "BlockNotFound",
    "BlockSink",
    "BlockSource",
    "Blockstore",
    "BlockstoreError",
    "BlockstoreFull",
    "CarError",
    "CarFormatError",
    "CarReader",
    "CarTruncated",
    "CarWriter",
    "ClusterPinning",
    "CommP",
    "CommPError",
    "FilesystemBlockstore",
    "ImportResult",
    "ImportSizeError",
    "IntegrityError",
    "InvalidCID",
    "KuboPinning",
    "MemoryBlockstore",
    "PBLink",
    "PBNode",
    "PieceInfo",
    "PinRef",
    "PinRequest",
    "PinState",
    "PinningBackend",
    "PinningService",
    "StorageError",
    "UnixFSData",
    "UnixFSImporter",
    "block_cid",
    "compute_cid",
    "decode_pbnode",
    "decode_unixfs",
    "encode_pbnode",
    "encode_unixfs",
    "export_car",
    "import_file",
    "padded_piece_size",
    "parse_cid",
    "piece_cid_v1",
    "piece_cid_v2",
    "piece_commitment",
    "read_car",
    "read_file",
    "verify_block",
    "walk_dag",
    "write_car_from_file",
]
