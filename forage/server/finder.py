"""What the search box finds: one text read as a purl, a Forage key, a CID, a registry digest
or part of a package name, each sent to the page that answers it.

A purl or key (``pkg:npm/left-pad@1.3.0``, ``npm:left-pad:1.3.0``) leads to its package's
page, at the version's section when it names one; a CID (:func:`storage.parse_cid`) and a
digest (:func:`forage.lookup.digests.parse_digest`) list the archived files with those bytes;
anything else is a name search. Reading a CID or a digest never hides the name search: a
text that is both (unlikely) gets both answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from forage.errors import InvalidKey
from forage.lookup.digests import lookup_digests, parse_digest
from forage.lookup.keys import PLATFORMS, Key, parse_key
from forage.lookup.normalize import normalize_name
from forage.lookup.reverse import CidMatch, artifacts_by_cid
from indexers import ECOSYSTEMS, InvalidDigest
from storage import InvalidCID, parse_cid


@dataclass(frozen=True, slots=True)
class FileHits:
    """Archived files found by CID or digest, and how the text was read."""

    kind: str
    normalized: str
    matches: tuple[CidMatch, ...]


def as_key(text: str) -> Key | None:
    """``text`` as a purl or Forage key of a registered ecosystem, else ``None``."""
    if not text.startswith("pkg:") and text.partition(":")[0].lower() not in PLATFORMS:
        return None
    try:
        key = parse_key(text, normalize=normalize_name)
    except (InvalidKey, ValueError):
        return None
    return key if key.ecosystem in ECOSYSTEMS else None


def _cid_text(text: str) -> str | None:
    """``text`` as base32 CIDv1 text (CIDv0 converted), else ``None``."""
    if not (text.startswith("b") or text.startswith("Qm")) or len(text) < 46:
        return None
    try:
        cid = parse_cid(text)
    except (InvalidCID, ValueError):
        return None
    return str(cid.set(version=1, base="base32") if cid.version == 0 else cid)


def find_files(session: Session, text: str, now: datetime | None = None) -> FileHits | None:
    """The archived files ``text`` names as a CID or a digest (``None``: it is neither)."""
    cid = _cid_text(text)
    if cid is not None:
        return FileHits("CID", cid, tuple(artifacts_by_cid(session, cid, now=now)))
    try:
        parse_digest(text)
    except InvalidDigest:
        return None
    (result,) = lookup_digests(session, [text], now=now)
    return FileHits("digest", text, result.matches)
