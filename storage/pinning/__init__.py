"""Pinning backends behind one ``PinningBackend`` Protocol: Kubo RPC, IPFS Cluster, and the
IPFS Pinning Service API (https://ipfs.github.io/pinning-services-api-spec/)."""

from __future__ import annotations

from storage.pinning.base import PinningBackend, PinRef, PinRequest, PinState
from storage.pinning.cluster import ClusterPinning
from storage.pinning.kubo import KuboPinning
from storage.pinning.service import PinningService

__all__ = [
    "ClusterPinning",
    "KuboPinning",
    "PinRef",
    "PinRequest",
    "PinState",
    "PinningBackend",
    "PinningService",
]
