"""The OpenAPI document matches what the server does.

What is shown: the document is valid OpenAPI 3.1; it lists exactly the routes the API and
document modules add; it is served at ``/api/openapi.json``; and the responses of a run
through every operation (successes and errors) each carry a documented status whose JSON
schema (JSON Schema 2020-12, formats checked) accepts the body.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from sqlalchemy.orm import Session, sessionmaker

from forage.config import Config
from forage.db.engine import make_engine, make_sessionmaker
from forage.server import api as api_module
from forage.server import openapi
from forage.server.state import CONFIG, SESSIONMAKER
from tests.factories import artifact_content, raw_cid
from tests.forage.test_api import DATA, TOKEN, Api, start

BASE = "urn:forage:openapi"


def test_document_is_valid_openapi_3_1() -> None:
    document = openapi.load_document()
    assert document["openapi"].startswith("3.1.")
    validate(document)


def _template(path: str) -> str:
    """aiohttp's ``{name:.+}`` as OpenAPI's ``{name}``."""
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)


def test_document_lists_exactly_the_served_routes(tmp_path: Path) -> None:
    app = web.Application()
    app[CONFIG] = Config()
    app[SESSIONMAKER] = sessionmaker()
    api_module.setup(app)
    openapi.setup(app)
    served = {
        (route.method.lower(), _template(route.resource.canonical))
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method, path)
        for path, operations in openapi.load_document()["paths"].items()
        for method in operations
    }
    assert served == documented


class Checker:
    """Validates responses against the operation the request hit."""

    def __init__(self) -> None:
        self.document = openapi.load_document()
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(BASE, resource)
        self.patterns = sorted(
            (
                (re.compile("^" + re.sub(r"\{(\w+)\}", self._group, path) + "$"), path)
                for path in self.document["paths"]
            ),
            key=lambda item: -len(item[1]),  # the versions path before the package path
        )
        self.exercised: set[tuple[str, str, str]] = set()

    @staticmethod
    def _group(match: re.Match[str]) -> str:
        return "(.+)" if match.group(1) == "name" else "([^/]+)"

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for pattern, template in self.patterns:
            if pattern.match(path) and method in self.document["paths"][template]:
                return template, self.document["paths"][template][method]
        raise AssertionError(f"{method.upper()} {path} is not documented")

    def check(self, method: str, path: str, status: int, body: Any) -> None:
        template, operation = self.operation(method.lower(), path.split("?")[0])
        responses = operation["responses"]
        assert str(status) in responses, f"{method} {template}: status {status} undocumented"
        assert responses[str(status)]["content"]["application/json"]["schema"]
        operation_path = f"paths/{self._escape(template)}/{method.lower()}"
        where = f"{operation_path}/responses/{status}/content/application~1json/schema"
        validator = OAS31Validator(
            {"$ref": f"{BASE}#/{where}"},
            registry=self.registry,
            format_checker=OAS31Validator.FORMAT_CHECKER,
        )
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
        if errors:
            error = errors[0]
            raise AssertionError(f"{method} {path} {status}: {error.message} at {list(error.path)}")
        self.exercised.add((method.lower(), template, str(status)))

    @staticmethod
    def _escape(template: str) -> str:
        return template.replace("~", "~0").replace("/", "~1")


@pytest.fixture
async def api(
    migrated_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> AsyncIterator[Api]:
    async for value in start(migrated_url, tmp_path, sessions, FORAGE_API_TOKEN=TOKEN):
        yield value


@pytest.fixture
def sessions(migrated_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


async def test_responses_match_the_document(api: Api) -> None:
    checker = Checker()
    cid = raw_cid(artifact_content(api.rows["sdist"]))
    digest = hashlib.sha256(artifact_content(api.rows["sdist"])).hexdigest()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    lookup_keys = ["pkg:pypi/django@5.0", "npm:left-pad:2.0.0", "bad", "pkg:cargo/x@1"]
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/v1/lookup", {"json": {"keys": lookup_keys}}),
        ("POST", "/api/v1/lookup", {"data": b"nope"}),
        ("POST", "/api/v1/lookup", {"json": {"keys": ["k"] * 10_001}}),
        ("GET", "/api/v1/lookup?keys=" + ",".join(lookup_keys), {}),
        ("GET", "/api/v1/lookup", {}),
        ("POST", "/api/v1/lookup/lockfile", {"data": (DATA / "package-lock.json").read_bytes()}),
        ("POST", "/api/v1/lookup/lockfile?filename=go.sum", {"data": b"garbage line"}),
        ("POST", "/api/v1/lookup/lockfile", {"data": b"{}"}),
        ("GET", "/packages/lookup?keys=pypi:django:5.0,npm:nope:1", {}),
        ("GET", "/packages/lookup", {}),
        ("POST", "/packages/lookup", {"data": {"keys": "pypi:django:5.0"}}),
        ("GET", f"/api/v1/cids/{cid}", {}),
        ("GET", "/api/v1/cids/" + raw_cid(b"absent"), {}),
        ("GET", "/api/v1/cids/xyz", {}),
        ("POST", "/api/v1/lookup/digests", {"json": {"digests": [digest, "sha256:zz", "0" * 40]}}),
        ("POST", "/api/v1/lookup/digests", {"json": {"keys": []}}),
        ("GET", f"/api/v1/lookup/digests?digests={digest}", {}),
        ("GET", "/api/v1/packages/pypi/Django", {}),
        ("GET", "/api/v1/packages/npm/nothing", {}),
        ("GET", "/api/v1/packages/pypi/-bad-", {}),
        ("GET", "/api/v1/packages/pypi/django/versions/5.0", {}),
        ("GET", "/api/v1/packages/pypi/django/versions/0.1", {}),
        ("GET", "/api/v1/packages/pypi/-bad-/versions/0.1", {}),
        ("GET", "/api/v1/stats", {}),
        ("POST", "/api/v1/import", {"json": {"key": "pkg:npm/left-pad"}, "headers": auth}),
        ("POST", "/api/v1/import", {"json": {"key": "pkg:npm/left-pad"}}),
        ("POST", "/api/v1/import", {"json": {"key": 1}, "headers": auth}),
        ("POST", "/api/v1/import", {"json": {"key": "go:a.b/c"}, "headers": auth}),
        ("GET", "/api/openapi.json", {}),
        ("GET", "/api/v1/archives/failed?per_page=10", {}),
        ("GET", "/api/v1/archives/failed?page=0", {}),
    ]
    for method, path, kwargs in calls:
        response = await api.client.request(method, path, **kwargs)
        assert response.content_type == "application/json"
        checker.check(method, path, response.status, json.loads(await response.read()))
    successes = {(m, p) for m, p, status in checker.exercised if status.startswith("2")}
    documented = {(m, p) for p, ops in checker.document["paths"].items() for m in ops}
    assert successes == documented  # every operation was seen succeeding


async def test_a_drifted_body_is_caught() -> None:
    checker = Checker()
    with pytest.raises(AssertionError, match="'status' is a required property"):
        checker.check("GET", "/api/v1/lookup", 200, {"results": [{"key": "x"}], "summary": {}})
    with pytest.raises(AssertionError, match="status 418 undocumented"):
        checker.check("GET", "/api/v1/stats", 418, {})
