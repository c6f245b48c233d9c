"""What every deal source yields, the ``DealSource`` contract, and Filecoin epoch arithmetic.

A :class:`DealInfo` is one storage deal as a source reports it. Sources differ in what they
know: a Lotus node reads the market actor's state, so its deals carry the piece CID, padded
size and epochs (``on_chain`` true); a deal-making service knows which of its contents (by
payload CID, the CAR root it was given) went into which chain deal, and only some on-chain
facts. ``forage`` links deals to its pieces by piece CID, or by payload CID and then checks
the chain.

Epochs: a tipset every 30 s from genesis (mainnet: 2020-08-24T22:00:00Z, Unix 1598306400), so
an epoch's time is ``genesis + 30 * epoch``. Spec: https://spec.filecoin.io/#section-glossary
(epoch), Lotus ``build/params_mainnet.go`` (``BlockDelaySecs``); a node tells its own genesis
through ``Filecoin.ChainGetGenesis``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

#: Unix time of the Filecoin mainnet genesis block.
MAINNET_GENESIS = 1_598_306_400
#: Seconds between epochs (``BlockDelaySecs``).
EPOCH_SECONDS = 30


def epoch_time(epoch: int, *, genesis: int = MAINNET_GENESIS) -> datetime:
    """The UTC time at which ``epoch`` starts."""
    return datetime.fromtimestamp(genesis + EPOCH_SECONDS * epoch, UTC)


def time_epoch(when: datetime, *, genesis: int = MAINNET_GENESIS) -> int:
    """The epoch under way at ``when`` (the inverse of :func:`epoch_time`, rounded down)."""
    return (int(when.timestamp()) - genesis) // EPOCH_SECONDS


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The chain's current tipset: its height (epoch), its blocks' timestamp and CIDs."""

    height: int
    timestamp: int
    cids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DealInfo:
    """One storage deal as a source reports it; ``None`` where the source does not know.

    ``piece_size`` is the padded size of the deal's piece. ``activation_epoch`` is the sector
    start epoch (the deal is sealed and proven), ``slash_epoch`` when it was slashed;
    ``payload_cid`` is the root of the data the piece was made from, as the source names it.
    ``failed`` means the source gave the deal up before it reached the chain. ``on_chain``
    says the facts were read from the chain's market state.
    """

    deal_id: int
    provider: str
    piece_cid: str | None = None
    piece_size: int | None = None
    payload_cid: str | None = None
    client: str | None = None
    verified: bool | None = None
    label: str | None = None
    start_epoch: int | None = None
    end_epoch: int | None = None
    activation_epoch: int | None = None
    slash_epoch: int | None = None
    failed: bool = False
    on_chain: bool = False


@runtime_checkable
class DealSource(Protocol):
    """A place that knows deals: a Lotus node, a deal-making service.

    ``find_deals`` yields the deals the source knows that hold one of ``piece_cids`` (piece CID
    v1) or whose payload is one of ``payload_cids`` (CAR root CIDs); a source filters by what
    it can see and may yield deals matching neither, which callers ignore. Deals are yielded
    as they are read, in constant memory. Failures raise ``BackendUnavailable`` (transient)
    or ``BackendRejected`` (bad token, refused request).
    """

    @property
    def name(self) -> str:
        """The source's name, stored with each deal it reported."""

    def find_deals(
        self, *, piece_cids: Collection[str], payload_cids: Collection[str]
    ) -> AsyncIterator[DealInfo]:
        """The deals holding those pieces or payloads."""


def _epoch(value: Any) -> int | None:
    """An epoch field; Lotus writes -1 (and services 0) for "not yet"."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _link(value: Any) -> str | None:
    """A CID in IPLD JSON form, ``{"/": "baga..."}`` (or a bare string)."""
    if isinstance(value, Mapping):
        value = value.get("/")
    return _text(value)


def parse_market_deal(deal_id: int, deal: Mapping[str, Any]) -> DealInfo:
    """Map a Lotus ``MarketDeal`` (``{"Proposal": {...}, "State": {...}}``) to a DealInfo.

    Raises ``ValueError`` when the proposal lacks its provider or piece CID.
    """
    proposal = deal.get("Proposal")
    state = deal.get("State") or {}
    if not isinstance(proposal, Mapping) or not isinstance(state, Mapping):
        raise ValueError(f"deal {deal_id}: Proposal and State must be objects")
    provider, piece_cid = _text(proposal.get("Provider")), _link(proposal.get("PieceCID"))
    if provider is None or piece_cid is None:
        raise ValueError(f"deal {deal_id}: the proposal has no Provider or PieceCID")
    size = proposal.get("PieceSize")
    verified = proposal.get("VerifiedDeal")
    start, end = proposal.get("StartEpoch"), proposal.get("EndEpoch")
    return DealInfo(
        deal_id=deal_id,
        provider=provider,
        piece_cid=piece_cid,
        piece_size=size if isinstance(size, int) and size > 0 else None,
        client=_text(proposal.get("Client")),
        verified=verified if isinstance(verified, bool) else None,
        label=_text(proposal.get("Label")),
        start_epoch=start if isinstance(start, int) else None,
        end_epoch=end if isinstance(end, int) else None,
        activation_epoch=_epoch(state.get("SectorStartEpoch")),
        slash_epoch=_epoch(state.get("SlashEpoch")),
        on_chain=True,
    )
