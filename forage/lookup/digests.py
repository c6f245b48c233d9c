"""Lookups by digest: which archived files have these bytes, given registry digests.

Like deps.dev's ``query`` by hash and Software Heritage's ``/known/``, a batch of digests is
answered one result per digest, in order, in the shape of a key lookup: ``found`` with every
matching file (its package, version and the view a key lookup shows), ``not_found``, or
``invalid`` with the reason. A digest may be written in any registry's notation:

- hex, its algorithm told by its length (32 md5, 40 sha1, 64 sha256 or blake2b_256, 96 sha384,
  128 sha512) or named first: ``sha256:<hex>``, ``sha1=<hex>``;
- Subresource Integrity, as npm's ``dist.integrity`` (``sha512-<base64>``,
  https://www.w3.org/TR/SRI/);
- Go's module hash as the checksum database prints it (``h1:<base64>``, a SHA-256).

A file matches when one of its registry's digests equals the one given
(``artifact_digests``), or when its archive's own verified digest does (``archives``: the only
digest of a file whose registry published none). Both are indexed (migration 0008).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from forage.db.models import Archive, ArchiveStatus, Artifact, ArtifactDigest, Package, Version
from forage.lookup.query import load_artifacts
from forage.lookup.reverse import CidMatch
from indexers import InvalidDigest, normalize_hex, parse_sri
from indexers.digests import HASHERS
from indexers.lockfiles import hash_algorithm

#: Algorithms a bare hex digest may be, by its length in hex digits.
_BY_LENGTH = {
    32: ("md5",),
    40: ("sha1",),
    64: ("sha256", "blake2b_256"),
    96: ("sha384",),
    128: ("sha512",),
}
_NAMED = re.compile(r"(?P<name>[a-z0-9_-]{2,12})[:=](?P<hex>[0-9a-f]+)")
_SRI = re.compile(r"(?:sha512|sha384|sha256|sha1)-[A-Za-z0-9+/]+={0,2}(?:\?\S*)?")
_GO_H1 = re.compile(r"h1:[A-Za-z0-9+/]{43}=")
#: The longest digest text read (an SRI string with all four algorithms is under 400).
MAX_DIGEST_LENGTH = 512
#: Files listed per digest (a digest shared by more files is reported as ``truncated``).
MAX_MATCHES = 100
#: Values per ``IN`` list, well under SQLite's limit on bound variables.
_CHUNK = 500

STATUSES = ("found", "not_found", "invalid")
_T = TypeVar("_T")


def parse_digest(text: str) -> tuple[tuple[str, str], ...]:
    """The ``(algorithm, value)`` pairs ``text`` may stand for, as ``artifact_digests``
    stores them (lowercase hex, Go's ``h1:`` verbatim); :class:`InvalidDigest` if none."""
    given = text.strip()
    if not given:
        raise InvalidDigest("digest", text, "empty")
    if len(given) > MAX_DIGEST_LENGTH:
        raise InvalidDigest("digest", text, f"longer than {MAX_DIGEST_LENGTH} characters")
    if given.startswith("h1:"):
        if not _GO_H1.fullmatch(given):
            raise InvalidDigest("h1", text, "not h1: and the base64 of 32 bytes")
        return (("h1", given),)
    if all(_SRI.fullmatch(token) for token in given.split()):
        return tuple(sorted(parse_sri(given).items()))
    lowered = given.lower()
    named = _NAMED.fullmatch(lowered)
    if named:
        algorithm = hash_algorithm(named["name"])  # as lockfiles spell it: sha-256, sha256
        if algorithm is None:
            known = ", ".join(sorted(HASHERS))
            raise InvalidDigest(named["name"], text, f"unknown algorithm; known: {known}, h1")
        return ((algorithm, normalize_hex(algorithm, named["hex"])),)
    if re.fullmatch(r"[0-9a-f]+", lowered):
        algorithms = _BY_LENGTH.get(len(lowered))
        if algorithms is None:
            lengths = ", ".join(str(n) for n in _BY_LENGTH)
            raise InvalidDigest("hex", text, f"{len(lowered)} hex digits; expected {lengths}")
        return tuple((algorithm, lowered) for algorithm in algorithms)
    raise InvalidDigest(
        "digest", text, "not hex, ALGORITHM:HEX, SRI (sha512-BASE64) or Go's h1:BASE64"
    )


@dataclass(frozen=True, slots=True)
class DigestResult:
    """The answer for one digest, in the order the digests were given."""

    digest: str
    status: str
    candidates: tuple[tuple[str, str], ...] = ()
    error: str | None = None
    matches: tuple[CidMatch, ...] = field(default=())
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest, "status": self.status}
        if self.error is not None:
            out["error"] = self.error
            return out
        out["algorithms"] = sorted({algorithm for algorithm, _ in self.candidates})
        out["matches"] = [match.to_json() for match in self.matches]
        if self.truncated:
            out["truncated"] = True
        return out


def _chunks(values: Sequence[_T]) -> Iterable[Sequence[_T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _matching_ids(
    session: Session, wanted: set[tuple[str, str]]
) -> dict[tuple[str, str], set[int]]:
    """Artifact ids by ``(algorithm, value)``: registry digests and archives' own."""
    by_algorithm: dict[str, list[str]] = {}
    for algorithm, value in sorted(wanted):
        by_algorithm.setdefault(algorithm, []).append(value)
    found: dict[tuple[str, str], set[int]] = {}
    for algorithm, values in by_algorithm.items():
        for chunk in _chunks(values):
            upstream = sa.select(ArtifactDigest.value, ArtifactDigest.artifact_id).where(
                ArtifactDigest.algorithm == algorithm, ArtifactDigest.value.in_(chunk)
            )
            own = sa.select(Archive.verified_digest, Archive.artifact_id).where(
                Archive.verified_algorithm == algorithm,
                Archive.verified_digest.in_(chunk),
                Archive.status == ArchiveStatus.ARCHIVED,
            )
            rows: Iterable[Any] = session.execute(sa.union(upstream, own))
            for row in rows:
                found.setdefault((algorithm, row[0]), set()).add(int(row[1]))
    return found


def lookup_digests(
    session: Session, digests: Sequence[str], *, now: datetime | None = None
) -> list[DigestResult]:
    """One :class:`DigestResult` per digest in ``digests``, in order."""
    parsed: list[tuple[str, tuple[tuple[str, str], ...] | str]] = []
    for text in digests:
        try:
            parsed.append((text, parse_digest(text)))
        except InvalidDigest as exc:
            parsed.append((text, exc.reason))
    wanted = {pair for _, got in parsed if not isinstance(got, str) for pair in got}
    ids_by_pair = _matching_ids(session, wanted) if wanted else {}
    ids_by_digest: list[list[int]] = []
    for _, got in parsed:
        pairs = () if isinstance(got, str) else got
        ids_by_digest.append(sorted({i for pair in pairs for i in ids_by_pair.get(pair, ())}))
    every = sorted({i for listed in ids_by_digest for i in listed[:MAX_MATCHES]})
    matches = _artifact_matches(session, every, now=now)
    results = []
    for (text, got), ids in zip(parsed, ids_by_digest, strict=True):
        if isinstance(got, str):
            results.append(DigestResult(text, "invalid", error=got))
            continue
        listed = tuple(matches[i] for i in ids[:MAX_MATCHES] if i in matches)
        results.append(
            DigestResult(
                text,
                "found" if listed else "not_found",
                candidates=got,
                matches=listed,
                truncated=len(ids) > MAX_MATCHES,
            )
        )
    return results


def _artifact_matches(
    session: Session, artifact_ids: Sequence[int], *, now: datetime | None
) -> dict[int, CidMatch]:
    """Each artifact with its package and version, and the view a key lookup shows."""
    if not artifact_ids:
        return {}
    views = load_artifacts(session, artifact_ids=artifact_ids, now=now)
    by_id = {view.id: view for group in views.values() for view in group}
    out: dict[int, CidMatch] = {}
    for chunk in _chunks(artifact_ids):
        rows = session.execute(
            sa.select(Artifact.id, Package.ecosystem, Package.name, Version.number)
            .join(Version, Version.id == Artifact.version_id)
            .join(Package, Package.id == Version.package_id)
            .where(Artifact.id.in_(chunk))
        )
        for row in rows:
            if row.id in by_id:
                out[row.id] = CidMatch(row.ecosystem, row.name, row.number, by_id[row.id])
    return out


def summarize(results: Iterable[DigestResult]) -> dict[str, int]:
    """Count results by status (every status present)."""
    counts = dict.fromkeys(STATUSES, 0)
    for result in results:
        counts[result.status] += 1
    return counts


def digests_reply(results: Sequence[DigestResult]) -> dict[str, Any]:
    """The API's and ``forage lookup --digest --json``'s answer."""
    return {"results": [r.to_json() for r in results], "summary": summarize(results)}
