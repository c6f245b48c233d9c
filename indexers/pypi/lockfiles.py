"""pip's ``requirements.txt`` with every requirement pinned (``name==version``, ``--hash``
allowed), parsed with ``packaging.requirements``
(https://pip.pypa.io/en/stable/reference/requirements-file-format/)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from packaging.requirements import InvalidRequirement, Requirement

from indexers.ecosystem import LockfileFormat
from indexers.lockfiles import purl_key
from indexers.types import LockEntry

#: A line that starts like a requirement with a version clause (``name[extra] ==``...).
_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?\s*(===?|~=|!=|<=?|>=?)", re.MULTILINE
)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Join backslash continuations and drop comments, keeping the first line number."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def read_requirements(text: str) -> Iterator[LockEntry]:
    """Yield the pinned requirements (``name==version``) of a pip requirements file."""
    for number, line in _logical_lines(text):
        if not line or line.startswith("-"):
            continue
        source = f"line {number}"
        spec = " ".join(part for part in line.split() if not part.startswith("--hash"))
        try:
            requirement = Requirement(spec)
        except InvalidRequirement as exc:
            yield LockEntry(source, None, f"not a requirement: {exc}")
            continue
        pins = [s for s in requirement.specifier if s.operator in ("==", "===")]
        if requirement.url or len(pins) != 1 or "*" in pins[0].version:
            yield LockEntry(source, None, f"{requirement.name} is not pinned to one version")
            continue
        yield LockEntry(source, purl_key("pypi", requirement.name, pins[0].version))


def _is_requirements(base: str, text: str) -> bool:
    if base and not base.endswith((".txt", ".in")):
        return False
    return not text.lstrip().startswith(("{", "[")) and bool(_REQUIREMENT.search(text))


REQUIREMENTS = LockfileFormat(
    name="requirements.txt",
    filenames=("requirements.txt",),
    detect=_is_requirements,
    read=read_requirements,
)

__all__ = ["REQUIREMENTS", "read_requirements"]
