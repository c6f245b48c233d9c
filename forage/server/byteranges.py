"""RFC 9110 range requests and conditionals for a fixed representation (a piece's bytes).

aiohttp's ``FileResponse`` reads ``If-Range`` only as a date, answers a multi-range request
with 416 and makes its ETag from the file's mtime; this module holds what the piece route
needs instead, free of aiohttp's response machinery so each rule is testable on its own:
``Range`` parsing with coalescing (§14.1.2, §14.2), the precondition order (§13.2.2),
``If-Range`` with strong comparison (§13.1.5) and the ``multipart/byteranges`` layout (§14.6).
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

#: More range-specs than this and the header is ignored (§14.2 allows it): a whole 200.
MAX_RANGES = 32
CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class Span:
    """An inclusive byte range ``first``-``last`` that lies within the representation."""

    first: int
    last: int

    @property
    def length(self) -> int:
        """Bytes in the span."""
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` value of this span of a ``size``-byte representation."""
        return f"bytes {self.first}-{self.last}/{size}"


def _spec(text: str, size: int) -> Span | None:
    """A range-spec resolved against ``size``: ``None`` if unsatisfiable; ValueError if invalid."""
    first_text, dash, last_text = text.strip().partition("-")
    if not dash or not (first_text or last_text):
        raise ValueError(text)
    if not all(part.isdigit() and part.isascii() for part in (first_text or "0", last_text or "0")):
        raise ValueError(text)
    if not first_text:  # suffix-range: the last N bytes
        suffix = int(last_text)
        return Span(max(size - suffix, 0), size - 1) if suffix and size else None
    first = int(first_text)
    if last_text and int(last_text) < first:
        raise ValueError(text)  # §14.1.2: invalid, so the whole ranges-specifier is
    last = min(int(last_text), size - 1) if last_text else size - 1
    return Span(first, last) if first < size else None


def parse_range(header: str, size: int) -> list[Span] | None:
    """The satisfiable spans ``Range`` asks of ``size`` bytes, coalesced, in request order.

    ``None`` means serve the whole representation (a unit other than bytes, a syntax error
    or too many ranges: §14.2 lets a server ignore them); ``[]`` means 416.
    """
    unit, equals, specs = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    texts = [text for text in specs.split(",") if text.strip()]
    if not texts or len(texts) > MAX_RANGES:
        return None
    try:
        spans = [_spec(text, size) for text in texts]
    except ValueError:
        return None
    return coalesce([span for span in spans if span is not None])


def coalesce(spans: list[Span]) -> list[Span]:
    """Merge overlapping or adjacent spans (§14.6 allows it); each merged span takes the
    place of its earliest member, so parts keep the order the client asked for."""
    order = sorted(range(len(spans)), key=lambda i: spans[i].first)
    groups: list[tuple[int, Span]] = []  # (first position in the request, merged span)
    for index in order:
        span = spans[index]
        if groups and span.first <= groups[-1][1].last + 1:
            position, merged = groups[-1]
            groups[-1] = (min(position, index), Span(merged.first, max(merged.last, span.last)))
        else:
            groups.append((index, span))
    return [span for _, span in sorted(groups, key=lambda group: group[0])]


@dataclass(frozen=True, slots=True)
class Multipart:
    """A ``multipart/byteranges`` body laid out before it streams: each part's head and span,
    then the closing delimiter, so ``Content-Length`` is exact without reading any data."""

    boundary: str
    parts: tuple[tuple[bytes, Span], ...]
    tail: bytes

    @property
    def content_type(self) -> str:
        """The response's ``Content-Type``, naming the boundary."""
        return f"multipart/byteranges; boundary={self.boundary}"

    @property
    def length(self) -> int:
        """The whole body's size in bytes."""
        return sum(len(head) + span.length for head, span in self.parts) + len(self.tail)


def multipart(spans: list[Span], size: int, content_type: str, boundary: str) -> Multipart:
    """Lay out the parts of §14.6: the CRLF before each delimiter belongs to the delimiter."""
    parts = []
    for number, span in enumerate(spans):
        head = (
            (CRLF if number else b"")
            + f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: {span.content_range(size)}\r\n\r\n".encode("ascii")
        )
        parts.append((head, span))
    return Multipart(boundary, tuple(parts), CRLF + f"--{boundary}--".encode("ascii") + CRLF)


def http_date(moment: datetime) -> str:
    """IMF-fixdate (§5.6.7) of a moment; a naive one is taken as UTC."""
    return email.utils.format_datetime(_utc(moment), usegmt=True)


def _utc(moment: datetime) -> datetime:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(microsecond=0)


def _parse_date(text: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return _utc(parsed)


def _tags(text: str) -> list[str]:
    """The entity-tags of an ``If-Match``/``If-None-Match`` list (``*`` kept as is)."""
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def _opaque(tag: str) -> str:
    """A tag without its weakness marker, for the weak comparison of §8.8.3.2."""
    return tag[2:] if tag.startswith("W/") else tag


def precondition(
    method: str, headers: Mapping[str, str], etag: str, last_modified: datetime
) -> int | None:
    """412 or 304 when a precondition says so (evaluated in §13.2.2's order), else ``None``.

    ``etag`` is strong (``"..."``); ``If-Match`` compares strongly, ``If-None-Match`` weakly;
    the date conditions are read only when their entity-tag twin is absent, as §13.1 says.
    """
    modified = _utc(last_modified)
    if (if_match := headers.get("If-Match")) is not None:
        tags = _tags(if_match)
        if "*" not in tags and etag not in tags:
            return 412
    elif (since := _parse_date(headers.get("If-Unmodified-Since", ""))) and modified > since:
        return 412
    if (if_none_match := headers.get("If-None-Match")) is not None:
        tags = _tags(if_none_match)
        if "*" in tags or etag in {_opaque(tag) for tag in tags}:
            return 304 if method in ("GET", "HEAD") else 412
    elif method in ("GET", "HEAD") and (
        (since := _parse_date(headers.get("If-Modified-Since", ""))) and modified <= since
    ):
        return 304
    return None


def if_range_allows(headers: Mapping[str, str], etag: str, last_modified: datetime) -> bool:
    """Whether ``Range`` may be honoured (§13.1.5): no ``If-Range``, or one that matches.

    An entity-tag matches only strongly (a weak one never does); a date only if it is
    exactly the ``Last-Modified`` sent. Anything else means the client's copy is another
    representation, so it gets the whole one.
    """
    value = headers.get("If-Range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value == etag
    date = _parse_date(value)
    return date is not None and date == _utc(last_modified)
