"""A fake Packagist on loopback: the Composer repository, its change feed and code-forge dists.

Shapes follow the real service (see :mod:`indexers.composer.indexer` for the sources):
``/packages.json`` (``metadata-url``, ``notify-batch``, ``list``...), minified
``/p2/VENDOR/NAME.json`` and ``~dev.json`` (newest version first, ``"minified":
"composer/2.0"``), ``/metadata/changes.json?since=`` (400 with a ``timestamp`` for a missing
or too small ``since``, ``resync`` for one older than the log keeps), ``/packages/list.json``
and ``POST /downloads/``. Dists are real zip archives shaped like GitHub zipballs (one top
directory ``vendor-name-<ref>/`` holding ``composer.json`` and ``src/``): published either at a
code forge's zipball URL with an empty ``shasum`` (as Packagist lists GitHub packages) or with
their sha1 in ``dist.shasum``.

Typed API (no pytest import, so ``forage demo`` can use it)::

    fake = FakePackagist()
    dist = fake.publish("acme/left-pad", "1.0.0")              # -> ComposerDist
    fake.publish("acme/hosted", "2.0.0", shasum=True)         # sha1 published
    fake.branch("acme/left-pad", "dev-main")                  # a dev branch (~dev.json)
    fake.delete_version(name, version); fake.delete(name)     # Packagist's removals
    fake.abandon(name, "acme/other")
    fake.tamper(name, version, b"other bytes")                # bytes differ from shasum
    fake.forget_before(fake.stamp)                            # the log's retention point
    async with serve(fake.make_app()) as upstream: ...

Dist URLs on ``https://api.github.com`` are rewritten to the fake's own origin.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiohttp import web

from indexers.composer.metadata import MINIFIED, dist_filename, is_dev, minify, split_name
from indexers.fakeserver import Faults, RequestLog, fake_app

FORGE = "https://api.github.com"
#: Packagist's feed stamps are in 1/10000 s; the fake's clock starts here.
START = datetime(2024, 1, 1, tzinfo=UTC)
_TICKS = 10_000
_EPOCH_STAMP = 15850612240000
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def normalize_version(version: str) -> str:
    """Composer's ``version_normalized`` for the spellings the fake publishes."""
    if version.startswith("dev-"):
        return version
    match = re.fullmatch(r"v?(\d+(?:\.\d+)*)(?:-(.+))?", version)
    if match is None:
        return version
    parts = match.group(1).split(".")
    if version.endswith(".x-dev"):
        parts = [p if p != "x" else "9999999" for p in version[:-4].split(".")]
        return ".".join((parts + ["9999999"] * 4)[:4]) + "-dev"
    numbers = ".".join((parts + ["0"] * 4)[:4])
    return f"{numbers}-{match.group(2)}" if match.group(2) else numbers


def namespace(name: str) -> str:
    """The PSR-4 namespace of a fixture package: ``acme/left-pad`` -> ``Acme\\LeftPad``."""

    def camel(part: str) -> str:
        return "".join(word.capitalize() for word in re.split(r"[^a-z0-9]+", part) if word)

    vendor, package = split_name(name)
    return f"{camel(vendor)}\\{camel(package)}"


def make_zip(name: str, version: str, reference: str, files: Mapping[str, bytes] | None) -> bytes:
    """A reproducible zipball: ``vendor-package-<ref7>/composer.json`` and ``src/Hello.php``."""
    vendor, package = split_name(name)
    top = f"{vendor}-{package}-{reference[:7]}/"
    manifest = {
        "name": name,
        "description": f"{name} fixture package",
        "type": "library",
        "license": "MIT",
        "require": {"php": ">=7.4"},
        "autoload": {"psr-4": {namespace(name) + "\\": "src/"}},
    }
    hello = (
        f"<?php\n\nnamespace {namespace(name)};\n\nfinal class Hello\n{{\n"
        f"    public const VERSION = '{version}';\n}}\n"
    ).encode()
    entries = {"composer.json": json.dumps(manifest, indent=4).encode() + b"\n"}
    entries.update(files or {"src/Hello.php": hello})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, content in sorted(entries.items()):
            info = zipfile.ZipInfo(top + path, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, content)
    return out.getvalue()


def _action(kind: str, package: str, stamp: int) -> dict[str, Any]:
    # Packagist dates an action 0.2 s before its stamp, in whole seconds.
    return {"type": kind, "package": package, "time": (stamp - 2000) // _TICKS}


@dataclass(frozen=True)
class ComposerDist:
    """One published dist: its bytes, where it is served, and what the metadata says."""

    name: str
    version: str
    reference: str
    path: str
    data: bytes
    shasum: str

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.data).hexdigest()  # noqa: S324 - Composer's dist.shasum

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class FakePackagist:
    """In-memory Packagist; see the module docstring for the API."""

    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)
    #: Version entries per package, oldest first; dev branches apart.
    tagged: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    dev: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    dists: dict[str, ComposerDist] = field(default_factory=dict)
    dumps: dict[str, int] = field(default_factory=dict)
    deletes: dict[str, int] = field(default_factory=dict)
    stamp: int = 0
    oldest: int = _EPOCH_STAMP
    #: Extra ``packages.json`` members (``available-packages`` of a private repository).
    root_extra: dict[str, Any] = field(default_factory=dict)
    notifications: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stamp = int(START.timestamp()) * _TICKS

    def _tick(self) -> int:
        """A deterministic clock: one second per registry write."""
        self.stamp += _TICKS
        return self.stamp

    def _when(self) -> str:
        moment = datetime.fromtimestamp(self.stamp / _TICKS, tz=UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S+00:00")

    def _dump(self, name: str) -> None:
        self.dumps[name] = self._tick()

    def now(self) -> int:
        """The feed's ``timestamp``: the newest change's stamp plus one."""
        return max([*self.dumps.values(), *self.deletes.values(), self.stamp - 1]) + 1

    # -- publishing -----------------------------------------------------------------------

    def publish(
        self,
        name: str,
        version: str,
        *,
        shasum: bool = False,
        files: Mapping[str, bytes] | None = None,
        require: Mapping[str, str] | None = None,
    ) -> ComposerDist:
        """Publish a tagged version with a real zip; ``shasum`` publishes its sha1 (else the
        dist is a code-forge zipball with an empty ``shasum``)."""
        self._tick()
        reference = hashlib.sha1(f"{name}@{version}".encode()).hexdigest()  # noqa: S324
        vendor, package = split_name(name)
        data = make_zip(name, version, reference, files)
        path = (
            f"/dists/{name}/{version}/{reference}.zip"
            if shasum
            else f"/repos/{vendor}/{package}/zipball/{reference}"
        )
        dist = ComposerDist(name, version, reference, path, data, "")
        if shasum:
            dist = ComposerDist(name, version, reference, path, data, dist.sha1)
        self.dists[path] = dist
        entry = self._entry(name, version, reference)
        entry["dist"] = {
            "url": FORGE + path,
            "type": "zip",
            "shasum": dist.shasum,
            "reference": reference,
        }
        entry["require"] = dict(require or {"php": ">=7.4"})
        store = self.dev if is_dev(version) else self.tagged
        store.setdefault(name, {})[version] = entry
        self.deletes.pop(name, None)
        self._dump(f"{name}~dev" if is_dev(version) else name)
        return dist

    def branch(self, name: str, version: str = "dev-main") -> ComposerDist:
        """Push a dev branch (listed in ``~dev.json``)."""
        return self.publish(name, version)

    def _entry(self, name: str, version: str, reference: str) -> dict[str, Any]:
        vendor, package = split_name(name)
        return {
            "name": name,
            "description": f"{name} fixture package",
            "keywords": ["fixture"],
            "homepage": f"https://github.com/{vendor}/{package}",
            "version": version,
            "version_normalized": normalize_version(version),
            "license": ["MIT"],
            "authors": [{"name": "Fixture", "email": "fixture@example.org"}],
            "source": {
                "url": f"https://github.com/{vendor}/{package}.git",
                "type": "git",
                "reference": reference,
            },
            "type": "library",
            "support": {"issues": f"https://github.com/{vendor}/{package}/issues"},
            "time": self._when(),
            "autoload": {"psr-4": {namespace(name) + "\\": "src/"}},
        }

    def delete_version(self, name: str, version: str) -> None:
        """Remove one version: it leaves the p2 file (Packagist keeps no tombstone)."""
        store = self.dev if is_dev(version) else self.tagged
        del store[name][version]
        self._dump(f"{name}~dev" if is_dev(version) else name)

    def delete(self, name: str) -> None:
        """Delete the package: both p2 files 404 and the feed says ``delete``."""
        self.tagged.pop(name, None)
        self.dev.pop(name, None)
        self.dumps.pop(name, None)
        self.dumps.pop(f"{name}~dev", None)
        self.deletes[name] = self._tick()

    def abandon(self, name: str, replacement: str | bool = True) -> None:
        for entry in self.tagged[name].values():
            entry["abandoned"] = replacement
        self._dump(name)

    def tamper(self, name: str, version: str, data: bytes) -> None:
        """Serve ``data`` for the version's dist while the metadata keeps its shasum."""
        path = self.tagged[name][version]["dist"]["url"].removeprefix(FORGE)
        original = self.dists[path]
        self.dists[path] = ComposerDist(
            name, version, original.reference, path, data, original.shasum
        )

    def forget_before(self, stamp: int) -> None:
        """Move the log's retention point: an older ``since`` gets a ``resync``."""
        self.oldest = stamp

    # -- documents ------------------------------------------------------------------------

    def root_document(self, origin: str) -> dict[str, Any]:
        return {
            "packages": [],
            "notify-batch": f"{origin}/downloads/",
            "metadata-url": "/p2/%package%.json",
            "metadata-changes-url": f"{origin}/metadata/changes.json",
            "search": f"{origin}/search.json?q=%query%&type=%type%",
            "list": f"{origin}/packages/list.json",
            "providers-api": f"{origin}/providers/%package%.json",
            "security-advisories": {
                "metadata": True,
                "api-url": f"{origin}/api/security-advisories/",
            },
            **self.root_extra,
        }

    def p2_document(self, name: str, *, dev: bool) -> dict[str, Any] | None:
        store = (self.dev if dev else self.tagged).get(name)
        if store is None and (dev and name in self.tagged):
            store = {}
        if store is None:
            return None
        newest_first = list(reversed(store.values()))
        return {"packages": {name: minify(newest_first)}, "minified": MINIFIED}

    def changes_document(self, since: int) -> tuple[int, dict[str, Any]]:
        now = self.now()
        if since < _EPOCH_STAMP:
            error = (
                'Invalid or missing "since" query parameter, make sure you store the timestamp '
                "at the initial point you started mirroring, then send that to begin receiving "
                f"changes, e.g. /metadata/changes.json?since={now} for example."
            )
            return 400, {"error": error, "timestamp": now}
        if since < self.oldest:
            resync = {"type": "resync", "time": now // _TICKS, "package": "*"}
            return 200, {"actions": [resync], "timestamp": now}
        actions: dict[str, dict[str, Any]] = {}
        for package, stamp in sorted(self.dumps.items(), key=lambda item: item[1]):
            if since <= stamp < now:
                actions[package] = _action("update", package, stamp)
        for package, stamp in self.deletes.items():
            if since <= stamp < now:
                actions.pop(f"{package}~dev", None)
                actions[package] = _action("delete", package, stamp)
        return 200, {"actions": list(actions.values()), "timestamp": now}

    # -- the surface every ecosystem's fake shares (indexers.ecosystem.FakeRegistry) ---------

    NAME_EXAMPLES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("acme/left-pad", "acme/left-pad"),
        ("Acme/Left_Pad", "acme/left_pad"),
    )
    INVALID_NAMES: ClassVar[tuple[str, ...]] = ("", "noslash", "a/b/c", "../etc", "acme/-x")
    SAMPLE_VERSIONS: ClassVar[tuple[str, ...]] = ("1.0.0", "1.1.0")

    def config_endpoints(self, url: str) -> dict[str, str]:
        return {"repo_url": url, "api_url": url}

    def publish_release(self, name: str, version: str) -> None:
        self.publish(name, version, shasum=True)

    def withdraw_release(self, name: str, version: str) -> None:
        self.delete_version(name, version)

    def feed_head(self) -> int:
        return self.now()

    def tamper_release(self, name: str, version: str) -> None:
        self.tamper(name, version, b"not the published zip")

    def release_file(self, name: str, version: str) -> tuple[str, bytes]:
        path = self.tagged[name][version]["dist"]["url"].removeprefix(FORGE)
        return dist_filename(name, version, "zip"), self.dists[path].data

    def lockfile(self, releases: Sequence[tuple[str, str]]) -> tuple[str, bytes]:
        packages = []
        for name, version in releases:
            entry = dict(self.tagged[name][version])
            entry.pop("version_normalized", None)
            entry["notification-url"] = "https://packagist.org/downloads/"
            packages.append(entry)
        document = {
            "_readme": [
                "This file locks the dependencies of your project to a known state",
                "Read more about it at https://getcomposer.org/doc/01-basic-usage.md#installing-dependencies",
                "This file is @generated automatically",
            ],
            "content-hash": hashlib.md5(json.dumps(releases).encode()).hexdigest(),  # noqa: S324
            "packages": packages,
            "packages-dev": [],
            "aliases": [],
            "minimum-stability": "stable",
            "stability-flags": [],
            "prefer-stable": False,
            "prefer-lowest": False,
            "platform": [],
            "platform-dev": [],
            "plugin-api-version": "2.3.0",
        }
        return "composer.lock", json.dumps(document, indent=4).encode()

    # -- HTTP -----------------------------------------------------------------------------

    def render(self, doc: Any, origin: str) -> bytes:
        return json.dumps(doc).replace(json.dumps(FORGE)[1:-1] + "/", origin + "/").encode()

    def make_app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware)
        app.router.add_get("/packages.json", self._root)
        app.router.add_get("/metadata/changes.json", self._changes)
        app.router.add_get("/packages/list.json", self._list)
        app.router.add_post("/downloads/", self._downloads)
        app.router.add_get("/p2/{vendor}/{file}", self._p2)
        app.router.add_get("/{tail:(dists|repos)/.*}", self._dist)
        return app

    async def _root(self, request: web.Request) -> web.Response:
        return web.json_response(self.root_document(str(request.url.origin())))

    async def _changes(self, request: web.Request) -> web.Response:
        raw = request.query.get("since", "")
        since = int(raw) if raw.isdigit() else 0
        status, doc = self.changes_document(since)
        return web.json_response(doc, status=status)

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"packageNames": sorted(self.tagged)})

    async def _downloads(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.json_response({"status": "success"}, status=201)

    async def _p2(self, request: web.Request) -> web.Response:
        file = request.match_info["file"]
        if not file.endswith(".json"):
            return web.Response(status=404, text="Not Found")
        name = f"{request.match_info['vendor']}/{file[:-5]}"
        dev = name.endswith("~dev")
        doc = self.p2_document(name.removesuffix("~dev"), dev=dev)
        if doc is None:
            return web.Response(status=404, text="Not Found")
        body = self.render(doc, str(request.url.origin()))
        return web.Response(body=body, content_type="application/json")

    async def _dist(self, request: web.Request) -> web.Response:
        dist = self.dists.get(request.path)
        if dist is None:
            return web.json_response({"message": "Not Found"}, status=404)
        return web.Response(body=dist.data, content_type="application/zip")


__all__ = ["FORGE", "ComposerDist", "FakePackagist", "make_zip", "namespace", "normalize_version"]
