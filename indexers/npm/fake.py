"""A fake npm registry and replicate feed on loopback, shaped like the real documents.

Shapes follow ``npm/registry:docs/responses/package-metadata.md`` (full packuments) and the
2025 replicate API (root document with ``update_seq``; ``_changes?since&limit`` entries
``{seq, id, changes:[{rev}], deleted?}`` and ``last_seq``). Tarballs are real gzip'd tars
(``package/package.json``, ``package/index.js``) built deterministically, with matching
``dist.integrity`` (SRI sha512) and ``dist.shasum`` (sha1).

Typed API (everything a test needs; no pytest import, so ``forage demo`` can use it)::

    registry = FakeNpmRegistry()
    tarball = registry.publish("left-pad", "1.0.0")        # -> NpmTarball (bytes, digests)
    registry.publish("@scope/pkg", "2.0.0", deprecated="use other")
    registry.deprecate(name, version, message)
    registry.unpublish_version(name, version)              # gone from versions, kept in time
    registry.unpublish(name)                               # stub packument, time.unpublished
    registry.delete(name)                                  # 404 + feed entry deleted: true
    registry.load_packument(doc)                           # serve a recorded document
    registry.feed_entry(id, seq=...)                       # raw/late feed entry (hostile ids too)
    registry.lag(name, times=1)                            # serve the previous revision
    registry.lose_feed_entry(name)                         # a change the feed never shows
    registry.tamper(name, version, b"other bytes")         # tarball differs from its digests
    registry.faults.fail(503, retry_after="5")             # see indexers.fakeserver.Faults
    registry.requests.seen                                 # see indexers.fakeserver.RequestLog
    async with serve(registry.make_app()) as fake:
        NpmIndexer(client, registry_url=fake.url, replicate_url=fake.url + "/registry")

Routes: ``/`` and ``/registry/`` (root doc), ``/_changes`` and ``/registry/_changes``,
``/_all_docs`` and ``/registry/_all_docs`` (``startkey``, ``limit``),
``/<name>`` and ``/@scope%2fname`` (also ``%2F`` and a literal ``/``), tarballs at
``/<name>/-/<basename>-<version>.tgz``. ``dist.tarball`` values on ``https://registry.npmjs.org``
are rewritten to the fake's own origin unless ``rewrite_upstream=False``.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import unquote

from aiohttp import web

from indexers.fakeserver import Faults, RequestLog, fake_app

UPSTREAM = "https://registry.npmjs.org"

#: npm pins tarball entry times to 1985-10-26T08:15:00Z so packs are reproducible.
NPM_EPOCH = 499162500


@dataclass(frozen=True)
class NpmTarball:
    """One published tarball: its bytes and the digests the packument advertises."""

    name: str
    version: str
    path: str
    data: bytes
    integrity: str
    shasum: str

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def sha512(self) -> str:
        return hashlib.sha512(self.data).hexdigest()


def tarball_path(name: str, version: str) -> str:
    """The registry's tarball path: ``/@scope/name/-/name-1.0.0.tgz``."""
    return f"/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def make_tarball(name: str, version: str, files: Mapping[str, bytes] | None = None) -> bytes:
    """Build a real, reproducible npm tarball (entries under ``package/``)."""
    manifest = {"name": name, "version": version, "main": "index.js", "license": "MIT"}
    entries = {"package.json": json.dumps(manifest, indent=2).encode() + b"\n"}
    entries.update(files or {"index.js": f"module.exports = {json.dumps(version)};\n".encode()})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, content in sorted(entries.items()):
            info = tarfile.TarInfo(f"package/{path}")
            info.size = len(content)
            info.mtime = NPM_EPOCH
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def version_manifest(name: str, version: str, tarball: NpmTarball) -> dict[str, Any]:
    """A version object as the full packument carries it (package.json + registry fields)."""
    return {
        "name": name,
        "version": version,
        "description": f"{name} fixture package",
        "main": "index.js",
        "scripts": {"test": 'echo "Error: no test specified" && exit 1'},
        "license": "MIT",
        "dependencies": {},
        "gitHead": hashlib.sha1(f"{name}@{version}".encode()).hexdigest(),  # noqa: S324
        "_id": f"{name}@{version}",
        "_nodeVersion": "20.11.1",
        "_npmVersion": "10.2.4",
        "dist": {
            "integrity": tarball.integrity,
            "shasum": tarball.shasum,
            "tarball": UPSTREAM + tarball.path,
            "fileCount": 2,
            "unpackedSize": len(gzip.decompress(tarball.data)),
        },
        "_npmUser": {"name": "fixture", "email": "fixture@example.org"},
        "directories": {},
        "maintainers": [{"name": "fixture", "email": "fixture@example.org"}],
        "_hasShrinkwrap": False,
    }


@dataclass
class _FeedEntry:
    seq: int
    id: str
    rev: str
    deleted: bool = False


@dataclass
class FakeNpmRegistry:
    """In-memory npm registry plus replicate feed; see the module docstring for the API."""

    start_seq: int = 1000
    start_time: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    rewrite_upstream: bool = True
    #: Largest ``limit`` honoured, as npm caps it.
    max_limit: int = 10_000
    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tarballs: dict[str, NpmTarball] = field(default_factory=dict)
    feed: dict[str, _FeedEntry] = field(default_factory=dict)
    seq: int = 0
    _history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _lagging: dict[str, int] = field(default_factory=dict)
    _ticks: int = 0

    def __post_init__(self) -> None:
        self.seq = self.start_seq

    # -- clock, revisions, feed ------------------------------------------------------------

    def now(self) -> datetime:
        """A deterministic clock: one minute per registry write."""
        self._ticks += 1
        return self.start_time + timedelta(minutes=self._ticks)

    def _commit(self, name: str, doc: dict[str, Any] | None, *, deleted: bool = False) -> str:
        previous = self.docs.get(name)
        generation = 1
        if previous is not None:
            generation = int(str(previous.get("_rev", "0-")).split("-")[0] or 0) + 1
            self._history.setdefault(name, []).append(copy.deepcopy(previous))
        digest = hashlib.md5(  # noqa: S324 - CouchDB revision hashes are md5
            json.dumps(doc, sort_keys=True).encode()
        ).hexdigest()
        rev = f"{generation}-{digest}"
        if doc is None:
            self.docs.pop(name, None)
        else:
            doc["_rev"] = rev
            self.docs[name] = doc
        self.feed_entry(name, rev=rev, deleted=deleted)
        return rev

    def feed_entry(
        self, id: str, *, rev: str = "1-0", deleted: bool = False, seq: int | None = None
    ) -> int:
        """Add a feed entry (replacing ``id``'s earlier one); ``seq`` below head = late insert."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.feed[id] = _FeedEntry(seq=seq, id=id, rev=rev, deleted=deleted)
        return seq

    def jump(self, count: int) -> None:
        """Skip ``count`` seqs (the real feed is sparse)."""
        self.seq += count

    def lose_feed_entry(self, name: str) -> None:
        """Drop ``name``'s feed entry: a change the replica never announces (a lost event)."""
        self.feed.pop(name, None)

    def lag(self, name: str, *, times: int = 1) -> None:
        """Serve ``name``'s previous revision for the next ``times`` packument requests."""
        self._lagging[name] = self._lagging.get(name, 0) + times

    # -- publishing -----------------------------------------------------------------------

    def publish(
        self,
        name: str,
        version: str,
        *,
        files: Mapping[str, bytes] | None = None,
        deprecated: str | None = None,
        tag: str = "latest",
    ) -> NpmTarball:
        """Publish one version with a real tarball; returns its bytes and digests."""
        data = make_tarball(name, version, files)
        tarball = NpmTarball(
            name=name,
            version=version,
            path=tarball_path(name, version),
            data=data,
            integrity=sri_sha512(data),
            shasum=hashlib.sha1(data).hexdigest(),  # noqa: S324 - npm's legacy shasum
        )
        self.tarballs[tarball.path] = tarball
        when = _iso(self.now())
        doc = copy.deepcopy(self.docs.get(name)) or {
            "_id": name,
            "name": name,
            "dist-tags": {},
            "versions": {},
            "time": {"created": when},
            "maintainers": [{"name": "fixture", "email": "fixture@example.org"}],
            "description": f"{name} fixture package",
            "license": "MIT",
            "readme": f"# {name}\n",
            "readmeFilename": "README.md",
        }
        doc.setdefault("versions", {})
        doc.setdefault("dist-tags", {})
        doc["time"].pop("unpublished", None)
        manifest = version_manifest(name, version, tarball)
        if deprecated:
            manifest["deprecated"] = deprecated
        doc["versions"][version] = manifest
        doc["dist-tags"][tag] = version
        doc["time"][version] = when
        doc["time"]["modified"] = when
        self._commit(name, doc)
        return tarball

    def deprecate(self, name: str, version: str, message: str) -> None:
        doc = copy.deepcopy(self.docs[name])
        doc["versions"][version]["deprecated"] = message
        doc["time"]["modified"] = _iso(self.now())
        self._commit(name, doc)

    def unpublish_version(self, name: str, version: str) -> None:
        """Remove one version: it leaves ``versions`` but stays in ``time`` (npm's behaviour)."""
        doc = copy.deepcopy(self.docs[name])
        del doc["versions"][version]
        for tag, target in list(doc["dist-tags"].items()):
            if target == version:
                del doc["dist-tags"][tag]
        doc["time"]["modified"] = _iso(self.now())
        self._commit(name, doc)

    def unpublish(self, name: str) -> None:
        """Unpublish the whole package: a stub with ``time.unpublished`` and no ``versions``."""
        old = self.docs[name]
        when = _iso(self.now())
        times = {key: value for key, value in old["time"].items() if key != "unpublished"}
        times["modified"] = when
        times["unpublished"] = {
            "time": when,
            "versions": sorted(old.get("versions", {})),
            "name": name,
            "maintainers": old.get("maintainers", []),
            "tags": old.get("dist-tags", {}),
        }
        self._commit(name, {"_id": name, "name": name, "time": times})

    def tamper(self, name: str, version: str, data: bytes) -> None:
        """Serve ``data`` as the version's tarball while the packument keeps the true digests
        (a CDN handing out wrong bytes for the right URL)."""
        path = tarball_path(name, version)
        original = self.tarballs[path]
        self.tarballs[path] = NpmTarball(
            name, version, path, data, original.integrity, original.shasum
        )

    def delete(self, name: str) -> None:
        """Remove the document entirely: packument 404, feed entry ``deleted: true``."""
        self._commit(name, None, deleted=True)

    def load_packument(self, doc: Mapping[str, Any]) -> None:
        """Serve a recorded packument; its tarballs are served when they are this module's
        reproducible tarballs (the fixture files under ``tests/data/npm`` are)."""
        stored = copy.deepcopy(dict(doc))
        name = stored["name"]
        for version, manifest in stored.get("versions", {}).items():
            data = make_tarball(name, version)
            shasum = hashlib.sha1(data).hexdigest()  # noqa: S324
            if manifest.get("dist", {}).get("shasum") == shasum:
                path = tarball_path(name, version)
                self.tarballs[path] = NpmTarball(
                    name, version, path, data, sri_sha512(data), shasum
                )
        self.docs[name] = stored
        self.feed_entry(name, rev=str(stored.get("_rev", "1-0")))

    # -- HTTP -----------------------------------------------------------------------------

    def root_document(self) -> dict[str, Any]:
        deleted = sum(1 for entry in self.feed.values() if entry.deleted)
        return {
            "db_name": "registry",
            "engine": "npm-replicate",
            "doc_count": len(self.docs),
            "doc_del_count": deleted,
            "update_seq": self.seq,
            "purge_seq": 0,
            "compact_running": False,
            "instance_start_time": "0",
        }

    def changes_document(self, since: int, limit: int) -> dict[str, Any]:
        entries = sorted(
            (entry for entry in self.feed.values() if entry.seq > since), key=lambda e: e.seq
        )[: min(limit, self.max_limit)]
        results = []
        for entry in entries:
            result: dict[str, Any] = {
                "seq": entry.seq,
                "id": entry.id,
                "changes": [{"rev": entry.rev}],
            }
            if entry.deleted:
                result["deleted"] = True
            results.append(result)
        return {"results": results, "last_seq": entries[-1].seq if entries else since}

    def all_docs_document(self, startkey: str | None, limit: int) -> dict[str, Any]:
        """CouchDB's ``_all_docs``: live documents in id (code point) order from ``startkey``
        (inclusive), rows ``{id, key, value: {rev}}`` with ``total_rows`` and ``offset``."""
        ids = sorted(self.docs)
        offset = 0 if startkey is None else sum(1 for i in ids if i < startkey)
        rows = [
            {"id": i, "key": i, "value": {"rev": str(self.docs[i].get("_rev", "1-0"))}}
            for i in ids[offset : offset + limit]
        ]
        return {"total_rows": len(ids), "offset": offset, "rows": rows}

    def render(self, doc: Mapping[str, Any], origin: str) -> bytes:
        text = json.dumps(doc)
        if self.rewrite_upstream:
            text = text.replace(json.dumps(UPSTREAM)[1:-1] + "/", origin + "/")
        return text.encode()

    # -- the surface every ecosystem's fake shares (indexers.ecosystem.FakeRegistry) ---------

    NAME_EXAMPLES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("left-pad", "left-pad"),
        ("@fk/scoped", "@fk/scoped"),
    )
    INVALID_NAMES: ClassVar[tuple[str, ...]] = ("", ".hidden", "a b", "../etc", "@scope")
    SAMPLE_VERSIONS: ClassVar[tuple[str, ...]] = ("1.0.0", "1.1.0")

    def config_endpoints(self, url: str) -> dict[str, str]:
        return {"registry_url": url, "replicate_url": f"{url}/registry"}

    def publish_release(self, name: str, version: str) -> None:
        self.publish(name, version, files={"index.js": f"// {name} {version}\n".encode()})

    def withdraw_release(self, name: str, version: str) -> None:
        self.unpublish_version(name, version)

    def feed_head(self) -> int:
        return self.seq

    def tamper_release(self, name: str, version: str) -> None:
        self.tamper(name, version, b"not the published tarball")

    def release_file(self, name: str, version: str) -> tuple[str, bytes]:
        tarball = self.tarballs[tarball_path(name, version)]
        return tarball.filename, tarball.data

    def lockfile(self, releases: Sequence[tuple[str, str]]) -> tuple[str, bytes]:
        packages: dict[str, Any] = {"": {"name": "demo", "version": "1.0.0"}}
        for name, version in releases:
            tarball = self.tarballs[tarball_path(name, version)]
            packages[f"node_modules/{name}"] = {
                "version": version,
                "resolved": UPSTREAM + tarball.path,
                "integrity": tarball.integrity,
            }
        document = {"name": "demo", "lockfileVersion": 3, "requires": True, "packages": packages}
        return "package-lock.json", json.dumps(document, indent=2).encode()

    def make_app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware)
        app.router.add_get("/{tail:.*}", self._dispatch)
        return app

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path
        if raw in ("/", "/registry", "/registry/"):
            return web.json_response(self.root_document())
        if raw in ("/_changes", "/registry/_changes"):
            return self._changes(request)
        if raw in ("/_all_docs", "/registry/_all_docs"):
            return self._all_docs(request)
        if "/-/" in raw:
            return self._tarball(unquote(raw))
        name = unquote(raw[1:])
        return self._packument(name, str(request.url.origin()))

    def _changes(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return web.json_response(
                {"error": "bad_request", "reason": "since and limit must be integers"}, status=400
            )
        return web.json_response(self.changes_document(since, limit))

    def _all_docs(self, request: web.Request) -> web.Response:
        try:
            raw = request.query.get("startkey")
            startkey = json.loads(raw) if raw is not None else None
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return web.json_response(
                {"error": "bad_request", "reason": "invalid UTF-8 JSON"}, status=400
            )
        if startkey is not None and not isinstance(startkey, str):
            return web.json_response({"total_rows": len(self.docs), "offset": 0, "rows": []})
        return web.json_response(self.all_docs_document(startkey, limit))

    def _tarball(self, path: str) -> web.Response:
        tarball = self.tarballs.get(path)
        if tarball is None:
            return web.json_response({"error": "Not found"}, status=404)
        return web.Response(body=tarball.data, content_type="application/octet-stream")

    def _packument(self, name: str, origin: str) -> web.Response:
        doc = self.docs.get(name)
        if doc is None:
            return web.json_response({"error": "Not found"}, status=404)
        if self._lagging.get(name) and self._history.get(name):
            self._lagging[name] -= 1
            doc = self._history[name][-1]
        return web.Response(body=self.render(doc, origin), content_type="application/json")


__all__ = [
    "NPM_EPOCH",
    "UPSTREAM",
    "FakeNpmRegistry",
    "NpmTarball",
    "make_tarball",
    "sri_sha512",
    "tarball_path",
    "version_manifest",
]
