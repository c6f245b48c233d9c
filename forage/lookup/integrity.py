"""Whether the bytes a lockfile was made with are the bytes Forage holds.

A lockfile pins digests of a release's files (npm's SRI, pip's ``--hash``, an SBOM's hashes:
:attr:`~indexers.LockEntry.integrity`), and a purl may carry them too: its ``checksum``
qualifier (``sha256:<hex>``, comma separated, per the purl specification) and its
``file_name``, which name one file of the release. A lockfile's answer narrows a found
version's files to those the qualifiers name, then compares every pinned digest with the
digests Forage holds for them: the registry's, which the archive was verified against, and
the archive's own. A pinned digest no file has is a ``mismatch``: the lockfile was made
with other bytes than the registry serves (a republished file, a tampered mirror), which a
``found`` alone would hide.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

from forage.lookup.views import ArtifactView, KeyResult, KeyStatus
from indexers import LockEntry
from indexers.digests import HASHERS
from indexers.lockfiles import pinned_hashes


class Integrity(enum.StrEnum):
    """How a dependency's pinned digests compare with the files Forage holds."""

    #: Every pinned digest Forage could compare is a digest of one of the files.
    MATCH = "match"
    #: A pinned digest is of an algorithm the files have, but matches none of them.
    MISMATCH = "mismatch"
    #: Digests are pinned, but nothing to compare them with (not found, other algorithms).
    UNKNOWN = "unknown"
    #: The lockfile pins no digest for this dependency.
    UNPINNED = "unpinned"


def _qualifiers(key: str) -> dict[str, str]:
    """A purl's qualifiers (``?a=b&c=d`` before any ``#subpath``), names lowercased."""
    _, mark, rest = key.partition("?")
    if not mark:
        return {}
    return {name.lower(): value for name, value in parse_qsl(rest.partition("#")[0])}


def _checksums(value: str) -> list[tuple[str, str]]:
    """The digests of a purl's ``checksum`` qualifier (``sha256:<hex>,sha1:<hex>``), read as
    every lockfile's pinned hashes are (``SHA-256:`` spelled ``sha256``)."""
    return list(pinned_hashes(item.strip() for item in value.split(",")))


def _lower(algorithm: str, value: str) -> str:
    """Hex digests compare case-blind; others (Go's ``h1:<base64>``) exactly as stored."""
    return value.lower() if algorithm in HASHERS else value


def _spelled(algorithm: str, value: str) -> str:
    """``algorithm:value``, once: an ``h1:<base64>`` already names its algorithm."""
    return value if value.startswith(f"{algorithm}:") else f"{algorithm}:{value}"


def _digests(artifact: ArtifactView) -> dict[str, str]:
    """Every digest Forage holds for a file: the registry's and the archive's own."""
    digests = {algorithm: _lower(algorithm, value) for algorithm, value in artifact.digests.items()}
    if artifact.archive_digest:
        algorithm, _, value = artifact.archive_digest.partition(":")
        digests.setdefault(algorithm, _lower(algorithm, value))
    return digests


def compare(
    pinned: Iterable[tuple[str, str]], artifacts: Sequence[ArtifactView]
) -> tuple[Integrity, list[str]]:
    """The verdict for ``pinned`` against ``artifacts``, and the pinned digests (as
    ``algorithm:hex``) that no file has."""
    pinned = list(dict.fromkeys(pinned))
    if not pinned:
        return Integrity.UNPINNED, []
    held = [_digests(artifact) for artifact in artifacts]
    comparable = [(alg, value) for alg, value in pinned if any(alg in d for d in held)]
    if not comparable:
        return Integrity.UNKNOWN, []
    missed = [
        _spelled(alg, value)
        for alg, value in comparable
        if not any(d.get(alg) == value for d in held)
    ]
    return (Integrity.MISMATCH if missed else Integrity.MATCH), missed


def checked(entry: LockEntry, result: KeyResult) -> dict[str, Any]:
    """``result`` as JSON for a lockfile's dependency: its files narrowed to those the key's
    ``file_name`` and ``checksum`` qualifiers name, with the ``integrity`` verdict and the
    ``pinned`` digests (and, on a mismatch, the ``mismatched`` ones)."""
    qualifiers = _qualifiers(entry.key or "")
    checksums = _checksums(qualifiers.get("checksum", ""))
    pinned = [*entry.integrity, *checksums]
    file_name = qualifiers.get("file_name")
    if result.status is KeyStatus.FOUND and result.rendered is None and result.artifacts:
        views = result.artifacts
        if file_name:
            views = tuple(a for a in views if a.filename == file_name)
        if checksums:
            # The files the checksum names; none of them: all, and the verdict says mismatch.
            matching = tuple(a for a in views if any(_digests(a).get(k) == v for k, v in checksums))
            views = matching or views
        result = replace(result, artifacts=views)
        if not views:
            reason = f"{result.parsed.name if result.parsed else entry.key} has no file {file_name}"
            result = KeyResult(result.key, KeyStatus.NOT_FOUND, result.parsed, reason=reason)
    verdict, missed = compare(pinned, result.artifacts if result.rendered is None else ())
    out = {"source": entry.source, **result.to_json(), "integrity": verdict.value}
    out["pinned"] = [_spelled(alg, value) for alg, value in dict.fromkeys(pinned)]
    if missed:
        out["mismatched"] = missed
    return out
