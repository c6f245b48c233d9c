"""A batch bigger than a slice (:data:`forage.lookup.batch.SLICE`) answers exactly as one read
of the whole batch would: the same bytes in the same order, one import for a key unknown in
several slices, every computed answer handed on, and only the rendered bytes kept."""

from __future__ import annotations

from collections.abc import Sequence

from forage.db.engine import make_engine, make_sessionmaker
from forage.lookup.backfill import BackfillPolicy
from forage.lookup.batch import SLICE, lookup
from forage.lookup.resolve import AnswerFill, resolve
from forage.lookup.views import KeyStatus
from tests.forage.test_lookup import EVERYWHERE, NOW, django

SPELLINGS = ["pkg:pypi/django@5.0", "pypi:Django:5.0", "pkg:pypi/django@5.0?foo=bar"]


def batch() -> list[object]:
    """Three slices and a bit: found, unknown (again in another slice), malformed keys."""
    keys: list[object] = [f"npm:filler-{i}:1.0.{i}" for i in range(2 * SLICE + 500)]
    for place, key in [
        (0, SPELLINGS[0]),
        (SLICE - 1, SPELLINGS[1]),
        (SLICE, SPELLINGS[2]),
        (2 * SLICE + 7, SPELLINGS[0]),
        (3, "npm:twice:1.0.0"),
        (SLICE + 3, "npm:twice:1.0.0"),
        (5, "not a key"),
        (2 * SLICE + 9, 42),
    ]:
        keys[place] = key
    return keys


def test_a_sliced_batch_answers_like_one_read_of_it(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        sessions = make_sessionmaker(engine)
        with sessions.begin() as session:
            django(session)
        keys = batch()
        with sessions() as session:
            whole = resolve(session, keys, now=NOW, rendered=True).results
        handed: list[Sequence[AnswerFill]] = []
        policy = BackfillPolicy(ecosystems=EVERYWHERE)
        results = lookup(
            sessions, sessions, keys, policy=policy, now=NOW, rendered=True, keep=handed.append
        )
        assert len(results) == len(keys)
        # Found and malformed keys: the bytes of the one-read answer, in order.
        settled = [i for i, r in enumerate(whole) if r.status is not KeyStatus.NOT_FOUND]
        assert len(settled) == 6
        assert [results[i].to_json_bytes() for i in settled] == [
            whole[i].to_json_bytes() for i in settled
        ]
        # Only the bytes are held while the reply is sent.
        found = [r for r in results if r.status is KeyStatus.FOUND]
        assert len(found) == 4 and all(r.artifacts == () and r.rendered for r in found)
        # The version's answer is computed in each slice that holds it, never stored meanwhile.
        assert [len(fills) for fills in handed] == [1, 1, 1]
        assert {fills[0].body for fills in handed} == {found[0].rendered}
        # An unknown key queues one import, whichever slices ask for it.
        twice = [r for r in results if r.key == "npm:twice:1.0.0"]
        assert [r.status for r in twice] == [KeyStatus.QUEUED] * 2
        assert twice[0].job_id is not None and twice[0].job_id == twice[1].job_id
        queued = {r.job_id for r in results if r.status is KeyStatus.QUEUED}
        assert len(queued) == len(keys) - 6 - 1  # every filler package, and "twice" once
    finally:
        engine.dispose()


def test_a_sliced_lockfile_batch_keeps_the_files_it_compares(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        sessions = make_sessionmaker(engine)
        with sessions.begin() as session:
            django(session)
        keys = batch()
        with sessions() as session:
            whole = resolve(session, keys, now=NOW).results
        results = lookup(sessions, None, keys, policy=None, now=NOW)
        assert [r.to_json_bytes() for r in results] == [r.to_json_bytes() for r in whole]
        found = [r for r in results if r.status is KeyStatus.FOUND]
        assert len(found) == 4 and all(len(r.artifacts) == 2 for r in found)
    finally:
        engine.dispose()
