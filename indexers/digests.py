"""Upstream digests: parse npm's Subresource Integrity strings, normalize hex, verify streams.

Registries publish digests in three spellings, all normalized here to the ``algorithm -> lowercase
hex`` mapping of :class:`~indexers.types.Artifact`:

- npm ``dist.integrity`` is SRI (https://www.w3.org/TR/SRI/#the-integrity-attribute): space
  separated ``<alg>-<base64>[?<options>]`` tokens, possibly several algorithms; npm's
  ``dist.shasum`` is sha1 hex.
- PyPI's ``hashes`` (PEP 691) and ``digests`` (JSON API) are hex keyed by hashlib name.
- Go's ``h1:`` is a hash over the files inside a module zip, not over the zip's bytes, so it
  cannot be computed from a byte stream alone: :class:`DigestVerifier` leaves such algorithms to
  the caller, who passes the value it computed (``indexers.golang.indexer``) to
  :meth:`DigestVerifier.finish` as ``computed={"h1": ...}``; otherwise they are reported as
  unchecked, never silently treated as verified.

:class:`DigestVerifier` hashes chunks as they stream past (constant memory, one pass, like
bandersnatch's ``fetch_and_store``) and raises :class:`~indexers.errors.DigestMismatch` at the
end if the size or any digest it could compute differs from the registry's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from indexers.errors import DigestMismatch, InvalidDigest
from indexers.types import Artifact

log = logging.getLogger(__name__)


def _blake2b_256() -> Any:
    return hashlib.blake2b(digest_size=32)


#: Algorithms computed from the bytes, by normalized name, with their digest size in bytes.
HASHERS: Mapping[str, tuple[Callable[[], Any], int]] = {
    "sha512": (hashlib.sha512, 64),
    "sha384": (hashlib.sha384, 48),
    "sha256": (hashlib.sha256, 32),
    "sha1": (hashlib.sha1, 20),
    "md5": (hashlib.md5, 16),
    "blake2b_256": (_blake2b_256, 32),
}

#: The algorithms SRI allows (CSP3 / SRI spec), strongest first; npm emits sha512 and sha1.
SRI_ALGORITHMS = ("sha512", "sha384", "sha256", "sha1")

#: Order in which digests are compared: a mismatch is reported for the strongest algorithm.
STRENGTH = ("sha512", "sha384", "sha256", "blake2b_256", "sha1", "md5")


def normalize_hex(algorithm: str, value: str) -> str:
    """Return ``value`` as lowercase hex, checking its length for a known ``algorithm``."""
    text = value.strip().lower()
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise InvalidDigest(algorithm, value, "not hexadecimal") from exc
    known = HASHERS.get(algorithm)
    if known is not None and len(raw) != known[1]:
        raise InvalidDigest(algorithm, value, f"{len(raw)} bytes, expected {known[1]}")
    return text


def parse_sri(integrity: str) -> dict[str, str]:
    """Map an SRI string to ``{algorithm: hex}``, ignoring algorithms SRI does not define.

    Options after ``?`` are dropped. When one algorithm appears twice (allowed by SRI: any may
    match), the first is kept. A token with a known algorithm but a bad base64 value, or a
    string with no usable token, raises ``InvalidDigest``.
    """
    digests: dict[str, str] = {}
    for token in integrity.split():
        algorithm, sep, rest = token.partition("-")
        algorithm = algorithm.lower()
        if not sep or algorithm not in SRI_ALGORITHMS:
            log.debug("ignoring SRI token with unknown algorithm %r", token[:40])
            continue
        encoded = rest.partition("?")[0]
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise InvalidDigest(algorithm, token, "value is not base64") from exc
        value = normalize_hex(algorithm, raw.hex())
        digests.setdefault(algorithm, value)
    if not digests:
        raise InvalidDigest("sri", integrity, "no sha512/sha384/sha256/sha1 token")
    return digests


def to_sri(digests: Mapping[str, str]) -> str:
    """Render the strongest SRI-capable digest as an SRI token (for re-served packuments)."""
    for algorithm in SRI_ALGORITHMS:
        if algorithm in digests:
            raw = bytes.fromhex(normalize_hex(algorithm, digests[algorithm]))
            return f"{algorithm}-{base64.b64encode(raw).decode('ascii')}"
    raise InvalidDigest("sri", repr(sorted(digests)), "no sha512/sha384/sha256/sha1 digest")


@dataclass(frozen=True, slots=True)
class DigestCheck:
    """The outcome of a verification that passed.

    ``actual`` holds every digest computed from the bytes (expected ones and those asked for
    with ``also``); ``verified`` the algorithms compared equal; ``unchecked`` the expected
    algorithms nobody computed (e.g. ``h1`` when the caller passed no value). A check with an
    empty ``verified`` proved nothing: the caller decides whether that is acceptable.
    """

    size: int
    actual: Mapping[str, str]
    verified: tuple[str, ...]
    unchecked: tuple[str, ...]


class DigestVerifier:
    """Hash a byte stream once and compare it with the registry's digests at the end.

    ``expected`` is an artifact's digests (normalized names, hex values; ``h1`` and other
    non-hashlib algorithms are left to :meth:`finish`'s ``computed``). ``size`` is the expected
    byte count when the registry publishes one. ``also`` names extra hashlib algorithms to
    compute (the archive records a sha256 for every artifact, whatever the registry offers).

    Usage::

        verifier = DigestVerifier.for_artifact(artifact, also=("sha256",))
        async for chunk in response.aiter_bytes():
            verifier.update(chunk)
        check = verifier.finish()          # raises DigestMismatch
    """

    def __init__(
        self,
        url: str,
        expected: Mapping[str, str],
        *,
        size: int | None = None,
        also: Iterable[str] = (),
    ) -> None:
        self.url = url
        self.expected_size = size
        self.expected: dict[str, str] = {}
        for algorithm, value in expected.items():
            if algorithm in HASHERS:
                self.expected[algorithm] = normalize_hex(algorithm, value)
            else:
                self.expected[algorithm] = value
        wanted = {name for name in self.expected if name in HASHERS}
        for name in also:
            if name not in HASHERS:
                raise InvalidDigest(name, "", f"unknown algorithm; known: {sorted(HASHERS)}")
            wanted.add(name)
        self._hashers = {name: HASHERS[name][0]() for name in sorted(wanted)}
        self.size = 0

    @classmethod
    def for_artifact(cls, artifact: Artifact, *, also: Iterable[str] = ()) -> DigestVerifier:
        """Build a verifier from an :class:`~indexers.types.Artifact` (url, digests, size)."""
        return cls(artifact.url, artifact.digests, size=artifact.size, also=also)

    def update(self, chunk: bytes) -> None:
        """Feed the next chunk of the stream."""
        self.size += len(chunk)
        for hasher in self._hashers.values():
            hasher.update(chunk)

    def finish(self, *, computed: Mapping[str, str] | None = None) -> DigestCheck:
        """Compare size and digests; raise ``DigestMismatch`` for the strongest one that differs.

        ``computed`` supplies values for algorithms that are not hashes of the byte stream
        (Go's ``h1``), compared verbatim with the expected string.
        """
        if self.expected_size is not None and self.size != self.expected_size:
            raise DigestMismatch(self.url, "size", str(self.expected_size), str(self.size))
        actual = {name: hasher.hexdigest() for name, hasher in self._hashers.items()}
        supplied = dict(computed or {})
        order = sorted(
            self.expected,
            key=lambda name: STRENGTH.index(name) if name in STRENGTH else len(STRENGTH),
        )
        verified: list[str] = []
        unchecked: list[str] = []
        for algorithm in order:
            want = self.expected[algorithm]
            got = actual.get(algorithm, supplied.get(algorithm))
            if got is None:
                unchecked.append(algorithm)
                continue
            if got != want:
                raise DigestMismatch(self.url, algorithm, want, got)
            verified.append(algorithm)
        if unchecked:
            log.debug("unchecked digests for %s: %s", self.url, unchecked)
        return DigestCheck(
            size=self.size,
            actual={**actual, **{k: v for k, v in supplied.items() if k in verified}},
            verified=tuple(verified),
            unchecked=tuple(unchecked),
        )


__all__ = [
    "HASHERS",
    "SRI_ALGORITHMS",
    "DigestCheck",
    "DigestVerifier",
    "normalize_hex",
    "parse_sri",
    "to_sri",
]
