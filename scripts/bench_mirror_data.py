"""The packages every server in ``bench_mirror.py`` holds, the same bytes on every call:
written straight into a Forage's index and archive (:func:`populate`), or served by the
loopback fakes the peers proxy once (:func:`npm_fake`, :func:`pypi_app`)."""

from __future__ import annotations

import argparse
import hashlib
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
#: Four wheels per version of ``sample-project``, one per platform.
PLATFORMS = ("any", "manylinux_2_17_x86_64", "macosx_11_0_arm64", "win_amd64")
PROJECT = "sample-project"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


def npm_packages(args: argparse.Namespace) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """``(name, [(version, tarball)])`` for every npm package, the same bytes on every call."""
    from indexers.npm.fake import make_tarball

    rng = random.Random(7)
    for index in range(args.tarballs):
        name = f"blob-{index}"
        blob = rng.randbytes(args.tarball_size)
        yield name, [("1.0.0", make_tarball(name, "1.0.0", {"blob.bin": blob}))]
    versions = [f"1.{i // 1000}.{i % 1000}" for i in range(args.versions)]
    yield "big", [(version, make_tarball("big", version)) for version in versions]


def wheels(args: argparse.Namespace) -> Iterator[tuple[str, str, bytes]]:
    """``(version, filename, bytes)`` for every file of ``sample-project``."""
    for index in range(args.files):
        version = f"{index // len(PLATFORMS)}.0"
        platform = PLATFORMS[index % len(PLATFORMS)]
        filename = f"sample_project-{version}-py3-none-{platform}.whl"
        yield version, filename, f"wheel {index}\n".encode() * 64


def populate(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Write the index rows and archive the bytes; return what the load generator asks for."""
    from forage.archive.blocks import blockstore_path
    from forage.db.engine import make_sessionmaker, open_database
    from forage.db.models import Archive, ArchiveStatus, Artifact, Package, Version
    from forage.index.ingest import record_package
    from indexers import Artifact as ArtifactInfo
    from indexers import PackageInfo, Release, parse_sri
    from indexers.npm.fake import sri_sha512
    from storage import FilesystemBlockstore, import_file

    # Setup only: no fsync per block (the server reads the store as production does).
    store = FilesystemBlockstore(blockstore_path(config), durable=False)
    engine = open_database(config.database)
    sessions = make_sessionmaker(engine)
    archives: dict[tuple[str, str, str], tuple[str, int]] = {}

    def stored(data: bytes) -> tuple[str, int]:
        with store.batch() as batch:
            result = import_file(data, sink=batch)
        return str(result.cid), result.size

    def npm_info(name: str, releases: list[tuple[str, bytes]]) -> PackageInfo:
        out = []
        for index, (version, data) in enumerate(releases):
            digests = parse_sri(sri_sha512(data))
            digests["sha1"] = hashlib.sha1(data).hexdigest()  # noqa: S324 - npm's shasum
            filename = f"{name}-{version}.tgz"
            archives[("npm", name, filename)] = stored(data)
            out.append(
                Release(
                    version=version,
                    artifacts=(
                        ArtifactInfo(
                            filename, f"https://npm.invalid/{name}/-/{filename}", None, digests
                        ),
                    ),
                    published_at=EPOCH + timedelta(minutes=index),
                )
            )
        return PackageInfo(
            "npm", name, name, tuple(out), extra={"dist_tags": {"latest": releases[-1][0]}}
        )

    infos = [npm_info(name, releases) for name, releases in npm_packages(args)]
    blobs = [f"/npm/blob-{i}/-/blob-{i}-1.0.0.tgz" for i in range(args.tarballs)]
    merged: dict[str, list[ArtifactInfo]] = {}
    for version, filename, data in wheels(args):
        archives[("pypi", PROJECT, filename)] = stored(data)
        merged.setdefault(version, []).append(
            ArtifactInfo(
                filename,
                f"https://files.invalid/{filename}",
                len(data),
                {"sha256": hashlib.sha256(data).hexdigest()},
                requires_python=">=3.8",
                uploaded_at=EPOCH,
            )
        )
    infos.append(
        PackageInfo(
            "pypi",
            PROJECT,
            PROJECT,
            tuple(Release(version=v, artifacts=tuple(a)) for v, a in merged.items()),
        )
    )
    with sessions.begin() as session:
        for info in infos:
            record_package(session, info, archive=False)
        rows = session.execute(
            sa.select(Artifact.id, Package.ecosystem, Package.name, Artifact.filename)
            .join(Version, Artifact.version_id == Version.id)
            .join(Package, Version.package_id == Package.id)
        ).all()
        now = datetime.now(UTC)
        session.execute(
            sa.insert(Archive),
            [
                {
                    "artifact_id": row.id,
                    "cid": archives[(row.ecosystem, row.name, row.filename)][0],
                    "size": archives[(row.ecosystem, row.name, row.filename)][1],
                    "status": ArchiveStatus.ARCHIVED,
                    "archived_at": now,
                }
                for row in rows
            ],
        )
    engine.dispose()
    return {"blobs": blobs}


def npm_fake(args: argparse.Namespace) -> Any:
    """The npm packages Forage holds, in a fake npm registry (one document per package)."""
    from indexers.npm.fake import (
        FakeNpmRegistry,
        NpmTarball,
        sri_sha512,
        tarball_path,
        version_manifest,
    )

    registry = FakeNpmRegistry()
    for name, releases in npm_packages(args):
        versions, times = {}, {}
        for index, (version, data) in enumerate(releases):
            sha1 = hashlib.sha1(data).hexdigest()  # noqa: S324 - npm's shasum
            tarball = NpmTarball(
                name, version, tarball_path(name, version), data, sri_sha512(data), sha1
            )
            registry.tarballs[tarball.path] = tarball
            versions[version] = version_manifest(name, version, tarball)
            times[version] = (EPOCH + timedelta(minutes=index)).isoformat()
        registry.docs[name] = {
            "_id": name,
            "_rev": "1-0",
            "name": name,
            "dist-tags": {"latest": releases[-1][0]},
            "versions": versions,
            "time": {"created": EPOCH.isoformat(), "modified": times[releases[-1][0]], **times},
        }
    return registry


def pypi_fake(args: argparse.Namespace) -> Any:
    """``sample-project`` as Forage holds it, in a fake PyPI."""
    from indexers.pypi.fake import FakePyPI, PyPIFile

    fake = FakePyPI()
    files = list(wheels(args))
    for version in dict.fromkeys(version for version, _, _ in files):
        fake.add_version(PROJECT, version)
    fake.projects[PROJECT].files.extend(
        PyPIFile(PROJECT, version, filename, data, EPOCH, requires_python=">=3.8")
        for version, filename, data in files
    )
    return fake


async def _bare_json_type(request: Any, response: Any) -> None:
    """Send PEP 691 JSON as PyPI does, with no ``charset`` (aiohttp adds one): devpi compares
    the content type verbatim and parses anything else as HTML, finding no files."""
    if response.headers.get("Content-Type", "").startswith(SIMPLE_JSON + ";"):
        response.headers["Content-Type"] = SIMPLE_JSON


def pypi_app(args: argparse.Namespace) -> Any:
    app = pypi_fake(args).make_app()
    app.on_response_prepare.append(_bare_json_type)
    return app
