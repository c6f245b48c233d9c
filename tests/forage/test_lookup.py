"""The lookup query layer on SQLite and PostgreSQL.

What is shown: both key spellings and per-registry normalization meet one row; every key gets
its own result in request order (malformed ones an ``invalid`` entry); a found version
carries each file's digests, CID, archive, pins, pieces and only the active, unexpired deals
with provider and expiry; unknown keys queue one deduplicated import per package (per module
version for Go), absorbed by an import already queued (also one a watcher queued), limited by
a token bucket, and never for unindexed or unconfigured registries or packages checked
recently; a 10,000-key batch costs the same few statements as a 3-key one; reverse lookup by
CID, the package view, the legacy one-CID answer and the statistics; a version's stored
answer is the computed one byte for byte until anything it shows changes (archive, pin,
deal, yank, file) or a deal it shows ends, and an answer computed before a change never
lands after it.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import (
    ArchiveStatus,
    DealState,
    JobRecord,
    JobState,
    PinStatus,
    VersionAnswer,
)
from forage.errors import InvalidKey
from forage.index.ingest import enqueue_changes
from forage.lookup.backfill import BackfillPolicy, TokenBucket, backfill
from forage.lookup.batch import lookup
from forage.lookup.epochs import FILECOIN_GENESIS, current_epoch, epoch_time
from forage.lookup.keys import Key, parse_key
from forage.lookup.normalize import _PLAIN_PURL, canonical_purl, normalize_name, parse_lookup_key
from forage.lookup.packages import package_view
from forage.lookup.query import full_query
from forage.lookup.resolve import resolve, store_answers
from forage.lookup.reverse import artifacts_by_cid
from forage.lookup.stats import archive_stats
from forage.lookup.views import KeyStatus, preferred_cid, summarize
from indexers import Change
from indexers.npm.fake import FakeNpmRegistry
from tests.factories import (
    artifact_content,
    make_archive,
    make_artifact,
    make_deal,
    make_package,
    make_piece,
    make_pin,
    make_version,
    raw_cid,
)
from tests.forage.test_ingest import drain, forage_with

NOW = datetime(2025, 1, 1, tzinfo=UTC)
EVERYWHERE = frozenset({"npm", "pypi", "golang"})


def django(session: Session) -> dict[str, Any]:
    """pypi/django 5.0 with an sdist (archived, pinned, in a piece with deals) and a wheel
    whose archive is still pending."""
    package = make_package(session, ecosystem="pypi", name="django", display_name="Django")
    version = make_version(session, package=package, number="5.0")
    sdist = make_artifact(session, version=version, filename="Django-5.0.tar.gz", kind="sdist")
    wheel = make_artifact(
        session, version=version, filename="Django-5.0-py3-none-any.whl", kind="bdist_wheel"
    )
    archive = make_archive(session, artifact=sdist)
    make_archive(session, artifact=wheel, status=ArchiveStatus.PENDING)
    make_pin(session, archive=archive, backend="kubo")
    make_pin(session, archive=archive, backend="cluster", status=PinStatus.PINNING)
    piece = make_piece(session, archives=[archive])
    live = make_deal(session, piece=piece, deal_id="7001", provider="f0100", end_epoch=5_000_000)
    make_deal(session, piece=piece, deal_id="7002", end_epoch=4_100_000)  # over by NOW
    make_deal(session, piece=piece, deal_id="7003", state=DealState.SLASHED)
    # The source recorded dates (another network's genesis): they win over mainnet epochs.
    make_deal(
        session, piece=piece, deal_id="7004", start_epoch=1, end_epoch=2, end_at=NOW + timedelta(9)
    )
    make_deal(session, piece=piece, deal_id="7005", end_epoch=9_000_000, end_at=NOW)  # over
    return {"sdist": sdist, "wheel": wheel, "archive": archive, "piece": piece, "deal": live}


def test_both_spellings_meet_one_version_with_everything_to_fetch_and_trust_it(
    db_session: Session,
) -> None:
    rows = django(db_session)
    results = resolve(db_session, ["pkg:pypi/Django@5.0", "Pypi:DJANGO:5.0"], now=NOW).results
    assert [r.status for r in results] == [KeyStatus.FOUND, KeyStatus.FOUND]
    assert results[0].artifacts == results[1].artifacts
    body = results[0].to_json()
    assert (body["key"], body["purl"], body["name"]) == (
        "pkg:pypi/Django@5.0",
        "pkg:pypi/django@5.0",
        "django",
    )
    wheel, sdist = body["artifacts"]  # ordered by file name
    assert wheel["filename"] == "Django-5.0-py3-none-any.whl"
    assert wheel["cid"] is None and wheel["archive"]["status"] == "pending"
    assert sdist["cid"] == raw_cid(artifact_content(rows["sdist"]))
    assert sdist["digests"]["sha256"] == rows["sdist"].digests["sha256"].value
    assert sdist["archive"]["status"] == "archived"
    assert [(p["backend"], p["status"]) for p in sdist["pins"]] == [
        ("cluster", "pinning"),
        ("kubo", "pinned"),
    ]
    (piece,) = sdist["pieces"]
    assert piece["piece_cid"] == rows["piece"].piece_cid
    # Only the active deal whose end is still ahead shows, with provider and expiry date.
    assert [d["deal_id"] for d in piece["deals"]] == ["7001", "7004"]
    assert piece["deals"][0]["provider"] == "f0100"
    # Unix 1598306400 (mainnet genesis) + 30 s x 5,000,000 epochs.
    assert piece["deals"][0]["expires_at"] == "2025-05-27T00:40:00Z"
    assert piece["deals"][1]["expires_at"] == "2025-01-10T00:00:00Z"


def test_every_key_gets_its_own_result_in_order(db_session: Session) -> None:
    django(db_session)
    keys: list[object] = ["garbage", "pkg:pypi/django@5.0", 42, "npm:lodash", "cargo:serde:1.0.0"]
    results = resolve(db_session, keys, now=NOW).results
    assert [r.key for r in results] == [*keys[:2], "42", *keys[3:]]  # non-strings as JSON
    assert [r.status for r in results] == [
        KeyStatus.INVALID,
        KeyStatus.FOUND,
        KeyStatus.INVALID,
        KeyStatus.INVALID,
        KeyStatus.NOT_FOUND,
    ]
    assert "expected pkg:TYPE/NAME@VERSION" in (results[0].error or "")
    assert results[2].error == "a key must be a string"
    assert "must name a version" in (results[3].error or "")
    assert summarize(results) == {"found": 1, "queued": 0, "not_found": 1, "invalid": 3}


def test_unknown_keys_queue_one_import_per_package_and_per_go_module_version(
    db_session: Session,
) -> None:
    keys = [
        "npm:left-pad:1.0.0",
        "pkg:npm/left-pad@1.1.0",  # same package: the same import
        "pkg:golang/github.com/pkg/errors@v0.9.1",
        "go:github.com/pkg/errors:v0.9.0",  # Go imports are per version
    ]
    resolution = resolve(db_session, keys, now=NOW)
    policy = BackfillPolicy(ecosystems=EVERYWHERE)
    results = resolution.with_outcomes(
        backfill(db_session, resolution.missing, policy=policy, now=NOW)
    )
    assert [r.status for r in results] == [KeyStatus.QUEUED] * 4
    assert results[0].job_id == results[1].job_id
    assert len({r.job_id for r in results}) == 3
    jobs = db_session.execute(
        sa.select(JobRecord.kind, JobRecord.payload, JobRecord.dedup_key).order_by(JobRecord.id)
    ).all()
    assert [(j.kind, j.dedup_key) for j in jobs] == [
        ("import", "import:npm:left-pad"),
        ("import", "import:golang:github.com/pkg/errors@v0.9.1"),
        ("import", "import:golang:github.com/pkg/errors@v0.9.0"),
    ]
    assert jobs[1].payload == {
        "ecosystem": "golang",
        "name": "github.com/pkg/errors",
        "version": "v0.9.1",
        "lookup": True,  # the import records what the registry answers for this version
    }


def test_a_queued_import_absorbs_lookups_without_spending_the_rate_limit(
    db_session: Session,
) -> None:
    # A watcher queued this import; the lookup finds it by the same dedup key.
    enqueue_changes(db_session, "npm", [Change("left-pad")])
    watcher_job = db_session.execute(sa.select(JobRecord.id)).scalar_one()
    policy = BackfillPolicy(ecosystems=EVERYWHERE, limiter=TokenBucket(rate=0, burst=1))

    def ask(key: str) -> Any:
        resolution = resolve(db_session, [key], now=NOW)
        outcomes = backfill(db_session, resolution.missing, policy=policy, now=NOW)
        return resolution.with_outcomes(outcomes)[0]

    assert ask("npm:left-pad:9.9.9").job_id == watcher_job
    first = ask("npm:is-odd:1.0.0")  # spends the only token
    assert first.status is KeyStatus.QUEUED
    assert ask("npm:is-odd:1.0.1").job_id == first.job_id  # absorbed: no token needed
    refused = ask("npm:is-even:1.0.0")
    assert refused.status is KeyStatus.NOT_FOUND
    assert refused.reason == "backfill rate limit reached; ask again later"
    count = db_session.execute(sa.select(sa.func.count()).select_from(JobRecord)).scalar_one()
    assert count == 2


def test_no_import_for_unindexed_unconfigured_or_recently_checked_packages(
    db_session: Session,
) -> None:
    make_package(db_session, ecosystem="npm", name="fresh", last_synced=NOW - timedelta(minutes=5))
    make_package(db_session, ecosystem="npm", name="stale", last_synced=NOW - timedelta(days=2))
    make_package(
        db_session, ecosystem="npm", name="gone", deleted=True, last_synced=NOW - timedelta(1 / 24)
    )
    keys = [
        "pkg:nuget/Newtonsoft.Json@13.0.1",
        "pypi:requests:2.31.0",
        "npm:fresh:2.0.0",
        "npm:stale:2.0.0",
        "npm:gone:1.0.0",
    ]
    resolution = resolve(db_session, keys, now=NOW)
    policy = BackfillPolicy(ecosystems=frozenset({"npm"}), recheck=timedelta(hours=2))
    results = resolution.with_outcomes(
        backfill(db_session, resolution.missing, policy=policy, now=NOW)
    )
    assert [r.status for r in results] == [KeyStatus.NOT_FOUND] * 3 + [
        KeyStatus.QUEUED,
        KeyStatus.NOT_FOUND,
    ]
    assert results[0].reason == "Forage does not index nuget packages"
    assert results[1].reason == "the pypi registry is not configured on this server"
    assert (
        results[2].reason == "the registry listed no version 2.0.0 (checked 2024-12-31T23:55:00Z)"
    )
    assert (
        results[4].reason is not None and "gone was removed from its registry" in results[4].reason
    )


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: clock[0])
    assert bucket.take(5) == 3
    assert bucket.take(1) == 0
    clock[0] = 1.0
    assert bucket.take(5) == 2
    clock[0] = 100.0
    assert bucket.take(10) == 3


def test_epochs_map_to_mainnet_time() -> None:
    assert epoch_time(0) == FILECOIN_GENESIS
    assert epoch_time(2880) == FILECOIN_GENESIS + timedelta(days=1)
    assert current_epoch(epoch_time(4_000_123) + timedelta(seconds=29)) == 4_000_123


def test_reverse_lookup_finds_every_artifact_with_the_bytes(db_session: Session) -> None:
    rows = django(db_session)
    cid = raw_cid(artifact_content(rows["sdist"]))
    # Another package whose file has the very same bytes (same name, so same content).
    twin_version = make_version(
        db_session, package=make_package(db_session, ecosystem="npm", name="twin"), number="1"
    )
    twin = make_artifact(db_session, version=twin_version, filename="Django-5.0.tar.gz")
    make_archive(db_session, artifact=twin)
    matches = artifacts_by_cid(db_session, cid, now=NOW)
    assert [(m.ecosystem, m.name, m.version) for m in matches] == [
        ("npm", "twin", "1"),
        ("pypi", "django", "5.0"),
    ]
    assert matches[1].artifact.pieces[0].deals[0].deal_id == "7001"
    assert artifacts_by_cid(db_session, raw_cid(b"nothing"), now=NOW) == []


def test_legacy_answer_is_one_cid_per_key_preferring_the_source(db_session: Session) -> None:
    rows = django(db_session)
    # The wheel is archived too and sorts first by name, yet the sdist's CID is the answer.
    wheel_archive = rows["wheel"].archive
    wheel_archive.status = ArchiveStatus.ARCHIVED
    wheel_archive.cid = raw_cid(b"wheel")
    wheel_archive.size = 5
    wheel_archive.archived_at = NOW
    db_session.flush()
    (found,) = resolve(db_session, ["pypi:django:5.0"], now=NOW).results
    assert preferred_cid(found.artifacts) == raw_cid(artifact_content(rows["sdist"]))
    wheel_archive.status = ArchiveStatus.FAILED
    wheel_archive.error = "gone"
    rows["archive"].status = ArchiveStatus.PENDING
    rows["archive"].cid = None
    db_session.flush()
    (found,) = resolve(db_session, ["pypi:django:5.0"], now=NOW).results
    assert preferred_cid(found.artifacts) is None


def test_package_view_lists_versions_newest_first_with_archive_counts(
    db_session: Session,
) -> None:
    rows = django(db_session)
    package = rows["sdist"].version.package
    make_version(db_session, package=package, number="5.1", published_at=NOW, yanked=True)
    view = package_view(db_session, "pypi", "DJANGO")
    assert view is not None
    assert [(v.number, v.yanked, v.artifacts, v.archived) for v in view.versions] == [
        ("5.1", True, 0, 0),
        ("5.0", False, 2, 1),
    ]
    assert view.to_json()["purl"] == "pkg:pypi/django"
    assert package_view(db_session, "pypi", "flask") is None


def test_stats_count_rows_bytes_pins_and_deals(db_session: Session) -> None:
    before = archive_stats(db_session)
    rows = django(db_session)
    after = archive_stats(db_session)
    assert after["packages"] - before["packages"] == 1
    assert after["artifacts"] - before["artifacts"] == 2
    assert after["archives"]["pending"] - before["archives"]["pending"] == 1
    assert after["archived_bytes"] - before["archived_bytes"] == rows["archive"].size
    assert after["pins"]["pinning"] - before["pins"]["pinning"] == 1
    assert after["deals"]["active"] - before["deals"]["active"] == 4  # stored state, over or not
    assert after["deals"]["slashed"] - before["deals"]["slashed"] == 1
    assert after["piece_bytes"] - before["piece_bytes"] == rows["piece"].car_size


@pytest.fixture
def statements(db_session: Session) -> Iterator[list[str]]:
    """The SQL statements the session's connection runs during the test."""
    seen: list[str] = []
    connection = db_session.connection()

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    sa.event.listen(connection, "before_cursor_execute", record)
    yield seen
    sa.event.remove(connection, "before_cursor_execute", record)


def test_a_batch_costs_a_fixed_number_of_statements(
    db_session: Session, statements: list[str]
) -> None:
    rows = django(db_session)
    make_pin(db_session, archive=rows["archive"], backend="psa")
    statements.clear()
    small = resolve(db_session, ["pkg:pypi/django@5.0", "npm:a:1", "npm:b:1"], now=NOW)
    few = len(statements)
    statements.clear()
    keys = ["pkg:pypi/django@5.0"] + [f"npm:package-{i}:1.0.{i}" for i in range(9_999)]
    big = resolve(db_session, keys, now=NOW)
    assert len(statements) == few == 5  # keys, artifacts, digests, pins, pieces+deals
    assert big.results[0].artifacts == small.results[0].artifacts
    assert len(big.missing) == 9_999


def test_lookup_reads_then_backfills_in_its_own_transaction(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        sessions = make_sessionmaker(engine)
        with sessions.begin() as session:
            django(session)
        policy = BackfillPolicy(ecosystems=EVERYWHERE)
        results = lookup(sessions, sessions, ["pypi:django:5.0", "npm:x:1.0.0"], policy=policy)
        assert [r.status for r in results] == [KeyStatus.FOUND, KeyStatus.QUEUED]
        with sessions() as session:
            job = session.get(JobRecord, results[1].job_id)
            assert job is not None and job.state is JobState.QUEUED
        # Without a writer nothing is queued and the key is reported as unknown.
        (alone,) = lookup(sessions, None, ["npm:y:1.0.0"], policy=policy)
        assert (alone.status, alone.reason) == (KeyStatus.NOT_FOUND, "not in the index")
    finally:
        engine.dispose()


def test_the_plain_purl_fast_path_agrees_with_the_purl_library() -> None:
    """Generated purls (many taking the fast path, many not) parse to the same key, or are
    refused alike, whichever path reads them."""
    rng = random.Random(7)
    plain = string.ascii_lowercase + string.digits + "._-"
    tricky = string.ascii_letters + string.digits + "._-/%@+~:! "

    def segment() -> str:
        alphabet = plain if rng.random() < 0.7 else tricky
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))

    def generated() -> str:
        kind = rng.choice(["npm", "pypi", "golang", "cargo", "NPM"])
        name = "/".join(segment() for _ in range(rng.randint(1, 3)))
        scope = "%40" if rng.random() < 0.2 else ""
        version = "".join(rng.choice(plain + "+ABC") for _ in range(rng.randint(0, 6)))
        return f"pkg:{kind}/{scope}{name}@{version}"

    def reference(text: str) -> Key | None:
        try:
            key = parse_key(text, normalize=normalize_name)
        except InvalidKey:
            return None
        return key if key.version is not None else None

    def ours(text: str) -> Key | None:
        try:
            return parse_lookup_key(text)
        except InvalidKey:
            return None

    crafted = [
        "pkg:npm/%40babel/core@7.23.2",
        "pkg:pypi/zope_interface@6.1",
        "pkg:pypi/Django@5.0",
        "pkg:golang/github.com/BurntSushi/toml@v1.3.2",
        "pkg:golang/golang.org//x/text@v0.3.0",
        "pkg:npm/left-pad/@1.0.0",
        "pkg:npm/left-pad@1.0.0+build.1",
        "pkg:npm/left-pad@1." + "0" * 2000,
    ]
    keys = crafted + [generated() for _ in range(5_000)]
    fast = sum(1 for text in keys if _PLAIN_PURL.fullmatch(text))
    assert fast > 800  # both paths are exercised
    parsed = [ours(text) for text in keys]
    assert parsed == [reference(text) for text in keys]
    # The canonical purl is spelled alike too, for these keys and for every key normalized.
    found = [key for key in parsed if key is not None]
    found += [Key("npm", "@Scope/Name", "1.0"), Key("golang", "a.b/C", "v1"), Key("gem", "x", "1")]
    assert [canonical_purl(key) for key in found] == [key.purl() for key in found]


def test_the_bare_query_reads_what_resolve_answers(db_session: Session) -> None:
    django(db_session)
    keys = [Key("pypi", "django", "5.0"), Key("npm", "absent", "1")]
    rows = db_session.execute(full_query(db_session, keys)).all()
    (answer,) = resolve(db_session, ["pypi:django:5.0"], now=NOW).results
    assert {row.cid for row in rows} == {a.cid for a in answer.artifacts}
    assert {row.algorithm for row in rows} == {"sha1", "sha256", "sha512"}
    assert {row.deal_id for row in rows} >= {"7001", "7004"}


async def test_a_backfill_import_runs_and_the_next_lookup_finds_the_version(
    migrated_url: str, tmp_path: Path
) -> None:
    """The queued job is a real ``import`` job: the worker records the package from the
    (loopback) registry, and the same key is then found with its file."""
    registry = FakeNpmRegistry()
    registry.publish("left-pad", "1.3.0")
    async with forage_with(registry.make_app(), tmp_path, migrated_url, "npm") as ctx:
        policy = BackfillPolicy.from_config(ctx.config)
        sessions = ctx.sessionmaker
        (first,) = lookup(sessions, sessions, ["pkg:npm/left-pad@1.3.0"], policy=policy)
        assert first.status is KeyStatus.QUEUED
        await drain(ctx)
        (second,) = lookup(sessions, sessions, ["npm:left-pad:1.3.0"], policy=policy)
    assert second.status is KeyStatus.FOUND
    assert [a.filename for a in second.artifacts] == ["left-pad-1.3.0.tgz"]
    # Not archived yet (the archive job the import queued comes next): no archive, no CID.
    assert (second.artifacts[0].archive_status, second.artifacts[0].cid) == (None, None)


def _rendered(session: Session, key: str, *, now: datetime = NOW) -> tuple[Any, bytes]:
    """Resolve ``key`` with stored answers; store what was computed; the resolution and
    the key's JSON as the API sends it."""
    resolution = resolve(session, [key], now=now, rendered=True)
    store_answers(session, resolution.fills)
    return resolution, resolution.results[0].to_json_bytes()


def _computed(session: Session, key: str, *, now: datetime = NOW) -> bytes:
    """The key's JSON computed from the tables, no stored answer involved."""
    return orjson.dumps(resolve(session, [key], now=now).results[0].to_json())


def _archive_wheel(session: Session, rows: dict[str, Any]) -> None:
    archive = rows["wheel"].archive
    archive.status, archive.cid, archive.size = ArchiveStatus.ARCHIVED, raw_cid(b"wheel"), 5
    archive.archived_at = NOW


def _pin(session: Session, rows: dict[str, Any]) -> None:
    make_pin(session, archive=rows["archive"], backend="psa")


def _unpin(session: Session, rows: dict[str, Any]) -> None:
    session.delete(rows["archive"].pins[0])


def _new_deal(session: Session, rows: dict[str, Any]) -> None:
    make_deal(session, piece=rows["piece"], deal_id="7009", provider="f0999")


def _slash(session: Session, rows: dict[str, Any]) -> None:
    rows["deal"].state = DealState.SLASHED


def _yank(session: Session, rows: dict[str, Any]) -> None:
    rows["sdist"].version.yanked = True


def _new_file(session: Session, rows: dict[str, Any]) -> None:
    make_artifact(session, version=rows["sdist"].version, filename="Django-5.0.zip")


CHANGES = [_archive_wheel, _pin, _unpin, _new_deal, _slash, _yank, _new_file]


@pytest.mark.parametrize("change", CHANGES, ids=[c.__name__.strip("_") for c in CHANGES])
def test_a_stored_answer_is_the_computed_one_until_anything_it_shows_changes(
    db_session: Session, change: Any
) -> None:
    rows = django(db_session)
    key = "pkg:pypi/django@5.0"
    first, sent = _rendered(db_session, key)
    assert len(first.fills) == 1 and sent == _computed(db_session, key)
    # Asked again (another spelling): the stored bytes, no files loaded, nothing to store.
    again = resolve(db_session, ["Pypi:Django:5.0"], now=NOW, rendered=True)
    (result,) = again.results
    assert again.fills == () and result.artifacts == () and result.rendered is not None
    assert result.to_json_bytes() == _computed(db_session, "Pypi:Django:5.0")
    # A change to anything the answer shows retires it (a trigger); the next lookup shows it.
    change(db_session, rows)
    db_session.flush()
    db_session.expire_all()
    after, shown = _rendered(db_session, key)
    assert len(after.fills) == 1
    assert shown == _computed(db_session, key) != sent


def test_a_renamed_package_leaves_no_stored_answer_under_its_old_name(
    db_session: Session,
) -> None:
    """Answers are found by purl: after a rename the old purl's row is a tombstone (no body),
    so a new package taking the old name is answered from its own files, not the old ones."""
    rows = django(db_session)
    _, sent = _rendered(db_session, "pkg:pypi/django@5.0")
    rows["sdist"].version.package.name = "django-classic"
    db_session.flush()
    newcomer = make_package(db_session, ecosystem="pypi", name="django")
    make_artifact(
        db_session,
        version=make_version(db_session, package=newcomer, number="5.0"),
        filename="x.zip",
    )
    db_session.flush()
    db_session.expire_all()
    first, shown = _rendered(db_session, "pkg:pypi/django@5.0")
    assert len(first.fills) == 1 and shown != sent
    assert [a["filename"] for a in orjson.loads(shown)["artifacts"]] == ["x.zip"]
    again, stored = _rendered(db_session, "pkg:pypi/django@5.0")
    assert again.fills == () and stored == shown  # the newcomer's own answer, stored
    _, moved = _rendered(db_session, "pkg:pypi/django-classic@5.0")
    assert b"Django-5.0.tar.gz" in moved and b'"purl":"pkg:pypi/django-classic@5.0"' in moved


def test_an_answer_stored_without_a_purl_is_computed_again_and_then_found(
    db_session: Session,
) -> None:
    """Rows stored before migration 0004 have no purl: such a version is answered by the full
    read, the same bytes, and its answer is stored again with the purl."""
    django(db_session)
    _, sent = _rendered(db_session, "pkg:pypi/django@5.0")
    db_session.execute(sa.update(VersionAnswer).values(purl=None))
    first, shown = _rendered(db_session, "pypi:Django:5.0")
    assert len(first.fills) == 1 and shown == _computed(db_session, "pypi:Django:5.0")
    assert shown.split(b",", 1)[1] == sent.split(b",", 1)[1]  # all but the key as asked
    stored = db_session.execute(sa.select(VersionAnswer.purl)).scalar_one()
    assert stored == "pkg:pypi/django@5.0"
    assert resolve(db_session, ["pkg:pypi/django@5.0"], now=NOW, rendered=True).fills == ()


def test_a_package_sync_does_not_retire_its_answers(db_session: Session) -> None:
    rows = django(db_session)
    _rendered(db_session, "pypi:django:5.0")
    rows["sdist"].version.package.last_synced = NOW  # shown nowhere in the answer
    db_session.flush()
    assert resolve(db_session, ["pypi:django:5.0"], now=NOW, rendered=True).fills == ()


def test_a_deal_past_its_end_leaves_the_stored_answer(db_session: Session) -> None:
    django(db_session)
    _, sent = _rendered(db_session, "pypi:django:5.0")
    assert b'"7004"' in sent  # ends NOW + 9 days: the earliest end shown
    stored = db_session.execute(sa.select(VersionAnswer.valid_until)).scalar_one()
    assert stored == NOW + timedelta(9)
    later = NOW + timedelta(10)
    resolution, shown = _rendered(db_session, "pypi:django:5.0", now=later)
    assert len(resolution.fills) == 1  # recomputed, not served from the store
    assert b'"7004"' not in shown and b'"7001"' in shown


def test_an_answer_computed_before_a_change_is_not_stored_after_it(
    db_session: Session,
) -> None:
    rows = django(db_session)
    early = resolve(db_session, ["pypi:django:5.0"], now=NOW, rendered=True)
    _yank(db_session, rows)  # commits between the lookup's read and its store
    db_session.flush()
    assert store_answers(db_session, early.fills) == 0  # the tombstone's stamp moved on
    db_session.expire_all()
    _, shown = _rendered(db_session, "pypi:django:5.0")
    assert b'"yanked":true' in shown
    # Once stored, a stale store of the same version loses to the row already there.
    assert store_answers(db_session, early.fills) == 0
    assert _rendered(db_session, "pypi:django:5.0")[1] == shown
