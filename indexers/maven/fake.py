"""A loopback fake of a Maven repository shaped like Central, with its Maven Indexer index.

One aiohttp app serves, under ``/maven2/``:

- ``.index/nexus-maven-repository-index.properties`` and ``.index/nexus-maven-repository-
  index.N.gz``: one chunk per publication (the transfer format of :mod:`.indexdata`: ``u``,
  ``i``, ``m``, ``1`` fields; ``del`` records for a withdrawn version);
- ``GROUP/as/path/ARTIFACT/maven-metadata.xml`` (versions in deploy order) with its sidecars;
- ``.../VERSION/`` as Central's HTML directory listing, and every file with the ``.md5``,
  ``.sha1``, ``.sha256``, ``.sha512`` sidecars it was published with (older artifacts have only
  the first two).

Fixtures the issue asks for: classifiers (``-sources``, ``-javadoc``), a SNAPSHOT with
timestamped files and its own ``maven-metadata.xml``, a relocated artifact (a POM-only
version whose ``<distributionManagement><relocation>`` names new coordinates), a withdrawn
version (gone from the metadata and the layout, a ``del`` record in the index). Files are real:
jars are zips with a manifest and ``META-INF/maven/GROUP/ARTIFACT/pom.properties``; POMs
declare their dependencies. Faults and requests come from :mod:`indexers.fakeserver`.

Typed API (no pytest import)::

    maven = FakeMaven()
    maven.publish("org.example/lib", "1.0", classifiers=("sources", "javadoc"))
    maven.publish("org.example/app", "1.0", dependencies=("org.example:lib:1.0",))
    maven.publish("org.example/old", "0.9", sidecars=("md5", "sha1"))
    maven.relocate("org.example/moved", "1.0", to="org.example:lib:1.0")
    maven.publish_snapshot("org.example/lib", "1.1-SNAPSHOT")
    maven.tamper("org.example/lib", "1.0")          # other bytes, published sidecars kept
    maven.withdraw_release("org.example/lib", "1.0")
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from xml.sax.saxutils import escape

from aiohttp import web

from indexers.fakeserver import Faults, RequestLog, fake_app
from indexers.maven.documents import Entry, render_listing, render_metadata
from indexers.maven.indexdata import (
    PROPERTIES,
    IndexProperties,
    Record,
    chunk_name,
    record_document,
    render_properties,
    write_chunk,
)

PREFIX = "/maven2/"
ALL_SIDECARS = ("md5", "sha1", "sha256", "sha512")
CONTENT_TYPES = {"pom": "text/xml", "jar": "application/java-archive", "xml": "text/xml"}


def _digest(algorithm: str, data: bytes) -> str:
    return hashlib.new(algorithm, data).hexdigest()


def make_jar(group: str, artifact: str, version: str, note: str = "") -> bytes:
    """A small, deterministic jar."""
    buffer = io.BytesIO()
    stamp = (2024, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as jar:
        entries = {
            "META-INF/MANIFEST.MF": "Manifest-Version: 1.0\r\nCreated-By: forage-fake\r\n\r\n",
            f"META-INF/maven/{group}/{artifact}/pom.properties": (
                f"groupId={group}\nartifactId={artifact}\nversion={version}\n"
            ),
            f"{artifact.replace('-', '_')}/README{note}.txt": (
                f"{group}:{artifact}:{version}{note}\n"
            ),
        }
        for name, text in entries.items():
            jar.writestr(zipfile.ZipInfo(name, stamp), text)
    return buffer.getvalue()


def make_pom(
    group: str,
    artifact: str,
    version: str,
    *,
    packaging: str = "jar",
    dependencies: Sequence[str] = (),
    relocation: str | None = None,
) -> bytes:
    """A POM (``dependencies`` as ``group:artifact:version``)."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<project xmlns="http://maven.apache.org/POM/4.0.0">',
        "  <modelVersion>4.0.0</modelVersion>",
        f"  <groupId>{escape(group)}</groupId>",
        f"  <artifactId>{escape(artifact)}</artifactId>",
        f"  <version>{escape(version)}</version>",
        f"  <packaging>{escape(packaging)}</packaging>",
    ]
    if dependencies:
        lines.append("  <dependencies>")
        for coordinate in dependencies:
            g, a, v = coordinate.split(":")
            lines.append(
                f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
                f"<version>{v}</version></dependency>"
            )
        lines.append("  </dependencies>")
    if relocation:
        g, a, v = relocation.split(":")
        lines += [
            "  <distributionManagement>",
            "    <relocation>",
            f"      <groupId>{g}</groupId>",
            f"      <artifactId>{a}</artifactId>",
            f"      <version>{v}</version>",
            f"      <message>moved to {g}:{a}</message>",
            "    </relocation>",
            "  </distributionManagement>",
        ]
    lines.append("</project>")
    return ("\n".join(lines) + "\n").encode()


@dataclass
class MavenFile:
    """One published file: its bytes, the sidecars published for it, and what is served."""

    name: str
    data: bytes
    modified: datetime
    sidecars: tuple[str, ...] = ALL_SIDECARS
    served: bytes | None = None

    def sidecar(self, algorithm: str) -> str:
        return _digest(algorithm, self.data)


@dataclass
class _Artifact:
    versions: list[str] = field(default_factory=list)
    files: dict[str, dict[str, MavenFile]] = field(default_factory=dict)
    #: Version-level ``maven-metadata.xml`` of SNAPSHOT versions.
    snapshots: dict[str, bytes] = field(default_factory=dict)


@dataclass
class FakeMaven:
    """In-memory Maven repository; see the module docstring."""

    start_time: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    chain_id: str = "1318453614498"
    #: Serve directory listings (Central does; a plain static mirror may not).
    listings: bool = True
    #: Publications per chunk. Central's chunks are immutable; a batch over 1 keeps adding to
    #: the newest chunk until it holds that many, for benchmarks that publish everything
    #: before the first read.
    batch: int = 1
    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)
    artifacts: dict[str, _Artifact] = field(default_factory=dict)
    #: Each published chunk's documents, encoded when asked for.
    chunks: dict[int, list[dict[str, str]]] = field(default_factory=dict)
    last_chunk: int = 0
    _ticks: int = 0
    _filled: int = 0
    _encoded: dict[int, tuple[int, bytes]] = field(default_factory=dict)

    NAME_EXAMPLES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("org.example:demo", "org.example/demo"),
        ("org.example/demo", "org.example/demo"),
        ("com.Example.big:Big_Lib", "com.Example.big/Big_Lib"),
    )
    INVALID_NAMES: ClassVar[tuple[str, ...]] = (
        "org.example",
        "org..example/demo",
        "org.example/de mo",
        "a/b/c",
        "org.example/..",
    )
    SAMPLE_VERSIONS: ClassVar[tuple[str, ...]] = ("1.0.0", "1.1.0")

    def now(self) -> datetime:
        """A deterministic clock: one minute per publication."""
        self._ticks += 1
        return self.start_time + timedelta(minutes=self._ticks)

    # -- writes ---------------------------------------------------------------------------------

    def _chunk(self, records: list[Record], files: dict[str, MavenFile]) -> None:
        documents = []
        for record in records:
            key = f"{record.artifact}-{record.version}" + (
                f"-{record.classifier}" if record.classifier else ""
            )
            file = files.get(f"{key}.{record.extension}")
            size = len(file.data) if file else 0
            documents.append(
                record_document(record, packaging=record.extension or "jar", size=size)
            )
        if self.chunks and 0 < self._filled < self.batch:
            self.chunks[self.last_chunk] += documents
            self._filled += 1
        else:
            self.last_chunk += 1
            self.chunks[self.last_chunk] = documents
            self._filled = 1

    def _add(self, name: str, version: str, files: list[MavenFile], *, index: bool = True) -> None:
        entry = self.artifacts.setdefault(name, _Artifact())
        if version not in entry.versions:
            entry.versions.append(version)
        entry.files[version] = {f.name: f for f in files}
        if not index:
            return
        group, artifact = name.split("/")
        records = []
        for file in files:
            rest = file.name[len(f"{artifact}-{version}") :]
            classifier, _, extension = rest.lstrip("-").rpartition(".")
            records.append(
                Record(
                    deleted=False,
                    group=group,
                    artifact=artifact,
                    version=version,
                    classifier=classifier or None,
                    extension=extension,
                    modified=file.modified,
                    sha1=_digest("sha1", file.data),
                )
            )
        self._chunk(records, entry.files[version])

    def publish(
        self,
        name: str,
        version: str,
        *,
        classifiers: Sequence[str] = ("sources",),
        dependencies: Sequence[str] = (),
        sidecars: tuple[str, ...] = ALL_SIDECARS,
        packaging: str = "jar",
    ) -> dict[str, MavenFile]:
        """Deploy a version: POM, main artifact (unless ``pom`` packaging), classifier jars."""
        group, artifact = name.split("/")
        when = self.now()
        stem = f"{artifact}-{version}"
        pom = make_pom(group, artifact, version, packaging=packaging, dependencies=dependencies)
        files = [MavenFile(f"{stem}.pom", pom, when, sidecars)]
        if packaging != "pom":
            files.append(
                MavenFile(f"{stem}.jar", make_jar(group, artifact, version), when, sidecars)
            )
            for classifier in classifiers:
                data = make_jar(group, artifact, version, f"-{classifier}")
                files.append(MavenFile(f"{stem}-{classifier}.jar", data, when, sidecars))
        self._add(name, version, files)
        return {f.name: f for f in files}

    def relocate(self, name: str, version: str, *, to: str) -> MavenFile:
        """Deploy a POM-only version relocated to ``to`` (``group:artifact:version``)."""
        group, artifact = name.split("/")
        pom = make_pom(group, artifact, version, packaging="pom", relocation=to)
        file = MavenFile(f"{artifact}-{version}.pom", pom, self.now())
        self._add(name, version, [file])
        return file

    def publish_snapshot(self, name: str, version: str) -> None:
        """A SNAPSHOT: timestamped files and a version-level ``maven-metadata.xml`` (listed in
        the artifact's metadata, as some repositories do; never in the index)."""
        group, artifact = name.split("/")
        when = self.now()
        stamp = f"{when:%Y%m%d.%H%M%S}-1"
        base = version.removesuffix("-SNAPSHOT")
        stem = f"{artifact}-{base}-{stamp}"
        pom = make_pom(group, artifact, version)
        files = [
            MavenFile(f"{stem}.pom", pom, when),
            MavenFile(f"{stem}.jar", make_jar(group, artifact, version), when),
        ]
        self._add(name, version, files, index=False)
        self.artifacts[name].snapshots[version] = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<metadata modelVersion="1.1.0">\n'
            f"  <groupId>{group}</groupId>\n  <artifactId>{artifact}</artifactId>\n"
            f"  <version>{version}</version>\n  <versioning>\n    <snapshot>\n"
            f"      <timestamp>{stamp[:-2]}</timestamp>\n      <buildNumber>1</buildNumber>\n"
            f"    </snapshot>\n  </versioning>\n</metadata>\n"
        ).encode()

    def tamper(self, name: str, version: str) -> None:
        """Serve other bytes for every file of the version; the sidecars keep the true sums."""
        for file in self.artifacts[name].files[version].values():
            file.served = file.data[:-8] + b"tampered"

    def withdraw(self, name: str, version: str) -> None:
        """Remove a version from the metadata and the layout, with ``del`` index records."""
        entry = self.artifacts[name]
        entry.versions.remove(version)
        files = entry.files.pop(version)
        group, artifact = name.split("/")
        records = [
            Record(True, group, artifact, version, None, f.name.rpartition(".")[2], self.now())
            for f in files.values()
        ]
        self._chunk(records, {})

    # -- the FakeRegistry surface ---------------------------------------------------------------

    def config_endpoints(self, url: str) -> dict[str, str]:
        return {"repository_url": f"{url}/maven2", "index_url": f"{url}/maven2/.index"}

    def publish_release(self, name: str, version: str) -> None:
        self.publish(name, version)

    def feed_head(self) -> int:
        return self.last_chunk

    def tamper_release(self, name: str, version: str) -> None:
        self.tamper(name, version)

    def withdraw_release(self, name: str, version: str) -> None:
        self.withdraw(name, version)

    def release_file(self, name: str, version: str) -> tuple[str, bytes]:
        artifact = name.split("/")[1]
        filename = f"{artifact}-{version}.jar"
        return filename, self.artifacts[name].files[version][filename].data

    def lockfile(self, releases: Sequence[tuple[str, str]]) -> tuple[str, bytes]:
        lines = [
            "# This is a Gradle generated file for dependency locking.",
            "# Manual edits can break the build and are not advised.",
            "# This file is expected to be part of source control.",
        ]
        lines += [
            f"{name.replace('/', ':')}:{v}=compileClasspath,runtimeClasspath"
            for name, v in releases
        ]
        lines.append("empty=annotationProcessor,testCompileClasspath")
        return "gradle.lockfile", ("\n".join(lines) + "\n").encode()

    # -- HTTP -----------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = fake_app(self.requests.middleware, self.faults.middleware)
        app.router.add_get(PREFIX + "{tail:.*}", self._serve)
        return app

    def _properties(self) -> bytes:
        chunks = tuple(sorted(self.chunks))
        props = IndexProperties(self.chain_id, self.last_chunk, chunks, self.start_time)
        return render_properties(props).encode("latin-1")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        tail = request.path[len(PREFIX) :]
        if tail.startswith(".index/"):
            return self._index(tail.removeprefix(".index/"))
        for algorithm in ALL_SIDECARS:
            if tail.endswith(f".{algorithm}"):
                body = self._document(tail.removesuffix(f".{algorithm}"), algorithm)
                if body is None:
                    break
                return web.Response(body=body, content_type="text/plain")
        else:
            body = self._document(tail, None)
            if body is not None:
                kind = tail.rpartition(".")[2]
                ctype = (
                    "text/html"
                    if tail.endswith("/")
                    else CONTENT_TYPES.get(kind, "application/octet-stream")
                )
                return web.Response(body=body, content_type=ctype)
        return web.Response(status=404, text="Not Found")

    def _index(self, name: str) -> web.Response:
        if name == PROPERTIES:
            return web.Response(body=self._properties(), content_type="text/plain")
        for number, documents in self.chunks.items():
            if name == chunk_name(number):
                encoded = self._encoded.get(number)
                if encoded is None or encoded[0] != len(documents):
                    data = write_chunk(documents, timestamp=self.start_time)
                    encoded = self._encoded[number] = (len(documents), data)
                return web.Response(body=encoded[1], content_type="application/x-gzip")
        return web.Response(status=404, text="Not Found")

    def _document(self, path: str, algorithm: str | None) -> bytes | None:
        """The bytes at ``path`` (a sidecar's text when ``algorithm`` is given)."""
        parts = path.split("/")
        if len(parts) >= 3 and parts[-1] == "maven-metadata.xml":
            name = ".".join(parts[:-2]) + "/" + parts[-2]
            entry = self.artifacts.get(name)
            if entry is not None:
                group, artifact = name.split("/")
                body = render_metadata(
                    group,
                    artifact,
                    entry.versions,
                    is_snapshot=lambda v: v.endswith("-SNAPSHOT"),
                    updated=self.start_time,
                )
            else:
                snapshot = self._snapshot_metadata(parts)
                if snapshot is None:
                    return None
                body = snapshot
            return body if algorithm is None else _digest(algorithm, body).encode()
        if len(parts) < 4:
            return None
        name = ".".join(parts[:-3]) + "/" + parts[-3]
        entry = self.artifacts.get(name)
        files = entry.files.get(parts[-2]) if entry else None
        if files is None:
            return None
        if parts[-1] == "":
            if algorithm is not None or not self.listings:
                return None
            return render_listing(path.rstrip("/"), self._entries(files)).encode()
        file = files.get(parts[-1])
        if file is None:
            return None
        if algorithm is None:
            return file.served if file.served is not None else file.data
        return file.sidecar(algorithm).encode() if algorithm in file.sidecars else None

    def _snapshot_metadata(self, parts: list[str]) -> bytes | None:
        if len(parts) < 4:
            return None
        entry = self.artifacts.get(".".join(parts[:-3]) + "/" + parts[-3])
        return entry.snapshots.get(parts[-2]) if entry else None

    @staticmethod
    def _entries(files: dict[str, MavenFile]) -> list[Entry]:
        entries = []
        for file in files.values():
            entries.append(Entry(file.name, len(file.data), file.modified))
            entries += [
                Entry(f"{file.name}.{alg}", len(file.sidecar(alg)), file.modified)
                for alg in file.sidecars
            ]
        return entries


__all__ = ["FakeMaven", "MavenFile", "make_jar", "make_pom"]
