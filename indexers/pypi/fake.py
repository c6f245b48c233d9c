"""A fake PyPI on loopback: XML-RPC changelog, simple API (PEP 691 JSON and PEP 503 HTML),
JSON API and real files, shaped like Warehouse's answers.

Shapes follow ``pypi/warehouse:docs/api-reference/xml-rpc.rst`` (``changelog_since_serial``
rows ``[name, version, timestamp, action, serial]``, capped per call), the Simple Repository
API spec (PEP 503/592/629/658/691/700: ``meta.api-version`` 1.1, ``_last-serial``, ``versions``,
``size``, ``upload-time``, ``yanked``, ``core-metadata``) and ``docs/user/api/json.md``.
Files are real: wheels are zips with ``METADATA``/``WHEEL``/``RECORD`` and a ``.metadata``
sidecar (PEP 658), sdists are tar.gz with ``PKG-INFO``; URLs are content-addressed like
``<files>/packages/<b2[:2]>/<b2[2:4]>/<b2[4:]>/<filename>`` (blake2b-256).

Typed API (no pytest import)::

    pypi = FakePyPI(changelog_cap=3)                    # small cap to test paging
    files = pypi.release("Sample.Project", "1.0", wheels=("py3-none-any", "cp311-abi3-win32"))
    pypi.add_version(name, "2.0.dev0")                  # a version with no files (PEP 700)
    pypi.upload(name, version, filename=..., content=...)   # one more file, any name
    pypi.yank(name, version, reason="broken")
    pypi.remove_file(filename); pypi.remove_release(name, version); pypi.remove_project(name)
    pypi.set_status(name, "quarantined", reason="malware")   # PEP 792 project-status
    pypi.tamper(filename, b"other bytes")               # served bytes differ from the page's hash
    pypi.tamper_metadata(filename, b"Name: other")      # the same for its .metadata sidecar
    pypi.stale(name, times=1)                           # next page(s) from the previous serial
    pypi.throttle(times=1, reset_in=3)                  # XML-RPC HTTPTooManyRequests fault
    pypi.load_simple_page(doc, serial=...)              # serve a recorded PEP 691 document
    pypi.faults / pypi.requests                         # indexers.fakeserver middlewares
    async with serve(pypi.make_app()) as fake:
        PyPIIndexer(client, xmlrpc_url=fake.url + "/pypi", simple_url=fake.url + "/simple")

Every write appends journal rows with new serials (``create``, ``new release``, ``add py3 file
<f>``, ``yank release``, ``remove file <f>``, ``remove project``) and snapshots the project, so
:meth:`FakePyPI.stale` can serve the state and serial a CDN would still have cached.
"""

from __future__ import annotations

import copy
import hashlib
import html
import json
import re
import xmlrpc.client
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from xml.parsers.expat import ExpatError

from aiohttp import web

from indexers.fakeserver import Faults, RequestLog, fake_app
from indexers.pypi.dists import make_sdist, make_wheel

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
SIMPLE_HTML = "application/vnd.pypi.simple.v1+html"
API_VERSION = "1.1"


def canonical(name: str) -> str:
    """PEP 503 normalization (written out here so the fake does not import the code under test)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class PyPIFile:
    """One uploaded file: bytes, digests and the simple-API fields."""

    project: str
    version: str
    filename: str
    data: bytes
    uploaded_at: datetime
    requires_python: str | None = None
    metadata: bytes | None = None
    yanked: bool | str = False
    #: Bytes served instead of ``data`` (the page keeps ``data``'s digests): see ``tamper``.
    served: bytes | None = None
    #: Bytes served instead of ``metadata``: see ``tamper_metadata``.
    served_metadata: bytes | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blake2b_256(self) -> str:
        return hashlib.blake2b(self.data, digest_size=32).hexdigest()

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()  # noqa: S324 - PyPI still publishes md5

    @property
    def path(self) -> str:
        b2 = self.blake2b_256
        return f"/packages/{b2[:2]}/{b2[2:4]}/{b2[4:]}/{self.filename}"

    @property
    def packagetype(self) -> str:
        return "bdist_wheel" if self.filename.endswith(".whl") else "sdist"


@dataclass
class _Project:
    name: str
    versions: list[str] = field(default_factory=list)
    files: list[PyPIFile] = field(default_factory=list)
    last_serial: int = 0
    #: A recorded PEP 691 document served verbatim instead of the generated one.
    recorded: dict[str, Any] | None = None
    #: PEP 792 ``project-status`` (``{"status", "reason"?}``); quarantined pages list no files.
    status: dict[str, str] | None = None


@dataclass
class FakePyPI:
    """In-memory PyPI; see the module docstring for the API."""

    changelog_cap: int = 50_000
    start_serial: int = 20_000_000
    start_time: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    #: Absolute base for file URLs; ``None`` = the fake's own origin.
    files_url: str | None = None
    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)
    projects: dict[str, _Project] = field(default_factory=dict)
    journal: list[tuple[str, str | None, int, str, int]] = field(default_factory=list)
    serial: int = 0
    _snapshots: dict[str, list[_Project]] = field(default_factory=dict)
    _stale: dict[str, int] = field(default_factory=dict)
    _throttle: list[int] = field(default_factory=list)
    _ticks: int = 0

    def __post_init__(self) -> None:
        self.serial = self.start_serial

    # -- journal ---------------------------------------------------------------------------

    def now(self) -> datetime:
        """A deterministic clock: one minute per write."""
        self._ticks += 1
        return self.start_time + timedelta(minutes=self._ticks)

    def _log(self, project: _Project, version: str | None, action: str) -> int:
        """Journal a write already applied to ``project`` and snapshot the result."""
        self.serial += 1
        when = int(self.now().timestamp())
        self.journal.append((project.name, version, when, action, self.serial))
        project.last_serial = self.serial
        self._snapshots.setdefault(canonical(project.name), []).append(copy.deepcopy(project))
        return self.serial

    def _project(self, name: str) -> _Project:
        key = canonical(name)
        project = self.projects.get(key)
        if project is None:
            project = self.projects[key] = _Project(name=name)
            self._log(project, None, "create")
        return project

    # -- writes ----------------------------------------------------------------------------

    def add_version(self, name: str, version: str) -> None:
        """Create a release (``new release``), with no files yet."""
        project = self._project(name)
        if version not in project.versions:
            project.versions.append(version)
            self._log(project, version, "new release")

    def upload(
        self,
        name: str,
        version: str,
        *,
        filename: str | None = None,
        content: bytes | None = None,
        tag: str = "py3-none-any",
        sdist: bool = False,
        requires_python: str | None = None,
        requires: tuple[str, ...] = (),
    ) -> PyPIFile:
        """Add one file to a release: a generated wheel (``requires``: its dependencies) or
        sdist, or any name and bytes."""
        self.add_version(name, version)
        project = self._project(name)
        metadata = None
        if filename is None and sdist:
            filename, data = make_sdist(name, version, requires_python)
        elif filename is None:
            filename, data, metadata = make_wheel(name, version, tag, requires_python, requires)
        else:
            data = content if content is not None else f"{filename}\n".encode()
        file = PyPIFile(
            project=name,
            version=version,
            filename=filename,
            data=data,
            uploaded_at=self.now(),
            requires_python=requires_python,
            metadata=metadata,
        )
        project.files.append(file)
        pyver = "source" if sdist else tag.split("-")[0]
        self._log(project, version, f"add {pyver} file {filename}")
        return file

    def release(
        self,
        name: str,
        version: str,
        *,
        wheels: tuple[str, ...] = ("py3-none-any",),
        sdist: bool = True,
        requires_python: str | None = None,
    ) -> list[PyPIFile]:
        """Publish a release with one wheel per tag and an sdist (one journal row per file)."""
        self.add_version(name, version)
        files = [
            self.upload(name, version, tag=tag, requires_python=requires_python) for tag in wheels
        ]
        if sdist:
            files.append(self.upload(name, version, sdist=True, requires_python=requires_python))
        return files

    def yank(self, name: str, version: str, reason: str | None = None) -> None:
        """Yank every file of a release (PEP 592); the reason is optional."""
        project = self.projects[canonical(name)]
        for file in project.files:
            if file.version == version:
                file.yanked = reason or True
        self._log(project, version, "yank release")

    def remove_release(self, name: str, version: str) -> None:
        """Delete a release and its files (Warehouse's ``remove release`` journal row)."""
        project = self.projects[canonical(name)]
        project.versions.remove(version)
        project.files = [file for file in project.files if file.version != version]
        self._log(project, version, "remove release")

    def set_status(self, name: str, status: str, reason: str | None = None) -> None:
        """Mark the project (PEP 792: ``archived``, ``quarantined``, ``deprecated``, ``active``)."""
        project = self.projects[canonical(name)]
        project.status = {"status": status, **({"reason": reason} if reason else {})}
        self._log(project, None, f"project status {status}")

    def remove_file(self, filename: str) -> None:
        for project in self.projects.values():
            for file in list(project.files):
                if file.filename == filename:
                    project.files.remove(file)
                    self._log(project, file.version, f"remove file {filename}")

    def tamper(self, filename: str, data: bytes) -> None:
        """Serve ``data`` for ``filename`` while pages keep the true hashes (a bad CDN node)."""
        for project in self.projects.values():
            for file in project.files:
                if file.filename == filename:
                    file.served = data

    def tamper_metadata(self, filename: str, data: bytes) -> None:
        """Serve ``data`` as ``filename``'s PEP 658 metadata while pages keep the true hash."""
        for project in self.projects.values():
            for file in project.files:
                if file.filename == filename:
                    file.served_metadata = data

    def remove_project(self, name: str) -> None:
        project = self.projects.pop(canonical(name))
        self._log(project, None, "remove project")

    def stale(self, name: str, *, times: int = 1) -> None:
        """Serve the project's previous snapshot (older files, older serial) ``times`` times."""
        self._stale[canonical(name)] = self._stale.get(canonical(name), 0) + times

    def throttle(self, *, times: int = 1, reset_in: int = 1) -> None:
        """Answer the next ``times`` XML-RPC calls with Warehouse's rate-limit fault."""
        self._throttle.extend([reset_in] * times)

    def load_simple_page(self, doc: dict[str, Any], *, serial: int | None = None) -> None:
        """Serve a recorded PEP 691 project document verbatim (``tests/data/pypi``)."""
        project = self._project(doc["name"])
        project.recorded = copy.deepcopy(doc)
        project.last_serial = serial or doc.get("meta", {}).get("_last-serial") or self.serial

    # -- documents -------------------------------------------------------------------------

    def _view(self, key: str) -> _Project | None:
        project = self.projects.get(key)
        snapshots = self._snapshots.get(key, [])
        if project is not None and self._stale.get(key) and len(snapshots) >= 2:
            self._stale[key] -= 1
            return snapshots[-2]
        return project

    def file_url(self, file: PyPIFile, origin: str) -> str:
        return (self.files_url or origin).rstrip("/") + file.path

    def simple_json(self, project: _Project, origin: str) -> dict[str, Any]:
        """The PEP 691 (api-version 1.1) project document, as Warehouse renders it."""
        if project.recorded is not None:
            return project.recorded
        held = (project.status or {}).get("status") == "quarantined"
        return {
            "meta": {"api-version": API_VERSION, "_last-serial": project.last_serial},
            "name": canonical(project.name),
            **({"project-status": project.status} if project.status else {}),
            "versions": [] if held else list(project.versions),
            "files": [
                {
                    "filename": file.filename,
                    "url": self.file_url(file, origin),
                    "hashes": {"sha256": file.sha256},
                    "requires-python": file.requires_python,
                    "core-metadata": (
                        {"sha256": hashlib.sha256(file.metadata).hexdigest()}
                        if file.metadata
                        else False
                    ),
                    "data-dist-info-metadata": (
                        {"sha256": hashlib.sha256(file.metadata).hexdigest()}
                        if file.metadata
                        else False
                    ),
                    "size": len(file.data),
                    "upload-time": file.uploaded_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "yanked": file.yanked,
                }
                for file in ([] if held else project.files)
            ],
        }

    def simple_html(self, project: _Project, origin: str) -> str:
        """The PEP 503 page rendered from the same document as the JSON form."""
        doc = self.simple_json(project, origin)
        anchors = []
        for file in doc["files"]:
            attrs = [f'href="{html.escape(file["url"])}#sha256={file["hashes"].get("sha256", "")}"']
            if file.get("requires-python"):
                attrs.append(f'data-requires-python="{html.escape(file["requires-python"])}"')
            if file.get("core-metadata"):
                value = f"sha256={file['core-metadata']['sha256']}"
                attrs.append(f'data-dist-info-metadata="{value}" data-core-metadata="{value}"')
            if file.get("yanked"):
                reason = file["yanked"] if isinstance(file["yanked"], str) else ""
                attrs.append(f'data-yanked="{html.escape(reason)}"')
            anchors.append(f"    <a {' '.join(attrs)}>{html.escape(file['filename'])}</a><br />")
        body = "\n".join(anchors)
        return (
            "<!DOCTYPE html>\n<html>\n  <head>\n"
            f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
            f"    <title>Links for {html.escape(doc['name'])}</title>\n  </head>\n  <body>\n"
            f"    <h1>Links for {html.escape(doc['name'])}</h1>\n{body}\n  </body>\n</html>\n"
            f"<!--SERIAL {project.last_serial}-->"
        )

    def json_api(self, project: _Project, origin: str) -> dict[str, Any]:
        """``/pypi/<name>/json`` with ``info``, ``releases``, ``urls`` and ``last_serial``."""

        def entry(file: PyPIFile) -> dict[str, Any]:
            return {
                "comment_text": "",
                "digests": {
                    "blake2b_256": file.blake2b_256,
                    "md5": file.md5,
                    "sha256": file.sha256,
                },
                "downloads": -1,
                "filename": file.filename,
                "has_sig": False,
                "md5_digest": file.md5,
                "packagetype": file.packagetype,
                "python_version": "source" if file.packagetype == "sdist" else "py3",
                "requires_python": file.requires_python,
                "size": len(file.data),
                "upload_time": file.uploaded_at.strftime("%Y-%m-%dT%H:%M:%S"),
                "upload_time_iso_8601": file.uploaded_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "url": self.file_url(file, origin),
                "yanked": bool(file.yanked),
                "yanked_reason": file.yanked if isinstance(file.yanked, str) else None,
            }

        releases = {
            version: [entry(f) for f in project.files if f.version == version]
            for version in project.versions
        }
        latest = project.versions[-1] if project.versions else None
        return {
            "info": {
                "name": project.name,
                "version": latest,
                "summary": "fixture project",
                "requires_python": None,
                "yanked": False,
                "yanked_reason": None,
                "package_url": f"{origin}/project/{canonical(project.name)}/",
                "project_url": f"{origin}/project/{canonical(project.name)}/",
            },
            "last_serial": project.last_serial,
            "releases": releases,
            "urls": releases.get(latest, []) if latest else [],
            "vulnerabilities": [],
        }

    # -- HTTP ------------------------------------------------------------------------------

    # -- the surface every ecosystem's fake shares (indexers.ecosystem.FakeRegistry) ---------

    NAME_EXAMPLES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("sample-project", "sample-project"),
        ("Sample_Project", "sample-project"),
        ("zope.interface", "zope-interface"),
    )
    INVALID_NAMES: ClassVar[tuple[str, ...]] = ("", "-leading", "a b", "../etc", "trailing.")
    SAMPLE_VERSIONS: ClassVar[tuple[str, ...]] = ("1.0.0", "1.1.0")

    def config_endpoints(self, url: str) -> dict[str, str]:
        return {
            "index_url": f"{url}/simple",
            "json_url": f"{url}/pypi",
            "xmlrpc_url": f"{url}/pypi",
        }

    def publish_release(self, name: str, version: str) -> None:
        self.release(name, version)

    def withdraw_release(self, name: str, version: str) -> None:
        self.remove_release(name, version)

    def feed_head(self) -> int:
        return self.serial

    def _release_files(self, name: str, version: str) -> list[PyPIFile]:
        return [f for f in self.projects[canonical(name)].files if f.version == version]

    def tamper_release(self, name: str, version: str) -> None:
        for file in self._release_files(name, version):
            self.tamper(file.filename, b"not the published file")
            self.tamper_metadata(file.filename, b"not the published metadata")

    def release_file(self, name: str, version: str) -> tuple[str, bytes]:
        file = self._release_files(name, version)[0]
        return file.filename, file.data

    def lockfile(self, releases: Sequence[tuple[str, str]]) -> tuple[str, bytes]:
        lines = [f"{name}=={version}" for name, version in releases]
        return "requirements.txt", ("\n".join(lines) + "\n").encode()

    def make_app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware)
        app.router.add_post("/pypi", self._xmlrpc)
        app.router.add_post("/RPC2", self._xmlrpc)
        app.router.add_get("/simple/", self._simple_root)
        app.router.add_get("/simple/{name}", self._simple_redirect)
        app.router.add_get("/simple/{name}/", self._simple_project)
        app.router.add_get("/pypi/{name}/json", self._json_api)
        app.router.add_get("/packages/{a}/{b}/{rest}/{filename}", self._file)
        return app

    def _xml(self, value: Any) -> web.Response:
        body = xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True)
        return web.Response(body=body.encode(), content_type="text/xml")

    def _fault(self, code: int, message: str) -> web.Response:
        body = xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True)
        return web.Response(body=body.encode(), content_type="text/xml")

    async def _xmlrpc(self, request: web.Request) -> web.Response:
        try:
            params, method = xmlrpc.client.loads(await request.read())
        except (ExpatError, ValueError, xmlrpc.client.ResponseError) as exc:
            return self._fault(-32700, f"parse error: {exc}")
        if self._throttle:
            reset_in = self._throttle.pop(0)
            return self._fault(
                -32500,
                "HTTPTooManyRequests: The action could not be performed because there were too "
                f"many requests by the client. Limit may reset in {reset_in} seconds.",
            )
        if method == "changelog_last_serial":
            return self._xml(self.serial)
        if method == "changelog_since_serial" and len(params) == 1:
            since = int(str(params[0]))
            rows = [list(row) for row in self.journal if row[4] > since][: self.changelog_cap]
            return self._xml(rows)
        if method == "changelog" and len(params) in (1, 2):
            since, with_ids = int(str(params[0])), len(params) == 2 and bool(params[1])
            picked = [row for row in self.journal if row[2] >= since][: self.changelog_cap]
            return self._xml([list(row) if with_ids else list(row[:4]) for row in picked])
        if method == "list_packages_with_serial":
            return self._xml({p.name: p.last_serial for p in self.projects.values()})
        return self._fault(-32601, f"method {method!r} not found")

    def _negotiate(self, request: web.Request) -> str | None:
        """Pick JSON or HTML from ``Accept`` by q-value; no header or ``*/*`` means HTML."""
        accept = request.headers.get("Accept", "")
        best: tuple[float, str] | None = None
        for part in accept.split(","):
            media, *options = [item.strip() for item in part.split(";")]
            quality = 1.0
            for option in options:
                if option.startswith("q="):
                    quality = float(option[2:] or 0)
            kind = {
                SIMPLE_JSON: SIMPLE_JSON,
                SIMPLE_HTML: SIMPLE_HTML,
                "text/html": "text/html",
                "*/*": "text/html",
            }.get(media)
            if kind and quality > 0 and (best is None or quality > best[0]):
                best = (quality, kind)
        if not accept.strip():
            return "text/html"
        return best[1] if best else None

    async def _simple_root(self, request: web.Request) -> web.Response:
        kind = self._negotiate(request)
        headers = {"X-PyPI-Last-Serial": str(self.serial)}
        names = sorted(p.name for p in self.projects.values())
        if kind == SIMPLE_JSON:
            doc = {
                "meta": {"api-version": API_VERSION, "_last-serial": self.serial},
                "projects": [{"name": name} for name in names],
            }
            return _simple_json(json.dumps(doc), headers)
        if kind is None:
            raise web.HTTPNotAcceptable
        links = "\n".join(
            f'    <a href="/simple/{canonical(n)}/">{html.escape(n)}</a>' for n in names
        )
        page = f"<!DOCTYPE html>\n<html>\n  <body>\n{links}\n  </body>\n</html>\n"
        return web.Response(text=page, content_type="text/html", headers=headers)

    async def _simple_redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(f"/simple/{canonical(request.match_info['name'])}/")

    async def _simple_project(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != canonical(name):
            raise web.HTTPMovedPermanently(f"/simple/{canonical(name)}/")
        project = self._view(name)
        if project is None:
            return web.Response(status=404, text="404 Not Found")
        kind = self._negotiate(request)
        origin = str(request.url.origin())
        headers = {"X-PyPI-Last-Serial": str(project.last_serial)}
        if kind == SIMPLE_JSON:
            body = json.dumps(self.simple_json(project, origin))
            return _simple_json(body, headers)
        if kind is None:
            raise web.HTTPNotAcceptable
        return web.Response(
            text=self.simple_html(project, origin),
            content_type=SIMPLE_HTML if kind == SIMPLE_HTML else "text/html",
            headers=headers,
        )

    async def _json_api(self, request: web.Request) -> web.Response:
        project = self._view(canonical(request.match_info["name"]))
        if project is None:
            return web.json_response({"message": "Not Found"}, status=404)
        return web.json_response(
            self.json_api(project, str(request.url.origin())),
            headers={"X-PyPI-Last-Serial": str(project.last_serial)},
        )

    async def _file(self, request: web.Request) -> web.Response:
        filename = request.match_info["filename"]
        sidecar = filename.endswith(".metadata")
        wanted = filename.removesuffix(".metadata")
        for project in self.projects.values():
            for file in project.files:
                if file.filename == wanted and file.path.endswith(
                    f"/{request.match_info['rest']}/{wanted}"
                ):
                    if sidecar:
                        if file.metadata is None:
                            break
                        served = file.served_metadata
                        body = served if served is not None else file.metadata
                        return web.Response(body=body, content_type="text/plain")
                    body = file.served if file.served is not None else file.data
                    return web.Response(body=body, content_type="application/octet-stream")
        return web.Response(status=404, text="404 Not Found")


def _simple_json(text: str, headers: dict[str, str]) -> web.Response:
    """A PEP 691 JSON page typed exactly as PyPI types it: aiohttp would add
    ``; charset=utf-8`` to a text body, and clients that compare the type exactly (devpi)
    then read the page as HTML."""
    return web.Response(body=text.encode(), headers={**headers, "Content-Type": SIMPLE_JSON})


__all__ = [
    "API_VERSION",
    "SIMPLE_HTML",
    "SIMPLE_JSON",
    "FakePyPI",
    "PyPIFile",
    "canonical",
]
