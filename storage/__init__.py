"""Content addressing and where bytes go: UnixFS, CIDs, CAR, blockstores, pinning, deals.

``forage`` may use only the names listed in ``__all__``; ``tests/test_exports.py`` guards it.
Names are loaded on first use (PEP 562), so a command that only hashes files (``forage cid``)
does not pay for the HTTP clients of pinning and deals.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.blockstore import BlockSink, BlockSource, Blockstore, MemoryBlockstore
    from storage.car import (
        CarReader,
        CarWriter,
        encode_car_header,
        export_car,
        read_car,
        write_car_from_file,
    )
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
    from storage.deals import (
        EPOCH_SECONDS,
        MAINNET_GENESIS,
        ChainHead,
        DealInfo,
        DealService,
        DealSource,
        LotusClient,
        epoch_time,
        parse_market_deal,
        time_epoch,
    )
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
        ObjectNotFound,
        ObjectStoreUnavailable,
        StorageError,
    )
    from storage.flatfs import FilesystemBlockstore
    from storage.locator import BlockLocation, BlockLocator, SQLiteLocator
    from storage.objectpacks import ObjectPackedBlockstore, rebuild_object_locator
    from storage.objects import DirectoryObjects, ObjectStore
    from storage.packrecovery import RebuildReport, rebuild_locator
    from storage.packs import PackedBlockstore
    from storage.pinning import (
        ClusterPinning,
        KuboPinning,
        PinningBackend,
        PinningService,
        PinRef,
        PinRequest,
        PinState,
    )
    from storage.s3 import S3Objects
    from storage.unixfs import (
        ImportResult,
        UnixFSData,
        UnixFSImporter,
        compute_cid,
        decode_unixfs,
        encode_unixfs,
        import_file,
    )

#: Where each public name is defined.
_HOMES: dict[str, str] = {
    "BackendError": "storage.errors",
    "BackendRejected": "storage.errors",
    "BackendUnavailable": "storage.errors",
    "Block": "storage.cid",
    "BlockFormatError": "storage.errors",
    "BlockLocation": "storage.locator",
    "BlockLocator": "storage.locator",
    "BlockNotFound": "storage.errors",
    "BlockSink": "storage.blockstore",
    "BlockSource": "storage.blockstore",
    "Blockstore": "storage.blockstore",
    "BlockstoreError": "storage.errors",
    "BlockstoreFull": "storage.errors",
    "CarError": "storage.errors",
    "CarFormatError": "storage.errors",
    "CarReader": "storage.car",
    "CarTruncated": "storage.errors",
    "CarWriter": "storage.car",
    "ChainHead": "storage.deals",
    "ClusterPinning": "storage.pinning",
    "CommP": "storage.commp",
    "CommPError": "storage.errors",
    "DealInfo": "storage.deals",
    "DealService": "storage.deals",
    "DealSource": "storage.deals",
    "DirectoryObjects": "storage.objects",
    "EPOCH_SECONDS": "storage.deals",
    "FilesystemBlockstore": "storage.flatfs",
    "ImportResult": "storage.unixfs",
    "ImportSizeError": "storage.errors",
    "IntegrityError": "storage.errors",
    "InvalidCID": "storage.errors",
    "KuboPinning": "storage.pinning",
    "LotusClient": "storage.deals",
    "MAINNET_GENESIS": "storage.deals",
    "MemoryBlockstore": "storage.blockstore",
    "ObjectNotFound": "storage.errors",
    "ObjectPackedBlockstore": "storage.objectpacks",
    "ObjectStore": "storage.objects",
    "ObjectStoreUnavailable": "storage.errors",
    "PBLink": "storage.dagpb",
    "PBNode": "storage.dagpb",
    "PackedBlockstore": "storage.packs",
    "PieceInfo": "storage.commp",
    "PinRef": "storage.pinning",
    "PinRequest": "storage.pinning",
    "PinState": "storage.pinning",
    "PinningBackend": "storage.pinning",
    "PinningService": "storage.pinning",
    "RebuildReport": "storage.packrecovery",
    "S3Objects": "storage.s3",
    "SQLiteLocator": "storage.locator",
    "StorageError": "storage.errors",
    "UnixFSData": "storage.unixfs",
    "UnixFSImporter": "storage.unixfs",
    "block_cid": "storage.cid",
    "compute_cid": "storage.unixfs",
    "decode_pbnode": "storage.dagpb",
    "decode_unixfs": "storage.unixfs",
    "encode_car_header": "storage.car",
    "encode_pbnode": "storage.dagpb",
    "encode_unixfs": "storage.unixfs",
    "epoch_time": "storage.deals",
    "export_car": "storage.car",
    "import_file": "storage.unixfs",
    "padded_piece_size": "storage.commp",
    "parse_cid": "storage.cid",
    "parse_market_deal": "storage.deals",
    "piece_cid_v1": "storage.commp",
    "piece_cid_v2": "storage.commp",
    "piece_commitment": "storage.commp",
    "read_car": "storage.car",
    "read_file": "storage.dag",
    "rebuild_locator": "storage.packrecovery",
    "rebuild_object_locator": "storage.objectpacks",
    "time_epoch": "storage.deals",
    "verify_block": "storage.cid",
    "walk_dag": "storage.dag",
    "write_car_from_file": "storage.car",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "EPOCH_SECONDS",
    "MAINNET_GENESIS",
    "BackendError",
    "BackendRejected",
    "BackendUnavailable",
    "Block",
    "BlockFormatError",
    "BlockLocation",
    "BlockLocator",
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
    "ChainHead",
    "ClusterPinning",
    "CommP",
    "CommPError",
    "DealInfo",
    "DealService",
    "DealSource",
    "DirectoryObjects",
    "FilesystemBlockstore",
    "ImportResult",
    "ImportSizeError",
    "IntegrityError",
    "InvalidCID",
    "KuboPinning",
    "LotusClient",
    "MemoryBlockstore",
    "ObjectNotFound",
    "ObjectPackedBlockstore",
    "ObjectStore",
    "ObjectStoreUnavailable",
    "PBLink",
    "PBNode",
    "PackedBlockstore",
    "PieceInfo",
    "PinRef",
    "PinRequest",
    "PinState",
    "PinningBackend",
    "PinningService",
    "RebuildReport",
    "S3Objects",
    "SQLiteLocator",
    "StorageError",
    "UnixFSData",
    "UnixFSImporter",
    "block_cid",
    "compute_cid",
    "decode_pbnode",
    "decode_unixfs",
    "encode_car_header",
    "encode_pbnode",
    "encode_unixfs",
    "epoch_time",
    "export_car",
    "import_file",
    "padded_piece_size",
    "parse_cid",
    "parse_market_deal",
    "piece_cid_v1",
    "piece_cid_v2",
    "piece_commitment",
    "read_car",
    "read_file",
    "rebuild_locator",
    "rebuild_object_locator",
    "time_epoch",
    "verify_block",
    "walk_dag",
    "write_car_from_file",
]
