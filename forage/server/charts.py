"""Charts for the web pages, drawn on the server as inline SVG: no script, no outside CDN, so
they render the same offline, with JavaScript off, and in the tests' headless Chromium.

A chart is horizontal bars, one row per label, each bar stacked from its series' values and
scaled to the largest row. This module computes the geometry (pure functions over counts);
``templates/charts.html`` draws it, each segment carrying a ``<title>`` (the exact count on
hover) and ``data-`` attributes, and a table of the same numbers follows for screen readers.
SVG 1.1: https://www.w3.org/TR/SVG11/shapes.html#RectElement
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

#: Geometry in SVG user units (the chart scales to its container's width).
LABEL_WIDTH = 170
BAR_WIDTH = 420
VALUE_WIDTH = 90
ROW_HEIGHT = 24
BAR_HEIGHT = 16


@dataclass(frozen=True, slots=True)
class Segment:
    """One series' part of a row's bar."""

    series: str
    value: int
    x: float
    width: float


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    total: int
    y: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class BarChart:
    """A chart ready to draw: ``series`` names in stacking order (each a CSS class)."""

    ident: str
    title: str
    series: tuple[str, ...]
    rows: tuple[Row, ...]
    width: int
    height: int
    label_width: int = LABEL_WIDTH


def bar_chart(
    ident: str,
    title: str,
    series: Sequence[str],
    rows: Iterable[tuple[str, Sequence[int]]],
) -> BarChart:
    """Lay out ``rows`` (label, one value per series) as stacked
    horizontal bars, the longest row spanning the whole bar area."""
    given = list(rows)
    largest = max((sum(row[1]) for row in given), default=0)
    scale = BAR_WIDTH / largest if largest else 0.0
    laid: list[Row] = []
    for index, (label, values) in enumerate(given):
        x = float(LABEL_WIDTH)
        segments = []
        for name, value in zip(series, values, strict=True):
            width = value * scale
            segments.append(Segment(name, int(value), round(x, 2), round(width, 2)))
            x += width
        laid.append(Row(label, int(sum(values)), index * ROW_HEIGHT, tuple(segments)))
    return BarChart(
        ident=ident,
        title=title,
        series=tuple(series),
        rows=tuple(laid),
        width=LABEL_WIDTH + BAR_WIDTH + VALUE_WIDTH,
        height=max(1, len(laid)) * ROW_HEIGHT,
    )


def by_month(moments: Iterable[datetime], *, limit: int = 24) -> list[tuple[str, int]]:
    """Counts of ``moments`` per calendar month (``YYYY-MM``), in order, every month between
    the first and the last present (an empty month is a gap worth seeing), at most ``limit``
    months (the rest are summed into the last row, labelled ``later``)."""
    counts: dict[tuple[int, int], int] = {}
    for moment in moments:
        key = (moment.year, moment.month)
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return []
    (year, month), last = min(counts), max(counts)
    months: list[tuple[str, int]] = []
    while (year, month) <= last:
        months.append((f"{year:04d}-{month:02d}", counts.get((year, month), 0)))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    if len(months) > limit:
        later = sum(count for _, count in months[limit - 1 :])
        months = [*months[: limit - 1], ("later", later)]
    return months
