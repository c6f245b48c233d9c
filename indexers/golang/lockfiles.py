"""Go's ``go.sum`` (https://go.dev/ref/mod#go-sum-files): the module versions whose zips it
records, by purl, pinning the zip's ``h1:`` as Forage stores it (``("h1", "h1:<base64>")``,
the checksum database's spelling); a ``/go.mod`` line pins the go.mod, not the zip."""

from __future__ import annotations

from collections.abc import Iterator

from indexers.ecosystem import LockfileFormat
from indexers.errors import InvalidDigest
from indexers.golang.gomod import check_h1
from indexers.lockfiles import purl_key
from indexers.types import LockEntry


def read_go_sum(text: str) -> Iterator[LockEntry]:
    """Yield the module versions whose zips a ``go.sum`` records (not ``/go.mod``-only ones)."""
    seen: set[tuple[str, str]] = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not fields[2].startswith("h1:"):
            yield LockEntry(f"line {number}", None, "not a go.sum line")
            continue
        module, version = fields[0], fields[1]
        if version.endswith("/go.mod") or (module, version) in seen:
            continue
        seen.add((module, version))
        yield LockEntry(
            f"line {number}", purl_key("golang", module, version), integrity=_pinned(fields[2])
        )


def _pinned(h1: str) -> tuple[tuple[str, str], ...]:
    """The zip's ``h1:`` as a pinned digest, ``()`` for a malformed one (nothing to compare)."""
    try:
        return (("h1", check_h1(h1)),)
    except InvalidDigest:
        return ()


def _is_go_sum(base: str, text: str) -> bool:
    stripped = text.lstrip()
    return bool(stripped) and " h1:" in stripped.splitlines()[0]


GO_SUM = LockfileFormat(name="go.sum", filenames=("go.sum",), detect=_is_go_sum, read=read_go_sum)

__all__ = ["GO_SUM", "read_go_sum"]
