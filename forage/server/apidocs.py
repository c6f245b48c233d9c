"""The human API reference: ``openapi.json`` rendered as one HTML page (``/docs``, also
``/api/docs``) by Forage itself, with no script and nothing fetched from elsewhere.

The page is made from the document served at ``/api/openapi.json`` (:mod:`forage.server.openapi`),
so the two never disagree: each operation with its parameters, request body and example,
and responses; then each schema with its properties. Types are spelled from the JSON Schema
(``$ref`` links to the schema, arrays as ``array of``, enums as their values). OpenAPI 3.1:
https://spec.openapis.org/oas/v3.1.0
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from forage.server.openapi import load_document

METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True, slots=True)
class Field:
    """A parameter, property or response line: its name, type, whether required, and notes."""

    name: str
    type: str
    required: bool
    description: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    ident: str
    summary: str
    description: str
    parameters: tuple[Field, ...]
    body: Field | None
    example: str | None
    responses: tuple[Field, ...]


@dataclass(frozen=True, slots=True)
class Schema:
    name: str
    description: str
    type: str
    properties: tuple[Field, ...]


@dataclass(frozen=True, slots=True)
class Reference:
    title: str
    version: str
    summary: str
    description: str
    operations: tuple[Operation, ...]
    schemas: tuple[Schema, ...]


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def type_text(schema: dict[str, Any]) -> str:
    """A JSON Schema as a short phrase: ``string``, ``array of Artifact``, ``"a" | "b"``."""
    name = _ref_name(schema)
    if name:
        return name
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    for combiner in ("oneOf", "anyOf"):
        if combiner in schema:
            return " or ".join(type_text(part) for part in schema[combiner])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array":
        return f"array of {type_text(schema.get('items', {}))}"
    return str(kind)


def _body_field(content: dict[str, Any]) -> tuple[Field | None, str | None]:
    for media, entry in content.items():
        schema = entry.get("schema", {})
        example = entry.get("example")
        shown = json.dumps(example, indent=2) if example is not None else None
        return Field(media, type_text(schema), True, "", _ref_name(schema)), shown
    return None, None


def _operation(path: str, method: str, spec: dict[str, Any]) -> Operation:
    parameters = tuple(
        Field(
            f"{p['name']} ({p['in']})",
            type_text(p.get("schema", {})),
            bool(p.get("required")),
            p.get("description", ""),
        )
        for p in spec.get("parameters", [])
    )
    body, example = _body_field(spec.get("requestBody", {}).get("content", {}))
    responses = []
    for status, response in spec.get("responses", {}).items():
        media: list[dict[str, Any]] = list(response.get("content", {}).values())
        schema: dict[str, Any] = media[0].get("schema", {}) if media else {}
        responses.append(
            Field(
                status,
                type_text(schema) if schema else "",
                False,
                response.get("description", ""),
                _ref_name(schema),
            )
        )
    return Operation(
        method=method.upper(),
        path=path,
        ident=spec.get("operationId", f"{method}-{path}"),
        summary=spec.get("summary", ""),
        description=spec.get("description", ""),
        parameters=parameters,
        body=body,
        example=example,
        responses=tuple(responses),
    )


def _schema(name: str, spec: dict[str, Any]) -> Schema:
    required = set(spec.get("required", []))
    properties = tuple(
        Field(key, type_text(value), key in required, value.get("description", ""))
        for key, value in spec.get("properties", {}).items()
    )
    return Schema(name, spec.get("description", ""), type_text(spec), properties)


@functools.cache
def reference() -> Reference:
    """The page's content, built once from the shipped document."""
    document = load_document()
    info = document.get("info", {})
    operations = tuple(
        _operation(path, method, spec)
        for path, item in document.get("paths", {}).items()
        for method, spec in item.items()
        if method in METHODS
    )
    schemas = tuple(
        _schema(name, spec)
        for name, spec in document.get("components", {}).get("schemas", {}).items()
    )
    return Reference(
        title=info.get("title", "API"),
        version=str(info.get("version", "")),
        summary=info.get("summary", ""),
        description=info.get("description", ""),
        operations=operations,
        schemas=schemas,
    )
