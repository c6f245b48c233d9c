"""Selection: what of a registry to archive, from ``[registries.<name>]``, applied one way.

On SQLite and PostgreSQL against the loopback fakes: name patterns and list files are applied
by the watcher (and its re-scan), by ``forage import``, by import jobs as backfill lookups
queue them, by a bootstrap walk and by ``prime``; pre-releases, the newest N, the size cap
and file-name patterns shape what an import records; development versions (a Packagist dev
branch, a Maven SNAPSHOT) are recorded without files unless ``development`` is on, when
``prime`` archives them; bad settings are refused on load with the key named.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from forage.config import load_config
from forage.db.models import Artifact, Package, Version
from forage.errors import ConfigError
from forage.index import bootstrap
from forage.index.ingest import IMPORT, import_package, watch_feed
from forage.index.selection import PackageExcluded, Selection
from forage.jobs import queue as jobs
from forage.lookup.backfill import BackfillPolicy
from forage.lookup.batch import lookup
from forage.lookup.keys import parse_key, registered_name
from forage.lookup.views import KeyStatus
from forage.mirror.offline import prime
from indexers import Artifact as FileInfo
from indexers import PackageInfo, Release
from indexers.composer.fake import FakePackagist
from indexers.golang.fake import GoFake
from indexers.maven.fake import FakeMaven
from indexers.npm.fake import FakeNpmRegistry
from indexers.pypi.fake import FakePyPI
from tests.forage.index_harness import (
    drain_imports,
    forage_on,
    import_jobs,
    packages_of,
    versions_of,
    write_config,
)


def _npm() -> FakeNpmRegistry:
    registry = FakeNpmRegistry()
    for name in ("left-pad", "evil-pkg", "unlisted"):
        registry.publish(name, "1.0.0")
    return registry


def _lists(tmp_path: Path) -> dict[str, object]:
    allowed = tmp_path / "allow.txt"
    allowed.write_text("# what we mirror\nleft-pad\nevil-*  # caught by deny below\n\n")
    return {"allow_file": allowed, "deny": ["evil-*"]}


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("allow", [""], "is not a pattern"),
        ("deny", ["bad\\u0001name"], "control character"),  # TOML escape
        ("files", ["x" * 600], "is not a pattern"),
        ("deny_file", "missing.txt", "cannot read"),
        ("newest", 0, "must be >= 1"),
        ("max_file_size", -5, "must be >= 1"),
        ("cooldown_days", -1, "must be >= 0"),
        ("prereleases", "no", "true or false"),
    ],
)
def test_bad_selection_settings_are_refused_naming_the_key(
    tmp_path: Path, setting: str, value: object, message: str
) -> None:
    tables = {"npm": {"registry_url": "http://127.0.0.1:1", "replicate_url": "http://x:1"}}
    tables["npm"][setting] = value  # type: ignore[assignment]
    with pytest.raises(ConfigError) as caught:
        write_config(tmp_path, "sqlite:///x.db", tables)
    assert caught.value.key.startswith(f"registries.npm.{setting}")
    assert message in str(caught.value)


def test_selection_settings_load_from_the_file_and_the_environment(tmp_path: Path) -> None:
    listed = tmp_path / "deny.txt"
    listed.write_text("spam-*\n")
    path = tmp_path / "forage.toml"
    path.write_text(
        f'[registries.pypi]\nfiles = ["*.whl"]\ndeny_file = "{listed}"\nprereleases = false\n'
    )
    config = load_config(path, environ={"FORAGE_REGISTRIES_PYPI_DENY": "a*, b*"})
    section = config.registries.pypi
    assert (section.deny, section.files, section.prereleases) == (("a*", "b*"), ("*.whl",), False)
    selection = Selection.of(section)
    assert selection.excluded("spam-eggs") is not None and selection.excluded("eggs") is None
    assert "registries.pypi.deny" in (selection.excluded("apple") or "")


async def test_the_watcher_and_a_bootstrap_queue_only_selected_packages(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = _npm()
    settings = {"npm": _lists(tmp_path)}
    async with forage_on(tmp_path, migrated_url, {"npm": registry}, settings) as ctx:
        await watch_feed(ctx, "npm")  # the re-scan window covers what was published
        registry.publish("evil-pkg", "1.1.0")
        registry.publish("left-pad", "1.1.0")
        await watch_feed(ctx, "npm")
        await bootstrap.start(ctx, "npm", "origin")
        await watch_feed(ctx, "npm")
        assert {key for key, _ in import_jobs(ctx)} == {f"{IMPORT}:npm:left-pad"}


async def test_import_backfill_and_prime_refuse_what_is_not_selected(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = _npm()
    settings = {"npm": _lists(tmp_path)}
    async with forage_on(tmp_path, migrated_url, {"npm": registry}, settings) as ctx:
        with pytest.raises(PackageExcluded, match=r"registries\.npm\.deny \('evil-\*'\)"):
            await import_package(ctx, "npm", "evil-pkg")
        with pytest.raises(PackageExcluded, match=r"matches nothing in registries\.npm\.allow"):
            await import_package(ctx, "npm", "unlisted")

        def queue_backfills(session: sa.orm.Session) -> None:  # as a lookup's backfill does
            for name in ("evil-pkg", "left-pad"):
                payload = {"ecosystem": "npm", "name": name, "version": "1.0.0"}
                jobs.enqueue(session, IMPORT, payload, dedup_key=f"{IMPORT}:npm:{name}")

        await ctx.transaction(queue_backfills)
        await drain_imports(ctx)
        assert dict(import_jobs(ctx)) == {
            f"{IMPORT}:npm:evil-pkg": "done",
            f"{IMPORT}:npm:left-pad": "done",
        }
        assert packages_of(ctx, "npm") == {"left-pad"}

        # A lookup's own backfill answers an excluded name at once and queues nothing.
        policy = BackfillPolicy.from_config(ctx.config, limited=False)
        (answer,) = lookup(
            ctx.sessionmaker, ctx.sessionmaker, ["pkg:npm/evil-pkg@2.0.0"], policy=policy
        )
        assert answer.status is KeyStatus.NOT_FOUND
        assert "not archived here" in (answer.reason or "") and "registries.npm.deny" in (
            answer.reason or ""
        )
        assert f"{IMPORT}:npm:evil-pkg@2.0.0" not in dict(import_jobs(ctx))
        assert len(import_jobs(ctx)) == 2

        keys = [parse_key(k, normalize=registered_name) for k in ("npm:evil-pkg:1.0.0",)]
        report = await prime(ctx, [*keys, parse_key("npm:left-pad:1.0.0")])
        assert report.archived == 1
        assert [purl for purl, _ in report.failed] == ["pkg:npm/evil-pkg@1.0.0"]
        assert "excluded by registries.npm.deny" in report.failed[0][1]
        assert packages_of(ctx, "npm") == {"left-pad"}


def _files(ctx: object, name: str) -> set[str]:
    with ctx.sessionmaker() as session:  # type: ignore[attr-defined]
        return set(
            session.execute(
                sa.select(Artifact.filename)
                .join(Version)
                .join(Package)
                .where(Package.ecosystem == "pypi", Package.name == name)
            ).scalars()
        )


async def test_prereleases_newest_size_and_file_patterns_shape_an_import(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = FakePyPI()
    registry.release("sample", "1.0")
    registry.release("sample", "1.1", wheels=("py3-none-any", "cp311-cp311-win_amd64"))
    big = "sample-1.1-py3-none-manylinux1_x86_64.whl"
    registry.upload("sample", "1.1", filename=big, content=b"x" * 5000)
    registry.release("sample", "2.0rc1")
    settings = {
        "pypi": {"prereleases": False, "newest": 1, "files": ["*.whl"], "max_file_size": 4000}
    }
    async with forage_on(tmp_path, migrated_url, {"pypi": registry}, settings) as ctx:
        stats = await import_package(ctx, "pypi", "sample")
        assert stats is not None and stats.new_versions == 1
        assert versions_of(ctx, "pypi", "sample") == {"1.1"}
        assert _files(ctx, "sample") == {
            "sample-1.1-py3-none-any.whl",
            "sample-1.1-cp311-cp311-win_amd64.whl",
        }


async def test_go_prereleases_are_left_out_by_the_modules_own_rules(
    migrated_url: str, tmp_path: Path
) -> None:
    registry = GoFake()
    for version in ("v1.0.0", "v1.1.0-rc.1", "v1.0.1"):
        registry.add_version("example.com/mod", version)
    settings = {"golang": {"prereleases": False}}
    async with forage_on(tmp_path, migrated_url, {"golang": registry}, settings) as ctx:
        await import_package(ctx, "golang", "example.com/mod")
        assert versions_of(ctx, "golang", "example.com/mod") == {"v1.0.0", "v1.0.1"}


def _dev_files(ctx: object, ecosystem: str, name: str, version: str) -> dict[str, str | None]:
    """The files recorded for a version, with their archive status (``None``: none)."""
    with ctx.sessionmaker() as session:  # type: ignore[attr-defined]
        rows = session.execute(
            sa.select(Artifact)
            .join(Version)
            .join(Package)
            .where(Package.ecosystem == ecosystem, Package.name == name, Version.number == version)
        ).scalars()
        return {a.filename: a.archive.status.value if a.archive else None for a in rows}


@pytest.mark.parametrize("development", [False, True])
async def test_development_versions_are_archived_only_when_asked(
    migrated_url: str, tmp_path: Path, development: bool
) -> None:
    packagist, maven = FakePackagist(), FakeMaven()
    packagist.publish("acme/pad", "1.0.0", shasum=True)
    packagist.branch("acme/pad", "dev-main")
    maven.publish("org.example/lib", "1.0")
    maven.publish_snapshot("org.example/lib", "1.1-SNAPSHOT")
    fakes = {"composer": packagist, "maven": maven}
    settings = {name: {"development": development} for name in fakes}
    async with forage_on(tmp_path, migrated_url, fakes, settings) as ctx:
        keys = [
            parse_key(key, normalize=registered_name)
            for key in ("pkg:composer/acme/pad@dev-main", "pkg:maven/org.example/lib@1.1-SNAPSHOT")
        ]
        report = await prime(ctx, keys)
        # Either way the versions are known, and releases beside them are kept as before.
        assert versions_of(ctx, "composer", "acme/pad") == {"1.0.0", "dev-main"}
        assert versions_of(ctx, "maven", "org.example/lib") == {"1.0", "1.1-SNAPSHOT"}
        branch = _dev_files(ctx, "composer", "acme/pad", "dev-main")
        snapshot = _dev_files(ctx, "maven", "org.example/lib", "1.1-SNAPSHOT")
        if not development:
            assert branch == {} and snapshot == {}
            assert len(report.failed) == 2 and report.archived == 0
            return
        assert report.failed == [] and report.archived == 3
        assert list(branch.values()) == ["archived"]
        # The SNAPSHOT's newest timestamped build: its POM and jar.
        assert len(snapshot) == 2 and all(name.startswith("lib-1.1-20") for name in snapshot)
        assert {name.rpartition(".")[2] for name in snapshot} == {"pom", "jar"}
        assert set(snapshot.values()) == {"archived"}


def test_apply_marks_an_answer_it_trimmed_as_incomplete() -> None:
    def release(version: str, *files: tuple[str, int]) -> Release:
        artifacts = tuple(FileInfo(name, f"https://x/{name}", size, {}) for name, size in files)
        return Release(version, artifacts)

    info = PackageInfo(
        "pypi",
        "p",
        "p",
        (release("1.0", ("p-1.0.tar.gz", 10), ("p-1.0-py3-none-any.whl", 10)),),
    )
    assert Selection("pypi").apply(info) is info
    trimmed = Selection("pypi", files=("*.whl",)).apply(info)
    assert not trimmed.complete
    assert [a.filename for a in trimmed.releases[0].artifacts] == ["p-1.0-py3-none-any.whl"]
    assert Selection("pypi", max_file_size=5).apply(info).releases == ()
