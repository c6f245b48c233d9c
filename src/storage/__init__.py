"""Content addressing and where bytes go: UnixFS, CIDs, CAR, blockstores, pinning, deals.

``forage`` may use only the names listed in ``__all__``; ``tests/test_exports.py`` guards it.
"""

from __future__ import annotations

from storage.commp import (
    CommP,
    PieceInfo,
    padded_piece_size,
    piece_cid_v1,
    piece_cid_v2,
    piece_commitment,
)
from storage.errors import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    BlockNotFound,
    CarError,
    CarFormatError,
    CarTruncated,
    CommPError,
    ImportSizeError,
    IntegrityError,
    InvalidCID,
    StorageError,
)

__all__ = [
    "BackendError",
    "BackendRejected",
    "BackendUnavailable",
    "BlockNotFound",
    "CarError",
    "CarFormatError",
    "CarTruncated",
    "CommP",
    "CommPError",
    "ImportSizeError",
    "IntegrityError",
    "InvalidCID",
    "PieceInfo",
    "StorageError",
    "padded_piece_size",
    "piece_cid_v1",
    "piece_cid_v2",
    "piece_commitment",
]
