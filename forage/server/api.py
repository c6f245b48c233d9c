"""The JSON API: batch lookups, lockfiles, reverse lookup by CID, packages, stats, imports.

Routes (described for clients in ``openapi.json``, served at ``/api/openapi.json``):

- ``POST /api/v1/lookup`` ``{"keys": [...]}`` and ``GET /api/v1/lookup?keys=a,b``: one result
  per key, in order (:mod:`forage.lookup.batch`); unknown keys queue a backfill import;
- ``POST /api/v1/lookup/lockfile`` takes a lockfile or SBOM (``package-lock.json``,
  ``yarn.lock``, ``poetry.lock``, ``go.sum``, CycloneDX, SPDX...; as the body or a multipart
  upload) and answers for every dependency, its pinned digests checked (415 for a format
  Forage does not read, naming those it does);
- ``GET|POST /packages/lookup?keys=...``: the original Forage's reply, ``{key: cid | null}``;
- ``POST /api/v1/lookup/digests`` ``{"digests": [...]}`` and ``GET ?digests=a,b``: the files
  with each registry digest (hex, SRI, ``h1:``), like a key lookup;
- ``GET /api/v1/cids/{cid}``, ``GET /api/v1/packages/{ecosystem}/{name}``,
  ``GET /api/v1/packages/{ecosystem}/{name}/versions/{version}``, ``GET /api/v1/stats``;
- ``POST /api/v1/import`` (bearer token, :mod:`forage.server.auth`): queue a package import;
- ``GET /api/v1/archives/failed[?page=N&per_page=M]``: failed archives with their reasons.

Hostile input is answered with a 4xx naming the problem: bodies are bounded by
``server.max_body_size`` (413), batches by ``server.max_keys`` (413 naming the limit), JSON
that does not parse, nests without end or holds a string that is not Unicode (a lone surrogate
escape, :mod:`indexers.jsontext`) is a 400, as is a form body its ``Content-Type`` does not
describe. A lookup body's keys are read as a stream of JSON events (:mod:`forage.server.bodies`)
and a large answer is streamed out as it is encoded, all within the memory budget of requests
with large bodies (:mod:`forage.server.budget`). Database work runs in worker threads
(``asyncio.to_thread``); on SQLite, reads use a read-only engine on the same file, so a
lookup never waits for the job queue's writers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from sqlalchemy.orm import Session, sessionmaker

from forage.archive.failures import MAX_PER_PAGE, failed_archives
from forage.errors import InvalidKey
from forage.index.ingest import IMPORT
from forage.jobs import queue as jobs
from forage.lookup.backfill import BackfillPolicy, import_dedup_key
from forage.lookup.batch import LockfileSummary, lockfile_dependencies, lookup
from forage.lookup.digests import digests_reply, lookup_digests
from forage.lookup.keys import MAX_KEY_LENGTH, PLATFORMS, Key, parse_key, unknown_ecosystem
from forage.lookup.normalize import normalize_name
from forage.lookup.packages import package_view
from forage.lookup.resolve import AnswerFill, save_answers
from forage.lookup.reverse import artifacts_by_cid
from forage.lookup.sessions import read_only_sessionmaker
from forage.lookup.stats import api_stats
from forage.lookup.views import KeyResult, KeyStatus, preferred_cid, summarize
from forage.server.auth import json_http_error, requires_token
from forage.server.bodies import BodyError, NotKeysObject, TooManyKeys, lookup_keys
from forage.server.budget import BUDGET, trim_heap
from forage.server.state import CONFIG, SESSIONMAKER
from indexers import (
    ECOSYSTEMS,
    IndexerError,
    LockEntry,
    LockfileError,
    UnsupportedLockfile,
    load_json,
    read_lockfile,
)
from storage import InvalidCID, parse_cid

log = logging.getLogger(__name__)

#: CID text: multibase alphabets; 8 characters hold the shortest CIDv1 (an identity hash).
_CID_TEXT = re.compile(r"[A-Za-z0-9+/=_-]{8,256}")
#: Read-only sessions for lookups (the app's own sessionmaker except on SQLite).
READER = web.AppKey("lookup_reader", sessionmaker[Session])
#: Bytes of a reply encoded per step (in a worker thread) and written before the next: a
#: 10,000-key answer of tens of MB is never held whole.
REPLY_CHUNK = 256 * 1024
#: Answers waiting to be stored beyond which a new batch is dropped (recomputed on its next
#: lookup) rather than queued: a 10,000-key batch of first sights holds tens of MB of them,
#: outside any request's memory budget.
MAX_PENDING_ANSWERS = 10_000


class AnswerWriter:
    """Stores rendered lookup answers (:func:`forage.lookup.resolve.save_answers`) one batch at a
    time in a thread of its own, off the requests' path, so a lookup never waits for the
    database's write lock. At most :data:`MAX_PENDING_ANSWERS` wait; once none do, the heap
    is trimmed (:func:`forage.server.budget.trim_heap`)."""

    def __init__(self, write: sessionmaker[Session]) -> None:
        self._write = write
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="forage-answers")
        self._lock = threading.Lock()
        self._pending = 0

    def keep(self, fills: Sequence[AnswerFill]) -> None:
        count = len(fills)
        with self._lock:
            if self._pending and self._pending + count > MAX_PENDING_ANSWERS:
                log.info("answer writer busy: %d rendered answers not stored", count)
                return
            self._pending += count
        self._executor.submit(self._save, fills)

    def _save(self, fills: Sequence[AnswerFill]) -> None:
        try:
            save_answers(self._write, fills)
        except Exception:
            # The answers are a cache, recomputed at the next lookup: log, and keep writing.
            log.exception("answer writer: %d rendered answers not stored", len(fills))
        finally:
            with self._lock:
                self._pending -= len(fills)
                idle = self._pending == 0
            del fills
            if idle:
                trim_heap()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


ANSWERS = web.AppKey("answer_writer", AnswerWriter)
#: Which unknown keys may queue imports, and the rate limiter shared by all requests.
BACKFILL = web.AppKey("backfill_policy", BackfillPolicy)


async def _reader_context(app: web.Application) -> AsyncIterator[None]:
    reader, engine = read_only_sessionmaker(app[SESSIONMAKER])
    app[READER] = reader
    app[ANSWERS] = AnswerWriter(app[SESSIONMAKER])
    if engine is not None:
        # Each reader connection maps the SQLite file; after a burst of heavy lookups, the
        # pages read through every one would stay resident: close the idle ones (new ones
        # map the file again, its pages still in the page cache).
        app[BUDGET].idle_hooks.append(engine.dispose)
    yield
    app[ANSWERS].close()
    if engine is not None:
        engine.dispose()


def setup(app: web.Application) -> None:
    """Add the API's routes and its shared state to ``app``."""
    app[BACKFILL] = BackfillPolicy.from_config(app[CONFIG])
    app.cleanup_ctx.append(_reader_context)
    router = app.router
    router.add_post("/api/v1/lookup", lookup_post)
    router.add_get("/api/v1/lookup", lookup_get)
    router.add_post("/api/v1/lookup/lockfile", lookup_lockfile)
    router.add_get("/packages/lookup", legacy_lookup)
    router.add_post("/packages/lookup", legacy_lookup)
    router.add_get("/api/v1/cids/{cid}", cid_lookup)
    router.add_post("/api/v1/lookup/digests", digests_lookup)
    router.add_get("/api/v1/lookup/digests", digests_lookup)
    router.add_get("/api/v1/packages/{ecosystem}/{name:.+}/versions/{version}", version_detail)
    router.add_get("/api/v1/packages/{ecosystem}/{name:.+}", package_detail)
    router.add_get("/api/v1/stats", stats)
    router.add_post("/api/v1/import", import_package)
    router.add_get("/api/v1/archives/failed", failed_list)


def _json(value: Any, *, status: int = 200) -> web.Response:
    """A JSON response, encoded with orjson (a 10,000-key answer is megabytes of JSON)."""
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


def _bad_request(message: str) -> web.HTTPError:
    return json_http_error(web.HTTPBadRequest, message)


def _not_found(message: str) -> web.HTTPError:
    return json_http_error(web.HTTPNotFound, message)


async def _json_body(request: web.Request) -> Any:
    """The request body as JSON; 400 for anything that does not parse or holds a string that
    is not Unicode text (a lone surrogate escape, which nothing downstream can encode), 413 if
    too large."""
    raw = await request.read()
    if not raw:
        raise _bad_request("the request body is empty; send JSON")
    try:
        return load_json(raw)
    except RecursionError as exc:
        raise _bad_request("the JSON body nests too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, LoneSurrogate
        raise _bad_request(f"the body is not valid JSON: {exc}") from exc


def _too_many(request: web.Request, count: int, what: str = "keys") -> web.HTTPError:
    limit = request.app[CONFIG].server.max_keys
    return json_http_error(
        web.HTTPRequestEntityTooLarge,
        f"too many {what}: at most {limit} per request, got {count}; split the batch",
        max_size=limit,
        actual_size=count,
    )


def _check_count(request: web.Request, count: int, what: str = "keys") -> None:
    if count > request.app[CONFIG].server.max_keys:
        raise _too_many(request, count, what)


async def _streamed_keys(request: web.Request) -> list[object]:
    """The items of a JSON body's ``keys`` array (:func:`forage.server.bodies.lookup_keys`,
    in a worker thread): nothing else in the body is built, and the body itself is dropped
    once read; the same 400s and 413 as :func:`_json_body` and :func:`_check_count`."""
    raw = await request.read()
    if not raw:
        raise _bad_request("the request body is empty; send JSON")
    limit = request.app[CONFIG].server.max_keys
    try:
        return await asyncio.to_thread(lookup_keys, raw, limit=limit)
    except TooManyKeys as exc:
        raise _too_many(request, exc.count) from exc
    except NotKeysObject as exc:
        raise _bad_request('the body must be a JSON object {"keys": [KEY, ...]}') from exc
    except BodyError as exc:
        raise _bad_request(f"the body is not valid JSON: {exc}") from exc


def _query_keys(request: web.Request) -> list[str]:
    """``keys`` from the query string: comma-separated, the parameter repeatable."""
    keys = [
        part.strip()
        for value in request.query.getall("keys", [])
        for part in value.split(",")
        if part.strip()
    ]
    if not keys:
        raise _bad_request("give the keys to look up: ?keys=KEY,KEY,...")
    return keys


async def _lookup(
    request: web.Request,
    keys: Sequence[object],
    reply: Callable[[Sequence[KeyResult]], Iterator[bytes]],
    *,
    rendered: bool = False,
) -> web.StreamResponse:
    """Look ``keys`` up in a worker thread and answer the JSON ``reply(results)`` yields
    (``rendered``: results with their stored fragments, see :func:`_lookup_parts`)."""
    _check_count(request, len(keys))
    app = request.app
    results = await asyncio.to_thread(
        lookup,
        app[READER],
        app[SESSIONMAKER],
        keys,
        policy=app[BACKFILL],
        rendered=rendered,
        keep=app[ANSWERS].keep,
    )
    del keys
    return await _send(request, reply(results))


def _next_chunk(parts: Iterator[bytes]) -> bytes:
    """The next :data:`REPLY_CHUNK` bytes or more of ``parts`` (``b""`` once they are done)."""
    chunk: list[bytes] = []
    size = 0
    for part in parts:
        chunk.append(part)
        size += len(part)
        if size >= REPLY_CHUNK:
            break
    return b"".join(chunk)


async def _send(request: web.Request, parts: Iterator[bytes]) -> web.StreamResponse:
    """A JSON reply of ``parts``, encoded a chunk at a time in a worker thread (10,000 results
    would otherwise hold the event loop); a reply of one chunk is sent with its length."""
    chunk = await asyncio.to_thread(_next_chunk, parts)
    if len(chunk) < REPLY_CHUNK:
        return web.Response(body=chunk, content_type="application/json")
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    while chunk:
        await response.write(chunk)
        chunk = await asyncio.to_thread(_next_chunk, parts)
    await response.write_eof()
    return response


def _lookup_parts(results: Sequence[KeyResult]) -> Iterator[bytes]:
    """``{"results": [...], "summary": {...}}`` with each version's stored answer spliced in
    as bytes (the same JSON ``orjson`` would write for the whole), a result at a time."""
    yield b'{"results":['
    for index, result in enumerate(results):
        if index:
            yield b","
        yield from result.json_parts()
    yield b'],"summary":' + orjson.dumps(summarize(results)) + b"}"


def _lockfile_parts(entries: Sequence[LockEntry], results: Sequence[KeyResult]) -> Iterator[bytes]:
    """:func:`forage.lookup.batch.lockfile_reply` encoded a dependency at a time."""
    summary = LockfileSummary()
    yield b'{"dependencies":['
    for index, dependency in enumerate(lockfile_dependencies(entries, results)):
        yield (b"," if index else b"") + orjson.dumps(summary.add(dependency))
    yield b'],"summary":' + orjson.dumps(summary.counts) + b"}"


def _legacy_parts(results: Sequence[KeyResult]) -> Iterator[bytes]:
    """The original Forage's ``{key: cid | null}`` (one value per distinct key, as a dict)."""
    yield orjson.dumps({result.key: preferred_cid(result.artifacts) for result in results})


async def lookup_post(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/lookup``: ``{"keys": [...]}`` to one result per key."""
    keys = await _streamed_keys(request)
    return await _lookup(request, keys, _lookup_parts, rendered=True)


async def lookup_get(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/lookup?keys=a,b``: the same answer as the POST."""
    return await _lookup(request, _query_keys(request), _lookup_parts, rendered=True)


async def _uploaded_lockfile(request: web.Request) -> tuple[bytes, str]:
    """The lockfile of a ``multipart/form-data`` upload (``curl -F file=@yarn.lock``): its
    first file field, with the file name the client gave."""
    try:
        form = await request.post()
    except (ValueError, LookupError, RuntimeError, HttpProcessingError) as exc:
        raise _bad_request(f"the multipart body could not be read: {exc}"[:300]) from exc
    for value in form.values():
        if isinstance(value, web.FileField):
            return await asyncio.to_thread(value.file.read), value.filename or ""
    raise _bad_request("the multipart body holds no file; upload the lockfile as a file field")


async def lookup_lockfile(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/lookup/lockfile[?filename=go.sum]``: every dependency of the body (or of
    the file of a multipart upload). 415 for a document of no format Forage reads."""
    if request.content_type == "multipart/form-data":
        data, uploaded = await _uploaded_lockfile(request)
    else:
        data, uploaded = await request.read(), ""
    if not data:
        raise _bad_request("the request body is empty; send the lockfile itself")
    filename = request.query.get("filename", "") or uploaded
    try:
        entries = await asyncio.to_thread(read_lockfile, data, filename=filename)
    except UnsupportedLockfile as exc:
        raise json_http_error(web.HTTPUnsupportedMediaType, str(exc)) from exc
    except LockfileError as exc:
        raise _bad_request(str(exc)) from exc
    except RecursionError as exc:
        raise _bad_request("the JSON document nests too deeply") from exc
    del data
    keyed = [entry.key for entry in entries if entry.key is not None]
    _check_count(request, len(keyed), "dependencies")
    return await _lookup(request, keyed, lambda results: _lockfile_parts(entries, results))


async def _form_keys(request: web.Request) -> list[str]:
    """``keys`` from a form body. aiohttp's form parsing fails with a plain exception on a body
    that does not match its header (a ``multipart/form-data`` header on anything else, no
    boundary, an unknown charset or transfer encoding, bytes its charset cannot decode): those
    are the client's mistake, so a 400 naming it rather than a 500."""
    try:
        form = await request.post()
    except (ValueError, LookupError, RuntimeError, HttpProcessingError) as exc:
        kind = request.content_type or "form"
        raise _bad_request(f"the form body could not be read as {kind}: {exc}"[:300]) from exc
    keys = [
        part.strip()
        for value in form.getall("keys", [])
        if isinstance(value, str)
        for part in value.split(",")
        if part.strip()
    ]
    if not keys:
        raise _bad_request("give the keys to look up: keys=KEY,KEY,...")
    return keys


async def legacy_lookup(request: web.Request) -> web.StreamResponse:
    """``GET|POST /packages/lookup``: the original Forage's ``{key: cid | null}``."""
    if request.method == "POST" and request.content_type == "application/json":
        keys = [key for key in await _streamed_keys(request) if isinstance(key, str)]
    elif request.method == "POST" and "keys" not in request.query:
        keys = await _form_keys(request)
    else:
        keys = _query_keys(request)
    return await _lookup(request, keys, _legacy_parts)


async def cid_lookup(request: web.Request) -> web.Response:
    """``GET /api/v1/cids/{cid}``: every artifact whose archived bytes have this CID."""
    text = request.match_info["cid"]
    if not _CID_TEXT.fullmatch(text):
        raise _bad_request(f"not a CID: {text[:200]!r}")
    try:
        cid = parse_cid(text)
    except InvalidCID as exc:
        raise _bad_request(f"not a CID: {text[:200]!r} ({exc})") from exc
    normalized = str(cid.set(version=1, base="base32") if cid.version == 0 else cid)
    matches = await asyncio.to_thread(_in_session, request, artifacts_by_cid, normalized)
    if not matches:
        raise _not_found(f"no archived artifact has CID {normalized}")
    return _json({"cid": normalized, "artifacts": [match.to_json() for match in matches]})


async def digests_lookup(request: web.Request) -> web.Response:
    """``POST /api/v1/lookup/digests`` ``{"digests": [...]}`` or ``GET ?digests=a,b``: the
    archived files with each registry digest (:mod:`forage.lookup.digests`)."""
    if request.method == "POST":
        body = await _json_body(request)
        given = body.get("digests") if isinstance(body, dict) else None
        if not isinstance(given, list) or not all(isinstance(d, str) for d in given):
            raise _bad_request('the body must be a JSON object {"digests": [DIGEST, ...]}')
    else:
        # A query string decodes an unescaped "+" of base64 as a space; digests hold none.
        given = [
            part.strip().replace(" ", "+")
            for value in request.query.getall("digests", [])
            for part in value.split(",")
            if part.strip()
        ]
    if not given:
        raise _bad_request("give the digests to look up: ?digests=DIGEST,DIGEST,...")
    _check_count(request, len(given), "digests")
    results = await asyncio.to_thread(_in_session, request, lookup_digests, given)
    return _json(digests_reply(results))


def _in_session(request: web.Request, read: Callable[..., Any], *args: Any) -> Any:
    with request.app[READER]() as session, session.begin():
        return read(session, *args)


def _ecosystem(request: web.Request) -> str:
    given = request.match_info["ecosystem"]
    ecosystem = PLATFORMS.get(given.lower(), given.lower())
    if ecosystem not in ECOSYSTEMS:
        raise _not_found(unknown_ecosystem(given))
    return ecosystem


def _name(ecosystem: str, name: str) -> str:
    try:
        return normalize_name(ecosystem, name)
    except IndexerError as exc:
        raise _bad_request(str(exc)) from exc


async def package_detail(request: web.Request) -> web.Response:
    """``GET /api/v1/packages/{ecosystem}/{name}``: the package and its versions."""
    ecosystem = _ecosystem(request)
    name = _name(ecosystem, request.match_info["name"])
    view = await asyncio.to_thread(_in_session, request, package_view, ecosystem, name)
    if view is None:
        raise _not_found(f"{ecosystem}/{name} is not in the index")
    return _json(view.to_json())


async def version_detail(request: web.Request) -> web.Response:
    """``GET /api/v1/packages/{ecosystem}/{name}/versions/{version}``: one version's files."""
    ecosystem = _ecosystem(request)
    name = _name(ecosystem, request.match_info["name"])
    key = Key(ecosystem, name, request.match_info["version"]).purl()
    app = request.app
    (result,) = await asyncio.to_thread(lookup, app[READER], None, [key], policy=None)
    if result.status is KeyStatus.INVALID:
        raise _bad_request(result.error or "invalid version")
    if result.status is not KeyStatus.FOUND:
        raise _not_found(f"{key} is not in the index")
    return _json(result.to_json())


async def stats(request: web.Request) -> web.Response:
    """``GET /api/v1/stats``: what the archive holds."""
    return _json(await asyncio.to_thread(_in_session, request, api_stats))


def _count_param(request: web.Request, name: str, default: int, high: int) -> int:
    """A whole number from 1 to ``high`` in the query string; 400 for anything else."""
    raw = request.query.get(name, str(default))
    if not (raw.isascii() and raw.isdigit() and len(raw) < 10 and 1 <= int(raw) <= high):
        raise _bad_request(f"{name} must be a whole number from 1 to {high}")
    return int(raw)


async def failed_list(request: web.Request) -> web.Response:
    """``GET /api/v1/archives/failed``: failed archives, newest first, a page at a time, each
    with its reason and its job's next try (:mod:`forage.archive.failures`)."""
    page = _count_param(request, "page", 1, 1_000_000)
    per_page = _count_param(request, "per_page", 50, MAX_PER_PAGE)

    def read(session: Session) -> dict[str, Any]:
        return failed_archives(session, page=page, per_page=per_page).to_json()

    return _json(await asyncio.to_thread(_in_session, request, read))


@requires_token
async def import_package(request: web.Request) -> web.Response:
    """``POST /api/v1/import`` ``{"key": ...}`` or ``{"ecosystem", "name", "version"?}``:
    queue an import of the package (deduplicated with one already queued)."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise _bad_request('the body must be a JSON object {"key": "pkg:npm/left-pad"}')
    key = _import_key(body)
    config = request.app[CONFIG]
    if key.ecosystem not in config.configured_registries():
        raise json_http_error(
            web.HTTPConflict, f"the {key.ecosystem} registry is not configured on this server"
        )

    def enqueue() -> int:
        with request.app[SESSIONMAKER].begin() as session:
            payload = {"ecosystem": key.ecosystem, "name": key.name}
            if key.version:
                payload["version"] = key.version
            return jobs.enqueue(session, IMPORT, payload, dedup_key=import_dedup_key(key))

    job_id = await asyncio.to_thread(enqueue)
    log.info("import of %s/%s queued by API as job %d", key.ecosystem, key.name, job_id)
    return _json(
        {"job_id": job_id, "ecosystem": key.ecosystem, "name": key.name, "version": key.version},
        status=202,
    )


def _import_key(body: dict[str, Any]) -> Key:
    """The package an import request names, normalized; 400 for anything malformed."""
    try:
        if "key" in body:
            if not isinstance(body["key"], str):
                raise InvalidKey(json.dumps(body["key"])[:100], "a key must be a string")
            key = parse_key(body["key"], normalize=normalize_name)
        else:
            ecosystem, name = body.get("ecosystem"), body.get("name")
            version = body.get("version")
            if not isinstance(ecosystem, str) or not isinstance(name, str) or not name:
                raise _bad_request('give {"key": PURL} or {"ecosystem": ..., "name": ...}')
            if len(name) > MAX_KEY_LENGTH:
                raise _bad_request(f"name longer than {MAX_KEY_LENGTH} characters")
            if version is not None and not isinstance(version, str):
                raise _bad_request("version must be a string")
            if ecosystem.lower() not in PLATFORMS:
                raise _bad_request(unknown_ecosystem(ecosystem))
            ecosystem = PLATFORMS[ecosystem.lower()]
            key = Key(ecosystem, normalize_name(ecosystem, name), version or None)
    except InvalidKey as exc:
        raise _bad_request(str(exc)) from exc
    except IndexerError as exc:
        raise _bad_request(str(exc)) from exc
    if key.ecosystem not in ECOSYSTEMS:
        raise _bad_request(f"Forage does not index {key.ecosystem} packages")
    return key
