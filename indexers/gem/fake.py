"""A fake RubyGems registry on loopback: the compact index, ``.gem`` files, quick gemspecs
and the JSON API's version list, shaped like rubygems.org's answers.

Shapes: ``rubygems/guides: rubygems-org-compact-index-api.md`` (``/versions`` with
``created_at`` header and appended lines, ``-V`` for yanks, ``Range`` answered 206/416 with
``Content-Range``, ``Repr-Digest`` of the whole file and an MD5 ``ETag``), ``/info/NAME``
and ``/names`` as ``rubygems/compact_index`` renders them, ``rubygems-org-api.md`` for
``/api/v1/versions/NAME.json`` (newest first: ``number``, ``platform``, ``created_at``,
``sha``, ``prerelease``...). Gems are real (:mod:`indexers.gem.build`); ``gem install`` and
``bundle install`` install them. ``HEAD /`` answers 200, which is how RubyGems decides a
source has a compact index.

Typed API (no pytest import)::

    gems = FakeRubyGems()
    gem = gems.push("rack", "3.0.0", platform="java", deps=[("rake", (">= 1",))])
    gems.yank("rack", "3.0.0")                 # gone from /info, "-3.0.0" appended
    gems.rewrite()                             # the monthly recompute of /versions
    gems.tamper(gem.filename, b"other bytes")  # served bytes differ from /info's checksum
    gems.ranges = False                        # answer every /versions request whole (200)
    gems.corrupt_versions = True               # a body that fails its own Repr-Digest
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from aiohttp import web

from indexers.fakeserver import Faults, RequestLog, fake_app
from indexers.gem.build import GemSpec, build_gem
from indexers.gem.compact import (
    InfoEntry,
    gem_filename,
    render_info,
    render_names,
    version_key,
)
from indexers.gem.marshal import quick_gemspec

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass
class FakeGem:
    """One pushed platform gem of a version."""

    name: str
    version: str
    platform: str
    data: bytes
    pushed_at: datetime
    dependencies: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ruby: tuple[str, ...] = ()
    yanked: bool = False
    served: bytes | None = None

    @property
    def key(self) -> str:
        return version_key(self.version, self.platform)

    @property
    def filename(self) -> str:
        return gem_filename(self.name, self.version, self.platform)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def entry(self) -> InfoEntry:
        return InfoEntry(
            self.version, self.platform, self.dependencies, self.sha256, self.ruby, (">= 0",)
        )


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - the compact index's own checksum


def _headers(body: bytes) -> dict[str, str]:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return {
        "ETag": f'"{_md5(body)}"',
        "Repr-Digest": f"sha-256=:{digest}:",
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=60, public",
    }


@dataclass
class FakeRubyGems:
    """In-memory RubyGems; see the module docstring."""

    start_time: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    gems: dict[str, list[FakeGem]] = field(default_factory=dict)
    versions: bytearray = field(default_factory=bytearray)
    ranges: bool = True
    #: Serve ``/versions`` with a damaged byte under the intact file's headers.
    corrupt_versions: bool = False
    requests: RequestLog = field(default_factory=RequestLog)
    faults: Faults = field(default_factory=Faults)
    pushes: int = 0

    NAME_EXAMPLES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("rack", "rack"),
        ("net-http", "net-http"),
        ("Rack_Test.x", "Rack_Test.x"),
    )
    INVALID_NAMES: ClassVar[tuple[str, ...]] = ("", "a b", "../etc", "-leading", "123", "x/y")
    SAMPLE_VERSIONS: ClassVar[tuple[str, ...]] = ("1.0.0", "1.1.0")

    def __post_init__(self) -> None:
        if not self.versions:
            self.versions += self._header(self.start_time)

    @staticmethod
    def _header(when: datetime) -> bytes:
        return f"created_at: {when.strftime('%Y-%m-%dT%H:%M:%SZ')}\n---\n".encode()

    def now(self) -> datetime:
        return self.start_time + timedelta(minutes=self.pushes)

    def info(self, name: str) -> bytes:
        return render_info(g.entry for g in self.gems.get(name, ()) if not g.yanked)

    def push(
        self,
        name: str,
        version: str,
        *,
        platform: str = "ruby",
        files: dict[str, bytes] | None = None,
        deps: Sequence[tuple[str, Sequence[str]]] = (),
        ruby: Sequence[str] = (),
    ) -> FakeGem:
        """Push a gem built from ``files`` (a default ``lib/NAME.rb`` if none)."""
        self.pushes += 1
        lib = name.replace("-", "/")
        content = files or {f"lib/{lib}.rb": f"# {name} {version} {platform}\n".encode()}
        spec = GemSpec(name, version, platform, content, deps, ruby)
        gem = FakeGem(
            name,
            version,
            platform,
            build_gem(spec),
            self.now(),
            tuple((d, tuple(r)) for d, r in deps),
            tuple(ruby),
        )
        self.gems.setdefault(name, []).append(gem)
        self.versions += f"{name} {gem.key} {_md5(self.info(name))}\n".encode()
        return gem

    def yank(self, name: str, version: str, platform: str | None = None) -> None:
        """Yank a version (every platform, or one): out of ``/info``, ``-V`` appended."""
        for gem in self.gems.get(name, ()):
            if gem.version == version and platform in (None, gem.platform) and not gem.yanked:
                gem.yanked = True
                self.versions += f"{name} -{gem.key} {_md5(self.info(name))}\n".encode()

    def rewrite(self) -> None:
        """Recompute ``/versions`` as rubygems.org does now and then: a new ``created_at``,
        one line per gem with its live versions, yanks compacted out."""
        self.pushes += 1
        body = bytearray(self._header(self.now()))
        for name in sorted(self.gems):
            live = [g.key for g in self.gems[name] if not g.yanked]
            if live:
                body += f"{name} {','.join(live)} {_md5(self.info(name))}\n".encode()
        self.versions = body

    def tamper(self, filename: str, data: bytes) -> None:
        for gem in self._all():
            if gem.filename == filename:
                gem.served = data

    def _all(self) -> list[FakeGem]:
        return [g for gems in self.gems.values() for g in gems]

    # -- the FakeRegistry surface --------------------------------------------------------

    def config_endpoints(self, url: str) -> dict[str, str]:
        return {"registry_url": url}

    def publish_release(self, name: str, version: str) -> None:
        self.push(name, version)

    def withdraw_release(self, name: str, version: str) -> None:
        self.yank(name, version)

    def feed_head(self) -> int:
        return len(self.versions)

    def tamper_release(self, name: str, version: str) -> None:
        for gem in self.gems[name]:
            if gem.version == version:
                gem.served = b"not the published gem"

    def release_file(self, name: str, version: str) -> tuple[str, bytes]:
        gem = next(g for g in self.gems[name] if g.version == version)
        return gem.filename, gem.data

    def lockfile(self, releases: Sequence[tuple[str, str]]) -> tuple[str, bytes]:
        return "Gemfile.lock", gemfile_lock("https://rubygems.org/", releases).encode()

    def make_app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware)
        app.router.add_get("/", self._root)
        app.router.add_get("/versions", self._versions)
        app.router.add_get("/names", self._names)
        app.router.add_get("/info/{name}", self._info)
        app.router.add_get("/gems/{filename}", self._gem)
        app.router.add_get("/quick/Marshal.4.8/{filename}", self._quick)
        app.router.add_get("/api/v1/versions/{name}.json", self._api_versions)
        return app

    # -- handlers ------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="RubyGems.org fake\n")

    async def _versions(self, request: web.Request) -> web.Response:
        body = bytes(self.versions)
        headers = _headers(body)
        if self.corrupt_versions:
            body = body[:-2] + b"#" + body[-1:]
        match = _RANGE.fullmatch(request.headers.get("Range", "").strip())
        if not self.ranges or match is None or match.groups() == ("", ""):
            return web.Response(body=body, headers=headers, content_type="text/plain")
        first, last = match.groups()
        size = len(body)
        if first == "":
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(size - 1, int(last)) if last else size - 1
        if start >= size or start > end:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return web.Response(
            status=206, body=body[start : end + 1], headers=headers, content_type="text/plain"
        )

    async def _names(self, request: web.Request) -> web.Response:
        body = render_names(sorted(n for n, gems in self.gems.items() if gems))
        return web.Response(body=body, headers=_headers(body), content_type="text/plain")

    def _not_found(self) -> web.Response:
        return web.Response(status=404, text="This gem could not be found")

    async def _info(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.gems:
            return self._not_found()
        body = self.info(name)
        return web.Response(body=body, headers=_headers(body), content_type="text/plain")

    def _find(self, filename: str) -> FakeGem | None:
        return next((g for g in self._all() if g.filename == filename), None)

    async def _gem(self, request: web.Request) -> web.Response:
        gem = self._find(request.match_info["filename"])
        if gem is None:
            return self._not_found()
        body = gem.served if gem.served is not None else gem.data
        return web.Response(body=body, content_type="application/octet-stream")

    async def _quick(self, request: web.Request) -> web.Response:
        filename = request.match_info["filename"]
        gem = self._find(filename.removesuffix(".gemspec.rz") + ".gem")
        if gem is None or gem.yanked:
            return self._not_found()
        body = quick_gemspec(gem.name, gem.entry, date=gem.pushed_at.strftime("%Y-%m-%d"))
        return web.Response(body=body, content_type="application/octet-stream")

    async def _api_versions(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.gems:
            return self._not_found()
        items: list[dict[str, object]] = [
            {
                "authors": "Forage tests",
                "built_at": gem.pushed_at.strftime("%Y-%m-%dT00:00:00.000Z"),
                "created_at": gem.pushed_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "description": "A gem served by a fake registry",
                "downloads_count": 0,
                "metadata": {},
                "number": gem.version,
                "summary": "A gem served by a fake registry",
                "platform": gem.platform,
                "rubygems_version": ">= 0",
                "ruby_version": "&".join(gem.ruby) or ">= 0",
                "prerelease": any(c.isalpha() for c in gem.version),
                "licenses": [],
                "requirements": [],
                "sha": gem.sha256,
                "spec_sha": None,
            }
            for gem in reversed(self.gems[name])
            if not gem.yanked
        ]
        return web.Response(text=json.dumps(items), content_type="application/json")


def gemfile_lock(
    remote: str,
    releases: Sequence[tuple[str, str]],
    *,
    requires: Mapping[str, Sequence[tuple[str, str]]] | None = None,
    bundler: str = "2.3.15",
) -> str:
    """A ``Gemfile.lock`` resolving ``(name, version[-platform])`` pairs from ``remote``;
    ``requires`` lists each gem's dependencies ``(name, requirement)`` as Bundler nests them."""
    specs = "".join(
        f"    {name} ({version})\n"
        + "".join(f"      {dep} ({req})\n" for dep, req in (requires or {}).get(name, ()))
        for name, version in releases
    )
    deps = "".join(f"  {name}\n" for name in dict.fromkeys(name for name, _ in releases))
    return (
        f"GEM\n  remote: {remote}\n  specs:\n{specs}\n"
        f"PLATFORMS\n  ruby\n  x86_64-linux\n\nDEPENDENCIES\n{deps}\n"
        f"BUNDLED WITH\n   {bundler}\n"
    )


__all__ = ["FakeGem", "FakeRubyGems", "gemfile_lock"]
