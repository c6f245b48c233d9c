"""The web pages in a real browser: Debian's headless ``chromium`` driven over the Chrome
DevTools Protocol (https://chromedevtools.github.io/devtools-protocol/) against the app served
on 127.0.0.1.

The test types into the search box and presses Enter, follows the result to the package page,
reads the CID from the rendered DOM, fetches the CAR behind it from inside the page, and checks
that a package name full of markup runs no script. It also checks that the server-drawn charts
lay out (bars with a width on screen), that the pages load nothing from another origin and
run no script, that a digest typed into the search box leads to its package page with the
install command and the size, and that the API reference's links land on their targets.
Chromium is told to resolve no host but 127.0.0.1 and to skip its background services, so it
contacts nothing outside this machine.

Without chromium the test is skipped, except under ``CI=true`` where it fails (``.ci/run``
installs it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from forage.config import Config
from forage.db.engine import make_engine, make_sessionmaker, upgrade, utcnow
from forage.server.app import make_app
from indexers.fakeserver import serve
from storage import FilesystemBlockstore, import_file
from tests import factories

HOSTILE_NAME = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
#: Flags that keep chromium headless, sandbox-free (tests run as root in containers) and off
#: the network: every host name but 127.0.0.1 fails to resolve.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
    "--no-pings",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI") == "true":
        pytest.fail("the browser test needs Debian's chromium under CI (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


class DevTools:
    """A minimal DevTools Protocol client for one page target."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        ident = self._next_id
        await self._socket.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self._socket.receive_json(timeout=20)
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return dict(message["result"])

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        """Poll ``expression`` until it is truthy (pages load asynchronously), up to 15 s."""
        for _ in range(300):
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expression}")

    async def loaded(self, path: str) -> None:
        await self.wait_for(f"location.pathname === {path!r} && document.readyState === 'complete'")

    async def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Enter",
                code="Enter",
                windowsVirtualKeyCode=13,
                **({"text": "\r"} if kind == "keyDown" else {}),
            )


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[DevTools]:
    """A headless chromium in its own session (process group), and a DevTools connection
    to its page."""
    binary = chromium_path()
    profile = tmp_path / "profile"
    process = await asyncio.create_subprocess_exec(
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and len(port_file.read_text().splitlines()) >= 2:
                break
            assert process.returncode is None, "chromium exited at start-up"
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        async with httpx.AsyncClient(timeout=10) as http:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        (page,) = [target for target in targets if target["type"] == "page"]
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket,
        ):
            yield DevTools(socket)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """The app on loopback over a SQLite index of one archived npm package (bytes imported
    for real) and one package whose name is markup; yields the URL and the archive's CID."""
    engine = make_engine(f"sqlite:///{tmp_path / 'forage.db'}")
    upgrade(engine)
    store = FilesystemBlockstore(tmp_path / "blocks", durable=False)
    factory = make_sessionmaker(engine)
    with factory() as session:
        package = factories.make_package(session, ecosystem="npm", name="left-pad")
        version = factories.make_version(session, package=package, number="1.3.0")
        artifact = factories.make_artifact(session, version=version)
        data = factories.artifact_content(artifact)
        cid = str(import_file(data, sink=store).cid)
        archive = factories.make_archive(session, artifact=artifact, cid=cid, size=len(data))
        artifact.size = None  # as npm and Go publish: the size comes from the archive
        piece = factories.make_piece(session, archives=[archive])
        factories.make_deal(session, piece=piece, end_at=utcnow() + timedelta(days=90))
        factories.make_package(session, ecosystem="npm", name="right-pad")
        factories.make_package(session, ecosystem="npm", name=HOSTILE_NAME)
        session.commit()
    app = make_app(Config(), sessionmaker=factory, blockstore=store)
    try:
        async with serve(app) as running:
            yield running.url, cid
    finally:
        engine.dispose()


async def test_search_box_finds_a_package_whose_page_shows_its_cid(
    browser: DevTools, site: tuple[str, str]
) -> None:
    """Type "left" into the search box and press Enter: the results list left-pad (and not
    right-pad); its page shows the archive's CID, and the CAR link serves a CAR."""
    url, cid = site
    await browser.call("Page.navigate", url=url + "/")
    await browser.loaded("/")
    assert await browser.evaluate("document.getElementById('stat-packages').textContent") == "3"
    display = await browser.evaluate("getComputedStyle(document.querySelector('header')).display")
    assert display == "flex"  # the stylesheet loaded and applies
    await browser.evaluate("document.getElementById('search-q').focus()")
    await browser.call("Input.insertText", text="left")
    await browser.press_enter()
    await browser.loaded("/search")
    assert await browser.evaluate("location.search") == "?q=left"
    names = await browser.evaluate(
        "[...document.querySelectorAll('a.package-link')].map(a => a.textContent)"
    )
    assert names == ["left-pad"]
    await browser.evaluate("document.querySelector('a.package-link').click()")
    await browser.loaded("/packages/npm/left-pad")
    shown = await browser.evaluate("document.querySelector('code.cid').textContent")
    assert shown == cid
    fetched = await browser.evaluate(
        """(async () => {
            const link = [...document.querySelectorAll('a')].find(a => a.textContent === 'CAR');
            const response = await fetch(link.href);
            const body = new Uint8Array(await response.arrayBuffer());
            return [response.status, response.headers.get('content-type'), body.length];
        })()"""
    )
    assert fetched[0] == 200
    assert fetched[1] == "application/vnd.ipld.car; version=1; order=dfs; dups=n"
    assert fetched[2] > 100


async def test_markup_in_a_package_name_runs_nothing(
    browser: DevTools, site: tuple[str, str]
) -> None:
    """A package named with <img onerror> and <script> shows as text on the search results
    and the package page; neither runs, and no such element exists in the DOM."""
    url, _ = site
    await browser.call("Page.navigate", url=url + "/search?q=pwned")
    await browser.loaded("/search")
    assert await browser.evaluate("document.querySelector('a.package-link').textContent") == (
        HOSTILE_NAME
    )
    await browser.evaluate("document.querySelector('a.package-link').click()")
    await browser.wait_for("location.pathname.startsWith('/packages/npm/')")
    await browser.wait_for(
        "document.readyState === 'complete' && !!document.getElementById('package-name')"
    )
    assert await browser.evaluate("document.getElementById('package-name').textContent") == (
        HOSTILE_NAME
    )
    assert await browser.evaluate("typeof window.__pwned") == "undefined"
    assert await browser.evaluate("document.querySelectorAll('main img, main script').length") == 0


#: True when the page ran no script of its own and fetched nothing from another origin.
SELF_CONTAINED = """document.scripts.length === 0 && performance.getEntriesByType('resource')
    .every(entry => entry.name.startsWith(location.origin + '/'))"""


async def test_charts_draw_and_a_digest_search_leads_to_install_commands(
    browser: DevTools, site: tuple[str, str]
) -> None:
    """The home page's files chart and the deals page's charts lay out as SVG bars with a
    width on screen, with nothing fetched elsewhere; a sha512 SRI typed into the search box
    finds left-pad, whose page shows the install command through this server and a size."""
    url, cid = site
    await browser.call("Page.navigate", url=url + "/")
    await browser.loaded("/")
    bars = await browser.evaluate(
        """[...document.querySelectorAll('#files-chart rect')].map(r =>
            [r.dataset.series, r.dataset.value, Math.round(r.getBoundingClientRect().width)])"""
    )
    assert [bar[:2] for bar in bars] == [["archived", "1"]]
    assert bars[0][2] > 100  # the only bar spans the chart: drawn, and scaled
    assert await browser.evaluate(SELF_CONTAINED) is True
    await browser.call("Page.navigate", url=url + "/deals")
    await browser.loaded("/deals")
    widths = await browser.evaluate(
        """['replicas-chart', 'expiry-chart'].map(id =>
            [...document.querySelectorAll('#' + id + ' rect')]
                .map(r => r.getBoundingClientRect().width))"""
    )
    assert len(widths[0]) == 1 and widths[0][0] > 100
    assert len(widths[1]) == 1 and widths[1][0] > 100
    assert await browser.evaluate(SELF_CONTAINED) is True
    sri = await browser.evaluate(
        """(async () => {
            const response = await fetch('/ipfs/CID?format=raw');
            const digest = await crypto.subtle.digest('SHA-512', await response.arrayBuffer());
            return 'sha512-' + btoa(String.fromCharCode(...new Uint8Array(digest)));
        })()""".replace("CID", cid)
    )
    await browser.evaluate("document.getElementById('search-q').focus()")
    await browser.call("Input.insertText", text=sri)
    await browser.press_enter()
    await browser.loaded("/search")
    await browser.evaluate("document.querySelector('a.file-link').click()")
    await browser.loaded("/packages/npm/left-pad")
    assert await browser.evaluate("location.hash") == "#v-1.3.0"
    install = await browser.evaluate(
        "document.getElementById('v-1.3.0').querySelector('pre.install').textContent"
    )
    assert install == f"npm install --registry {url}/npm/ left-pad@1.3.0"
    shown = await browser.evaluate("document.querySelector('td.size').textContent")
    assert shown.endswith(" B") and shown != "-"
    digest = await browser.evaluate(
        "document.querySelector('div.digest[data-algorithm=sha512] code').textContent"
    )
    assert digest == sri


async def test_api_reference_renders_offline_and_its_links_land(
    browser: DevTools, site: tuple[str, str]
) -> None:
    """``/docs`` lists the operations; following an operation's schema link scrolls to
    that schema; the page uses nothing from elsewhere."""
    url, _ = site
    await browser.call("Page.navigate", url=url + "/docs")
    await browser.loaded("/docs")
    count = await browser.evaluate("document.querySelectorAll('section.api-op').length")
    assert count >= 12
    assert await browser.evaluate(SELF_CONTAINED) is True
    await browser.evaluate(
        "document.getElementById('op-lookupDigests')"
        ".querySelector('a[href=\"#schema-DigestLookupResponse\"]').click()"
    )
    await browser.wait_for("location.hash === '#schema-DigestLookupResponse'")
    top, height, scrolled = await browser.evaluate(
        "[document.getElementById('schema-DigestLookupResponse').getBoundingClientRect().top,"
        " innerHeight, scrollY]"
    )
    assert scrolled > 0 and 0 <= top < height  # scrolled to the schema, now on screen
