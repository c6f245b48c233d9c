"""``forage archive``: archive named or pending artifacts now, report, and exit accordingly.

Run in process through :func:`forage.cli.main` against a threaded fake file host and a
SQLite database: keys in either spelling select artifacts, ``--pending`` takes every
artifact without an archived row, progress bars go to stderr, a failure is named with its
reason and makes the exit status 1, bad and unknown keys are usage (2) and not-found (3).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from forage.cli import main
from forage.db.engine import make_engine, make_sessionmaker
from forage.db.models import Archive, ArchiveStatus
from forage.fakes.files import FakeFileServer
from indexers.fakeserver import ThreadedServer
from storage import compute_cid
from tests.forage.test_archive import (
    blob,
    npm_artifact,
    package,
    pypi_artifact,
    record,
    write_config,
)


def statuses(url: str) -> dict[int, tuple[str, str | None]]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            rows = session.execute(sa.select(Archive.artifact_id, Archive.status, Archive.cid))
            return {row.artifact_id: (str(row.status), row.cid) for row in rows}
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from forage.db.engine import upgrade

    url = f"sqlite:///{tmp_path / 'forage.db'}"
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def test_archive_named_keys_then_pending_with_progress(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two, three = blob(3000, 1), blob(600_000, 2), blob(10, 3)
    host = FakeFileServer()
    with ThreadedServer(host.make_app()) as fake:
        config = str(write_config(tmp_path, sqlite_url, fake.url))
        [lodash] = record(
            sqlite_url,
            package(
                "npm",
                "lodash",
                {"4.17.21": npm_artifact(fake.url + host.add("l.tgz", one), one, "l.tgz")},
            ),
        )
        [requests] = record(
            sqlite_url,
            package(
                "pypi",
                "requests",
                {"2.31.0": pypi_artifact(fake.url + host.add("r.tar.gz", two), two, "r.tar.gz")},
            ),
        )
        [left] = record(
            sqlite_url,
            package(
                "npm",
                "left",
                {"1.0.0": npm_artifact(fake.url + host.add("x.tgz", three), three, "x.tgz")},
            ),
        )

        code = main(
            [
                "-q",
                "-c",
                config,
                "archive",
                "--progress",
                "pkg:npm/lodash@4.17.21",
                "Pypi:Requests:2.31.0",
            ]
        )
        err = capsys.readouterr().err
        assert code == 0, err
        assert "artifacts" in err and "downloaded" in err  # the two bars
        assert "archived 2, already archived 0, failed 0" in err
        assert statuses(sqlite_url) == {
            lodash: ("archived", str(compute_cid(one))),
            requests: ("archived", str(compute_cid(two))),
        }

        # --pending takes only what is left; naming an archived key again skips it.
        code = main(
            ["-q", "-c", config, "archive", "--no-progress", "--pending", "npm:lodash:4.17.21"]
        )
        err = capsys.readouterr().err
        assert code == 0, err
        assert "archived 1, already archived 1, failed 0" in err
        assert "downloaded" not in err
        assert statuses(sqlite_url)[left] == ("archived", str(compute_cid(three)))
        assert host.requests.paths().count("/files/l.tgz") == 1

        code = main(["-q", "-c", config, "archive", "--pending"])
        assert code == 0
        assert "archived 0, already archived 0, failed 0" in capsys.readouterr().err


def test_a_failed_artifact_is_named_and_the_exit_status_is_1(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = blob(2000, 4)
    host = FakeFileServer()
    with ThreadedServer(host.make_app()) as fake:
        config = str(write_config(tmp_path, sqlite_url, fake.url))
        [bad] = record(
            sqlite_url,
            package(
                "npm",
                "bad",
                {"1.0.0": npm_artifact(fake.url + host.add("b.tgz", data), data, "b.tgz")},
            ),
        )
        [gone] = record(
            sqlite_url,
            package(
                "npm",
                "gone",
                {"1.0.0": npm_artifact(fake.url + "/files/nowhere.tgz", data, "g.tgz")},
            ),
        )
        host.corrupt("b.tgz")
        code = main(["-q", "-c", config, "archive", "--pending"])
    err = capsys.readouterr().err
    assert code == 1
    assert "failed pkg:npm/bad@1.0.0 b.tgz: DigestMismatch:" in err and "sha512 mismatch" in err
    assert "failed pkg:npm/gone@1.0.0 g.tgz: DownloadRefused:" in err and "HTTP 404" in err
    # Wrong bytes may be right on a later try (jobs.mismatch_attempts); a 404 will not.
    assert "sha512 mismatch" in err.split("; retry later")[0]
    assert err.count("retry later") == 1
    assert "archived 0, already archived 0, failed 2" in err
    assert statuses(sqlite_url) == {bad: ("failed", None), gone: ("failed", None)}


def test_bad_usage_keys_and_unknown_keys(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_config(tmp_path, sqlite_url, "http://127.0.0.1:9"))
    assert main(["-c", config, "archive"]) == 2
    assert "name artifacts to archive (KEY...) or pass --pending" in capsys.readouterr().err
    assert main(["-c", config, "archive", "--concurrency", "0", "--pending"]) == 2
    assert "--concurrency must be at least 1" in capsys.readouterr().err
    assert main(["-c", config, "archive", "nope:x:1"]) == 2
    assert "unknown platform 'nope'" in capsys.readouterr().err
    assert main(["-c", config, "archive", "pkg:npm/absent@1.0.0"]) == 3
    assert "no artifact in the index for pkg:npm/absent@1.0.0" in capsys.readouterr().err
    assert statuses(sqlite_url) == {}


def test_an_archived_row_is_untouched_by_a_second_cli_run(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = blob(100, 5)
    host = FakeFileServer()
    with ThreadedServer(host.make_app()) as fake:
        config = str(write_config(tmp_path, sqlite_url, fake.url))
        record(
            sqlite_url,
            package(
                "npm",
                "once",
                {"1.0.0": npm_artifact(fake.url + host.add("o.tgz", data), data, "o.tgz")},
            ),
        )
        assert main(["-q", "-c", config, "archive", "pkg:npm/once"]) == 0
        host.corrupt("o.tgz")  # would fail if it were downloaded again
        assert main(["-q", "-c", config, "archive", "pkg:npm/once"]) == 0
    assert "already archived 1" in capsys.readouterr().err
    assert [s for s, _ in statuses(sqlite_url).values()] == [ArchiveStatus.ARCHIVED]
