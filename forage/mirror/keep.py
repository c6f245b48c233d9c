"""Pull-through archiving (issue 16): the mirror keeps every file it fetched and verified.

The bytes the mirror already streamed through the registry's digests sit in a
:class:`~indexers.mirror.spool.Spool`. :class:`PullThrough` archives them with the archive
job's own pass (:func:`forage.archive.stream.store_bytes`: same verification, same
``ipfs add`` CID, same blocks) and records the ``archived`` row
(:func:`forage.archive.records.record_archived`, which queues the pin job): no second
download. A file of a package the index does not hold yet has no row to record: the package
is indexed first by the ordinary import (:func:`forage.index.ingest.import_package`, the
configured selection applying), without queueing archive jobs for its other files -- the
mirror archives what its clients use.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import posixpath
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.archive.records import record_archived
from forage.archive.stream import store_bytes
from forage.archive.targets import load_target
from forage.db.models import Archive, ArchiveStatus, Artifact, Package, Version
from forage.index.ingest import import_package
from forage.index.selection import PackageExcluded
from forage.jobs.worker import JobContext
from indexers.mirror.upstream import SingleFlight

log = logging.getLogger(__name__)


class Kept(enum.StrEnum):
    """How a pull-through ended."""

    ARCHIVED = "archived"
    ALREADY = "already archived"
    EXCLUDED = "not kept: the configured selection leaves the package out"
    UNLISTED = "not kept: the registry's metadata does not list the file"


def find_artifact(session: Session, ecosystem: str, name: str, url: str) -> tuple[int, bool] | None:
    """The indexed artifact of ``name`` served at ``url`` (else the one named by the URL's
    last segment) and whether it is archived; ``None`` when not indexed."""
    query = (
        sa.select(Artifact.id, Archive.status)
        .join(Version, Artifact.version_id == Version.id)
        .join(Package, Version.package_id == Package.id)
        .outerjoin(Archive, Archive.artifact_id == Artifact.id)
        .where(Package.ecosystem == ecosystem, Package.name == name)
        .order_by(Artifact.id)
    )
    row = session.execute(query.where(Artifact.url == url).limit(1)).first()
    if row is None:
        filename = unquote(posixpath.basename(urlsplit(url).path))
        rows = session.execute(query.where(Artifact.filename == filename).limit(2)).all()
        row = rows[0] if len(rows) == 1 else None
    return None if row is None else (row.id, row.status == ArchiveStatus.ARCHIVED)


class PullThrough:
    """Archives the mirror's verified files through ``context`` (its sessions, blockstore and
    registry clients); ``verified`` learns each archive it writes (see
    :class:`~forage.mirror.index.IndexArchive`)."""

    def __init__(self, context: JobContext, *, spool_dir: Path) -> None:
        self.context = context
        self.spool_dir = spool_dir
        #: One import per package at a time, shared by the files that asked for it.
        self.imports: SingleFlight[Any] = SingleFlight()

    async def _find(self, ecosystem: str, name: str, url: str) -> tuple[int, bool] | None:
        return await self.context.transaction(find_artifact, ecosystem, name, url)

    async def keep(
        self, ecosystem: str, name: str, url: str, chunks: Iterable[bytes]
    ) -> tuple[Kept, int | None, str | None]:
        """Archive the verified bytes ``chunks`` of ``url`` (a file of ``name``); returns how
        it ended, and the artifact id and CID when it archived them."""
        found = await self._find(ecosystem, name, url)
        if found is None:
            try:
                await self.imports.run(
                    (ecosystem, name),
                    lambda: import_package(self.context, ecosystem, name, archive=False),
                )
            except PackageExcluded:
                return Kept.EXCLUDED, None, None
            found = await self._find(ecosystem, name, url)
        if found is None:
            return Kept.UNLISTED, None, None
        artifact_id, archived = found
        target = None if archived else await self.context.transaction(load_target, artifact_id)
        if target is None or target.archived_cid is not None:
            return Kept.ALREADY, artifact_id, None
        blockstore = self.context.blockstore
        assert blockstore is not None  # job_context always opens one
        result = await asyncio.to_thread(
            store_bytes, blockstore, target, chunks, spool_dir=self.spool_dir
        )
        pin = bool(self.context.config.pinning.backends)
        await self.context.transaction(record_archived, artifact_id, result, pin=pin)
        log.info("pull-through: archived %s %s as %s", target.purl, target.filename, result.cid)
        return Kept.ARCHIVED, artifact_id, result.cid


__all__ = ["Kept", "PullThrough", "find_artifact"]
