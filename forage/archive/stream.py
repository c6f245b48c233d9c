"""The streaming pass: download an artifact once, verify it, content-address it, stage its blocks.

One pass per artifact (DESIGN.md, "The way data flows"; issue 4). Downloads go through
:func:`indexers.download.open_download` under the registry's
:class:`~indexers.download.HostPolicy` (:func:`host_policy`): only
``registries.<name>.download_hosts`` (which defaults to the hosts of the registry's own
endpoint URLs, so a hostile packument cannot make Forage fetch an internal address), every
redirect checked, a declared size over ``max_download_size`` refused before a byte is read.

The body is read as sent (never decoded) and gathered into 1 MiB segments. Each segment goes
to worker threads (hashlib releases the GIL) that feed the :class:`indexers.DigestVerifier`
(npm sha512 and sha1, PyPI sha256, the size when known) and, in parallel, the
:class:`~storage.unixfs.UnixFSImporter` (CIDv1, raw leaves, 256 KiB chunks, as
``ipfs add --cid-version=1``) whose blocks are staged in a blockstore batch. An artifact of at
most ``INLINE_SIZE`` bytes (most of a registry) is hashed on the event loop instead, and its
block stays in the batch's memory until the commit. Artifacts with a whole-file digest (an
ecosystem's :data:`indexers.FILE_CHECKS`, such as Go's ``h1:`` over a module zip's files) are
also spooled to an unnamed temporary file under ``<data.dir>/spool`` (``O_TMPFILE``: gone on
close and on SIGKILL alike) so that check can read them. The next segment downloads while the
last one is hashed; at most two segments are held, so memory is flat whatever the artifact's
size.

After the last byte every digest is compared. A mismatch discards the staged blocks;
otherwise the batch commits (the blocks are durable in the store when it returns; batches of
concurrent archives share the blockstore's syncs). So blocks become visible only after every
digest matched. Staging directories of killed writers are removed when a blockstore is next
opened; a failure of ours (disk full included) removes them at once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from multiformats import CID

from forage.archive.targets import ArchiveResult, ArchiveTarget
from forage.errors import ConfigError, JobError
from forage.jobs.worker import JobContext
from indexers import FILE_CHECKS, DigestCheck, DigestVerifier
from indexers.digests import HASHERS
from indexers.download import HostPolicy, iter_body, open_download
from storage import BlockSink, Blockstore, UnixFSImporter

log = logging.getLogger(__name__)

#: Bytes gathered from the network before a segment is handed to the hashing threads: a
#: multiple of the 256 KiB UnixFS chunk, large enough to amortize the hand-over.
SEGMENT_SIZE = 1024 * 1024
#: Artifacts up to this size are hashed on the event loop (a few dozen microseconds, less
#: than handing them to threads) and their one block stays in the batch's memory until the
#: commit writes it; most registry artifacts are this small.
INLINE_SIZE = 64 * 1024
#: Where artifacts with a whole-file digest are spooled for its check, under ``data.dir``.
SPOOL_DIR = "spool"

OnBytes = Callable[[int], None]


def host_policy(ctx: JobContext, ecosystem: str) -> HostPolicy:
    """The download policy of a configured registry (``ConfigError`` if it is not)."""
    registry = ctx.config.registry(ecosystem)
    return HostPolicy.of(
        registry.download_hosts,
        max_size=registry.max_download_size,
        allow_http=registry.allow_http,
    )


class _Pass:
    """The synchronous half of one pass: hash, import, stage, spool (run in threads)."""

    def __init__(self, target: ArchiveTarget, batch: BlockSink, spool: IO[bytes] | None) -> None:
        self.target = target
        # Nothing published to verify against: record Forage's own sha256 of the first
        # download instead, so later copies can be held to the same bytes.
        own = () if _checkable(target.digests) else ("sha256",)
        self.verifier = DigestVerifier(target.url, target.digests, size=target.size, also=own)
        self.importer = UnixFSImporter()
        self.batch = batch
        self.spool = spool
        self.received = 0

    @property
    def small(self) -> bool:
        """Whether everything so far may be handled on the event loop (see ``INLINE_SIZE``)."""
        return self.received <= INLINE_SIZE and self.spool is None

    def both(self, segment: bytes | bytearray) -> None:
        """Hash-and-verify then import-and-stage, in the calling thread."""
        self.verify(segment)
        self.store(segment)

    def verify(self, segment: bytes | bytearray) -> None:
        self.verifier.update(segment)  # type: ignore[arg-type]  # any buffer hashes

    def store(self, segment: bytes | bytearray) -> None:
        for block in self.importer.update(segment):
            self.batch.put(block)
        if self.spool is not None:
            self.spool.write(segment)

    def finish(self) -> ArchiveResult:
        """Close the DAG and compare every digest (raises ``DigestMismatch``)."""
        for block in self.importer.finalize():
            self.batch.put(block)
        computed: dict[str, str] = {}
        for algorithm, expected in self.target.digests.items():
            check = FILE_CHECKS.get(algorithm)
            if check is not None and self.spool is not None:
                self.spool.flush()
                computed[algorithm] = check(self.spool, expected, self.target.url)
        check = self.verifier.finish(computed=computed)
        return _result(self.importer, check, self.target)


def _cid_text(cid: CID) -> str:
    """A CIDv1 as multibase base32 text, as ``str(cid)`` spells it, without multiformats'
    per-character encoder (a twentieth of a small artifact's CPU)."""
    return "b" + base64.b32encode(bytes(cid)).decode("ascii").lower().rstrip("=")


def _checkable(digests: Mapping[str, str]) -> bool:
    """Whether an artifact has a digest Forage can check its bytes against."""
    return any(name in HASHERS or name in FILE_CHECKS for name in digests)


def _result(importer: UnixFSImporter, check: DigestCheck, target: ArchiveTarget) -> ArchiveResult:
    """The archive's CID and digest: the strongest one verified against the registry's, or,
    when the registry published none, Forage's own sha256 of these bytes."""
    strongest = check.verified[0] if check.verified else None
    if strongest is None:
        log.warning(
            "%s %s: the registry published no digest; recording Forage's own sha256",
            target.purl,
            target.filename,
        )
        strongest = "sha256" if "sha256" in check.actual else None
    return ArchiveResult(
        cid=_cid_text(importer.result.cid),
        size=importer.result.size,
        verified_algorithm=strongest,
        verified_digest=check.actual[strongest] if strongest else None,
    )


async def _settle(task: asyncio.Future[Any] | None) -> None:
    """Wait until a hashing task's thread has returned, whatever it raised."""
    if task is None:
        return
    if not task.done():
        await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved: the error that matters is already propagating


async def _both(work: _Pass, segment: bytes | bytearray) -> None:
    """Hash-and-verify and import-and-stage one segment in two threads at once; return only
    when both threads have (so no thread outlives a failure), raising the first error."""
    results = await asyncio.gather(
        asyncio.to_thread(work.verify, segment),
        asyncio.to_thread(work.store, segment),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _hand_over(work: _Pass, segment: bytes | bytearray) -> asyncio.Future[Any]:
    return asyncio.ensure_future(_both(work, segment))


async def _stream(
    ctx: JobContext, target: ArchiveTarget, work: _Pass, on_bytes: OnBytes | None
) -> ArchiveResult:
    client = ctx.http.get(target.ecosystem)
    if client is None:
        raise ConfigError(f"registries.{target.ecosystem}", "no HTTP client for this registry")
    policy = host_policy(ctx, target.ecosystem)
    inflight: asyncio.Future[Any] | None = None
    try:
        async with open_download(
            client, target.url, policy=policy, expected_size=target.size
        ) as response:
            segments = iter_body(response, policy=policy, gather=SEGMENT_SIZE, on_bytes=on_bytes)
            async for segment in segments:
                if inflight is not None:
                    await asyncio.shield(inflight)
                    inflight = None
                work.received += len(segment)
                if work.small:
                    work.both(segment)
                else:
                    inflight = _hand_over(work, segment)
        if inflight is not None:
            await asyncio.shield(inflight)
    finally:
        # A thread may still be staging blocks: let it return before the batch is cleaned up.
        await _settle(inflight)
    if work.small:
        return work.finish()
    return await asyncio.to_thread(work.finish)


def _spool(ctx: JobContext, target: ArchiveTarget) -> IO[bytes] | None:
    """An unnamed temporary file for the artifact's whole-file checks (``None``: it has none)."""
    if FILE_CHECKS.keys().isdisjoint(target.digests):
        return None
    directory = Path(ctx.config.data.dir) / SPOOL_DIR
    directory.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=directory)


def store_bytes(
    blockstore: Blockstore, target: ArchiveTarget, chunks: Iterable[bytes], *, spool_dir: Path
) -> ArchiveResult:
    """Archive bytes already at hand (the mirror's pull-through, issue 16) in the same pass
    as a download -- verify, import, stage, commit -- so the CID and result are the archive
    job's. Blocking; nothing is left behind on an exception."""
    spool = None
    if not FILE_CHECKS.keys().isdisjoint(target.digests):
        spool_dir.mkdir(parents=True, exist_ok=True)
        spool = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - closed below
    try:
        with blockstore.batch() as batch:
            work = _Pass(target, batch, spool)
            for chunk in chunks:
                work.received += len(chunk)
                work.both(chunk)
            return work.finish()
    finally:
        if spool is not None:
            spool.close()


async def fetch_and_store(
    ctx: JobContext, target: ArchiveTarget, *, on_bytes: OnBytes | None = None
) -> ArchiveResult:
    """Download, verify, import and store one artifact's bytes; return its CID and digest.

    Blocks reach the store only when every digest matched; on any exception nothing staged
    or spooled is left behind.
    """
    blockstore: Blockstore | None = ctx.blockstore
    if blockstore is None:
        raise JobError("archive jobs need a blockstore in the job context")
    spool = _spool(ctx, target)
    try:
        staging = blockstore.batch()
        batch = staging.__enter__()  # no I/O: a batch touches the disk when blocks arrive
        try:
            result = await _stream(ctx, target, _Pass(target, batch, spool), on_bytes)
        except BaseException as exc:
            staging.__exit__(type(exc), exc, exc.__traceback__)  # discards the staged blocks
            raise
        await asyncio.to_thread(staging.__exit__, None, None, None)  # moves them into place
    finally:
        if spool is not None:
            spool.close()
    return result
