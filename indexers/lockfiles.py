"""Read the packages a lockfile or SBOM names, as lookup keys.

Each ecosystem's home declares its own formats (:class:`~indexers.ecosystem.LockfileFormat`:
npm's ``package-lock.json`` and ``yarn.lock``, pip's ``requirements.txt`` and Poetry's
``poetry.lock``, Go's ``go.sum``...); the formats that span ecosystems, SBOMs naming every
component by purl (CycloneDX JSON and XML, SPDX 2.3 JSON), live in :mod:`indexers.sboms`.
:func:`read_lockfile` picks the format by file name, then by content, and returns one
:class:`~indexers.types.LockEntry` per dependency: a purl key with the digests the document
pins, or a ``problem`` saying why it has none; one bad line never hides the others. A
document of no known format raises :class:`~indexers.errors.UnsupportedLockfile`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from packageurl import PackageURL

from indexers.digests import HASHERS, normalize_hex, parse_sri
from indexers.ecosystem import LockfileFormat
from indexers.errors import InvalidDigest, LockfileError, UnsupportedLockfile
from indexers.jsontext import load_json
from indexers.types import LockEntry

#: The most dependencies one lockfile may name; larger files are refused.
MAX_ENTRIES = 100_000


def purl_key(type_: str, name: str, version: str) -> str:
    """The purl of one release; a ``/`` in ``name`` separates the namespace."""
    namespace, _, base = name.rpartition("/")
    return PackageURL(
        type=type_, namespace=namespace or None, name=base, version=version
    ).to_string()


def load_json_object(text: str, what: str) -> dict[str, Any]:
    """Parse a JSON lockfile, which must be an object of Unicode text (no lone surrogates:
    see :mod:`indexers.jsontext`); ``LockfileError`` otherwise."""
    try:
        document = load_json(text)
    except ValueError as exc:
        raise LockfileError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise LockfileError("a JSON lockfile must be an object")
    return document


def hash_algorithm(name: str) -> str | None:
    """hashlib's name for a digest algorithm as lockfiles and SBOMs spell it (``SHA-256``,
    ``SHA256``, ``sha256``, ``BLAKE2b-256``), ``None`` for one Forage never computes."""
    spelled = name.strip().lower().replace("-", "").replace("_", "")
    known = {algorithm.replace("_", ""): algorithm for algorithm in HASHERS}
    return known.get(spelled)


def pinned_digest(algorithm: str, value: str) -> tuple[tuple[str, str], ...]:
    """``((algorithm, hex),)`` for a digest a document pins, or ``()`` for one Forage cannot
    compare (an unknown algorithm, a malformed value: nothing to check, nothing refused)."""
    name = hash_algorithm(algorithm)
    if name is None:
        return ()
    try:
        return ((name, normalize_hex(name, value)),)
    except InvalidDigest:
        return ()


def pinned_hashes(values: Iterable[object]) -> tuple[tuple[str, str], ...]:
    """The digests of ``"<algorithm>:<hex>"`` strings (pip, Poetry, uv, Pipfile.lock, a purl's
    ``checksum``; ``=`` also separates), those Forage cannot compare left out."""
    pinned: list[tuple[str, str]] = []
    for value in values:
        if isinstance(value, str):
            algorithm, _, digest = value.replace("=", ":", 1).partition(":")
            pinned.extend(pinned_digest(algorithm, digest))
    return tuple(dict.fromkeys(pinned))


def pinned_sri(integrity: object) -> tuple[tuple[str, str], ...]:
    """The digests of an SRI string (npm, yarn v1, pnpm), ``()`` for a malformed one."""
    if not isinstance(integrity, str):
        return ()
    try:
        return tuple(parse_sri(integrity).items())
    except InvalidDigest:
        return ()


def lockfile_formats() -> tuple[LockfileFormat, ...]:
    """Every format Forage reads: each registered ecosystem's, then the SBOMs."""
    from indexers.ecosystems import ECOSYSTEMS
    from indexers.sboms import SBOM_FORMATS

    own = tuple(fmt for eco in ECOSYSTEMS.values() for fmt in eco.lockfiles)
    return (*own, *SBOM_FORMATS)


def supported_formats() -> tuple[str, ...]:
    """The names of the formats :func:`read_lockfile` reads, for errors and the API."""
    return tuple(fmt.name for fmt in lockfile_formats())


def _choose(text: str, base: str) -> LockfileFormat:
    formats = lockfile_formats()
    named = [fmt for fmt in formats if base and fmt.filenames and base in fmt.filenames]
    if named:
        return named[0]
    for fmt in formats:
        if fmt.detect(base, text):
            return fmt
    if text.lstrip().startswith(("{", "[")):
        load_json_object(text, base or "lockfile")
    raise UnsupportedLockfile(base or "the document", supported_formats())


def read_lockfile(data: bytes, *, filename: str = "") -> list[LockEntry]:
    """Detect the format of ``data`` (by name, then content) and return its entries."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LockfileError(f"{filename or 'lockfile'} is not UTF-8 text") from exc
    base = filename.rsplit("/", 1)[-1]
    result: list[LockEntry] = []
    for entry in _choose(text, base).read(text):
        if len(result) >= MAX_ENTRIES:
            raise LockfileError(f"more than {MAX_ENTRIES} dependencies")
        result.append(entry)
    return result


__all__ = [
    "MAX_ENTRIES",
    "LockEntry",
    "LockfileError",
    "UnsupportedLockfile",
    "hash_algorithm",
    "load_json_object",
    "lockfile_formats",
    "pinned_digest",
    "pinned_hashes",
    "pinned_sri",
    "purl_key",
    "read_lockfile",
    "supported_formats",
]
