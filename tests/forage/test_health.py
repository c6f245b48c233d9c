"""Archive health on SQLite and PostgreSQL: bytes archived, in pieces and in active deals,
replicas per piece (distinct active chain deals, whichever sources report them), and the
pieces under the configured minimum, fewest replicas first, with their providers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from forage.db.models import ArchiveStatus, DealState
from forage.filecoin.health import archive_health
from tests.factories import make_archive, make_artifact, make_deal, make_piece

#: Inside the factory deals' life (end epoch 5,500,000 is 2025-11-16 on mainnet).
DURING = datetime(2025, 1, 1, tzinfo=UTC)


def test_totals_replicas_and_under_replicated_pieces(db_session: Session) -> None:
    sizes = {"a": 100, "b": 200, "c": 300, "d": 40, "loose": 50}  # "loose" is in no piece
    a, b, c, d, _ = (make_archive(db_session, size=size) for size in sizes.values())
    make_archive(db_session, artifact=make_artifact(db_session), status=ArchiveStatus.FAILED)
    well = make_piece(db_session, archives=[a, b])
    thin = make_piece(db_session, archives=[c])
    bare = make_piece(db_session, archives=[d])
    make_deal(db_session, piece=well, deal_id="11", provider="f01")
    make_deal(db_session, piece=well, deal_id="12", provider="f02")
    make_deal(db_session, piece=well, deal_id="12", provider="f02", source="dealservice")
    make_deal(db_session, piece=thin, deal_id="21", provider="f03")
    make_deal(db_session, piece=thin, deal_id="22", provider="f04", state=DealState.EXPIRED)
    make_deal(db_session, piece=bare, deal_id="31", provider="f05", state=DealState.SLASHED)

    health = archive_health(db_session, min_replicas=2, now=DURING)

    assert (health.archives, health.bytes_archived) == (5, sum(sizes.values()))
    assert (health.archives_in_pieces, health.bytes_in_pieces) == (
        4,
        sum(sizes.values()) - sizes["loose"],
    )
    assert health.bytes_in_active_deals == sizes["a"] + sizes["b"] + sizes["c"]
    assert health.pieces == 3
    assert health.piece_car_bytes == well.car_size + thin.car_size + bare.car_size
    assert health.piece_padded_bytes == well.padded_size + thin.padded_size + bare.padded_size
    assert health.active_deals == 3  # 11, 12 (reported twice) and 21
    assert health.replicas == {2: 1, 1: 1, 0: 1}
    assert health.under_replicated_count == 2
    assert [
        (p.piece_cid, p.active_deals, p.members, p.providers) for p in health.under_replicated
    ] == [
        (bare.piece_cid, 0, 1, ()),
        (thin.piece_cid, 1, 1, ("f03",)),
    ]
    body = json.loads(json.dumps(health.to_dict()))
    assert body["replicas"] == {"0": 1, "1": 1, "2": 1}
    assert body["under_replicated"][1]["providers"] == ["f03"]
    assert (
        archive_health(db_session, min_replicas=1, limit=5, now=DURING).under_replicated_count == 1
    )
    assert archive_health(db_session, min_replicas=3, limit=1, now=DURING).under_replicated[
        0
    ].piece_cid == (bare.piece_cid)
    # Past their end the same active deals hold nothing, as lookups and pages show them.
    over = archive_health(db_session, min_replicas=1, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert (over.active_deals, over.bytes_in_active_deals, over.replicas) == (0, 0, {0: 3})


def test_an_empty_archive_is_healthy_and_zero(db_session: Session) -> None:
    health = archive_health(db_session, min_replicas=3)
    assert (health.archives, health.bytes_archived, health.pieces, health.active_deals) == (
        0,
        0,
        0,
        0,
    )
    assert (health.replicas, health.under_replicated, health.under_replicated_count) == ({}, (), 0)
