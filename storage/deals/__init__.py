"""Deal sources behind one ``DealSource`` Protocol: a Lotus node's JSON-RPC API and a
deal-making service's HTTP API; plus Filecoin epoch arithmetic."""

from __future__ import annotations

from storage.deals.base import (
    EPOCH_SECONDS,
    MAINNET_GENESIS,
    ChainHead,
    DealInfo,
    DealSource,
    epoch_time,
    parse_market_deal,
    time_epoch,
)
from storage.deals.lotus import LotusClient
from storage.deals.service import DealService

__all__ = [
    "EPOCH_SECONDS",
    "MAINNET_GENESIS",
    "ChainHead",
    "DealInfo",
    "DealService",
    "DealSource",
    "LotusClient",
    "epoch_time",
    "parse_market_deal",
    "time_epoch",
]
