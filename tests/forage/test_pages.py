"""The web pages, served over real HTTP on loopback from a real database (SQLite and
PostgreSQL) whose archives were imported for real into a filesystem blockstore."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session

from forage.config import Config
from forage.db.engine import make_engine, make_sessionmaker, utcnow
from forage.db.models import Archive, ArchiveStatus, Artifact, DealState
from forage.lookup.epochs import current_epoch, epoch_time
from forage.server.app import make_app
from forage.server.pages import human_bytes, package_path
from indexers.fakeserver import serve
from storage import FilesystemBlockstore, MemoryBlockstore, import_file, read_car, read_file
from tests import factories

#: The end date a deal source recorded for one deal (shown instead of the epoch's date).
RECORDED_END = datetime(2031, 5, 6, 7, 8, tzinfo=UTC)
HOSTILE_NAME = '"><script>window.__pwned = 1</script><img src=x onerror=alert(1)>'


# -- reading HTML ------------------------------------------------------------------------------


@dataclass
class Element:
    """A parsed element: its text and child elements in document order (``parts``)."""

    tag: str
    attrs: dict[str, str]
    parts: list[str | Element] = field(default_factory=list)

    @property
    def children(self) -> list[Element]:
        return [part for part in self.parts if isinstance(part, Element)]

    def iter(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Element]:
        return [
            e
            for e in self.iter()
            if (tag is None or e.tag == tag)
            and (cls is None or cls in e.attrs.get("class", "").split())
        ]

    def by_id(self, ident: str) -> Element:
        (found,) = [e for e in self.iter() if e.attrs.get("id") == ident]
        return found

    @property
    def all_text(self) -> str:
        """The text content, whitespace collapsed (like ``textContent``, trimmed)."""
        texts = (part if isinstance(part, str) else part.all_text for part in self.parts)
        return " ".join(" ".join(texts).split())


_VOID = {"meta", "link", "input", "img", "br", "hr"}


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].parts.append(element)
        if tag not in _VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].parts.append(data)


def parse_html(text: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


# -- the archive under test ------------------------------------------------------------------


@dataclass
class Archive_:
    """What the fixture built, for assertions."""

    bytes_archived: int
    bytes_in_pieces: int
    bytes_in_deals: int
    left_pad_cids: dict[str, str]
    sample_cids: dict[str, str]
    piece_cid: str
    bare_piece_cid: str
    active_deal_ids: list[str]
    expired_deal_id: str
    contents: dict[str, bytes]


def archive_artifact(
    session: Session, store: FilesystemBlockstore, artifact: Artifact, contents: dict[str, bytes]
) -> Archive:
    """Import the artifact's bytes for real and record the archive row with their CID."""
    data = factories.artifact_content(artifact)
    result = import_file(data, sink=store)
    contents[str(result.cid)] = data
    return factories.make_archive(session, artifact=artifact, cid=str(result.cid), size=len(data))


def build_archive(session: Session, store: FilesystemBlockstore) -> Archive_:
    contents: dict[str, bytes] = {}
    many = factories.make_package(session, ecosystem="npm", name="many")
    for index in range(45):
        published = factories.EPOCH + timedelta(days=index)
        factories.make_version(session, package=many, number=f"1.0.{index}", published_at=published)
    left_pad = factories.make_package(session, ecosystem="npm", name="left-pad")
    left_pad_cids = {}
    for number in ("1.0.0", "1.1.0"):
        version = factories.make_version(session, package=left_pad, number=number)
        artifact = factories.make_artifact(session, version=version)
        archive = archive_artifact(session, store, artifact, contents)
        factories.make_pin(session, archive=archive, backend="kubo")
        left_pad_cids[number] = str(archive.cid)

    sample = factories.make_package(
        session, ecosystem="pypi", name="sampleproject", display_name="SampleProject"
    )
    version = factories.make_version(session, package=sample, number="3.0.0")
    sdist = factories.make_artifact(
        session, version=version, filename="sampleproject-3.0.0.tar.gz", kind="sdist"
    )
    wheel = factories.make_artifact(
        session,
        version=version,
        filename="sampleproject-3.0.0-py3-none-any.whl",
        kind="bdist_wheel",
    )
    wheel.url = "javascript:alert(1)"
    sdist_archive = archive_artifact(session, store, sdist, contents)
    wheel_archive = archive_artifact(session, store, wheel, contents)
    factories.make_archive(
        session,
        artifact=factories.make_artifact(session, version=version, filename="pending.zip"),
        status=ArchiveStatus.PENDING,
    )
    now_epoch = current_epoch(utcnow())
    piece = factories.make_piece(session, archives=[sdist_archive])
    bare_piece = factories.make_piece(session, archives=[wheel_archive])
    active = [
        factories.make_deal(
            session, piece=piece, provider=provider, end_epoch=now_epoch + 1_000_000, **dates
        )
        for provider, dates in (("f01111", {"end_at": RECORDED_END}), ("f02222", {}))
    ]
    expired = factories.make_deal(
        session,
        piece=piece,
        provider="f09999",
        state=DealState.EXPIRED,
        start_epoch=100,
        end_epoch=200,
    )
    factories.make_package(session, ecosystem="golang", name="github.com/pkg/errors")
    factories.make_package(session, ecosystem="npm", name=HOSTILE_NAME)
    factories.make_package(session, ecosystem="npm", name="100%_done")
    session.commit()
    sizes = {cid: len(data) for cid, data in contents.items()}
    return Archive_(
        bytes_archived=sum(sizes.values()),
        bytes_in_pieces=sizes[str(sdist_archive.cid)] + sizes[str(wheel_archive.cid)],
        bytes_in_deals=sizes[str(sdist_archive.cid)],
        left_pad_cids=left_pad_cids,
        sample_cids={"sdist": str(sdist_archive.cid), "wheel": str(wheel_archive.cid)},
        piece_cid=piece.piece_cid,
        bare_piece_cid=bare_piece.piece_cid,
        active_deal_ids=[deal.deal_id for deal in active],
        expired_deal_id=expired.deal_id,
        contents=contents,
    )


@dataclass
class Site:
    url: str
    client: httpx.AsyncClient
    archive: Archive_

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(self.url + path, **kwargs)

    async def page(self, path: str, status: int = 200) -> Element:
        response = await self.get(path)
        assert response.status_code == status, response.text[:500]
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        return parse_html(response.text)


@pytest.fixture(scope="module")
def built(db_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Archive_, Path]:
    """The archive, built once per module and store (pages only read it)."""
    blocks = tmp_path_factory.mktemp("blocks")
    with make_sessionmaker(db_engine)() as session:
        archive = build_archive(session, FilesystemBlockstore(blocks, durable=False))
    return archive, blocks


@pytest.fixture
async def site(
    db_engine: Any, built: tuple[Archive_, Path], http_client: httpx.AsyncClient
) -> AsyncIterator[Site]:
    archive, blocks = built
    store = FilesystemBlockstore(blocks, durable=False)
    app = make_app(Config(), sessionmaker=make_sessionmaker(db_engine), blockstore=store)
    async with serve(app) as running:
        yield Site(running.url, http_client, archive)


# -- home ------------------------------------------------------------------------------------


async def test_home_reports_counts_bytes_and_replicas(site: Site) -> None:
    """The home page counts what the fixture built and reports bytes archived, in pieces and
    in active deals, and how many pieces have each number of active deals."""
    doc = await site.page("/")
    assert doc.by_id("stat-packages").all_text == "6"
    assert doc.by_id("stat-versions").all_text == "48"
    assert doc.by_id("stat-artifacts").all_text == "5"
    assert doc.by_id("stat-archived").all_text == "4"
    expected = {
        "stat-archived-bytes": site.archive.bytes_archived,
        "stat-piece-bytes": site.archive.bytes_in_pieces,
        "stat-deal-bytes": site.archive.bytes_in_deals,
    }
    for ident, value in expected.items():
        element = doc.by_id(ident)
        assert element.attrs["data-bytes"] == str(value)
        assert element.all_text == human_bytes(value)
    assert site.archive.bytes_in_deals < site.archive.bytes_in_pieces
    replicas = {
        row.attrs["data-replicas"]: row.find_all("td")[1].all_text
        for row in doc.by_id("replicas").find_all("tr")
        if "data-replicas" in row.attrs
    }
    assert replicas == {"0": "1", "2": "1"}  # the expired deal is no replica
    # Both pieces have fewer than filecoin.min_replicas (3 by default) active deals.
    assert doc.by_id("under-replicated-count").all_text == "2"
    listed = [c.all_text for c in doc.by_id("under-replicated").find_all("code", "piece-cid")]
    assert listed == [site.archive.bare_piece_cid, site.archive.piece_cid]


async def test_home_lists_recent_versions_linking_to_package_pages(site: Site) -> None:
    """The 20 versions indexed last, newest first, each linking to its package page."""
    doc = await site.page("/")
    links = {a.all_text: a.attrs["href"] for a in doc.by_id("recent").find_all("a")}
    assert links == {
        "left-pad": "/packages/npm/left-pad",
        "sampleproject": "/packages/pypi/sampleproject",
        "many": "/packages/npm/many",
    }
    rows = [row.all_text for row in doc.by_id("recent").find_all("tr")[1:]]
    assert len(rows) == 20
    assert rows[0].startswith("pypi sampleproject 3.0.0")
    assert rows[0].endswith("2 / 3")  # two of its three files archived
    assert rows[1].startswith("npm left-pad 1.1.0")
    assert rows[3].startswith("npm many 1.0.44")


async def test_empty_archive_home_page(tmp_path: Path, http_client: httpx.AsyncClient) -> None:
    """A fresh installation renders its home page (zeros, no pieces) rather than failing."""
    from forage.db.engine import upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    upgrade(engine)
    app = make_app(
        Config(),
        sessionmaker=make_sessionmaker(engine),
        blockstore=FilesystemBlockstore(tmp_path / "b", durable=False),
    )
    async with serve(app) as running:
        response = await http_client.get(running.url + "/")
    engine.dispose()
    assert response.status_code == 200
    doc = parse_html(response.text)
    assert doc.by_id("stat-packages").all_text == "0"
    assert "No pieces yet." in doc.by_id("replicas").all_text
    assert "Nothing indexed yet" in doc.by_id("recent").all_text


# -- search ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("left", ["left-pad"]),
        ("PAD", ["left-pad"]),
        ("pkg/err", ["github.com/pkg/errors"]),
        ("%", ["100%_done"]),
        ("_", ["100%_done", HOSTILE_NAME]),
        ("e", ["left-pad", "100%_done", "sampleproject", "github.com/pkg/errors", HOSTILE_NAME]),
        ("MAN", ["many"]),
        ("no-such-thing", []),
    ],
)
async def test_search_finds_packages_by_part_of_their_name(
    site: Site, query: str, expected: list[str]
) -> None:
    """Case-insensitive substring search in which % and _ are literal characters; exact
    matches, then prefixes, then shorter names first; the box keeps the text searched."""
    doc = await site.page("/search?" + str(httpx.QueryParams({"q": query})))
    names = [a.all_text for a in doc.find_all("a", "package-link")]
    assert names == expected
    search_box = doc.by_id("search-q")
    assert search_box.attrs["value"] == query


async def test_search_ranks_exact_then_prefix_and_filters_by_ecosystem(site: Site) -> None:
    doc = await site.page("/search?q=s")
    names = [a.all_text for a in doc.find_all("a", "package-link")]
    assert names.index("sampleproject") < names.index("github.com/pkg/errors")
    doc = await site.page("/search?q=s&ecosystem=golang")
    assert [a.all_text for a in doc.find_all("a", "package-link")] == ["github.com/pkg/errors"]


async def test_empty_search_prompts(site: Site) -> None:
    doc = await site.page("/search?q=")
    assert doc.find_all("a", "package-link") == []
    assert "Type part of a package name" in doc.all_text


# -- package pages ---------------------------------------------------------------------------


async def test_package_page_shows_every_version_with_files_and_cids(site: Site) -> None:
    doc = await site.page("/packages/npm/left-pad")
    assert doc.by_id("package-name").all_text == "left-pad"
    for number, cid in site.archive.left_pad_cids.items():
        section = doc.by_id(f"v-{number}")
        assert [c.all_text for c in section.find_all("code", "cid")] == [cid]
        assert f"left-pad-{number}.tgz" in section.all_text
        assert "kubo: pinned" in section.all_text
        car_links = [a.attrs["href"] for a in section.find_all("a") if a.all_text == "CAR"]
        assert car_links == [f"/ipfs/{cid}?format=car"]


async def test_package_page_shows_piece_and_active_deals_per_artifact(site: Site) -> None:
    """Per artifact: the piece holding it and its active deals with provider and expiry;
    an expired deal is not shown; a file in a piece without deals says so; a pending file
    says it has no archive yet."""
    doc = await site.page("/packages/pypi/sampleproject")
    rows = {
        row.find_all("td")[0].all_text.split()[0]: row for row in doc.find_all("tr", "artifact")
    }
    assert set(rows) == {
        "pending.zip",
        "sampleproject-3.0.0-py3-none-any.whl",
        "sampleproject-3.0.0.tar.gz",
    }
    sdist = rows["sampleproject-3.0.0.tar.gz"]
    assert [c.all_text for c in sdist.find_all("code", "piece-cid")] == [site.archive.piece_cid]
    deals = [li.all_text for li in sdist.find_all("li", "deal")]
    assert len(deals) == 2
    for deal_id, provider in zip(site.archive.active_deal_ids, ("f01111", "f02222"), strict=True):
        (text,) = [d for d in deals if f"deal {deal_id} " in d]
        assert provider in text
        assert "until 20" in text
    assert site.archive.expired_deal_id not in sdist.all_text
    assert "f09999" not in doc.all_text
    wheel = rows["sampleproject-3.0.0-py3-none-any.whl"]
    assert [c.all_text for c in wheel.find_all("code", "piece-cid")] == [
        site.archive.bare_piece_cid
    ]
    assert "no active deal" in wheel.all_text
    pending = rows["pending.zip"]
    assert pending.find_all("code", "cid") == []
    assert "pending" in pending.all_text
    assert "not in a piece yet" in pending.all_text


async def test_deal_expiry_is_the_recorded_end_date_else_the_end_epoch(site: Site) -> None:
    """A deal's expiry is the end date its source recorded; without one, the mainnet time of
    its end epoch."""
    doc = await site.page("/packages/pypi/sampleproject")
    recorded, derived = (
        next(li.all_text for li in doc.find_all("li", "deal") if f"deal {deal_id} " in li.all_text)
        for deal_id in site.archive.active_deal_ids
    )
    assert recorded.endswith("until 2031-05-06 07:08 UTC")
    end_epoch = current_epoch(utcnow()) + 1_000_000
    expected = {epoch_time(end_epoch + delta).strftime("%Y-%m-%d") for delta in (-100, 0)}
    assert any(f"until {day}" in derived for day in expected)
    deals = await site.page("/deals?state=active")
    (row,) = [r for r in deals.find_all("tr", "deal") if "f01111" in r.all_text]
    assert "2031-05-06 07:08 UTC" in row.all_text


async def test_download_links_are_http_only(site: Site) -> None:
    """A file whose recorded URL is javascript: is shown without a link."""
    doc = await site.page("/packages/pypi/sampleproject")
    hrefs = [a.attrs.get("href", "") for a in doc.find_all("a")]
    assert not any(href.lower().startswith("javascript") for href in hrefs)
    assert "https://registry.invalid/sampleproject/-/sampleproject-3.0.0.tar.gz" in hrefs


async def test_car_link_on_the_package_page_returns_the_archived_bytes(site: Site) -> None:
    """Following a file's CAR link through the gateway yields a CAR from which the client
    rebuilds exactly the archived bytes."""
    doc = await site.page("/packages/npm/left-pad")
    (link,) = [a for a in doc.by_id("v-1.1.0").find_all("a") if a.all_text == "CAR"]
    response = await site.get(link.attrs["href"])
    assert response.status_code == 200
    cid = site.archive.left_pad_cids["1.1.0"]
    memory = MemoryBlockstore()
    reader = read_car(io.BytesIO(response.content))
    for block in reader:
        memory.put(block)
    assert b"".join(read_file(memory, reader.roots[0])) == site.archive.contents[cid]


async def test_package_names_with_slashes_and_pep503_redirect(site: Site) -> None:
    """A Go module path is one package page; a PyPI name in another spelling redirects to
    the PEP 503 normalized one."""
    doc = await site.page("/packages/golang/github.com/pkg/errors")
    assert doc.by_id("package-name").all_text == "github.com/pkg/errors"
    response = await site.get("/packages/pypi/SampleProject", follow_redirects=False)
    assert response.status_code == 301
    assert response.headers["location"] == "/packages/pypi/sampleproject"


async def test_package_versions_are_paged(site: Site) -> None:
    """45 versions show 20 per page, newest first; a page past the end is a 404 page."""
    first = await site.page("/packages/npm/many")
    titles = [s.attrs["id"] for s in first.find_all("section", "version")]
    assert titles == [f"v-1.0.{i}" for i in range(44, 24, -1)]
    last = await site.page("/packages/npm/many?page=3")
    assert [s.attrs["id"] for s in last.find_all("section", "version")] == [
        f"v-1.0.{i}" for i in range(4, -1, -1)
    ]
    assert "page 3 of 3" in last.all_text
    await site.page("/packages/npm/many?page=4", status=404)


# -- hostile input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/packages/npm/..%2F..%2Fetc%2Fpasswd", 404),
        ("/packages/npm/a/%2E%2E/%2E%2E/b", 404),
        ("/packages/npm/%00", 400),
        ("/packages/npm/left-pad%00", 400),
        ("/packages/%00/x", 400),
        ("/packages/npm/" + "a" * 5000, 400),
        ("/packages/" + "e" * 100 + "/x", 400),
        ("/packages/npm/%3Cscript%3Ealert(1)%3C%2Fscript%3E", 404),
        ("/packages/npm/left-pad?page=-1", 400),
        ("/packages/npm/left-pad?page=1e9", 400),
        ("/packages/npm/left-pad?page=%00", 400),
        ("/packages/npm/left-pad?page=" + "9" * 400, 400),
        ("/search?q=%00", 400),
        ("/search?q=" + "x" * 5000, 400),
        ("/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", 200),
        ("/search?q=a&ecosystem=%00", 400),
        ("/deals?state=%3Cscript%3E", 400),
        ("/deals?page=0", 400),
    ],
)
async def test_hostile_input_is_a_clean_4xx_that_reflects_nothing_raw(
    site: Site, path: str, status: int
) -> None:
    """Traversal, NUL bytes (which PostgreSQL refuses outright), huge names and markup never
    reach a 500; the error page escapes whatever it echoes."""
    response = await site.get(path)
    assert response.status_code == status
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    body = response.text
    assert "<script>alert" not in body
    assert "\x00" not in body and "\0" not in body
    if status >= 400:
        assert parse_html(body).by_id("error-message").all_text


async def test_hostile_package_name_renders_escaped(site: Site) -> None:
    """A stored name full of markup appears as text on the search and package pages and
    never as markup."""
    search = await site.get("/search?q=pwned")
    assert search.status_code == 200
    assert "<script>" not in search.text
    (link,) = parse_html(search.text).find_all("a", "package-link")
    assert link.all_text == HOSTILE_NAME
    page = await site.get(link.attrs["href"])
    assert page.status_code == 200
    assert "<script>" not in page.text and "<img" not in page.text
    assert parse_html(page.text).by_id("package-name").all_text == HOSTILE_NAME


def test_package_paths_escape_what_a_browser_would_rewrite() -> None:
    assert package_path("npm", "@scope/name") == "/packages/npm/@scope/name"
    assert package_path("npm", "../x") == "/packages/npm/%2E%2E/x"
    assert package_path("npm", "a?b#c d") == "/packages/npm/a%3Fb%23c%20d"
    assert (
        package_path("golang", "github.com/pkg/errors") == "/packages/golang/github.com/pkg/errors"
    )


# -- deals -----------------------------------------------------------------------------------


async def test_deals_page_lists_deals_pieces_and_replication(site: Site) -> None:
    doc = await site.page("/deals")
    rows = doc.by_id("deals").find_all("tr", "deal")
    assert len(rows) == 3
    active = [row for row in rows if "active" in row.attrs["class"].split()]
    assert sorted(row.find_all("td")[1].all_text for row in active) == ["f01111", "f02222"]
    pieces = doc.by_id("pieces").find_all("tr", "piece")
    assert [(p.find_all("code")[0].all_text, p.find_all("td")[4].all_text) for p in pieces] == [
        (site.archive.bare_piece_cid, "0"),
        (site.archive.piece_cid, "2"),
    ]
    assert pieces[1].find_all("td")[5].all_text == "f01111, f02222"
    filtered = await site.page("/deals?state=expired")
    (row,) = filtered.by_id("deals").find_all("tr", "deal")
    assert "f09999" in row.all_text
    assert "2020-08-24" in row.all_text  # epoch 100 is minutes after mainnet genesis


async def test_stylesheet_is_served(site: Site) -> None:
    response = await site.get("/static/forage.css")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert "form.search" in response.text
    assert (await site.get("/static/../pages.py")).status_code in (403, 404)


# -- archive health at a glance, package details, search by anything, API reference --------


def _chart_rows(doc: Element, ident: str) -> dict[str, dict[str, int]]:
    """A chart's rows: label -> {series: value} of the bars drawn (zero segments are not)."""
    return {
        row.attrs["data-label"]: {
            rect.attrs["data-series"]: int(rect.attrs["data-value"])
            for rect in row.find_all("rect")
        }
        for row in doc.by_id(ident).find_all("g", "row")
    }


async def test_home_charts_each_registry_s_files_and_lists_feed_lag(site: Site) -> None:
    """One bar per registry, stacked archived/pending/failed/removed, summing to the files
    known; the longest bar spans the bar area; the table beside it has the same figures."""
    doc = await site.page("/")
    rows = _chart_rows(doc, "files-chart")
    assert rows["npm"] == {"archived": 2}
    assert rows["pypi"] == {"archived": 2, "pending": 1}
    assert rows["golang"] == {}
    pypi = [
        g for g in doc.by_id("files-chart").find_all("g", "row") if g.attrs["data-label"] == "pypi"
    ]
    widths = [float(rect.attrs["width"]) for rect in pypi[0].find_all("rect")]
    assert sum(widths) == pytest.approx(420)  # the largest row spans the whole bar area
    assert widths[0] == pytest.approx(280)
    table = {row.attrs["data-registry"]: row for row in doc.by_id("registries").find_all("tr")[1:]}
    assert set(table) >= {"npm", "pypi", "golang", "cargo", "gem", "composer", "maven"}
    assert table["pypi"].find_all("td", "known")[0].all_text == "3"
    assert table["pypi"].find_all("td", "pending")[0].all_text == "1"
    assert table["npm"].find_all("td", "lag")[0].all_text == "not watched"
    assert doc.by_id("stat-pins").all_text == "2"
    assert doc.by_id("stat-deals").all_text == "2"


async def test_deals_page_charts_replicas_and_expiry(site: Site) -> None:
    """Pieces by active deals (under-replicated ones marked) and active deals by the month
    they end: the recorded end date for one, the end epoch's date for the other."""
    doc = await site.page("/deals")
    assert _chart_rows(doc, "replicas-chart") == {
        "0 active deal(s)": {"under": 1},
        "2 active deal(s)": {"under": 1},
    }
    expiry = _chart_rows(doc, "expiry-chart")
    epoch_end = epoch_time(current_epoch(utcnow()) + 1_000_000)
    assert expiry[epoch_end.strftime("%Y-%m")] == {"deals": 1}
    # 2031-05 is more than 24 months past the first expiry: summed in the last row.
    labels = list(expiry)
    assert len(labels) == 24 and labels[-1] == "later" and expiry["later"] == {"deals": 1}
    assert labels[1] > labels[0]  # months in order, empty ones kept as gaps
    assert sum(sum(v.values()) for v in expiry.values()) == 2  # the expired deal is not shown


async def test_package_page_shows_purl_install_digests_and_raw_download(site: Site) -> None:
    """The purl of the package and each version, the install command through this server's
    mirror, npm's sha512 as SRI (hex for sha1 and for PyPI), and a download link that serves
    the archived bytes."""
    import base64
    import hashlib

    doc = await site.page("/packages/npm/left-pad")
    assert doc.by_id("package-purl").all_text == "purl pkg:npm/left-pad"
    section = doc.by_id("v-1.1.0")
    assert section.find_all("code", "purl")[0].all_text == "pkg:npm/left-pad@1.1.0"
    (install,) = section.find_all("pre", "install")
    assert install.all_text == f"npm install --registry {site.url}/npm/ left-pad@1.1.0"
    cid = site.archive.left_pad_cids["1.1.0"]
    data = site.archive.contents[cid]
    digests = {
        div.attrs["data-algorithm"]: div.find_all("code")[0].all_text
        for div in section.find_all("div", "digest")
    }
    sri = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    assert digests["sha512"] == sri
    assert digests["sha1"] == hashlib.sha1(data, usedforsecurity=False).hexdigest()
    (raw,) = section.find_all("a", "raw")
    assert raw.attrs["href"].startswith("/npm/left-pad/-/")
    response = await site.get(raw.attrs["href"])
    assert response.status_code == 200
    assert response.content == data
    doc = await site.page("/packages/pypi/sampleproject")
    install = doc.by_id("v-3.0.0").find_all("pre", "install")[0].all_text
    assert install == f"pip install --index-url {site.url}/pypi/simple/ sampleproject==3.0.0"
    sdist = site.archive.contents[site.archive.sample_cids["sdist"]]
    shown = [d.find_all("code")[0].all_text for d in doc.find_all("div", "digest")]
    assert hashlib.sha256(sdist).hexdigest() in shown


async def test_search_routes_purls_keys_cids_and_digests(site: Site) -> None:
    """A purl or key goes to its version on the package page; a CID, a hex digest or an SRI
    lists the files with those bytes; a digest nobody has says so."""
    import base64
    import hashlib

    for text in ("pkg:npm/left-pad@1.1.0", "npm:left-pad:1.1.0", " pkg:npm/LEFT-PAD@1.1.0"):
        response = await site.get("/search", params={"q": text})
        assert response.status_code == 302, text
        assert response.headers["location"] == "/packages/npm/left-pad#v-1.1.0"
    response = await site.get("/search", params={"q": "pkg:pypi/SampleProject"})
    assert response.headers["location"] == "/packages/pypi/sampleproject"
    cid = site.archive.left_pad_cids["1.0.0"]
    data = site.archive.contents[cid]
    sri = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    for text in (
        cid,
        hashlib.sha256(data).hexdigest(),
        sri,
        "sha1:" + hashlib.sha1(data, usedforsecurity=False).hexdigest(),
    ):
        doc = await site.page("/search?" + str(httpx.QueryParams({"q": text})))
        links = [(a.all_text, a.attrs["href"]) for a in doc.find_all("a", "file-link")]
        assert links == [("left-pad 1.0.0", "/packages/npm/left-pad#v-1.0.0")], text
        assert doc.find_all("code", "cid")[0].all_text == cid
    doc = await site.page("/search?q=" + "0" * 64)
    assert doc.by_id("file-summary").all_text.startswith("0 archived file(s) with digest")
    assert doc.find_all("a", "file-link") == []


async def test_api_reference_is_rendered_from_the_openapi_document(site: Site) -> None:
    """``/docs`` and ``/api/docs`` show every operation of the document with its parameters
    and responses, every schema link lands on the schema, and nothing comes from elsewhere."""
    from forage.server.openapi import load_document

    document = load_document()
    for path in ("/docs", "/api/docs"):
        doc = await site.page(path)
        shown = {
            (op.find_all("span", "method")[0].all_text, op.find_all("code", "path")[0].all_text)
            for op in doc.find_all("section", "api-op")
        }
        assert shown == {
            (method.upper(), route) for route, item in document["paths"].items() for method in item
        }
        ids = {e.attrs["id"] for e in doc.iter() if "id" in e.attrs}
        anchors = {
            a.attrs["href"][1:]
            for a in doc.find_all("a")
            if a.attrs.get("href", "").startswith("#")
        }
        assert anchors and anchors <= ids
        assert "schema-DigestLookupResponse" in ids
        digests = doc.by_id("op-lookupDigests")
        assert "sha512-BASE64" in digests.all_text and "413" in digests.all_text
        assert doc.find_all("script") == []
        external = [
            e.attrs.get("src") or e.attrs.get("href")
            for e in doc.find_all("link") + doc.find_all("img")
        ]
        assert all(not url.startswith(("http:", "https:", "//")) for url in external if url)
