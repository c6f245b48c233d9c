"""The Go checksum database, proxied under ``/go/sumdb/<name>/`` and kept on disk.

The GOPROXY protocol lets a proxy stand in for a checksum database
(https://go.dev/ref/mod#goproxy-protocol, "Checksum database"): the go command asks
``<proxy>/sumdb/<name>/supported`` and, on a 200, reads ``lookup/<path>@<version>``,
``tile/...`` and ``latest`` through the proxy, verifying every answer itself against the key
in ``GOSUMDB``. So the proxy need not be trusted, and a Forage that keeps what it passed on
lets ``go`` verify modules when the upstream is down or the machine is air-gapped.

- ``<name>`` is the configured checksum database's (``registries.golang.sumdb_url``) as its
  signed notes name it, learnt from its ``latest`` note (kept on disk); any other name is a
  404, so the go command goes to that database directly.
- Tiles and lookups never change (a record and the hashes of a log are immutable; a lookup's
  tree note only ages, which the go command reconciles through tiles): they are served from
  disk once stored, fetched from the upstream otherwise. ``latest`` is asked of the upstream
  each time and the stored one answers when the upstream fails.
- Answers are checked for shape before they are stored (a lookup must hold a record and a
  signed tree note, a hash tile ``W`` hashes); the signatures are left to the go command.

Files live under ``<cache_dir>/sumdb/<hash of the database URL>/`` (``latest``, ``tile/...``,
``lookup/<sha256 of path@version>``), written to a temporary file and renamed into place.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from indexers.base import redact
from indexers.errors import FeedError, InvalidName, UpstreamFailed
from indexers.golang.gomod import (
    check_version,
    escape_path,
    escape_version,
    unescape_path,
    unescape_version,
)
from indexers.golang.indexer import parse_sumdb_lookup
from indexers.golang.sumdb import HASH_SIZE, parse_tile_path, parse_tree, split_lookup, split_note
from indexers.mirror.documents import replace_file
from indexers.mirror.upstream import SingleFlight, Upstream

log = logging.getLogger(__name__)

#: Largest checksum-database answer read (a full tile of height 8 is 8 KiB).
MAX_ANSWER = 1 << 20
TEXT = "text/plain"
BINARY = "application/octet-stream"

#: Raises ``FeedError`` for an upstream answer (body, url) of the wrong shape.
Check = Callable[[bytes, str], None]


@dataclass(frozen=True, slots=True)
class SumAnswer:
    """What to send: a status, a body, and whether it came from the disk cache."""

    status: int
    body: bytes
    content_type: str = TEXT
    cached: bool = False
    error: UpstreamFailed | None = None


def _not_found(text: str, error: UpstreamFailed | None = None) -> SumAnswer:
    return SumAnswer(404, f"not found: {text}\n".encode(), error=error)


class ChecksumProxy:
    """The configured checksum database at ``base_url`` through ``upstream`` (``None``:
    offline, disk only), stored under ``cache_dir`` (``None``: nothing stored)."""

    def __init__(
        self,
        *,
        upstream: Upstream | None,
        base_url: str | None,
        cache_dir: Path | None,
        flights: SingleFlight[object],
    ) -> None:
        self.upstream = upstream
        self.base_url = base_url.rstrip("/") if base_url else None
        self.flights = flights
        self.root: Path | None = None
        if cache_dir is not None and self.base_url is not None:
            tag = hashlib.sha256(self.base_url.encode()).hexdigest()[:16]
            self.root = cache_dir / "sumdb" / tag
        self._names: frozenset[str] = frozenset()

    # -- the protocol ---------------------------------------------------------------------

    async def answer(self, name: str, rest: str) -> SumAnswer:
        """The answer to ``GET /sumdb/<name>/<rest>``."""
        if self.base_url is None:
            return _not_found("no checksum database is configured")
        if name not in await self.names():
            return _not_found(f"checksum database {name[:100]!r} is not proxied here")
        if rest == "supported":
            return SumAnswer(200, b"")
        if rest == "latest":
            return await self.latest()
        if rest.startswith("lookup/"):
            escaped_path, at, escaped_version = rest.removeprefix("lookup/").partition("@")
            try:
                path = unescape_path(escaped_path)
                version = check_version(unescape_version(escaped_version), path=path)
            except InvalidName as exc:
                return _not_found(str(exc))
            if not at:
                return _not_found("lookup needs <module>@<version>")
            return await self.lookup(path, version)
        tile = parse_tile_path(rest)
        if tile is None:
            return _not_found(f"unknown checksum database request {rest[:100]!r}")
        if tile.level == -1:
            return await self._immutable(rest, rest, check=_check_data, content_type=TEXT)
        return await self._immutable(rest, rest, check=_check_tile(tile.w), content_type=BINARY)

    async def names(self) -> frozenset[str]:
        """The names the configured database signs its notes with (learnt once)."""
        if not self._names:
            latest = await self.latest()
            if latest.status == 200:
                _, signatures = split_note(latest.body, url="latest")
                self._names = frozenset(signer for signer, _ in signatures)
        return self._names

    async def latest(self) -> SumAnswer:
        """The upstream's signed tree head, else the one stored last."""
        error: UpstreamFailed | None = None
        if self.upstream is not None and self.base_url is not None:
            url = f"{self.base_url}/latest"
            try:
                body = await self._fetch(url, "latest", check=_check_latest)
                if body is not None:
                    return SumAnswer(200, body)
                error = UpstreamFailed(redact(url), "status", "no latest tree")
            except UpstreamFailed as exc:
                error = exc
        stored = await self._read("latest")
        if stored is None:
            return _not_found("the checksum database is unreachable and nothing is stored", error)
        return SumAnswer(200, stored, cached=True, error=error)

    async def lookup(self, path: str, version: str) -> SumAnswer:
        """The record of ``path@version`` (stored, else asked of the upstream)."""
        key = hashlib.sha256(f"{path}@{version}".encode()).hexdigest()
        remote = f"lookup/{escape_path(path)}@{escape_version(version)}"
        local = f"lookup/{key[:2]}/{key}"
        return await self._immutable(remote, local, check=_check_lookup, content_type=TEXT)

    async def hashes(self, path: str, version: str) -> tuple[str, str | None] | None:
        """The zip and go.mod ``h1:`` the database records for ``path@version`` (``None``: it
        has no record, or it cannot be reached and nothing is stored)."""
        if self.base_url is None:
            return None
        found = await self.lookup(path, version)
        if found.status != 200:
            return None
        try:
            return parse_sumdb_lookup(found.body.decode(), path, version, url="lookup")
        except (FeedError, UnicodeDecodeError) as exc:
            log.warning("checksum database record of %s@%s is unusable: %s", path, version, exc)
            return None

    # -- fetching and storing -------------------------------------------------------------

    async def _immutable(
        self, remote: str, local: str, *, check: Check, content_type: str
    ) -> SumAnswer:
        stored = await self._read(local)
        if stored is not None:
            return SumAnswer(200, stored, content_type, cached=True)
        if self.upstream is None or self.base_url is None:
            return _not_found(f"{remote[:200]} is not stored (no upstream)")
        url = f"{self.base_url}/{remote}"
        try:
            body = await self._fetch(url, local, check=check)
        except UpstreamFailed as exc:
            return _not_found(f"{remote[:200]} is not stored", exc)
        if body is None:
            return _not_found(f"{remote[:200]}")
        return SumAnswer(200, body, content_type)

    async def _fetch(self, url: str, local: str, *, check: Check) -> bytes | None:
        """The upstream's body for ``url`` (``None`` on 404/410), checked and stored."""
        upstream = self.upstream
        assert upstream is not None

        async def fetch() -> bytes | None:
            answer = await upstream.fetch(url, max_size=MAX_ANSWER)
            if answer.absent:
                return None
            try:
                check(answer.body, redact(url))
            except FeedError as exc:
                raise UpstreamFailed(redact(url), "status", str(exc)) from exc
            await self._write(local, answer.body)
            return answer.body

        found = await self.flights.run(("sumdb", url), fetch)
        assert found is None or isinstance(found, bytes)
        return found

    async def _read(self, local: str) -> bytes | None:
        if self.root is None:
            return None
        path = self.root / local
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the stored checksum database answer %s: %s", path, exc)
            return None

    async def _write(self, local: str, body: bytes) -> None:
        if self.root is None:
            return
        try:
            await asyncio.to_thread(replace_file, self.root / local, body)
        except OSError as exc:  # a full disk must not fail the answer in hand
            log.warning("cannot store the checksum database answer %s: %s", local, exc)


def _check_latest(body: bytes, url: str) -> None:
    text, _ = split_note(body, url=url)
    parse_tree(text, url=url)


def _check_lookup(body: bytes, url: str) -> None:
    split_lookup(body, url=url)


def _check_data(body: bytes, url: str) -> None:
    if not body.endswith(b"\n\n"):
        raise FeedError(url, "not a data tile (records separated by blank lines)")


def _check_tile(width: int) -> Check:
    def check(body: bytes, url: str) -> None:
        if len(body) != width * HASH_SIZE:
            raise FeedError(url, f"tile of {len(body)} bytes, not {width} hashes")

    return check


__all__ = ["MAX_ANSWER", "ChecksumProxy", "SumAnswer"]
