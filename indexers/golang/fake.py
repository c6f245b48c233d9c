"""A loopback fake of the Go module services: the index feed, a GOPROXY and a checksum database.

One aiohttp app serves all three, each under its own prefix (see :class:`GoEndpoints`):

- ``GET /index?since=<RFC3339Nano, Z>&limit=<n>``: NDJSON ``{"Path","Version","Timestamp"}``
  with ``Timestamp >= since`` (inclusive, like the real index), oldest first, at most 2,000;
- ``GET /proxy/<escaped path>/@v/list``, ``@v/<escaped version>.info|.mod|.zip``,
  ``/proxy/<escaped path>/@latest`` (https://go.dev/ref/mod#goproxy-protocol); 404 for an
  unknown module or version, 410 for a module marked gone;
- a real checksum database under ``/sumdb/`` (``lookup/<escaped path>@<escaped version>``,
  ``latest``, ``tile/...``): a transparency log of every version published with ``in_sumdb``
  (:class:`indexers.golang.sumdb.TransparencyLog`), its tree notes signed with an Ed25519 key
  made for each fake, so the go command verifies through it with
  ``GOSUMDB=<fake.sumdb_key>`` (the name is :data:`SUMDB_NAME`).

Zips are built on the fly (entries ``<path>@<version>/<name>``, sorted); their ``h1:`` values
are computed here from the file contents, independently of ``indexers.golang.gomod``. Faults come
from :class:`indexers.fakeserver.Faults` (``fake.faults.fail(503, path="/index")`` ...), every
request is recorded in ``fake.requests``. Nothing here imports pytest: ``forage demo`` can
use :func:`demo_fake`.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from types import TracebackType
from typing import ClassVar

from aiohttp import web

from indexers.fakeserver import Faults, RequestLog, RunningServer, fake_app, start_fake
from indexers.golang.indexer import zip_filename
from indexers.golang.sumdb import Signer, TransparencyLog, parse_tile_path

MAX_LIMIT = 2000
#: The fake checksum database's name (its notes' signer, the first part of ``GOSUMDB``).
SUMDB_NAME = "sum.fake.test"
EPOCH = "2019-04-10T19:08:52.997264Z"
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z", re.ASCII)


def _nanos(stamp: str) -> int | None:
    match = _STAMP.fullmatch(stamp)
    if match is None:
        return None
    moment = datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)
    whole = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)
    return whole * 1_000_000_000 + int((match.group(2) or "").ljust(9, "0"))


def _stamp(nanos: int) -> str:
    """Go's RFC3339Nano: UTC, ``Z``, trailing zeros of the fraction dropped."""
    seconds, fraction = divmod(nanos, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def _escape(text: str) -> str:
    return "".join(f"!{c.lower()}" if "A" <= c <= "Z" else c for c in text)


def _unescape(text: str) -> str | None:
    if re.search(r"[A-Z]|![^a-z]|!$", text):
        return None
    return re.sub(r"!([a-z])", lambda m: m.group(1).upper(), text)


def _h1(files: Mapping[str, bytes]) -> str:
    lines = "".join(
        f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n"
        for name in sorted(files, key=lambda n: n.encode())
    )
    return "h1:" + base64.b64encode(hashlib.sha256(lines.encode()).digest()).decode()


def _is_pseudo(version: str) -> bool:
    return re.search(r"[-.][0-9]{14}-[0-9a-f]{12}(\+incompatible)?$", version) is not None


@dataclass
class FakeVersion:
    """One module version the fake proxy serves; ``files`` are relative to the module root."""

    path: str
    version: str
    files: dict[str, bytes]
    go_mod: bytes
    time: datetime | None
    listed: bool
    in_sumdb: bool
    record: int
    served_files: dict[str, bytes] | None = None
    withdrawn: bool = False

    @property
    def prefix(self) -> str:
        return f"{self.path}@{self.version}/"

    @cached_property
    def h1(self) -> str:
        """The true ``h1:`` of the zip (what the sumdb reports)."""
        return _h1({self.prefix + name: data for name, data in self.files.items()})

    @cached_property
    def go_mod_h1(self) -> str:
        return _h1({"go.mod": self.go_mod})

    @property
    def zip(self) -> bytes:
        """The zip the proxy serves (tampered contents when :meth:`GoFake.tamper` was used)."""
        files = self.served_files if self.served_files is not None else self.files
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(files, key=lambda n: n.encode()):
                info = zipfile.ZipInfo(self.prefix + name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, files[name])
        return buffer.getvalue()

    @property
    def info(self) -> dict[str, str]:
        document = {"Version": self.version}
        if self.time is not None:
            document["Time"] = self.time.strftime("%Y-%m-%dT%H:%M:%SZ")
        return document


@dataclass(frozen=True, order=True)
class FeedLine:
    """One line of the index feed: an entry, or raw text (a malformed line) at a timestamp."""

    nanos: int
    seq: int
    text: str = field(compare=False)


@dataclass(frozen=True)
class GoEndpoints:
    """Where the three services of a running fake answer."""

    url: str
    index_url: str
    proxy_url: str
    sumdb_url: str

    @classmethod
    def at(cls, url: str) -> GoEndpoints:
        """Endpoints of a fake served at ``url`` (e.g. by ``ThreadedServer``)."""
        return cls(url, url, f"{url}/proxy", f"{url}/sumdb")


class GoFake:
    """The fake's state and its aiohttp app; change state between requests from a test.

    ``add_version`` publishes a version (on the proxy, in the sumdb, in the feed);
    ``add_feed_line`` / ``add_malformed_line`` write the feed directly; ``remove_module``
    makes the proxy answer 410; ``withdraw`` keeps a version listed but unservable (404);
    ``tamper`` serves a zip whose contents differ from its sumdb ``h1:``; ``sumdb_key`` is
    the verifier key of the checksum database (``GOSUMDB``). Use as
    ``async with GoFake() as fake:`` (then ``fake.endpoints``), or serve ``fake.app()``
    yourself (``GoEndpoints.at(server.url)`` then names the three services).
    """

    def __init__(self) -> None:
        self.modules: dict[str, dict[str, FakeVersion]] = {}
        self.gone: set[str] = set()
        self.feed: list[FeedLine] = []
        self.faults = Faults()
        self.requests = RequestLog()
        self.lookups = 0
        self.sumdb = TransparencyLog(Signer.generate(SUMDB_NAME))
        self._server: RunningServer | None = None
        self._clock = _nanos(EPOCH) or 0
        self._seq = 0

    # -- state -------------------------------------------------------------------------------

    def add_version(
        self,
        path: str,
        version: str,
        *,
        files: Mapping[str, bytes | str] | None = None,
        go_mod: bytes | str | None = None,
        time: datetime | None = None,
        listed: bool | None = None,
        in_sumdb: bool = True,
        feed_at: str | None = None,
        in_feed: bool = True,
    ) -> FakeVersion:
        """Publish ``path@version``; by default listed unless a pseudo-version, fed at the clock.

        ``go_mod`` defaults to the zip's ``go.mod`` or, without one, ``module <path>``;
        ``feed_at`` is the index Timestamp (default: 1 ms after the previous line).
        """
        raw = dict(files or {"x.go": f"package x\n\n// {path} {version}\n"})
        contents = {
            name: data.encode() if isinstance(data, str) else data for name, data in raw.items()
        }
        if go_mod is None:
            go_mod = contents.get("go.mod", f"module {path}\n".encode())
        if isinstance(go_mod, str):
            go_mod = go_mod.encode()
        self._seq += 1
        entry = FakeVersion(
            path=path,
            version=version,
            files=contents,
            go_mod=go_mod,
            time=time or datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=self._seq),
            listed=not _is_pseudo(version) if listed is None else listed,
            in_sumdb=in_sumdb,
            record=-1,
        )
        if in_sumdb:
            record = f"{path} {version} {entry.h1}\n{path} {version}/go.mod {entry.go_mod_h1}\n"
            entry.record = self.sumdb.append(record.encode())
        self.modules.setdefault(path, {})[version] = entry
        if in_feed:
            self.add_feed_line(path, version, feed_at)
        return entry

    def add_feed_line(self, path: str, version: str, timestamp: str | None = None) -> str:
        """Append ``{Path, Version, Timestamp}`` to the feed; returns the Timestamp used."""
        nanos = self._at(timestamp)
        stamp = timestamp if timestamp is not None else _stamp(nanos)
        line = json.dumps({"Path": path, "Version": version, "Timestamp": stamp})
        self._insert(nanos, line)
        return stamp

    def add_malformed_line(
        self, timestamp: str, text: str = '{"Path": "example.com/broken", '
    ) -> None:
        """Put a line that is not a JSON object into the feed, served with ``timestamp``'s page."""
        self._insert(self._at(timestamp), text)

    @property
    def sumdb_key(self) -> str:
        """The checksum database's verifier key, as ``GOSUMDB`` takes it."""
        return self.sumdb.signer.verifier_key

    def remove_module(self, path: str) -> None:
        """The proxy answers 410 Gone for every URL of ``path`` (the sumdb keeps its records)."""
        self.gone.add(path)

    def withdraw(self, path: str, version: str) -> None:
        """Keep ``version`` in ``@v/list`` but answer 404 for its ``.info``, ``.mod``, ``.zip``."""
        self.modules[path][version].withdrawn = True

    def tamper(self, path: str, version: str, files: Mapping[str, bytes]) -> None:
        """Serve a zip with ``files`` instead of the real contents (the sumdb keeps the true h1)."""
        self.modules[path][version].served_files = dict(files)

    def _at(self, timestamp: str | None) -> int:
        if timestamp is None:
            self._clock += 1_000_000
            return self._clock
        nanos = _nanos(timestamp)
        if nanos is None:
            raise ValueError(f"not an RFC3339Nano UTC timestamp: {timestamp!r}")
        self._clock = max(self._clock, nanos)
        return nanos

    def _insert(self, nanos: int, text: str) -> None:
        self._seq += 1
        bisect.insort(self.feed, FeedLine(nanos, self._seq, text))

    # -- HTTP --------------------------------------------------------------------------------

    # -- the surface every ecosystem's fake shares (indexers.ecosystem.FakeRegistry) ---------

    NAME_EXAMPLES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("example.com/hello", "example.com/hello"),
        ("github.com/BurntSushi/toml", "github.com/BurntSushi/toml"),
    )
    INVALID_NAMES: ClassVar[tuple[str, ...]] = ("", "/abs", "example.com/../x", "a b/c", "-x.com/y")
    SAMPLE_VERSIONS: ClassVar[tuple[str, ...]] = ("v1.0.0", "v1.1.0")

    def config_endpoints(self, url: str) -> dict[str, str]:
        at = GoEndpoints.at(url)
        return {"index_url": at.index_url, "proxy_url": at.proxy_url, "sumdb_url": at.sumdb_url}

    def publish_release(self, name: str, version: str) -> None:
        """Publish ``name@version`` fed at the wall clock, after any watcher's starting cursor."""
        self.add_version(
            name,
            version,
            files={"go.mod": f"module {name}\n\ngo 1.21\n", "hello.go": "package hello\n"},
            feed_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        )

    def feed_head(self) -> str | None:
        """The Timestamp of the newest well-formed feed line, as the index prints it."""
        for line in reversed(self.feed):
            try:
                return str(json.loads(line.text)["Timestamp"])
            except (ValueError, KeyError, TypeError):
                continue
        return None

    def tamper_release(self, name: str, version: str) -> None:
        self.tamper(name, version, {"hello.go": b"package evil\n"})

    def withdraw_release(self, name: str, version: str) -> None:
        """Publish ``v1.9.0`` whose go.mod retracts ``version`` (the proxy still serves it)."""
        go_mod = f"module {name}\n\ngo 1.21\n\nretract {version} // withdrawn by its author\n"
        self.add_version(name, "v1.9.0", files={"go.mod": go_mod, "hello.go": "package hello\n"})

    def release_file(self, name: str, version: str) -> tuple[str, bytes]:
        return zip_filename(name, version), self.modules[name][version].zip

    def lockfile(self, releases: Sequence[tuple[str, str]]) -> tuple[str, bytes]:
        lines = []
        for name, version in releases:
            entry = self.modules[name][version]
            lines.append(f"{name} {version} {entry.h1}")
            lines.append(f"{name} {version}/go.mod {entry.go_mod_h1}")
        return "go.sum", ("\n".join(lines) + "\n").encode()

    def make_app(self) -> web.Application:
        return self.app()

    def app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware)
        app.router.add_get("/index", self._index)
        app.router.add_get("/proxy/{tail:.+}", self._proxy)
        app.router.add_get("/sumdb/lookup/{tail:.+}", self._lookup)
        app.router.add_get("/sumdb/latest", self._latest)
        app.router.add_get("/sumdb/tile/{tail:.+}", self._tile)
        return app

    async def _index(self, request: web.Request) -> web.Response:
        since_text = request.query.get("since", EPOCH)
        since = _nanos(since_text)
        if since is None:
            return web.Response(status=400, text=f"invalid since: {since_text}\n")
        try:
            limit = min(int(request.query.get("limit", MAX_LIMIT)), MAX_LIMIT)
        except ValueError:
            return web.Response(status=400, text="invalid limit\n")
        start = bisect.bisect_left(self.feed, FeedLine(since, 0, ""))
        lines = [line.text + "\n" for line in self.feed[start : start + max(limit, 0)]]
        return web.Response(text="".join(lines), content_type="application/json")

    def _not_found(self, what: str) -> web.Response:
        return web.Response(status=404, text=f"not found: {what}\n")

    async def _proxy(self, request: web.Request) -> web.Response:
        tail = request.path.removeprefix("/proxy/")
        if tail.endswith("/@latest"):
            escaped, rest = tail.removesuffix("/@latest"), "@latest"
        elif "/@v/" in tail:
            escaped, rest = tail.split("/@v/", 1)
        else:
            return self._not_found(tail)
        path = _unescape(escaped)
        if path is None or (path not in self.modules and path not in self.gone):
            return self._not_found(f"module {tail}")
        if path in self.gone:
            return web.Response(status=410, text=f"not found: {path} is gone\n")
        versions = self.modules[path]
        if rest == "list":
            listed = "".join(f"{v}\n" for v, entry in versions.items() if entry.listed)
            return web.Response(text=listed)
        if rest == "@latest":
            candidates = [e for e in versions.values() if e.listed] or list(versions.values())
            return web.json_response(candidates[-1].info)
        match = re.fullmatch(r"(.+)\.(info|mod|zip)", rest)
        version = _unescape(match.group(1)) if match else None
        if match is None or version is None or version not in versions:
            return self._not_found(f"{path}@{rest}")
        if versions[version].withdrawn:
            return self._not_found(f"{path}@{version} withdrawn")
        entry = versions[version]
        if match.group(2) == "info":
            return web.json_response(entry.info)
        if match.group(2) == "mod":
            return web.Response(body=entry.go_mod, content_type="text/plain")
        return web.Response(body=entry.zip, content_type="application/zip")

    async def _lookup(self, request: web.Request) -> web.Response:
        tail = request.path.removeprefix("/sumdb/lookup/")
        escaped_path, _, escaped_version = tail.partition("@")
        path, version = _unescape(escaped_path), _unescape(escaped_version)
        entry = self.modules.get(path or "", {}).get(version or "")
        if entry is None or not entry.in_sumdb:
            return self._not_found(f"{tail}")
        self.lookups += 1
        body = self.sumdb.lookup(entry.record)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _latest(self, request: web.Request) -> web.Response:
        body = self.sumdb.signed_tree()
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _tile(self, request: web.Request) -> web.Response:
        tail = request.path.removeprefix("/sumdb/")
        tile = parse_tile_path(tail)
        data = self.sumdb.tile(tile) if tile is not None else None
        if data is None:
            return self._not_found(tail)
        return web.Response(body=data, content_type="application/octet-stream")

    # -- running -----------------------------------------------------------------------------

    async def start(self) -> GoEndpoints:
        self._server = await start_fake(self.app())
        return self.endpoints

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    @property
    def endpoints(self) -> GoEndpoints:
        if self._server is None:
            raise RuntimeError("the fake is not running: use 'async with GoFake()' or start()")
        return GoEndpoints.at(self._server.url)

    async def __aenter__(self) -> GoFake:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


#: Three entries sharing one Timestamp, so that a page of 2 (or 4) splits them.
SHARED_TIMESTAMP = "2019-04-10T20:30:02.1Z"


def demo_fake() -> GoFake:
    """A fake with the cases the Go tests and ``forage demo`` need.

    - ``github.com/BurntSushi/toml``: upper case in the path, v1.2.0, v1.2.1 (retracted by
      v1.3.0's go.mod), v1.3.0, and a pseudo-version that only the feed names;
    - ``github.com/Azure/go-autorest``: ``v14.2.0+incompatible``;
    - ``example.com/private``: on the proxy, not in the sumdb;
    - ``example.com/gone``: in the feed, then removed (410);
    - three entries at :data:`SHARED_TIMESTAMP` straddling small page boundaries.
    """
    fake = GoFake()
    toml = "github.com/BurntSushi/toml"
    fake.add_version(
        toml,
        "v1.2.0",
        files={"go.mod": f"module {toml}\n\ngo 1.16\n", "decode.go": "package toml\n"},
        feed_at="2019-04-10T20:30:00Z",
    )
    fake.add_version(
        toml,
        "v1.2.1",
        files={"go.mod": f"module {toml}\n\ngo 1.16\n", "decode.go": "package toml // 1.2.1\n"},
        feed_at="2019-04-10T20:30:01.5Z",
    )
    fake.add_version("example.com/gone", "v0.1.0", feed_at=SHARED_TIMESTAMP)
    fake.add_version(
        "github.com/Azure/go-autorest", "v14.2.0+incompatible", feed_at=SHARED_TIMESTAMP
    )
    fake.add_version("example.com/private", "v1.0.0", in_sumdb=False, feed_at=SHARED_TIMESTAMP)
    retracting = (
        f"module {toml}\n\ngo 1.16\n\n// v1.2.1 broke decoding of inline tables.\nretract v1.2.1\n"
    )
    fake.add_version(
        toml,
        "v1.3.0",
        files={
            "go.mod": retracting,
            "decode.go": "package toml // 1.3.0\n",
            "Zeta.go": "package toml\n",
        },
        feed_at="2019-04-10T20:30:02.25Z",
    )
    fake.add_version(
        toml,
        "v1.3.1-0.20230102030405-0123456789ab",
        files={"go.mod": retracting, "decode.go": "package toml // next\n"},
        feed_at="2019-04-10T20:30:03.000000001Z",
    )
    fake.remove_module("example.com/gone")
    return fake


__all__ = [
    "EPOCH",
    "MAX_LIMIT",
    "SHARED_TIMESTAMP",
    "SUMDB_NAME",
    "FakeVersion",
    "FeedLine",
    "GoEndpoints",
    "GoFake",
    "demo_fake",
]
