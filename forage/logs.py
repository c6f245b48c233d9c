"""Structured logs: one line per event, as text for people or logfmt/JSON for machines.

Every record carries the ids of what it is about. Fields come from two places:

- the **context** of the code that logs: :func:`log_context` binds fields (``job``, ``kind``,
  ``package``, ``artifact``...) for everything logged inside it, across ``await``\\ s, through
  a :class:`contextvars.ContextVar`; :func:`with_job_context` wraps a job handler so each
  job's records name the job, its kind and the ids in its payload;
- the **call**: ``log.info("...", extra={"fields": {"archived": 12}})`` adds fields to one
  record.

Formats (``--log-format`` or ``[logging] format``):

- ``text``: ``2024-05-01 12:00:00,123 INFO forage.index.ingest recorded npm/left-pad [job=7 ...]``;
- ``logfmt``: ``ts=... level=info logger=forage.index.ingest msg="recorded ..." job=7 kind=import``
  (https://brandur.org/logfmt);
- ``json``: one JSON object per line with the same keys.

Tracebacks stay on the record's line in the machine formats (an ``error`` field), so a line
is always one event. Only the CLI calls :func:`configure`; modules just use
``logging.getLogger(__name__)`` with lazy ``%`` arguments.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

#: Log line formats: ``text`` for people, ``logfmt`` (key=value) and ``json`` for machines
#: (here, not in :mod:`forage.config`, so the CLI's parser names them without loading it).
LOG_FORMATS: tuple[str, ...] = ("text", "logfmt", "json")

if TYPE_CHECKING:
    from forage.jobs.queue import Job
    from forage.jobs.worker import Handler, JobContext

__all__ = [
    "LOG_FORMATS",
    "ContextFilter",
    "JsonFormatter",
    "LogfmtFormatter",
    "TextFormatter",
    "configure",
    "current_fields",
    "job_fields",
    "log_context",
    "with_job_context",
]

_CONTEXT: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "forage_log_context", default=None
)
#: Payload keys copied into a job's log fields, under the field name on the right.
_PAYLOAD_FIELDS: Mapping[str, str] = {
    "artifact_id": "artifact",
    "archive_id": "archive",
    "pin_id": "pin",
    "piece_id": "piece",
    "version_id": "version_id",
    "backend": "backend",
}
#: Attributes every ``LogRecord`` has; anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "fields"}
_HANDLER_MARK = "_forage_structured"


def current_fields() -> Mapping[str, Any]:
    """The fields bound by the enclosing :func:`log_context` blocks."""
    return _CONTEXT.get() or {}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (``None`` values skipped) to every record logged inside the block."""
    merged = {**current_fields(), **{k: v for k, v in fields.items() if v is not None}}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def job_fields(job: Job) -> dict[str, Any]:
    """The log fields naming a job: id, kind, attempt and the ids its payload carries."""
    payload = job.payload
    fields: dict[str, Any] = {"job": job.id, "kind": job.kind, "attempt": job.attempt}
    ecosystem, name = payload.get("ecosystem"), payload.get("name")
    if ecosystem and name:
        fields["package"] = f"{ecosystem}/{name}"
    elif ecosystem:
        fields["registry"] = ecosystem
    for key, field_name in _PAYLOAD_FIELDS.items():
        if payload.get(key) is not None:
            fields[field_name] = payload[key]
    return fields


def with_job_context(handler: Handler) -> Handler:
    """Wrap a job handler so that everything it logs names its job (see :func:`job_fields`)."""

    async def run(ctx: JobContext, job: Job) -> None:
        with log_context(**job_fields(job)):
            await handler(ctx, job)

    run.__name__ = getattr(handler, "__name__", "handler")
    run.__doc__ = handler.__doc__
    run.__wrapped__ = handler  # type: ignore[attr-defined]
    return run


class ContextFilter(logging.Filter):
    """Attach the context's and the call's fields to each record as ``record.fields``."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = dict(current_fields())
        given = record.__dict__.get("fields")
        if isinstance(given, Mapping):
            fields.update(given)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                fields.setdefault(key, value)
        record.fields = fields
        return True


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = record.__dict__.get("fields")
    return fields if isinstance(fields, Mapping) else {}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts) or None


class TextFormatter(logging.Formatter):
    """``time LEVEL logger message [key=value ...]``, for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        head, newline, rest = line.partition("\n")
        suffix = " [" + " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items()) + "]"
        return head + suffix + newline + rest


def _logfmt_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else _json_text(value)
    if text and not any(c in text for c in ' ="\\\n\r\t'):
        return text
    return json.dumps(text, ensure_ascii=False)


def _json_text(value: Any) -> str:
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..." key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, Any]] = [
            ("ts", _timestamp(record)),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        pairs.extend(_fields(record).items())
        error = _error_text(self, record)
        if error:
            pairs.append(("error", error))
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in pairs)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            body.setdefault(key, value)
        error = _error_text(self, record)
        if error:
            body["error"] = error
        return json.dumps(body, default=str, ensure_ascii=False)


_FORMATTERS: Mapping[str, type[logging.Formatter]] = {
    "text": TextFormatter,
    "logfmt": LogfmtFormatter,
    "json": JsonFormatter,
}


def configure(
    *,
    format: str = "text",
    verbose: int = 0,
    quiet: bool = False,
    stream: TextIO | None = None,
    force: bool = False,
) -> None:
    """Log to ``stream`` (stderr) in ``format``, one line per event, replacing our handler.

    Forage's own events at INFO (DEBUG with ``verbose``), libraries' from WARNING (everything
    with ``verbose >= 2``); ``quiet`` keeps errors only. Like ``logging.basicConfig``, a root
    logger that already has someone else's handlers (a test runner's) keeps them and gets
    only the levels, unless ``force``.
    """
    if format not in _FORMATTERS:
        from forage.errors import ConfigError

        raise ConfigError("--log-format", f"must be one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    own = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    logging.getLogger("forage").setLevel(own)
    ours = [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]
    if not force and len(ours) < len(root.handlers):
        return
    for handler in ours:
        root.removeHandler(handler)
        handler.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_FORMATTERS[format]())
    handler.addFilter(ContextFilter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
