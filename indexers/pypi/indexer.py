"""PyPI: the XML-RPC changelog and PEP 691 JSON project pages, mapped to releases.

Sources: ``pypi/warehouse:docs/api-reference/xml-rpc.rst`` ("Mirroring Support":
``changelog_since_serial`` returns ``(name, version, timestamp, action, serial)`` rows with
``serial > since`` in order, at most 50,000 per call); the Simple Repository API
(``pypa/packaging.python.org:source/specifications/simple-repository-api.rst``: PEP 503, 592,
629, 658, 691, 700); bandersnatch's stale-page defence (``pypa/bandersnatch:src/bandersnatch/
master.py``: compare ``X-PyPI-Last-Serial`` with the serial the changelog announced).

Primary metadata source: the PEP 691 JSON project page (``/simple/<name>/`` with
``Accept: application/vnd.pypi.simple.v1+json``), not the JSON API (``/pypi/<name>/json``):

- it is the index API PyPI asks integrators to use; the JSON API's ``releases`` key, the only
  place it lists every file, is deprecated (``pypi/warehouse:docs/user/api/json.md``);
- one request carries every file with ``hashes`` (sha256), ``size``, ``upload-time``,
  ``yanked`` (PEP 592 reason included), ``requires-python``, the ``versions`` list (PEP 700,
  which also names releases without files) and ``_last-serial`` next to ``X-PyPI-Last-Serial``;
- it is exactly what pip reads, so the archive holds what a mirror must re-serve.

What it lacks: md5/blake2b digests (sha256 is enough to verify) and the display spelling of the
name (PEP 691 ``name`` is normalized, so ``display_name`` equals ``name``). A file's version
comes from its filename (``packaging.utils.parse_wheel_filename``/``parse_sdist_filename``),
spelled as in the ``versions`` list; legacy files (eggs, installers) are matched by prefix
against that list, and a file matching no version is reported in ``extra["unmatched_files"]``.

A file whose entry advertises its core metadata with a sha256 (PEP 658/714) brings a second
artifact, ``<filename>.metadata`` at ``<file URL>.metadata`` (kind ``metadata``): the archive
then keeps it beside its file, and the mirror serves it when the upstream cannot, so pip can
still resolve without downloading whole wheels.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import xmlrpc.client
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urldefrag, urljoin
from xml.parsers.expat import ExpatError

import httpx
from packaging.utils import (
    InvalidName as PackagingInvalidName,
)
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from indexers.base import Indexer, expect, parse_position, parse_time, redact
from indexers.digests import HASHERS, normalize_hex
from indexers.errors import (
    FeedError,
    InvalidDigest,
    InvalidName,
    StaleMetadata,
    UpstreamUnavailable,
)
from indexers.types import Artifact, Change, Inventory, InventoryEntry, PackageInfo, Page, Release

log = logging.getLogger(__name__)

ECOSYSTEM = "pypi"

#: PEP 691 content type for the JSON form of the simple API, version 1.
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"

#: PEP 658's suffix: ``<file URL>.metadata`` is the file's core metadata.
METADATA_SUFFIX = ".metadata"
#: Keys a file entry may advertise its core metadata under: PEP 714's, then PEP 691's, then
#: the ``data-`` spelling Warehouse's JSON also carries.
_METADATA_KEYS = ("core-metadata", "dist-info-metadata", "data-dist-info-metadata")
_SHA256 = re.compile(r"[0-9a-f]{64}")

#: Header carrying a project's (or the index's) newest journal serial.
SERIAL_HEADER = "X-PyPI-Last-Serial"

#: The changelog action that removes a whole project.
REMOVE_PROJECT = "remove project"

#: Warehouse's throttling fault: code -32500, "HTTPTooManyRequests: ... reset in N seconds."
_THROTTLED = "HTTPTooManyRequests:"
_RESET_IN = re.compile(r"Limit may reset in (\d+) seconds")

#: PEP 792's markers other than ``active`` (``pypa/packaging.python.org:source/specifications/
#: project-status-markers.rst``).
_PROJECT_STATUSES = frozenset({"archived", "quarantined", "deprecated"})

#: Projects one inventory page names.
INVENTORY_PAGE = 10_000

_LEGACY_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".zip", ".egg", ".exe", ".msi")


@dataclass(frozen=True, slots=True)
class PyPICursor:
    """The last journal serial consumed; the next page asks for rows after it.

    ``changelog_since_serial(serial)`` is exclusive (rows with a greater serial), ascending and
    capped per call, so a run calls it until a page comes back empty: that page returns the same
    cursor and ``done``, which ends the run. Serials are dense per journal row, and one release
    produces several rows (one per file), possibly across pages.
    """

    serial: int

    def rewind(self, count: int) -> PyPICursor:
        """Return a cursor ``count`` serials earlier (never below 0), to re-scan a window."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return PyPICursor(max(0, self.serial - count))


def _first(item: tuple[str, int]) -> str:
    return item[0]


def normalize(name: str) -> str:
    """Return the PEP 503 normalized name after checking it is a valid PEP 508 name."""
    try:
        return canonicalize_name(name, validate=True)
    except PackagingInvalidName as exc:
        raise InvalidName(ECOSYSTEM, name, "not a valid project name (PEP 508)") from exc


def encode_call(method: str, *params: Any) -> bytes:
    """Serialize an XML-RPC ``methodCall`` (the stdlib only encodes; httpx sends it)."""
    return xmlrpc.client.dumps(params, methodname=method, allow_none=False).encode("utf-8")


def decode_response(body: bytes, url: str) -> Any:
    """Decode an XML-RPC ``methodResponse``; translate faults and malformed documents."""
    try:
        params, _ = xmlrpc.client.loads(body, use_builtin_types=True)
    except xmlrpc.client.Fault as exc:
        text = str(exc.faultString)
        if text.startswith(_THROTTLED):
            delay = _RESET_IN.search(text)
            raise UpstreamUnavailable(
                redact(url),
                f"XML-RPC throttled: {text}",
                retry_after=float(delay.group(1)) if delay else None,
            ) from exc
        raise FeedError(redact(url), f"XML-RPC fault {exc.faultCode}: {exc.faultString}") from exc
    except (ExpatError, xmlrpc.client.ResponseError, ValueError) as exc:
        raise FeedError(redact(url), f"not an XML-RPC response: {exc}") from exc
    expect(len(params) == 1, url, f"XML-RPC response has {len(params)} values, expected 1")
    return params[0]


def parse_changelog(rows: Any, *, since: int, url: str) -> tuple[tuple[Change, ...], int]:
    """Reduce changelog rows to one change per normalized name and the next serial.

    Each change carries the highest serial seen for its name (what ``package`` must at least
    see) and ``deleted`` when that name's last row in the page is ``remove project``. Rows with
    names that are not valid project names are skipped with a warning.
    """
    expect(isinstance(rows, list), url, "changelog is not an array")
    latest: dict[str, tuple[int, str]] = {}
    next_serial = since
    for row in rows:
        expect(
            isinstance(row, list | tuple) and len(row) == 5,
            url,
            f"changelog row {row!r:.200} is not (name, version, timestamp, action, serial)",
        )
        name, _version, _timestamp, action, serial = row
        expect(isinstance(serial, int) and isinstance(name, str), url, f"bad row {row!r:.200}")
        next_serial = max(next_serial, serial)
        try:
            key = normalize(name)
        except InvalidName as exc:
            log.warning("skipping changelog row at serial %d: %s", serial, exc)
            continue
        if key not in latest or latest[key][0] < serial:
            latest[key] = (serial, str(action))
    changes = tuple(
        Change(name=key, serial=serial, deleted=action == REMOVE_PROJECT)
        for key, (serial, action) in sorted(latest.items(), key=lambda item: item[1][0])
    )
    return changes, next_serial


def _newest_timestamp(rows: list[Any]) -> datetime | None:
    """The journal date (UTC epoch seconds) of the highest-serial changelog row, if any."""
    if not rows:
        return None
    stamp = max(rows, key=lambda row: row[4])[2]
    if isinstance(stamp, bool) or not isinstance(stamp, int):
        return None
    return datetime.fromtimestamp(stamp, UTC)


def _kind(filename: str) -> str:
    if filename.endswith(".whl"):
        return "wheel"
    if filename.endswith((".tar.gz", ".zip", ".tar.bz2", ".tar.xz", ".tgz", ".tar")):
        return "sdist"
    if filename.endswith(".egg"):
        return "egg"
    return "other"


def _fold(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text.lower())


class _Versions:
    """The project's version strings, so a version parsed from a filename keeps PyPI's spelling."""

    def __init__(self, versions: Iterable[str]) -> None:
        self.strings = list(dict.fromkeys(versions))
        self._by_value: dict[Version, str] = {}
        for text in self.strings:
            try:
                self._by_value.setdefault(Version(text), text)
            except InvalidVersion:
                continue
        self._by_length = sorted(self.strings, key=len, reverse=True)

    def spell(self, version: Version) -> str:
        return self._by_value.get(version, str(version))

    def of_file(self, filename: str, project: str) -> str | None:
        filename = filename.removesuffix(METADATA_SUFFIX)
        try:
            return self.spell(parse_wheel_filename(filename)[1])
        except (InvalidWheelFilename, InvalidVersion):
            pass
        try:
            return self.spell(parse_sdist_filename(filename)[1])
        except (InvalidSdistFilename, InvalidVersion):
            pass
        stem = filename
        for suffix in _LEGACY_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        folded = _fold(stem)
        for text in self._by_length:
            prefix = _fold(f"{project}-{text}")
            if folded == prefix or folded.startswith(prefix + "-"):
                return text
        return None


def _hashes(value: Any, filename: str, url: str) -> dict[str, str]:
    expect(isinstance(value, dict), url, f"file {filename!r} has no 'hashes' object")
    digests: dict[str, str] = {}
    for algorithm, digest in value.items():
        name = str(algorithm).lower()
        if not isinstance(digest, str):
            continue
        try:
            digests[name] = normalize_hex(name, digest) if name in HASHERS else digest.lower()
        except InvalidDigest as exc:
            log.warning("pypi %s: dropping %s digest: %s", filename, name, exc)
    return digests


def advertised_metadata(entry: Any) -> str | None:
    """The sha256 of the core metadata a PEP 691 file entry advertises (``None``: none, or
    advertised without a sha256, which nothing could verify)."""
    for key in _METADATA_KEYS:
        value = entry.get(key) if isinstance(entry, dict) else None
        if isinstance(value, dict):
            sha256 = str(value.get("sha256", "")).lower()
            return sha256 if _SHA256.fullmatch(sha256) else None
    return None


def _metadata_artifact(file: Artifact, entry: Any) -> Artifact | None:
    """The core-metadata file ``entry`` advertises for ``file`` (see the module docstring)."""
    sha256 = advertised_metadata(entry)
    if sha256 is None:
        return None
    return Artifact(
        filename=file.filename + METADATA_SUFFIX,
        url=urldefrag(file.url).url + METADATA_SUFFIX,
        size=None,
        digests={"sha256": sha256},
        kind="metadata",
        yanked=file.yanked,
        yanked_reason=file.yanked_reason,
        uploaded_at=file.uploaded_at,
    )


def _artifact(entry: Any, *, base_url: str) -> Artifact:
    expect(isinstance(entry, dict), base_url, "a file entry is not an object")
    filename = entry.get("filename")
    href = entry.get("url")
    expect(isinstance(filename, str) and bool(filename), base_url, "file without 'filename'")
    expect(isinstance(href, str) and bool(href), base_url, f"file {filename!r} without 'url'")
    yanked = entry.get("yanked", False)
    size = entry.get("size")
    requires = entry.get("requires-python")
    return Artifact(
        filename=filename,
        url=urljoin(base_url, href),
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        digests=_hashes(entry.get("hashes"), filename, base_url),
        kind=_kind(filename),
        yanked=bool(yanked),
        yanked_reason=yanked if isinstance(yanked, str) and yanked else None,
        requires_python=requires if isinstance(requires, str) and requires else None,
        uploaded_at=parse_time(entry.get("upload-time")),
    )


def project_status(value: Any) -> tuple[str | None, str | None]:
    """PEP 792's ``project-status`` ``{status, reason?}`` as (status, reason); ``active``,
    absent or a marker this version of the spec does not define is ``None`` (clients must
    treat unknown markers as active)."""
    if not isinstance(value, dict):
        return None, None
    status = value.get("status")
    reason = value.get("reason")
    if status not in _PROJECT_STATUSES:
        return None, None
    return status, reason if isinstance(reason, str) and reason else None


def map_simple_project(doc: Any, *, url: str, serial: int | None = None) -> PackageInfo:
    """Map a PEP 691 JSON project page to :class:`PackageInfo`, every file an artifact.

    A release is ``yanked`` when all its files are (PEP 592); its ``published_at`` is its
    earliest upload. ``serial`` overrides ``meta._last-serial`` (pass the response header).
    """
    expect(isinstance(doc, dict), url, "project page is not an object")
    meta = doc.get("meta")
    expect(isinstance(meta, dict), url, "project page has no 'meta'")
    api_version = str(meta.get("api-version", ""))
    expect(api_version.split(".")[0] == "1", url, f"unsupported api-version {api_version!r}")
    raw_name = doc.get("name")
    expect(isinstance(raw_name, str), url, "project page has no 'name'")
    name = normalize(raw_name)
    files = doc.get("files")
    expect(isinstance(files, list), url, "project page has no 'files' list")
    listed = doc.get("versions") or []
    expect(isinstance(listed, list), url, "'versions' is not a list")
    artifacts = []
    for entry in files:
        artifact = _artifact(entry, base_url=url)
        sidecar = _metadata_artifact(artifact, entry)
        artifacts += [artifact] if sidecar is None else [artifact, sidecar]
    known = _Versions([str(v) for v in listed])
    grouped: dict[str, list[Artifact]] = {text: [] for text in known.strings}
    unmatched: list[str] = []
    for artifact in artifacts:
        version = known.of_file(artifact.filename, name)
        if version is None:
            log.warning("pypi %s: no version for file %s", name, artifact.filename)
            unmatched.append(artifact.filename)
            continue
        grouped.setdefault(version, []).append(artifact)
    releases = []
    for version, members in grouped.items():
        times = [a.uploaded_at for a in members if a.uploaded_at is not None]
        releases.append(
            Release(
                version=version,
                artifacts=tuple(members),
                published_at=min(times) if times else None,
                yanked=bool(members) and all(a.yanked for a in members),
            )
        )
    never = datetime.min.replace(tzinfo=UTC)
    releases.sort(key=lambda r: (r.published_at is None, r.published_at or never, r.version))
    if serial is None:
        private = meta.get("_last-serial")
        serial = private if isinstance(private, int) else None
    status, reason = project_status(doc.get("project-status"))
    return PackageInfo(
        ecosystem=ECOSYSTEM,
        name=name,
        display_name=raw_name,
        releases=tuple(releases),
        serial=serial,
        status=status,
        status_reason=reason,
        # A quarantined project's page withholds its files: their absence is no removal.
        complete=status != "quarantined",
        extra={
            "api_version": api_version,
            "project_status": doc.get("project-status"),
            "unmatched_files": tuple(unmatched),
        },
    )


class PyPIIndexer(Indexer[PyPICursor]):
    """Follow PyPI's XML-RPC changelog and read PEP 691 JSON project pages.

    ``xmlrpc_url`` is the XML-RPC endpoint (``<pypi>/pypi``), ``simple_url`` the simple index
    root (``<pypi>/simple``). See :class:`PyPICursor` for the cursor semantics: call
    :meth:`changes` until a page is ``done``. Each change names a normalized project with the
    highest serial the page announced for it; pass the change as ``package(name, change=...)``
    so a CDN page older than the announcement raises ``StaleMetadata`` (retry later) instead of
    silently missing files. A removed project appears as a change with ``deleted`` set; its
    page then answers 404 (``PackageNotFound``).
    """

    ecosystem = ECOSYSTEM
    cursor_type = PyPICursor
    default_interval = timedelta(minutes=5)
    release_removed = "remove release"
    file_removed = "remove file"
    package_removed = REMOVE_PROJECT

    def __init__(self, client: httpx.AsyncClient, *, xmlrpc_url: str, simple_url: str) -> None:
        super().__init__(client)
        self.xmlrpc_url = xmlrpc_url
        self.simple_url = simple_url.rstrip("/")
        self._projects: list[tuple[str, int]] | None = None

    @staticmethod
    def normalize_name(name: str) -> str:
        return normalize(name)

    def project_url(self, name: str) -> str:
        """Return the simple-API page URL of a project (normalized, trailing slash)."""
        return f"{self.simple_url}/{normalize(name)}/"

    async def call(self, method: str, *params: Any) -> Any:
        """Call an XML-RPC method on ``xmlrpc_url`` and return its single result."""
        response = await self.request(
            "POST",
            self.xmlrpc_url,
            headers={"content-type": "text/xml"},
            content=encode_call(method, *params),
        )
        return decode_response(response.content, self.xmlrpc_url)

    async def head(self) -> int:
        """Return the newest journal serial (``changelog_last_serial``)."""
        serial = await self.call("changelog_last_serial")
        expect(isinstance(serial, int), self.xmlrpc_url, f"last serial {serial!r} is not an int")
        return int(serial)

    async def start_cursor(self) -> PyPICursor:
        """Start at the newest journal serial (``changelog_last_serial``)."""
        return PyPICursor(await self.head())

    @staticmethod
    def is_prerelease(version: str) -> bool:
        """PEP 440 via ``packaging``: alpha, beta, rc and dev releases; unparseable is not."""
        try:
            return Version(version).is_prerelease
        except InvalidVersion:
            return False

    async def cursor_at(self, position: str) -> PyPICursor:
        """``origin`` is serial 0, a number is that serial (the changelog is exclusive), a time
        is the serial just before the journal's first entry at or after it: XML-RPC
        ``changelog(since, with_ids=True)`` (Unix seconds, the rows' ids are their serials),
        else the newest serial when nothing is that recent."""
        where = parse_position(ECOSYSTEM, position)
        if not isinstance(where, datetime):
            return PyPICursor(where or 0)
        serials: list[Any] = []
        if where < datetime.now(UTC):  # XML-RPC ints are 32-bit: no asking about the future
            rows = await self.call("changelog", int(where.timestamp()), True)
            expect(isinstance(rows, list), self.xmlrpc_url, "changelog is not a list")
            serials = [row[4] for row in rows if isinstance(row, list | tuple) and len(row) == 5]
        if serials and all(isinstance(serial, int) for serial in serials):
            return PyPICursor(max(0, min(serials) - 1))
        last = await self.call("changelog_last_serial")
        expect(isinstance(last, int), self.xmlrpc_url, "changelog_last_serial is not an int")
        return PyPICursor(last)

    async def inventory(self, after: str | None) -> Inventory:
        """``list_packages_with_serial`` (every project and its last serial, as bandersnatch
        reads it), paged here by normalized name after ``after``: the registry answers it in
        one call, fetched once per indexer."""
        if self._projects is None:
            listing = await self.call("list_packages_with_serial")
            expect(isinstance(listing, dict), self.xmlrpc_url, "project list is not a struct")
            projects: dict[str, int] = {}
            for name, serial in listing.items():
                try:
                    key = normalize(str(name))
                except InvalidName as exc:
                    log.warning("skipping listed project: %s", exc)
                    continue
                if isinstance(serial, int):
                    projects[key] = max(serial, projects.get(key, serial))
            self._projects = sorted(projects.items())
        start = bisect.bisect_right(self._projects, after, key=_first) if after else 0
        page = self._projects[start : start + INVENTORY_PAGE]
        entries = tuple(InventoryEntry(Change(key, serial=serial), serial) for key, serial in page)
        last = page[-1][0] if page else after
        return Inventory(entries, last, done=start + INVENTORY_PAGE >= len(self._projects))

    async def changes(self, cursor: PyPICursor) -> Page[PyPICursor]:
        """One changelog page. Its ``head`` is ``changelog_last_serial`` (asked only after rows
        came: an empty page means no serial is newer than the cursor), its ``position_at`` the
        journal timestamp of the newest row."""
        rows = await self.call("changelog_since_serial", cursor.serial)
        changes, next_serial = parse_changelog(rows, since=cursor.serial, url=self.xmlrpc_url)
        log.debug(
            "pypi changelog since %d: %d rows, next %d", cursor.serial, len(rows), next_serial
        )
        return Page(
            changes=changes,
            cursor=PyPICursor(next_serial),
            done=not rows,
            head=await self.head() if rows else cursor.serial,
            position_at=_newest_timestamp(rows),
        )

    async def package(self, name: str, *, change: Change | None = None) -> PackageInfo:
        """Fetch and map a project's PEP 691 page; ``StaleMetadata`` below ``change.serial``.

        The page's serial is ``X-PyPI-Last-Serial`` (else ``meta._last-serial``); when the
        change carries a serial, a page without either counts as stale, as in bandersnatch.
        """
        min_serial = change.serial if change is not None else None
        key = normalize(name)
        url = self.project_url(key)
        response = await self.get(url, headers={"accept": SIMPLE_JSON}, not_found=(ECOSYSTEM, key))
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        expect(content_type == SIMPLE_JSON, url, f"expected {SIMPLE_JSON}, got {content_type!r}")
        try:
            doc = json.loads(response.content)
        except ValueError as exc:
            raise FeedError(redact(url), f"body is not JSON: {exc}") from exc
        header = response.headers.get(SERIAL_HEADER, "")
        info = map_simple_project(doc, url=url, serial=int(header) if header.isdigit() else None)
        if min_serial is not None and (info.serial is None or info.serial < min_serial):
            raise StaleMetadata(redact(url), min_serial, info.serial)
        return info


__all__ = [
    "ECOSYSTEM",
    "REMOVE_PROJECT",
    "SERIAL_HEADER",
    "SIMPLE_JSON",
    "PyPICursor",
    "PyPIIndexer",
    "decode_response",
    "encode_call",
    "map_simple_project",
    "normalize",
    "parse_changelog",
    "project_status",
]
