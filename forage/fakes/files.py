"""A fake artifact host on loopback: files at ``/files/<name>``, served the way a CDN would.

Registries serve artifacts from plain file hosts (``files.pythonhosted.org``, the npm CDN, a
GOPROXY's ``.zip`` URLs): ``GET`` answers ``200`` with ``Content-Length`` and the bytes
(RFC 9110 section 9.3.1). This fake does that, and can misbehave the ways an archiver must
survive: wrong bytes for the right URL, a body cut short, a redirect anywhere, a slow link.

Typed API (no pytest import, so ``forage demo`` and the benchmark can use it)::

    host = FakeFileServer(rate=2_000_000)        # optional: bytes per second per response
    path = host.add("lodash-4.17.21.tgz", data)  # -> "/files/lodash-4.17.21.tgz"
    host.add_file("big.bin", Path("/tmp/big.bin"))   # served from disk (sendfile)
    host.corrupt(name, times=1)                  # next answer: same length, one byte flipped
    host.truncate(name, times=1)                 # next answer: half the body, then a reset
    host.redirect(name, "http://169.254.169.254/latest")   # 302 to anywhere
    host.faults / host.requests                  # see indexers.fakeserver
    async with serve(host.make_app()) as fake:
        url = fake.url + path

``python -m forage.fakes.files DIR`` serves every file of ``DIR`` until killed, printing the
URL on its first line (the archive benchmark runs it in a child process).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from indexers.fakeserver import Faults, RequestLog, ThreadedServer, fake_app

PREFIX = "/files/"
#: Bytes written per step when a response is throttled or cut.
_STEP = 64 * 1024


@dataclass
class FakeFileServer:
    """Named blobs (bytes in memory, or files on disk) served at ``/files/<name>``.

    ``rate`` throttles every response to that many bytes per second (``None``: as fast as the
    loopback goes). Misbehaviours are one-shot counters per name, consumed in request order.
    """

    rate: float | None = None
    blobs: dict[str, bytes | Path] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)
    _corrupt: Counter[str] = field(default_factory=Counter)
    _truncate: Counter[str] = field(default_factory=Counter)
    _redirects: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, data: bytes) -> str:
        """Serve ``data`` as ``name``; return its path on the server."""
        self.blobs[name] = data
        return PREFIX + name

    def add_file(self, name: str, path: Path) -> str:
        """Serve the file at ``path`` as ``name`` (read from disk at each request)."""
        self.blobs[name] = path
        return PREFIX + name

    def corrupt(self, name: str, *, times: int = 1) -> None:
        """Serve the next ``times`` answers for ``name`` with its first byte flipped."""
        self._corrupt[name] += times

    def truncate(self, name: str, *, times: int = 1) -> None:
        """Send only half of the next ``times`` answers' bodies, then drop the connection."""
        self._truncate[name] += times

    def redirect(self, name: str, location: str) -> None:
        """Answer every request for ``name`` with ``302 Found`` to ``location``."""
        self._redirects[name] = location

    def make_app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware)
        app.router.add_get(PREFIX + "{name:.+}", self._get)
        return app

    def _take(self, counter: Counter[str], name: str) -> bool:
        if counter[name] <= 0:
            return False
        counter[name] -= 1
        return True

    async def _get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name in self._redirects:
            raise web.HTTPFound(self._redirects[name])
        blob = self.blobs.get(name)
        if blob is None:
            raise web.HTTPNotFound(text=f"no file {name}")
        corrupt = self._take(self._corrupt, name)
        cut = self._take(self._truncate, name)
        if isinstance(blob, Path) and not (corrupt or cut or self.rate):
            return web.FileResponse(blob, headers={"Content-Type": "application/octet-stream"})
        data = blob.read_bytes() if isinstance(blob, Path) else blob
        if corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(data)
        await response.prepare(request)
        end = len(data) // 2 if cut else len(data)
        view = memoryview(data)
        for start in range(0, end, _STEP):
            await response.write(view[start : min(start + _STEP, end)])
            if self.rate:
                await asyncio.sleep(_STEP / self.rate)
        if cut:
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response


def main(argv: list[str]) -> int:
    """Serve a directory's files until killed; print the base URL first."""
    root = Path(argv[0])
    host = FakeFileServer()
    for path in sorted(root.iterdir()):
        if path.is_file():
            host.add_file(path.name, path)
    with ThreadedServer(host.make_app()) as running:
        print(running.url, flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = ["PREFIX", "FakeFileServer"]
