"""The durable queue's semantics on both stores: enqueue in the caller's transaction, dedup,
atomic claims under leases, heartbeat, completion, backoff, dead jobs, operator retry, lease
expiry and reclaim. Time is passed in explicitly, so nothing here sleeps."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.cli import main
from forage.db.engine import make_engine, make_sessionmaker, utcnow
from forage.db.models import JobRecord, JobState
from forage.errors import JobError, NotFound, PermanentJobError
from forage.jobs import admin
from forage.jobs import queue as jobs
from forage.jobs.queue import RetryPolicy
from indexers.errors import PackageNotFound, UpstreamUnavailable

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=3, backoff_base=10.0, backoff_cap=100.0, lease_seconds=60.0)


def row(session: Session, job_id: int) -> JobRecord:
    session.expire_all()
    record = session.get(JobRecord, job_id)
    assert record is not None
    return record


def claim(session: Session, owner: str = "w1", *, limit: int = 10, at: datetime = NOW, **kw):
    return jobs.claim(session, owner=owner, limit=limit, policy=POLICY, now=at, **kw)


def test_enqueue_writes_a_queued_row(db_session: Session) -> None:
    job_id = jobs.enqueue(db_session, "sync", {"ecosystem": "npm", "name": "lodash"}, now=NOW)
    record = row(db_session, job_id)
    assert record.state is JobState.QUEUED
    assert record.payload == {"ecosystem": "npm", "name": "lodash"}
    assert record.attempts == 0
    assert record.run_after == NOW
    assert record.max_attempts is None


def test_enqueue_belongs_to_the_callers_transaction(db_session: Session) -> None:
    # Rolled back with its cause: no job survives a transaction that did not commit.
    nested = db_session.begin_nested()
    job_id = jobs.enqueue(db_session, "sync", {"id": 1}, now=NOW)
    nested.rollback()
    assert db_session.get(JobRecord, job_id) is None


def test_payload_must_be_json(db_session: Session) -> None:
    with pytest.raises(TypeError, match="'sync': payload must be JSON-serializable"):
        jobs.enqueue(db_session, "sync", {"when": NOW})


def test_dedup_key_merges_queued_requests(db_session: Session) -> None:
    first = jobs.enqueue(
        db_session, "sync", {"n": 1}, dedup_key="npm:a", run_after=NOW + timedelta(hours=1)
    )
    second = jobs.enqueue(db_session, "sync", {"n": 1}, dedup_key="npm:a", run_after=NOW)
    assert second == first
    # The earlier of the two wishes wins.
    assert row(db_session, first).run_after == NOW
    other = jobs.enqueue(db_session, "sync", {"n": 2}, dedup_key="npm:b", now=NOW)
    assert other != first


def test_running_job_does_not_absorb_a_new_request(db_session: Session) -> None:
    # A change that arrives while the job runs must get its own run, or it would be lost.
    first = jobs.enqueue(db_session, "sync", {}, dedup_key="npm:a", now=NOW)
    assert [j.id for j in claim(db_session)] == [first]
    second = jobs.enqueue(db_session, "sync", {}, dedup_key="npm:a", now=NOW)
    assert second != first
    assert row(db_session, second).state is JobState.QUEUED


def test_enqueue_many_adds_one_job_per_key_in_the_callers_transaction(
    db_session: Session,
) -> None:
    ids = jobs.enqueue_many(
        db_session, "archive", {f"archive:{n}": {"artifact_id": n} for n in (7, 8, 9)}, now=NOW
    )
    assert sorted(ids) == ["archive:7", "archive:8", "archive:9"]
    assert len(set(ids.values())) == 3
    for key, job_id in ids.items():
        record = row(db_session, job_id)
        assert (record.kind, record.dedup_key, record.state) == ("archive", key, JobState.QUEUED)
        assert record.payload == {"artifact_id": int(key.split(":")[1])}
        assert (record.run_after, record.attempts) == (NOW, 0)
    nested = db_session.begin_nested()
    rolled_back = jobs.enqueue_many(db_session, "archive", {"archive:10": {}}, now=NOW)
    nested.rollback()
    assert db_session.get(JobRecord, rolled_back["archive:10"]) is None


def test_enqueue_many_merges_into_queued_twins_like_enqueue(db_session: Session) -> None:
    """A queued job with the key absorbs the request (the earlier run_after wins); a running
    one does not, so the change gets a run of its own."""
    later = NOW + timedelta(hours=1)
    queued = jobs.enqueue(db_session, "sync", {"n": 1}, dedup_key="a", run_after=later, now=NOW)
    running = jobs.enqueue(db_session, "sync", {"n": 2}, dedup_key="b", now=NOW)
    assert [j.id for j in claim(db_session, kinds={"sync"}, limit=1, at=NOW)] == [running]

    ids = jobs.enqueue_many(db_session, "sync", {"a": {"n": 1}, "b": {"n": 2}}, now=NOW)
    assert ids["a"] == queued
    assert row(db_session, queued).run_after == NOW
    assert ids["b"] != running
    assert row(db_session, ids["b"]).state is JobState.QUEUED

    # A later wish does not postpone the queued job.
    again = jobs.enqueue_many(db_session, "sync", {"a": {"n": 1}}, run_after=later, now=NOW)
    assert again == {"a": queued}
    assert row(db_session, queued).run_after == NOW
    count = db_session.execute(sa.select(sa.func.count()).select_from(JobRecord)).scalar_one()
    assert count == 3


def test_enqueue_many_checks_its_input(db_session: Session) -> None:
    assert jobs.enqueue_many(db_session, "sync", {}) == {}
    with pytest.raises(ValueError, match="kind must not be empty"):
        jobs.enqueue_many(db_session, "", {"a": {}})
    with pytest.raises(TypeError, match="'sync': payload must be JSON-serializable"):
        jobs.enqueue_many(db_session, "sync", {"a": {"when": NOW}})


def test_complete_many_finishes_only_the_jobs_the_owner_holds(db_session: Session) -> None:
    mine = [jobs.enqueue(db_session, "sync", {"n": n}, now=NOW) for n in range(3)]
    theirs = jobs.enqueue(db_session, "other", {}, now=NOW)
    claim(db_session, "w1", kinds={"sync"})
    claim(db_session, "w2", kinds={"other"})
    done_at = NOW + timedelta(seconds=5)

    held = jobs.complete_many(db_session, [*mine, theirs], owner="w1", now=done_at)
    assert held == set(mine)
    for job_id in mine:
        record = row(db_session, job_id)
        assert (record.state, record.finished_at, record.lease_owner) == (
            JobState.DONE,
            done_at,
            None,
        )
    assert row(db_session, theirs).state is JobState.RUNNING
    assert jobs.complete_many(db_session, mine, owner="w1", now=done_at) == set()
    assert jobs.complete_many(db_session, [], owner="w1") == set()


def test_claim_leases_ready_jobs_oldest_first(db_session: Session) -> None:
    later = jobs.enqueue(db_session, "a", {}, run_after=NOW + timedelta(seconds=1))
    old = jobs.enqueue(db_session, "a", {}, run_after=NOW - timedelta(hours=1))
    new = jobs.enqueue(db_session, "a", {}, run_after=NOW - timedelta(minutes=1))
    claimed = claim(db_session, limit=1)
    assert [j.id for j in claimed] == [old]
    job = claimed[0]
    assert (job.attempt, job.max_attempts, job.lease_owner) == (1, 3, "w1")
    assert job.lease_expires_at == NOW + timedelta(seconds=60)
    record = row(db_session, old)
    assert record.state is JobState.RUNNING and record.attempts == 1
    assert [j.id for j in claim(db_session)] == [new]  # `later` is not due yet
    assert row(db_session, later).state is JobState.QUEUED


def test_claim_filters_by_kind(db_session: Session) -> None:
    mine = jobs.enqueue(db_session, "archive", {}, now=NOW)
    jobs.enqueue(db_session, "pin", {}, now=NOW)
    assert [j.id for j in claim(db_session, kinds=["archive"])] == [mine]
    assert claim(db_session, kinds=[]) == []


def test_leased_job_is_not_claimed_twice(db_session: Session) -> None:
    jobs.enqueue(db_session, "a", {}, now=NOW)
    assert len(claim(db_session, "w1")) == 1
    assert claim(db_session, "w2", at=NOW + timedelta(seconds=59)) == []


def test_expired_lease_is_reclaimed_and_the_old_owner_loses_it(db_session: Session) -> None:
    # A worker killed mid-job stops heartbeating; once its lease expires the job runs again
    # elsewhere, and the first worker can neither extend nor complete it.
    job_id = jobs.enqueue(db_session, "a", {}, now=NOW)
    claim(db_session, "w1")
    after_expiry = NOW + timedelta(seconds=61)
    retaken = claim(db_session, "w2", at=after_expiry)
    assert [(j.id, j.attempt, j.lease_owner) for j in retaken] == [(job_id, 2, "w2")]
    assert (
        jobs.heartbeat(db_session, [job_id], owner="w1", policy=POLICY, now=after_expiry) == set()
    )
    assert not jobs.complete(db_session, job_id, owner="w1", now=after_expiry)
    assert jobs.fail(db_session, job_id, owner="w1", error="x", policy=POLICY) is None
    assert jobs.complete(db_session, job_id, owner="w2", now=after_expiry)
    assert row(db_session, job_id).state is JobState.DONE


def test_heartbeat_extends_the_lease(db_session: Session) -> None:
    job_id = jobs.enqueue(db_session, "a", {}, now=NOW)
    claim(db_session, "w1")
    beat = NOW + timedelta(seconds=50)
    held = jobs.heartbeat(db_session, [job_id, 999_999], owner="w1", policy=POLICY, now=beat)
    assert held == {job_id}
    assert row(db_session, job_id).lease_expires_at == beat + timedelta(seconds=60)
    # Past the original expiry, nobody else can take it.
    assert claim(db_session, "w2", at=NOW + timedelta(seconds=90)) == []


def test_complete_marks_done_and_clears_the_lease(db_session: Session) -> None:
    job_id = jobs.enqueue(db_session, "a", {}, now=NOW)
    claim(db_session)
    assert jobs.complete(db_session, job_id, owner="w1", now=NOW + timedelta(seconds=5))
    record = row(db_session, job_id)
    assert record.state is JobState.DONE
    assert record.finished_at == NOW + timedelta(seconds=5)
    assert record.lease_owner is None and record.lease_expires_at is None


def test_failure_backs_off_exponentially_with_jitter(db_session: Session) -> None:
    policy = RetryPolicy(max_attempts=10, backoff_base=10.0, backoff_cap=35.0, lease_seconds=60)
    job_id = jobs.enqueue(db_session, "a", {}, now=NOW)
    waits = []
    at = NOW
    for _ in range(4):
        (job,) = jobs.claim(db_session, owner="w", limit=1, policy=policy, now=at)
        state = jobs.fail(
            db_session, job.id, owner="w", error=OSError("reset"), policy=policy, now=at
        )
        assert state is JobState.QUEUED
        record = row(db_session, job_id)
        waits.append((record.run_after - at).total_seconds())
        at = record.run_after
    # Ceilings 10, 20, 40 -> capped at 35, 35; each wait in the upper half of its ceiling.
    for wait, ceiling in zip(waits, [10, 20, 35, 35], strict=True):
        assert ceiling / 2 <= wait <= ceiling
    assert row(db_session, job_id).last_error == "OSError: reset"


def test_jitter_spreads_retries() -> None:
    rng = random.Random(7)
    delays = {POLICY.backoff(3, rng=rng) for _ in range(20)}
    assert len(delays) == 20
    assert all(20 <= d <= 40 for d in delays)


def test_retry_after_of_a_transient_error_is_honoured(db_session: Session) -> None:
    job_id = jobs.enqueue(db_session, "a", {}, now=NOW)
    claim(db_session)
    error = UpstreamUnavailable("https://registry.invalid/x", "429", retry_after=3600)
    assert jobs.fail(db_session, job_id, owner="w1", error=error, policy=POLICY, now=NOW)
    assert row(db_session, job_id).run_after == NOW + timedelta(seconds=3600)


def test_job_is_dead_after_max_attempts_with_last_error_kept(db_session: Session) -> None:
    job_id = jobs.enqueue(db_session, "a", {}, max_attempts=2, now=NOW)
    at = NOW
    states = []
    for n in range(2):
        (job,) = claim(db_session, at=at)
        assert job.max_attempts == 2
        states.append(
            jobs.fail(db_session, job.id, owner="w1", error=f"boom {n}", policy=POLICY, now=at)
        )
        at += timedelta(hours=1)
    assert states == [JobState.QUEUED, JobState.DEAD]
    record = row(db_session, job_id)
    assert (record.state, record.attempts, record.last_error) == (JobState.DEAD, 2, "boom 1")
    assert record.finished_at is not None
    assert claim(db_session, at=at + timedelta(days=1)) == []


@pytest.mark.parametrize(
    "error",
    [PermanentJobError("refused"), PackageNotFound("npm", "left-pad")],
    ids=["PermanentJobError", "PackageNotFound"],
)
def test_permanent_error_kills_at_once(db_session: Session, error: Exception) -> None:
    job_id = jobs.enqueue(db_session, "a", {}, now=NOW)
    claim(db_session)
    assert jobs.fail(db_session, job_id, owner="w1", error=error, policy=POLICY) is JobState.DEAD
    record = row(db_session, job_id)
    assert record.attempts == 1
    assert record.last_error == f"{type(error).__name__}: {error}"


def test_failure_with_a_queued_twin_leaves_the_work_to_it(db_session: Session) -> None:
    first = jobs.enqueue(db_session, "sync", {}, dedup_key="k", now=NOW)
    claim(db_session)
    twin = jobs.enqueue(db_session, "sync", {}, dedup_key="k", now=NOW)
    state = jobs.fail(db_session, first, owner="w1", error="timeout", policy=POLICY, now=NOW)
    assert state is JobState.DONE
    assert f"superseded by queued job {twin}" in (row(db_session, first).last_error or "")
    assert row(db_session, twin).state is JobState.QUEUED


def test_retry_requeues_a_dead_job_with_fresh_attempts(db_session: Session) -> None:
    job_id = jobs.enqueue(db_session, "a", {}, now=NOW)
    claim(db_session)
    jobs.fail(db_session, job_id, owner="w1", error=PermanentJobError("no"), policy=POLICY)
    assert admin.retry(db_session, job_id, now=NOW + timedelta(hours=1)) == job_id
    record = row(db_session, job_id)
    assert (record.state, record.attempts) == (JobState.QUEUED, 0)
    assert record.run_after == NOW + timedelta(hours=1)
    assert record.last_error == "PermanentJobError: no"  # kept for the operator
    with pytest.raises(JobError, match="not dead"):
        admin.retry(db_session, job_id)
    with pytest.raises(NotFound):
        admin.retry(db_session, 987_654_321)


def test_retry_dead_by_kind(db_session: Session) -> None:
    ids = {}
    for kind in ("archive", "archive", "pin"):
        job_id = jobs.enqueue(db_session, kind, {}, now=NOW)
        claim(db_session)
        jobs.fail(db_session, job_id, owner="w1", error=PermanentJobError("x"), policy=POLICY)
        ids.setdefault(kind, []).append(job_id)
    assert admin.retry_dead(db_session, kind="archive") == sorted(ids["archive"])
    assert row(db_session, ids["pin"][0]).state is JobState.DEAD
    assert admin.retry_dead(db_session) == ids["pin"]


def test_reap_buries_a_job_whose_last_lease_expired(db_session: Session) -> None:
    # Killed on its last attempt: nobody may claim it again, so it is dead, not stuck.
    job_id = jobs.enqueue(db_session, "a", {}, max_attempts=1, now=NOW)
    claim(db_session)
    assert jobs.reap_expired(db_session, policy=POLICY, now=NOW + timedelta(seconds=30)) == 0
    assert claim(db_session, "w2", at=NOW + timedelta(seconds=61)) == []
    assert jobs.reap_expired(db_session, policy=POLICY, now=NOW + timedelta(seconds=61)) == 1
    record = row(db_session, job_id)
    assert record.state is JobState.DEAD
    assert "lease expired on the last attempt" in (record.last_error or "")


def test_release_gives_the_job_back_without_counting_the_attempt(db_session: Session) -> None:
    job_id = jobs.enqueue(db_session, "a", {}, now=NOW)
    claim(db_session)
    later = NOW + timedelta(seconds=5)
    assert jobs.release(db_session, [job_id], owner="w1", now=later) == 1
    record = row(db_session, job_id)
    assert (record.state, record.attempts, record.run_after) == (JobState.QUEUED, 0, later)
    assert jobs.release(db_session, [job_id], owner="w1", now=later) == 0


def test_has_pending_ignores_jobs_scheduled_later(db_session: Session) -> None:
    assert not admin.has_pending(db_session, now=NOW)
    jobs.enqueue(db_session, "a", {}, run_after=NOW + timedelta(minutes=5))
    assert not admin.has_pending(db_session, now=NOW)
    running = jobs.enqueue(db_session, "b", {}, now=NOW)
    assert admin.has_pending(db_session, now=NOW)
    claim(db_session)
    # Running elsewhere still counts: its lease may expire and the job come back.
    assert admin.has_pending(db_session, now=NOW)
    assert not admin.has_pending(db_session, kinds=["c"], now=NOW)
    jobs.complete(db_session, running, owner="w1")
    assert not admin.has_pending(db_session, now=NOW)


def test_list_counts_and_prune(db_session: Session) -> None:
    done = jobs.enqueue(db_session, "a", {}, now=NOW)
    queued = jobs.enqueue(db_session, "b", {}, now=NOW + timedelta(hours=1))
    claim(db_session, limit=1)
    jobs.complete(db_session, done, owner="w1", now=NOW)
    assert [r.id for r in admin.list_jobs(db_session)] == [queued, done]
    assert [r.id for r in admin.list_jobs(db_session, state="done")] == [done]
    assert [r.id for r in admin.list_jobs(db_session, kind="b")] == [queued]
    assert admin.counts(db_session) == {("a", JobState.DONE): 1, ("b", JobState.QUEUED): 1}
    assert admin.prune(db_session, finished_before=NOW) == 0
    assert admin.prune(db_session, finished_before=NOW + timedelta(seconds=1)) == 1
    assert db_session.get(JobRecord, queued) is not None


def test_concurrent_claims_take_disjoint_jobs(migrated_url: str, store: str) -> None:
    # Two workers claiming at once never get the same job. PostgreSQL: the second claim skips
    # the rows the first locked and returns at once. SQLite: the second waits for the write
    # lock, then sees the first's claims committed and takes the rest.
    engine = make_engine(migrated_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions.begin() as session:
            for n in range(10):
                jobs.enqueue(session, "a", {"n": n}, now=NOW)
        first = sessions()
        first.begin()
        a = {j.id for j in claim(first, "w1", limit=5)}
        b: set[int] = set()

        def second() -> None:
            with sessions.begin() as session:
                b.update(j.id for j in claim(session, "w2", limit=10))

        thread = threading.Thread(target=second)
        thread.start()
        if store == "postgresql":
            thread.join(timeout=10)
            assert not thread.is_alive(), "the second claim waited for the first"
            first.commit()
        else:
            thread.join(timeout=0.3)
            assert thread.is_alive(), "SQLite let two writers in at once"
            first.commit()
            thread.join(timeout=10)
        first.close()
        assert len(a) == 5 and len(b) == 5 and not a & b
        with sessions() as session:
            owners = session.execute(sa.select(JobRecord.lease_owner)).scalars().all()
        assert sorted(owners) == ["w1"] * 5 + ["w2"] * 5
    finally:
        engine.dispose()


def test_jobs_command_lists_and_retries(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(migrated_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions.begin() as session:
            dead = jobs.enqueue(session, "archive", {"artifact_id": 1})
            jobs.enqueue(session, "pin", {"archive_id": 2})
            claim(session, kinds=["archive"], at=utcnow())
            jobs.fail(session, dead, owner="w1", error=PermanentJobError("gone"), policy=POLICY)
    finally:
        engine.dispose()
    monkeypatch.setenv("FORAGE_DATABASE_URL", migrated_url)
    assert main(["jobs", "--state", "dead"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].split()[:3] == [str(dead), "archive", "dead"]
    assert "PermanentJobError: gone" in lines[1]
    assert main(["jobs", "stats"]) == 0
    out = capsys.readouterr().out
    assert "archive" in out and "pin" in out
    assert main(["jobs", "retry"]) == 2
    assert "give job ids or --all-dead" in capsys.readouterr().err
    assert main(["jobs", "retry", str(dead)]) == 0
    assert f"1 job(s) queued: {dead}" in capsys.readouterr().err
    assert main(["jobs", "--state", "dead"]) == 0
    empty = capsys.readouterr()
    assert empty.out == "" and "forage: no jobs with state=dead" in empty.err
    assert main(["jobs", "retry", "987654321"]) == 3


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped), so no process has it now."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_dead_local_workers_leases_expire_at_once(db_session: Session) -> None:
    dead, alive, elsewhere = (jobs.enqueue(db_session, "sync", {"n": n}, now=NOW) for n in range(3))
    dead_pid = _dead_pid()
    for job_id, owner in (
        (dead, f"box:{dead_pid}:aa"),
        (alive, f"box:{os.getpid()}:bb"),  # a live pid keeps its jobs
        (elsewhere, f"other:{dead_pid}:cc"),  # another host's pids cannot be checked here
    ):
        assert [j.id for j in claim(db_session, owner, limit=1)] == [job_id]
    assert admin.expire_dead_local_leases(db_session, host="box", now=NOW) == 1
    assert admin.expire_dead_local_leases(db_session, host="box", now=NOW) == 0
    # Claimable at once by anyone; the killed attempt still counts.
    later = NOW + timedelta(seconds=1)
    assert [(j.id, j.attempt) for j in claim(db_session, "w2", at=later)] == [(dead, 2)]
    assert {job_id: row(db_session, job_id).lease_owner for job_id in (alive, elsewhere)} == {
        alive: f"box:{os.getpid()}:bb",
        elsewhere: f"other:{dead_pid}:cc",
    }


def test_a_dead_local_worker_on_the_last_attempt_buries_its_job(db_session: Session) -> None:
    job_id = jobs.enqueue(db_session, "sync", {}, max_attempts=1, now=NOW)
    assert claim(db_session, f"box:{_dead_pid()}:aa")
    assert admin.expire_dead_local_leases(db_session, host="box", now=NOW) == 1
    later = NOW + timedelta(seconds=1)
    assert jobs.reap_expired(db_session, policy=POLICY, now=later) == 1
    assert claim(db_session, "w2", at=later) == []
    assert row(db_session, job_id).state is JobState.DEAD
