"""Real, reproducible distribution files for the fake PyPI, byte-identical for the same name
and version: wheels (zips with ``METADATA``, ``WHEEL`` and ``RECORD``; the binary distribution
format of packaging.python.org's specifications) and sdists (tar.gz with ``PKG-INFO``)."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import zipfile
from base64 import urlsafe_b64encode


def _dist(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def core_metadata(
    name: str, version: str, requires_python: str | None, requires: tuple[str, ...] = ()
) -> bytes:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines.append("Summary: fixture project")
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    return ("\n".join(lines) + "\n\n").encode()


def _record_hash(data: bytes) -> str:
    digest = urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def make_wheel(
    name: str,
    version: str,
    tag: str = "py3-none-any",
    requires_python: str | None = None,
    requires: tuple[str, ...] = (),
) -> tuple[str, bytes, bytes]:
    """Build a real, reproducible wheel (``requires``: its ``Requires-Dist`` lines); return
    ``(filename, wheel bytes, METADATA bytes)``."""
    dist = _dist(name)
    info = f"{dist}-{version}.dist-info"
    metadata = core_metadata(name, version, requires_python, requires)
    wheel = f"Wheel-Version: 1.0\nGenerator: forage-fake\nRoot-Is-Purelib: true\nTag: {tag}\n"
    members = {
        f"{dist}/__init__.py": f'__version__ = "{version}"\n'.encode(),
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": wheel.encode(),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in members.items())
    members[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, data in members.items():
            archive.writestr(zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return f"{dist}-{version}-{tag}.whl", raw.getvalue(), metadata


def make_sdist(name: str, version: str, requires_python: str | None = None) -> tuple[str, bytes]:
    """Build a real, reproducible sdist (tar.gz with ``PKG-INFO``); return filename and bytes."""
    dist = _dist(name)
    top = f"{dist}-{version}"
    members = {
        f"{top}/PKG-INFO": core_metadata(name, version, requires_python),
        f"{top}/pyproject.toml": (
            f'[project]\nname = "{name}"\nversion = "{version}"\n'
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        ).encode(),
        f"{top}/src/{dist}/__init__.py": f'__version__ = "{version}"\n'.encode(),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in members.items():
            entry = tarfile.TarInfo(path)
            entry.size = len(data)
            entry.mode = 0o644
            tar.addfile(entry, io.BytesIO(data))
    return f"{top}.tar.gz", gzip.compress(raw.getvalue(), mtime=0)


__all__ = ["core_metadata", "make_sdist", "make_wheel"]
