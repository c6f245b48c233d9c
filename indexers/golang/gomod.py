"""Go module paths, versions and ``h1:`` hashes: the rules of golang.org/x/mod, in Python.

- Module paths follow ``module.CheckPath``: ASCII letters, digits and ``+-._~`` in elements
  separated by ``/``; a lower-case first element with a dot (a domain); no ``..``, empty, dotted
  or Windows-reserved elements; a ``/vN`` (or gopkg.in ``.vN``) major suffix that is well formed.
- Versions are canonical semantic versions with a leading ``v`` (``semver.Canonical``), keeping
  only the ``+incompatible`` build suffix (``module.CanonicalVersion``), and must match the
  path's major suffix (``module.Check``). Pseudo-versions are semantic versions of three shapes
  (``module/pseudo.go``); :func:`is_pseudo_version` recognizes them.
- Proxy and checksum-database URLs carry *case-encoded* paths and versions: every upper-case
  letter becomes ``!`` and its lower-case form (``module.EscapePath``/``EscapeVersion``), so a
  static file tree on a case-insensitive file system can serve them.
- ``h1:`` is ``dirhash.Hash1``: SHA-256 over the lines ``"<sha256 hex>  <name>\\n"`` of every
  file, names sorted byte-wise, base64 with padding. Over a module zip it is ``HashZip`` (every
  entry name as stored, ``<module>@<version>/`` prefix included); over a ``.mod`` file the one
  name is ``go.mod``.

Specs: https://go.dev/ref/mod ("Module paths", "Versions", "Pseudo-versions", "Module zip
files", "Checksum database"); https://pkg.go.dev/golang.org/x/mod/module,
https://pkg.go.dev/golang.org/x/mod/semver, https://pkg.go.dev/golang.org/x/mod/sumdb/dirhash.
Hostile input (``..``, NUL, ``%2e``, absurd length) fails here, before any URL is built.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cmp_to_key
from typing import IO

from indexers.errors import DigestMismatch, InvalidArchive, InvalidDigest, InvalidName

log = logging.getLogger(__name__)

ECOSYSTEM = "golang"

#: Our own sanity bounds (Go sets none): longer than any real module path or version, short
#: enough that ``<escaped version>.info`` stays one file name (255 bytes) on a proxy's disk.
MAX_PATH_LENGTH = 1024
MAX_VERSION_LENGTH = 200

#: ``golang.org/x/mod/zip.MaxZipFile``: the go command refuses larger zips or contents.
MAX_ZIP_SIZE = 500 << 20

_CHUNK = 64 * 1024
_PATH_PUNCTUATION = frozenset("+-._~")
_BAD_WINDOWS_NAMES = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{i}" for i in range(1, 10)]
    + [f"lpt{i}" for i in range(1, 10)]
)
_PSEUDO_RE = re.compile(
    r"^v[0-9]+\.(0\.0-|[0-9]+\.[0-9]+-([^+]*\.)?0\.)[0-9]{14}-[A-Za-z0-9]+"
    r"(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)
_H1_RE = re.compile(r"^h1:[A-Za-z0-9+/]{43}=$")


def _invalid(value: str, reason: str) -> InvalidName:
    return InvalidName(ECOSYSTEM, value, reason)


def _check_element(path: str, elem: str) -> None:
    if elem == "":
        raise _invalid(path, "empty path element (double or trailing slash)")
    if elem.strip(".") == "":
        raise _invalid(path, f"invalid path element {elem!r}")
    if elem[0] == ".":
        raise _invalid(path, f"leading dot in path element {elem!r}")
    if elem[-1] == ".":
        raise _invalid(path, f"trailing dot in path element {elem!r}")
    for char in elem:
        if not (char.isascii() and (char.isalnum() or char in _PATH_PUNCTUATION)):
            raise _invalid(path, f"invalid character {char!r} in path element")
    if elem.split(".", 1)[0].lower() in _BAD_WINDOWS_NAMES:
        raise _invalid(path, f"{elem!r} is a reserved file name on Windows")


def split_path_version(path: str) -> tuple[str, str] | None:
    """Split ``path`` into (prefix, major suffix) like ``module.SplitPathVersion``.

    The suffix is ``""``, ``"/vN"`` (N >= 2) or, for gopkg.in, ``".vN"``; ``None`` means the
    last element looks like a major suffix but is malformed (``/v1``, ``/v02``, ``/v2.1``).
    """
    if path.startswith("gopkg.in/"):
        match = re.fullmatch(r"(.+)\.v([0-9]+)(-unstable)?", path)
        if match is None:
            return None
        path_major = f".v{match.group(2)}{match.group(3) or ''}"
        if match.group(2).startswith("0") and path_major != ".v0":
            return None
        return match.group(1), path_major
    match = re.fullmatch(r"(.*)/v([0-9.]+)", path)
    if match is None or match.group(1) == "":
        return path, ""
    number = match.group(2)
    if "." in number or number.startswith("0") or number == "1":
        return None
    return match.group(1), f"/v{number}"


def check_path(path: str) -> str:
    """Return ``path`` if it is a valid module path (``module.CheckPath``), else raise."""
    if len(path) > MAX_PATH_LENGTH:
        raise _invalid(path, f"longer than {MAX_PATH_LENGTH} characters")
    if "\x00" in path:
        raise _invalid(path, "contains NUL")
    if path == "":
        raise _invalid(path, "empty module path")
    if "%" in path:
        raise _invalid(path, "percent sign (percent-encoded input is not a module path)")
    if ".." in path:
        raise _invalid(path, "double dot")
    if path.startswith("/"):
        raise _invalid(path, "leading slash")
    for elem in path.split("/"):
        _check_element(path, elem)
    first = path.split("/", 1)[0]
    if "." not in first:
        raise _invalid(path, "missing dot in first path element")
    if first.startswith("-"):
        raise _invalid(path, "leading dash in first path element")
    for char in first:
        if not (char in "-." or char.isdigit() or "a" <= char <= "z"):
            raise _invalid(path, f"invalid character {char!r} in first path element")
    if split_path_version(path) is None:
        raise _invalid(path, "malformed major version suffix")
    return path


@dataclass(frozen=True, slots=True)
class _Semver:
    major: str
    minor: str
    patch: str
    short: str
    prerelease: str
    build: str


def _parse_int(text: str) -> tuple[str, str] | None:
    match = re.match(r"(0|[1-9][0-9]*)(?![0-9])", text)
    if match is None:
        return None
    return match.group(1), text[match.end() :]


def _parse_ident_list(text: str, prefix: str, *, numeric_rule: bool) -> tuple[str, str] | None:
    stop = {"-": "+", "+": ""}[prefix]
    end = text.find(stop) if stop else -1
    body = text[1:end] if end >= 0 else text[1:]
    for ident in body.split("."):
        if ident == "" or re.fullmatch(r"[0-9A-Za-z-]+", ident) is None:
            return None
        if numeric_rule and ident.isdigit() and len(ident) > 1 and ident[0] == "0":
            return None
    taken = len(body) + 1
    return text[:taken], text[taken:]


def _parse_semver(version: str) -> _Semver | None:
    if not version.startswith("v") or not version.isascii():
        return None
    parts: list[str] = []
    rest = version[1:]
    for index in range(3):
        if index:
            if rest == "":
                filled = [*parts, "0", "0"]
                short = ".0" * (3 - index)
                return _Semver(filled[0], filled[1], filled[2], short, prerelease="", build="")
            if not rest.startswith("."):
                return None
            rest = rest[1:]
        parsed = _parse_int(rest)
        if parsed is None:
            return None
        number, rest = parsed
        parts.append(number)
    prerelease = build = ""
    if rest.startswith("-"):
        pre = _parse_ident_list(rest, "-", numeric_rule=True)
        if pre is None:
            return None
        prerelease, rest = pre
    if rest.startswith("+"):
        meta = _parse_ident_list(rest, "+", numeric_rule=False)
        if meta is None:
            return None
        build, rest = meta
    if rest:
        return None
    return _Semver(parts[0], parts[1], parts[2], "", prerelease, build)


def is_semver(version: str) -> bool:
    """Whether ``version`` is a semantic version as ``golang.org/x/mod/semver`` accepts it."""
    return _parse_semver(version) is not None


def canonical_version(version: str) -> str:
    """``module.CanonicalVersion``: fill in ``.0``s, drop build metadata except ``+incompatible``.

    Returns ``""`` for a version that is not semver.
    """
    parsed = _parse_semver(version)
    if parsed is None:
        return ""
    core = f"v{parsed.major}.{parsed.minor}.{parsed.patch}{parsed.prerelease}"
    return core + ("+incompatible" if parsed.build == "+incompatible" else "")


def _compare_prerelease(left: str, right: str) -> int:
    if left == right:
        return 0
    if not left or not right:
        return 1 if not left else -1
    left_ids, right_ids = left[1:].split("."), right[1:].split(".")
    for a, b in zip(left_ids, right_ids, strict=False):
        if a == b:
            continue
        if a.isdigit() != b.isdigit():
            return -1 if a.isdigit() else 1
        if a.isdigit():
            return -1 if (len(a), a) < (len(b), b) else 1
        return -1 if a < b else 1
    return -1 if len(left_ids) < len(right_ids) else 1


def compare_versions(left: str, right: str) -> int:
    """``semver.Compare``: -1, 0 or 1 by precedence; invalid versions sort below valid ones."""
    a, b = _parse_semver(left), _parse_semver(right)
    if a is None or b is None:
        return (a is not None) - (b is not None)
    for x, y in ((a.major, b.major), (a.minor, b.minor), (a.patch, b.patch)):
        if x != y:
            return -1 if (len(x), x) < (len(y), y) else 1
    return _compare_prerelease(a.prerelease, b.prerelease)


def sort_versions(versions: Iterable[str]) -> list[str]:
    """Sort like ``semver.Sort``: by precedence, ties broken by the strings themselves."""

    def order(a: str, b: str) -> int:
        return compare_versions(a, b) or (a > b) - (a < b)

    return sorted(versions, key=cmp_to_key(order))


def is_prerelease(version: str) -> bool:
    """Whether ``version`` has a pre-release part (pseudo-versions usually do)."""
    parsed = _parse_semver(version)
    return parsed is not None and parsed.prerelease != ""


def major(version: str) -> str:
    """``semver.Major``: ``"v2"`` for ``v2.1.0``; ``""`` when not semver."""
    parsed = _parse_semver(version)
    return f"v{parsed.major}" if parsed else ""


def is_pseudo_version(version: str) -> bool:
    """Whether ``version`` is a pseudo-version (``vX.0.0-yyyymmddhhmmss-abcdef123456`` and kin)."""
    return version.count("-") >= 2 and is_semver(version) and bool(_PSEUDO_RE.match(version))


def pseudo_version_time(version: str) -> datetime:
    """The commit time a pseudo-version encodes (UTC); ``InvalidName`` if it is not one."""
    if not is_pseudo_version(version):
        raise _invalid(version, "not a pseudo-version")
    stem = version.split("+", 1)[0].rsplit("-", 1)[0]
    stamp = re.split(r"[.-]", stem)[-1]
    try:
        return datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError as exc:
        raise _invalid(version, f"malformed pseudo-version time {stamp!r}") from exc


def _matches_major(version: str, path_major: str) -> bool:
    if path_major.startswith(".v") and path_major.endswith("-unstable"):
        path_major = path_major.removesuffix("-unstable")
    if version.startswith("v0.0.0-") and path_major == ".v1":
        return True
    version_major = major(version)
    if path_major == "":
        return version_major in ("v0", "v1") or version.endswith("+incompatible")
    return version_major == path_major[1:]


def check_version(version: str, *, path: str | None = None) -> str:
    """Return ``version`` if canonical (and, with ``path``, matching its major suffix), else raise.

    ``+incompatible`` is accepted only for v2 and later on a path without a major suffix, as
    the go command requires.
    """
    if len(version) > MAX_VERSION_LENGTH:
        raise _invalid(version, f"longer than {MAX_VERSION_LENGTH} characters")
    if "\x00" in version:
        raise _invalid(version, "contains NUL")
    canonical = canonical_version(version)
    if canonical == "":
        raise _invalid(version, "not a semantic version (want vMAJOR.MINOR.PATCH[-pre])")
    if canonical != version:
        raise _invalid(version, f"not canonical (want {canonical})")
    incompatible = version.endswith("+incompatible")
    if incompatible and major(version) in ("v0", "v1"):
        raise _invalid(version, "+incompatible is only allowed for major versions 2 and up")
    if path is not None:
        split = split_path_version(check_path(path))
        path_major = split[1] if split else ""
        if incompatible and path_major:
            raise _invalid(version, f"+incompatible on {path}, which has a major suffix")
        if not _matches_major(version, path_major):
            want = path_major.lstrip("/.") if path_major else "v0 or v1"
            raise _invalid(version, f"does not match module path {path} (want {want})")
    return version


def _escape(text: str) -> str:
    return "".join(f"!{char.lower()}" if "A" <= char <= "Z" else char for char in text)


def escape_path(path: str) -> str:
    """``module.EscapePath``: the case-encoded path used in proxy and sumdb URLs."""
    return _escape(check_path(path))


def escape_version(version: str) -> str:
    """``module.EscapeVersion`` for a canonical version (checked first)."""
    return _escape(check_version(version))


def _unescape(escaped: str) -> str:
    out: list[str] = []
    bang = False
    for char in escaped:
        if bang:
            if not "a" <= char <= "z":
                raise _invalid(escaped, f"'!' followed by {char!r} instead of a lower-case letter")
            out.append(char.upper())
            bang = False
        elif char == "!":
            bang = True
        elif "A" <= char <= "Z":
            raise _invalid(escaped, "upper-case letter in an escaped string")
        else:
            out.append(char)
    if bang:
        raise _invalid(escaped, "trailing '!'")
    return "".join(out)


def unescape_path(escaped: str) -> str:
    """``module.UnescapePath``: the module path an escaped URL segment names (checked)."""
    if len(escaped) > 2 * MAX_PATH_LENGTH:
        raise _invalid(escaped, "escaped path too long")
    return check_path(_unescape(escaped))


def unescape_version(escaped: str) -> str:
    """``module.UnescapeVersion`` for a canonical version (checked)."""
    if len(escaped) > 2 * MAX_VERSION_LENGTH:
        raise _invalid(escaped, "escaped version too long")
    return check_version(_unescape(escaped))


def hash1(files: Iterable[tuple[bytes, str]]) -> str:
    """``dirhash.Hash1`` over ``(name, sha256 hex)`` pairs, names sorted byte-wise as Go does."""
    summary = hashlib.sha256()
    for name, digest in sorted(files):
        if b"\n" in name:
            raise InvalidArchive("<file list>", f"file name {name[:200]!r} contains a newline")
        summary.update(b"%s  %s\n" % (digest.encode("ascii"), name))
    return "h1:" + base64.b64encode(summary.digest()).decode("ascii")


def gomod_h1(data: bytes) -> str:
    """The ``/go.mod`` hash the checksum database records for a ``.mod`` file's bytes."""
    return hash1([(b"go.mod", hashlib.sha256(data).hexdigest())])


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    """The entry name's bytes as stored (Go hashes bytes; Python decoded them)."""
    if info.flag_bits & 0x800:
        return info.orig_filename.encode("utf-8")
    return info.orig_filename.encode("cp437")


def _unsafe_reason(name: bytes) -> str | None:
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    if text == "":
        return "empty name"
    for char, what in (("\x00", "NUL"), ("\n", "newline"), ("\\", "backslash"), (":", "colon")):
        if char in text:
            return f"contains {what}"
    if text.startswith("/"):
        return "absolute path"
    elements = text.removesuffix("/").split("/")
    if any(elem in ("", ".", "..") for elem in elements):
        return "empty, '.' or '..' path element"
    return None


def _checked_entries(
    archive: zipfile.ZipFile, *, url: str, max_size: int
) -> list[tuple[bytes, zipfile.ZipInfo]]:
    entries: list[tuple[bytes, zipfile.ZipInfo]] = []
    folded: set[str] = set()
    total = 0
    for info in archive.infolist():
        name = _raw_name(info)
        reason = _unsafe_reason(name)
        if reason is not None:
            raise InvalidArchive(url, f"unsafe entry name {name[:200]!r}: {reason}")
        key = name.decode("utf-8").casefold()
        if key in folded:
            raise InvalidArchive(url, f"duplicate entry name {name[:200]!r} (under case folding)")
        folded.add(key)
        if info.flag_bits & 0x1:
            raise InvalidArchive(url, f"encrypted entry {name[:200]!r}")
        total += info.file_size
        if total > max_size:
            raise InvalidArchive(url, f"uncompressed contents exceed {max_size} bytes")
        entries.append((name, info))
    return entries


def zip_h1(fileobj: IO[bytes], *, url: str = "<zip>", max_size: int = MAX_ZIP_SIZE) -> str:
    """``dirhash.HashZip`` of a module zip read from a seekable binary file, in constant memory.

    Each entry is streamed through SHA-256 in 64 KiB chunks; only the central directory is
    held. Raises ``InvalidArchive`` for a corrupt zip, an unsafe or duplicate entry name, an
    encrypted entry, or more than ``max_size`` bytes (zip or contents).
    """
    fileobj.seek(0, 2)
    if fileobj.tell() > max_size:
        raise InvalidArchive(url, f"zip larger than {max_size} bytes")
    fileobj.seek(0)
    summary: list[tuple[bytes, str]] = []
    try:
        with zipfile.ZipFile(fileobj) as archive:
            for name, info in _checked_entries(archive, url=url, max_size=max_size):
                digest = hashlib.sha256()
                with archive.open(info) as member:
                    while chunk := member.read(_CHUNK):
                        digest.update(chunk)
                summary.append((name, digest.hexdigest()))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise InvalidArchive(url, f"unreadable zip: {exc}") from exc
    return hash1(summary)


def check_h1(value: str) -> str:
    """Return ``value`` if it is a well-formed ``h1:<base64 of 32 bytes>``, else raise."""
    if not _H1_RE.match(value):
        raise InvalidDigest("h1", value, "want 'h1:' and the base64 of 32 bytes")
    try:
        base64.b64decode(value[3:], validate=True)
    except binascii.Error as exc:
        raise InvalidDigest("h1", value, f"bad base64: {exc}") from exc
    return value


def verify_go_zip(fileobj: IO[bytes], expected_h1: str, *, url: str) -> str:
    """Check a module zip against the checksum database's ``h1:``; return it when equal.

    Raises ``InvalidDigest`` for a malformed ``expected_h1``, ``InvalidArchive`` for a bad zip
    and ``DigestMismatch`` when the contents differ.
    """
    check_h1(expected_h1)
    actual = zip_h1(fileobj, url=url)
    if actual != expected_h1:
        raise DigestMismatch(url, "h1", expected_h1, actual)
    log.debug("verified %s: %s", url, actual)
    return actual


__all__ = [
    "ECOSYSTEM",
    "MAX_PATH_LENGTH",
    "MAX_VERSION_LENGTH",
    "MAX_ZIP_SIZE",
    "canonical_version",
    "check_h1",
    "check_path",
    "check_version",
    "compare_versions",
    "escape_path",
    "escape_version",
    "gomod_h1",
    "hash1",
    "is_prerelease",
    "is_pseudo_version",
    "is_semver",
    "major",
    "pseudo_version_time",
    "sort_versions",
    "split_path_version",
    "unescape_path",
    "unescape_version",
    "verify_go_zip",
    "zip_h1",
]
