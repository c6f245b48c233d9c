"""Real ``.gem`` files built in Python, for the fake registry: ``gem install`` installs them.

A ``.gem`` (``rubygems/rubygems: lib/rubygems/package.rb``) is a plain tar of three members:
``metadata.gz`` (the gzipped YAML ``Gem::Specification``), ``data.tar.gz`` (the gzipped tar
of the gem's files) and ``checksums.yaml.gz`` (SHA256 and SHA512 of the other two), in that
order, as ``gem build`` writes them. The YAML follows ``gem build``'s output key for key;
strings are written as JSON strings, which YAML reads as double-quoted scalars.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: A fixed build time: the same inputs give the same bytes.
MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z


def _requirement_yaml(requirements: Sequence[str], indent: str) -> list[str]:
    lines = [f"{indent}requirements:"]
    for text in requirements or (">= 0",):
        op, _, version = text.strip().partition(" ")
        if not version:
            op, version = "=", op
        lines += [
            f"{indent}- - {json.dumps(op)}",
            f"{indent}  - !ruby/object:Gem::Version",
            f"{indent}    version: {json.dumps(version)}",
        ]
    return lines


@dataclass(frozen=True)
class GemSpec:
    """What a built gem declares: name, version, platform, files and runtime dependencies."""

    name: str
    version: str
    platform: str = "ruby"
    files: Mapping[str, bytes] = field(default_factory=dict)
    dependencies: Sequence[tuple[str, Sequence[str]]] = ()
    required_ruby_version: Sequence[str] = ()
    summary: str = "A gem served by a fake registry"

    def yaml(self) -> bytes:
        """The ``metadata.gz`` content before gzip, as ``gem build`` writes it."""
        lines = [
            "--- !ruby/object:Gem::Specification",
            f"name: {json.dumps(self.name)}",
            "version: !ruby/object:Gem::Version",
            f"  version: {json.dumps(self.version)}",
            f"platform: {json.dumps(self.platform)}",
            "authors:",
            '- "Forage tests"',
            "autorequire:",
            "bindir: bin",
            "cert_chain: []",
            "date: 2024-01-01 00:00:00.000000000 Z",
            "dependencies:" + ("" if self.dependencies else " []"),
        ]
        for dep, reqs in self.dependencies:
            lines += [
                "- !ruby/object:Gem::Dependency",
                f"  name: {json.dumps(dep)}",
                "  requirement: !ruby/object:Gem::Requirement",
                *_requirement_yaml(reqs, "    "),
                "  type: :runtime",
                "  prerelease: false",
                "  version_requirements: !ruby/object:Gem::Requirement",
                *_requirement_yaml(reqs, "    "),
            ]
        lines += [
            "description:",
            "email:",
            "executables: []",
            "extensions: []",
            "extra_rdoc_files: []",
            "files:",
            *(f"- {json.dumps(path)}" for path in sorted(self.files)),
            "homepage:",
            "licenses: []",
            "metadata: {}",
            "post_install_message:",
            "rdoc_options: []",
            "require_paths:",
            "- lib",
            "required_ruby_version: !ruby/object:Gem::Requirement",
            *_requirement_yaml(self.required_ruby_version, "  "),
            "required_rubygems_version: !ruby/object:Gem::Requirement",
            *_requirement_yaml((), "  "),
            "requirements: []",
            'rubygems_version: "3.3.15"',
            "signing_key:",
            "specification_version: 4",
            f"summary: {json.dumps(self.summary)}",
            "test_files: []",
        ]
        return ("\n".join(lines) + "\n").encode()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=MTIME)


def _tar(members: Sequence[tuple[str, bytes]], *, mode: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in members:
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), MTIME, mode
            info.uname = info.gname = "wheel"
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_gem(spec: GemSpec) -> bytes:
    """The ``.gem`` file of ``spec``."""
    metadata = _gzip(spec.yaml())
    data = _gzip(_tar(sorted(spec.files.items()), mode=0o644))
    parts = {"metadata.gz": metadata, "data.tar.gz": data}
    sums = ["---"]
    for algorithm in ("SHA256", "SHA512"):
        sums.append(f"{algorithm}:")
        sums += [
            f"  {k}: {hashlib.new(algorithm.lower(), v).hexdigest()}" for k, v in parts.items()
        ]
    checksums = _gzip(("\n".join(sums) + "\n").encode())
    return _tar([*parts.items(), ("checksums.yaml.gz", checksums)], mode=0o444)


__all__ = ["GemSpec", "build_gem"]
