"""Server-rendered web pages: home (archive statistics and health per registry, recent
versions), search (names, purls, keys, CIDs, digests: :mod:`forage.server.finder`), one page
per package (purl, install commands through the mirror, every version's files with sizes,
digests in the registry's notation, CID, raw download, pins, piece and active deals), the
deals page, failed archives and the API reference (:mod:`forage.server.apidocs`).

Charts are inline SVG drawn on the server (:mod:`forage.server.charts`): no script, no CDN.

Pages are Jinja2 templates (``templates/``, autoescaped, undefined names are errors) over plain
values read by one session per request (pages never write), in a worker thread so the event
loop never waits on the database. Per-artifact queries come from :mod:`forage.lookup.query`, the
query layer the JSON API shares, so a page and ``/api/v1/lookup`` always agree. Input from the
URL is
bounded and checked before it reaches SQL (a NUL byte alone makes PostgreSQL fail); bad input
gets an HTML error page with a 4xx status, echoing nothing unescaped.

Jinja2: https://jinja.palletsprojects.com/en/stable/api/ ; aiohttp file responses:
https://docs.aiohttp.org/en/stable/web_reference.html#fileresponse
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.orm import Session, sessionmaker

from forage.archive.failures import failed_archives
from forage.db.engine import utcnow
from forage.db.models import (
    Archive,
    ArchiveStatus,
    Artifact,
    Deal,
    DealState,
    Package,
    Piece,
    Version,
)
from forage.filecoin.health import ArchiveHealth, archive_health
from forage.lookup.epochs import epoch_time, live_deal
from forage.lookup.keys import PLATFORMS, Key, unknown_ecosystem
from forage.lookup.normalize import normalize_name
from forage.lookup.query import load_artifacts
from forage.lookup.stats import archive_stats
from forage.lookup.views import ArtifactView
from forage.server import apidocs, finder
from forage.server.charts import BarChart
from forage.server.dashboards import expiry_chart, registry_health, replicas_chart
from forage.server.state import CONFIG, SESSIONMAKER
from indexers import ECOSYSTEMS, IndexerError

#: The Jinja2 environment of an application (set by :func:`setup`).
TEMPLATES = web.AppKey("templates", jinja2.Environment)
#: The files under ``static/`` by name: the only ones ``/static/`` serves.
STATIC = web.AppKey("static_files", dict[str, Path])

HERE = Path(__file__).parent
#: Versions per page of a package page, rows per page of the deals page.
VERSIONS_PER_PAGE = 20
DEALS_PER_PAGE = 50
FAILED_PER_PAGE = 50
RECENT_VERSIONS = 20
#: Under-replicated pieces listed on the home page (the deals page lists more).
UNDER_REPLICATED = 10
SEARCH_RESULTS = 50
#: Limits on what a URL may carry (package names are at most 1,024 characters in the schema).
MAX_QUERY_LENGTH = 200
MAX_NAME_LENGTH = 1024
MAX_ECOSYSTEM_LENGTH = 32
MAX_PAGE = 1_000_000


class _BadInput(Exception):
    """A URL parameter a page cannot use; answered with a 400 page naming the parameter."""


def _clean_text(value: str, what: str, *, limit: int) -> str:
    """``value`` stripped, refused if too long or holding control characters."""
    if len(value) > limit:
        raise _BadInput(f"{what} is longer than {limit} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise _BadInput(f"{what} contains control characters")
    return value.strip()


def _page_number(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise _BadInput(f"page must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


# -- template helpers ------------------------------------------------------------------------


def package_path(ecosystem: str, name: str) -> str:
    """The URL path of a package page; ``.`` and ``..`` segments are escaped so a browser
    never folds them away."""
    segments = [quote(part, safe="@:+") for part in name.split("/")]
    segments = [part.replace(".", "%2E") if part in (".", "..") else part for part in segments]
    return f"/packages/{quote(ecosystem, safe='')}/{'/'.join(segments)}"


def human_bytes(value: int | None) -> str:
    """``1536`` as ``1.5 KiB``: sizes people read at a glance (exact bytes go in a title)."""
    if value is None:
        return "-"
    if value < 1024:
        return f"{value} B"
    exponent = min(int(math.log(value, 1024)), 6)
    return f"{value / 1024**exponent:.1f} {'KMGTPE'[exponent - 1]}iB"


def duration(seconds: float | None) -> str:
    """``5400`` as ``1 h 30 min``: a feed's lag at a glance."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [(days, "d"), (hours, "h"), (minutes, "min")]
    return " ".join(f"{n} {unit}" for n, unit in parts if n)


def _epoch_time(epoch: int | None) -> datetime | None:
    return None if epoch is None else epoch_time(epoch)


def show_time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def safe_url(url: str | None) -> str | None:
    """``url`` if it is http(s), else ``None``: a ``javascript:`` link must never render."""
    if not url:
        return None
    return url if urlsplit(url).scheme in ("http", "https") else None


def digest_text(ecosystem: str, algorithm: str, value: str) -> str:
    """A stored digest as the registry's own tools print it (npm's SRI, hex elsewhere)."""
    registered = ECOSYSTEMS.get(ecosystem)
    return value if registered is None else registered.digest_notation(algorithm, value)


def raw_path(ecosystem: str, name: str, version: str, artifact: ArtifactView) -> str | None:
    """Where the mirror serves this file's bytes (``None`` for an unregistered ecosystem)."""
    registered = ECOSYSTEMS.get(ecosystem)
    if registered is None:
        return None
    routes = registered.mirror()
    return routes.file_path(name, version, artifact.filename, artifact.digests)


def make_environment() -> jinja2.Environment:
    """The template environment: autoescaping on for everything, undefined names fail."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["bytes"] = human_bytes
    env.filters["time"] = show_time
    env.filters["duration"] = duration
    env.filters["safe_url"] = safe_url
    env.globals["package_path"] = package_path
    env.globals["digest_text"] = digest_text
    env.globals["raw_path"] = raw_path
    return env


def render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    text = request.app[TEMPLATES].get_template(template).render(**context)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", status=status, status_code=status, message=message)


async def _read(request: web.Request, query: Any, *args: Any) -> Any:
    """Run ``query(session, *args)`` in a worker thread on a fresh session."""
    factory: sessionmaker[Session] = request.app[SESSIONMAKER]

    def run() -> Any:
        with factory() as session:
            return query(session, *args)

    return await asyncio.to_thread(run)


# -- queries ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecentVersion:
    ecosystem: str
    name: str
    number: str
    published_at: datetime | None
    artifacts: int
    archived: int


def recent_versions(session: Session, limit: int) -> list[RecentVersion]:
    """The versions indexed last, newest first, with how many of their files are archived."""
    latest = sa.select(Version.id).order_by(Version.id.desc()).limit(limit).subquery()
    archived = sa.case((Archive.status == ArchiveStatus.ARCHIVED, 1), else_=0)
    rows = session.execute(
        sa.select(
            Package.ecosystem,
            Package.name,
            Version.number,
            Version.published_at,
            sa.func.count(Artifact.id),
            sa.func.coalesce(sa.func.sum(archived), 0),
        )
        .join(latest, latest.c.id == Version.id)
        .join(Package, Package.id == Version.package_id)
        .outerjoin(Artifact, Artifact.version_id == Version.id)
        .outerjoin(Archive, Archive.artifact_id == Artifact.id)
        .group_by(Version.id, Package.ecosystem, Package.name, Version.number)
        .order_by(Version.id.desc())
    ).all()
    return [RecentVersion(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class SearchHit:
    ecosystem: str
    name: str
    versions: int


def search_packages(session: Session, text: str, ecosystem: str | None) -> list[SearchHit]:
    """Packages whose name contains ``text`` (case-insensitive, ``%`` and ``_`` literal):
    exact matches first, then prefixes, then shorter names."""
    needle = text.lower()
    name = sa.func.lower(Package.name)
    rank = sa.case((name == needle, 0), (name.startswith(needle, autoescape=True), 1), else_=2)
    versions = (
        sa.select(sa.func.count(Version.id))
        .where(Version.package_id == Package.id)
        .scalar_subquery()
    )
    statement = sa.select(Package.ecosystem, Package.name, versions).where(
        name.contains(needle, autoescape=True)
    )
    if ecosystem:
        statement = statement.where(Package.ecosystem == ecosystem)
    rows = session.execute(
        statement.order_by(
            rank, sa.func.length(Package.name), Package.name, Package.ecosystem
        ).limit(SEARCH_RESULTS)
    ).all()
    return [SearchHit(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class VersionFiles:
    """One version of a package page with its files (``ArtifactView``)."""

    number: str
    published_at: datetime | None
    yanked: bool
    deleted: bool
    deprecated: str | None
    artifacts: list[ArtifactView]
    removed_at: datetime | None = None
    removal: str | None = None
    purl: str = ""
    #: The command installing this version through Forage's mirror (``None``: no hint).
    install: str | None = None


@dataclass(frozen=True, slots=True)
class PackagePage:
    ecosystem: str
    name: str
    display_name: str | None
    deleted: bool
    last_synced: datetime | None
    version_count: int
    page: int
    pages: int
    versions: list[VersionFiles]
    status: str | None = None
    status_reason: str | None = None
    purl: str = ""


def find_package(session: Session, ecosystem: str, name: str) -> tuple[Package | None, str]:
    """The package as named, else under its registry's canonical name; also that name."""
    found = session.execute(
        sa.select(Package).where(Package.ecosystem == ecosystem, Package.name == name)
    ).scalar_one_or_none()
    if found is not None:
        return found, name
    try:
        canonical = normalize_name(ecosystem, name)
    except IndexerError:
        return None, name
    if canonical == name:
        return None, name
    found = session.execute(
        sa.select(Package).where(Package.ecosystem == ecosystem, Package.name == canonical)
    ).scalar_one_or_none()
    return found, canonical


def package_page(
    session: Session, ecosystem: str, name: str, page: int, now: datetime, base_url: str
) -> PackagePage | str | None:
    """One page of a package's versions, newest first, each with all its files; the
    canonical name (a string) when the package is known under another spelling; ``None``
    when it is not known at all."""
    package, canonical = find_package(session, ecosystem, name)
    if package is None:
        return None
    if canonical != name:
        return canonical
    count = session.execute(
        sa.select(sa.func.count()).where(Version.package_id == package.id)
    ).scalar_one()
    versions = (
        session.execute(
            sa.select(Version)
            .where(Version.package_id == package.id)
            .order_by(Version.published_at.desc().nulls_last(), Version.id.desc())
            .limit(VERSIONS_PER_PAGE)
            .offset((page - 1) * VERSIONS_PER_PAGE)
        )
        .scalars()
        .all()
    )
    files = load_artifacts(session, version_ids=[v.id for v in versions], now=now)
    registered = ECOSYSTEMS.get(package.ecosystem)
    hint = None if registered is None else registered.install_hint
    return PackagePage(
        ecosystem=package.ecosystem,
        name=package.name,
        display_name=package.display_name,
        deleted=package.deleted,
        last_synced=package.last_synced,
        version_count=int(count),
        page=page,
        pages=max(1, -(-int(count) // VERSIONS_PER_PAGE)),
        versions=[
            VersionFiles(
                v.number,
                v.published_at,
                v.yanked,
                v.deleted,
                v.deprecated,
                files.get(v.id, []),
                v.removed_at,
                v.removal,
                Key(package.ecosystem, package.name, v.number).purl(),
                None if hint is None else hint(base_url, package.name, v.number),
            )
            for v in versions
        ],
        status=package.status,
        status_reason=package.status_reason,
        purl=Key(package.ecosystem, package.name, None).purl(),
    )


@dataclass(frozen=True, slots=True)
class DealRow:
    deal_id: str
    source: str
    provider: str
    state: str
    piece_cid: str
    start_epoch: int | None
    end_epoch: int | None
    #: Dates the deal source recorded; else the mainnet times of the epochs.
    start_at: datetime | None
    end_at: datetime | None
    active: bool


@dataclass(frozen=True, slots=True)
class DealsPage:
    by_state: dict[str, int]
    deals: list[DealRow]
    page: int
    pages: int
    state: str | None
    health: ArchiveHealth
    replicas_chart: BarChart
    expiry_chart: BarChart


def deals_page(
    session: Session, state: str | None, page: int, now: datetime, min_replicas: int
) -> DealsPage:
    """Deals by state, one page of deals (newest first), and the archive's health with the
    pieces that have fewer active deals than ``min_replicas``."""
    by_state = dict.fromkeys((member.value for member in DealState), 0)
    for value, count in session.execute(
        sa.select(Deal.state, sa.func.count()).group_by(Deal.state)
    ):
        by_state[DealState(value).value] = int(count)
    statement = sa.select(
        Deal.deal_id,
        Deal.source,
        Deal.provider,
        Deal.state,
        Piece.piece_cid,
        Deal.start_epoch,
        Deal.end_epoch,
        Deal.start_at,
        Deal.end_at,
        live_deal(now),
    ).join(Piece, Piece.id == Deal.piece_id)
    if state is not None:
        statement = statement.where(Deal.state == state)
    rows = session.execute(
        statement.order_by(Deal.id.desc()).limit(DEALS_PER_PAGE).offset((page - 1) * DEALS_PER_PAGE)
    )
    deals = [
        DealRow(
            deal_id=row[0],
            source=row[1],
            provider=row[2],
            state=DealState(row[3]).value,
            piece_cid=row[4],
            start_epoch=row[5],
            end_epoch=row[6],
            start_at=row[7] or _epoch_time(row[5]),
            end_at=row[8] or _epoch_time(row[6]),
            active=bool(row[9]),
        )
        for row in rows
    ]
    total = sum(by_state.values()) if state is None else by_state[state]
    health = archive_health(session, min_replicas=min_replicas, limit=DEALS_PER_PAGE)
    return DealsPage(
        by_state=by_state,
        deals=deals,
        page=page,
        pages=max(1, -(-total // DEALS_PER_PAGE)),
        state=state,
        health=health,
        replicas_chart=replicas_chart(health),
        expiry_chart=expiry_chart(session, now),
    )


def home_page(session: Session, min_replicas: int) -> dict[str, Any]:
    registries, files_chart = registry_health(session)
    return {
        "stats": archive_stats(session),
        "health": archive_health(session, min_replicas=min_replicas, limit=UNDER_REPLICATED),
        "recent": recent_versions(session, RECENT_VERSIONS),
        "registries": registries,
        "files_chart": files_chart,
    }


# -- handlers --------------------------------------------------------------------------------


async def home(request: web.Request) -> web.Response:
    """``GET /``: archive statistics, health and the versions indexed last."""
    min_replicas = request.app[CONFIG].filecoin.min_replicas
    context = await _read(request, home_page, min_replicas)
    return render(request, "home.html", **context)


async def search(request: web.Request) -> web.Response:
    """``GET /search?q=TEXT[&ecosystem=E]``: a purl or key goes to its package page; a CID or
    a digest lists the archived files with those bytes; names containing ``TEXT`` follow."""
    try:
        text = _clean_text(request.query.get("q", ""), "the search text", limit=MAX_QUERY_LENGTH)
        ecosystem = _clean_text(
            request.query.get("ecosystem", ""), "ecosystem", limit=MAX_ECOSYSTEM_LENGTH
        )
    except _BadInput as exc:
        return error_page(request, 400, str(exc))
    key = finder.as_key(text) if text else None
    if key is not None:
        anchor = "" if key.version is None else "#v-" + quote(key.version, safe="")
        raise web.HTTPFound(package_path(key.ecosystem, key.name) + anchor)
    files = await _read(request, finder.find_files, text, utcnow()) if text else None
    ecosystem = PLATFORMS.get(ecosystem.lower(), ecosystem)
    hits = await _read(request, search_packages, text, ecosystem or None) if text else []
    return render(request, "search.html", query=text, ecosystem=ecosystem, hits=hits, files=files)


async def package(request: web.Request) -> web.Response:
    """``GET /packages/{ecosystem}/{name}``: every version's files, newest first, paged."""
    ecosystem = request.match_info["ecosystem"]
    name = request.match_info["name"]
    try:
        ecosystem = _clean_text(ecosystem, "ecosystem", limit=MAX_ECOSYSTEM_LENGTH)
        name = _clean_text(name, "package name", limit=MAX_NAME_LENGTH)
        page = _page_number(request)
    except _BadInput as exc:
        return error_page(request, 400, str(exc))
    canonical = PLATFORMS.get(ecosystem.lower())
    if canonical is None:
        return error_page(request, 404, unknown_ecosystem(ecosystem))
    if canonical != ecosystem:
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPMovedPermanently(package_path(canonical, name) + query)
    base_url = request.app[CONFIG].mirror.public_url or f"{request.scheme}://{request.host}"
    found = await _read(
        request, package_page, ecosystem, name, page, utcnow(), base_url.rstrip("/")
    )
    if found is None:
        return error_page(request, 404, f"no {ecosystem} package named {name[:200]!r} is indexed")
    if isinstance(found, str):
        raise web.HTTPMovedPermanently(package_path(ecosystem, found))
    if page > found.pages:
        return error_page(request, 404, f"{name} has only {found.pages} page(s) of versions")
    return render(request, "package.html", package=found)


async def deals(request: web.Request) -> web.Response:
    """``GET /deals[?state=S&page=N]``: deals, their pieces and the archive's replication."""
    try:
        page = _page_number(request)
        state = request.query.get("state") or None
        if state is not None and state not in {member.value for member in DealState}:
            raise _BadInput(f"state must be one of {', '.join(m.value for m in DealState)}")
    except _BadInput as exc:
        return error_page(request, 400, str(exc))
    min_replicas = request.app[CONFIG].filecoin.min_replicas
    view = await _read(request, deals_page, state, page, utcnow(), min_replicas)
    return render(request, "deals.html", view=view)


async def failed(request: web.Request) -> web.Response:
    """``GET /failed[?page=N]``: failed archives with their reasons, bad bytes marked."""
    try:
        page = _page_number(request)
    except _BadInput as exc:
        return error_page(request, 400, str(exc))
    view = await _read(
        request, lambda session: failed_archives(session, page=page, per_page=FAILED_PER_PAGE)
    )
    if page > view.pages:
        return error_page(request, 404, f"there are only {view.pages} page(s) of failures")
    jobs = request.app[CONFIG].jobs
    backoff, attempts = jobs.mismatch_backoff, jobs.mismatch_attempts
    return render(request, "failed.html", view=view, backoff=backoff, attempts=attempts)


async def api_docs(request: web.Request) -> web.Response:
    """``GET /docs`` (and ``/api/docs``): the API reference, rendered from ``openapi.json``."""
    return render(request, "api_docs.html", ref=apidocs.reference())


async def static_file(request: web.Request) -> web.FileResponse:
    """``GET /static/{name}``: one of the files shipped in ``static/``, found by name in a
    table made at start-up, so no path a client sends reaches the filesystem (aiohttp's own
    static route answered a 500 for a name longer than the OS allows)."""
    path = request.app[STATIC].get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound(text="static file not found")
    return web.FileResponse(path)


def setup(app: web.Application) -> None:
    """Add the pages, their stylesheet and the template environment."""
    app[TEMPLATES] = make_environment()
    app.router.add_get("/", home, name="home")
    app.router.add_get("/search", search, name="search")
    app.router.add_get("/packages/{ecosystem}/{name:.+}", package, name="package")
    app.router.add_get("/deals", deals, name="deals")
    app.router.add_get("/failed", failed, name="failed")
    app.router.add_get("/docs", api_docs, name="api_docs")
    app.router.add_get("/api/docs", api_docs)
    app[STATIC] = {path.name: path for path in (HERE / "static").iterdir() if path.is_file()}
    app.router.add_get("/static/{name}", static_file, name="static")
