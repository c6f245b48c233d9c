"""Input that used to reach a 500, through the real server on SQLite and PostgreSQL.

What is shown: a lone UTF-16 surrogate escape (``"\\ud800"``) in a JSON body is refused with a
400 by every route that reads JSON (the batch lookup, the legacy lookup, lockfiles and SBOMs,
the import endpoint), and nothing is queued for the refused request; a surrogate *pair* is
still text and still answered; a ``multipart/form-data`` header on a body that is not one, or a
form part that is not UTF-8, is a 400 on the legacy lookup; an over-long or odd ``/static/``
path is a 404 while the stylesheet is still served. Every refusal is the server's JSON error
``{"error": {"status", "message"}}``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from forage.db.engine import make_engine, make_sessionmaker
from tests.forage.test_api import TOKEN, Api, start

LONE = b"\\ud800"  # a JSON escape naming half of a surrogate pair, with no other half
JSON = {"Content-Type": "application/json"}
AUTH = {**JSON, "Authorization": f"Bearer {TOKEN}"}
MULTIPART = "multipart/form-data; boundary=forage-boundary"


@pytest.fixture
def sessions(migrated_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@pytest.fixture
async def api(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> AsyncIterator[Api]:
    async for value in start(migrated_url, tmp_path, sessions, FORAGE_API_TOKEN=TOKEN):
        yield value


def _part(name: str, content: bytes) -> bytes:
    return (
        b'--forage-boundary\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n'
        b"\r\n" + content + b"\r\n--forage-boundary--\r\n"
    )


#: (method, path, headers, body, status, words the error message must contain)
REFUSED: list[tuple[str, str, dict[str, str], bytes | None, int, str]] = [
    ("POST", "/api/v1/lookup", JSON, b'{"keys": ["npm:' + LONE + b':1.0.0"]}', 400, "surrogate"),
    ("POST", "/api/v1/lookup", JSON, b'{"keys": ["a"], "' + LONE + b'": 1}', 400, "surrogate"),
    (
        "POST",
        "/packages/lookup",
        JSON,
        b'{"keys": ["npm:left-pad:' + LONE + b'"]}',
        400,
        "surrogate",
    ),
    ("GET", "/packages/lookup", JSON, b'{"keys": ["' + LONE + b'"]}', 400, "keys"),
    (
        "POST",
        "/api/v1/lookup/lockfile",
        {},
        b'{"lockfileVersion": 3, "packages": {"node_modules/a' + LONE + b'": {"version": "1"}}}',
        400,
        "surrogate",
    ),
    (
        "POST",
        "/api/v1/lookup/lockfile?filename=bom.json",
        {},
        b'{"bomFormat": "CycloneDX", "components": [{"purl": "pkg:npm/a@' + LONE + b'"}]}',
        400,
        "surrogate",
    ),
    ("POST", "/api/v1/import", AUTH, b'{"key": "pkg:npm/left-pad' + LONE + b'"}', 400, "surrogate"),
    (
        "POST",
        "/api/v1/import",
        AUTH,
        b'{"ecosystem": "npm", "name": "' + LONE + b'", "version": "1"}',
        400,
        "surrogate",
    ),
    ("POST", "/packages/lookup", {"Content-Type": MULTIPART}, b"keys=npm:a:1", 400, "form"),
    ("POST", "/packages/lookup", {"Content-Type": "multipart/form-data"}, b"x", 400, "form"),
    (
        "POST",
        "/packages/lookup",
        {"Content-Type": MULTIPART},
        _part("keys", b"npm:a:1")[:-8],
        400,
        "form",
    ),
    ("POST", "/packages/lookup", {"Content-Type": MULTIPART}, _part("keys", b"")[:30], 400, "form"),
    (
        "POST",
        "/packages/lookup",
        {"Content-Type": "application/x-www-form-urlencoded; charset=no-such-charset"},
        b"keys=npm:a:1",
        400,
        "form",
    ),
    (
        "POST",
        "/packages/lookup",
        {"Content-Type": MULTIPART},
        _part("keys", b"npm:a:1").replace(
            b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: rot13\r\n\r\n"
        ),
        400,
        "form",
    ),
    ("GET", "/static/" + "a" * 300, {}, None, 404, "not found"),
    ("GET", "/static/" + "a" * 5000 + ".css", {}, None, 404, "not found"),
    ("GET", "/static/%00", {}, None, 404, "not found"),
    ("GET", "/static/..%2F..%2Fapi.py", {}, None, 404, "not found"),
]


async def test_refused_input_is_a_json_4xx_and_queues_nothing(api: Api) -> None:
    for method, path, headers, body, status, words in REFUSED:
        response = await api.client.request(method, path, data=body, headers=headers)
        text = await response.text()
        where = (method, path[:60], body[:60] if body else None)
        assert (where, response.status) == (where, status), text
        assert response.content_type == "application/json", where
        error = json.loads(text)["error"]
        assert error["status"] == status, where
        assert words in error["message"].lower(), (where, error)
    assert api.jobs() == []


async def test_a_surrogate_pair_is_text_and_is_answered(api: Api) -> None:
    body = b'{"keys": ["npm:left-pad\\ud83d\\ude00:1.0.0", "pkg:pypi/django@5.0"]}'
    answer = await api.json("POST", "/api/v1/lookup", data=body, headers=JSON)
    first, second = answer["results"]
    assert first["key"] == "npm:left-pad\U0001f600:1.0.0" and first["status"] == "invalid"
    assert second["status"] == "found"
    queued = await api.json(
        "POST", "/api/v1/import", status=202, data=b'{"key": "pkg:npm/left-pad"}', headers=AUTH
    )
    assert [job.id for job in api.jobs()] == [queued["job_id"]]


async def test_a_real_form_and_the_stylesheet_still_work(api: Api) -> None:
    form = _part("keys", b"pypi:django:5.0")
    answer = await api.json(
        "POST", "/packages/lookup", data=form, headers={"Content-Type": MULTIPART}
    )
    assert set(answer) == {"pypi:django:5.0"} and answer["pypi:django:5.0"]
    refused = await api.json(
        "POST",
        "/packages/lookup",
        status=400,
        data=_part("keys", b"\xff\xfe"),
        headers={"Content-Type": MULTIPART},
    )
    assert "form" in refused["error"]["message"]
    response = await api.client.get("/static/forage.css")
    assert response.status == 200 and response.content_type == "text/css"
    assert b"{" in await response.read()
    assert api.jobs() == []
