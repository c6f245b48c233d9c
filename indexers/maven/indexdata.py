"""The Maven Indexer's transfer format: the index properties and its incremental chunks.

A repository publishes its index beside the layout, under ``/.index/``
(``apache/maven-indexer``: ``indexer-core``'s ``IndexDataWriter``/``IndexDataReader`` and
``indexer-reader``'s ``ChunkReader``/``RecordExpander``; Central's at
https://repo.maven.apache.org/maven2/.index/):

- ``nexus-maven-repository-index.properties``: Java properties naming the chain
  (``nexus.index.chain-id``, which changes when the index is rebuilt from scratch), the newest
  chunk (``nexus.index.last-incremental``), the chunks still published
  (``nexus.index.incremental-K = N``) and ``nexus.index.timestamp``
  (``yyyyMMddHHmmss.SSS Z``);
- ``nexus-maven-repository-index.N.gz``: chunk ``N``, a gzip'd ``DataOutput`` stream: the byte
  ``1``, the chunk's time in ms (a big-endian long, ``-1`` if none), then documents until the
  end: a big-endian int field count, and per field a flags byte, the name as ``writeUTF``
  (u16 length + modified UTF-8) and the value as an int length + modified UTF-8.

Fields that matter here: ``u`` (UINFO, ``groupId|artifactId|version|classifier|extension``,
``NA`` for no classifier; older records end at the classifier and take the extension from
``i``), ``del`` (a removed artifact's UINFO), ``i`` (INFO, ``packaging|lastModified|size|
sourcesExists|javadocExists|signatureExists|extension``), ``m`` (the record's time, ms) and
``1`` (the file's sha1). Descriptor and group-list documents carry none of ``u``/``del``.

Readers stream a chunk from a file object in constant memory; the writer is the fake's.
"""

from __future__ import annotations

import gzip
import io
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Protocol

PROPERTIES = "nexus-maven-repository-index.properties"
CHAIN_ID = "nexus.index.chain-id"
LAST_INCREMENTAL = "nexus.index.last-incremental"
INCREMENTAL = "nexus.index.incremental-"
TIMESTAMP = "nexus.index.timestamp"
#: The one data-format version ``IndexDataWriter`` writes.
FORMAT_VERSION = 1
#: Field flags: indexed, tokenized, stored (``IndexDataWriter.F_*``).
F_INDEXED, F_TOKENIZED, F_STORED = 1, 2, 4
#: The longest field value read (Central's longest descriptions are a few KiB).
MAX_VALUE = 1 << 20
NOT_AVAILABLE = "NA"


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class IndexFormatError(ValueError):
    """A properties file or chunk that does not follow the transfer format."""


def chunk_name(number: int) -> str:
    return f"nexus-maven-repository-index.{number}.gz"


@dataclass(frozen=True, slots=True)
class IndexProperties:
    """What ``nexus-maven-repository-index.properties`` says."""

    chain_id: str
    last: int
    chunks: tuple[int, ...]
    timestamp: datetime | None


def _unescape(value: str) -> str:
    return value.encode("latin-1", "backslashreplace").decode("unicode_escape")


def parse_properties(text: str) -> IndexProperties:
    """Read the index properties (``key=value`` or ``key:value`` lines, ``#`` comments)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut < 0:
            continue
        values[line[:cut].strip()] = _unescape(line[cut + 1 :].strip())
    try:
        last = int(values[LAST_INCREMENTAL])
        chunks = sorted(int(v) for k, v in values.items() if k.startswith(INCREMENTAL))
    except (KeyError, ValueError) as exc:
        raise IndexFormatError(f"no readable {LAST_INCREMENTAL} and chunk list: {exc}") from exc
    stamp = values.get(TIMESTAMP)
    when = None
    if stamp:
        try:
            when = datetime.strptime(stamp, "%Y%m%d%H%M%S.%f %z").astimezone(UTC)
        except ValueError:
            when = None
    return IndexProperties(values.get(CHAIN_ID, ""), last, tuple(chunks), when)


def render_properties(props: IndexProperties, *, index_id: str = "central") -> str:
    """The properties file as ``IndexPackager`` writes it (newest chunk first)."""
    lines = [f"#{datetime.now(UTC):%a %b %d %H:%M:%S UTC %Y}", f"nexus.index.id={index_id}"]
    lines.append(f"{CHAIN_ID}={props.chain_id}")
    if props.timestamp is not None:
        lines.append(f"{TIMESTAMP}={props.timestamp:%Y%m%d%H%M%S}.000 +0000")
    lines.append(f"{LAST_INCREMENTAL}={props.last}")
    for slot, number in enumerate(sorted(props.chunks, reverse=True)):
        lines.append(f"{INCREMENTAL}{slot}={number}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Record:
    """One artifact record of a chunk: added (``u``) or deleted (``del``)."""

    deleted: bool
    group: str
    artifact: str
    version: str
    classifier: str | None
    extension: str | None
    modified: datetime | None = None
    sha1: str | None = None


# -- reading ---------------------------------------------------------------------------------


def _read_exact(stream: Readable, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise IndexFormatError("chunk ends inside a document")
    return data


def _modified_utf8(data: bytes) -> str:
    """Java's modified UTF-8: NUL as ``C0 80``, characters beyond the BMP as surrogate pairs."""
    try:
        text = data.replace(b"\xc0\x80", b"\x00").decode("utf-8", "surrogatepass")
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeError as exc:
        raise IndexFormatError(f"a string is not modified UTF-8: {exc}") from exc


def read_documents(stream: Readable) -> Iterator[dict[str, str]]:
    """The documents of a gunzipped chunk stream, each as ``{field: value}``."""
    if _read_exact(stream, 1) != bytes([FORMAT_VERSION]):
        raise IndexFormatError("not index data (0x01 expected as the first byte)")
    _read_exact(stream, 8)
    while True:
        head = stream.read(4)
        if not head:
            return
        if len(head) != 4:
            raise IndexFormatError("chunk ends inside a field count")
        (count,) = struct.unpack(">i", head)
        if count < 0:
            raise IndexFormatError(f"negative field count {count}")
        document: dict[str, str] = {}
        for _ in range(count):
            _read_exact(stream, 1)
            (name_size,) = struct.unpack(">H", _read_exact(stream, 2))
            name = _modified_utf8(_read_exact(stream, name_size))
            (value_size,) = struct.unpack(">i", _read_exact(stream, 4))
            if not 0 <= value_size <= MAX_VALUE:
                raise IndexFormatError(f"field {name[:40]!r} claims {value_size} bytes")
            document[name] = _modified_utf8(_read_exact(stream, value_size))
        yield document


def _millis(value: str | None) -> datetime | None:
    if value is None or not value.isdigit():
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def to_record(document: Mapping[str, str]) -> Record | None:
    """The artifact record a document holds (``None`` for descriptor and group documents)."""
    deleted = "del" in document
    uinfo = document.get("del") if deleted else document.get("u")
    if not uinfo:
        return None
    parts = uinfo.split("|")
    if len(parts) < 4:
        return None
    info = document.get("i", "").split("|")
    extension = parts[4] if len(parts) > 4 else (info[6] if len(info) > 6 else None)
    classifier = None if parts[3] == NOT_AVAILABLE else parts[3]
    return Record(
        deleted=deleted,
        group=parts[0],
        artifact=parts[1],
        version=parts[2],
        classifier=classifier,
        extension=extension or None,
        modified=_millis(document.get("m")),
        sha1=document.get("1"),
    )


def read_chunk(compressed: IO[bytes]) -> Iterator[Record]:
    """Every artifact record of a gzip'd chunk, read as a stream."""
    try:
        with gzip.GzipFile(fileobj=compressed, mode="rb") as stream:
            for document in read_documents(stream):
                record = to_record(document)
                if record is not None:
                    yield record
    except (OSError, EOFError) as exc:
        raise IndexFormatError(f"chunk is not gzip data: {exc}") from exc


# -- writing (the fake's side) ---------------------------------------------------------------


def _encode(text: str) -> bytes:
    """Java's ``writeUTF`` bytes: each UTF-16 code unit as 1-3 bytes, NUL as ``C0 80``."""
    raw = text.encode("utf-16-be", "surrogatepass")
    out = bytearray()
    for (point,) in struct.iter_unpack(">H", raw):
        if 0 < point < 0x80:
            out.append(point)
        elif point < 0x800:
            out += bytes([0xC0 | point >> 6, 0x80 | point & 0x3F])
        else:
            out += bytes([0xE0 | point >> 12, 0x80 | point >> 6 & 0x3F, 0x80 | point & 0x3F])
    return bytes(out)


def write_chunk(
    documents: Sequence[Mapping[str, str]], *, timestamp: datetime | None = None
) -> bytes:
    """A gzip'd chunk of ``documents`` (every field indexed and stored)."""
    body = io.BytesIO()
    millis = -1 if timestamp is None else int(timestamp.timestamp() * 1000)
    body.write(struct.pack(">bq", FORMAT_VERSION, millis))
    for document in documents:
        body.write(struct.pack(">i", len(document)))
        for name, value in document.items():
            encoded_name, encoded = _encode(name), _encode(value)
            body.write(struct.pack(">BH", F_INDEXED | F_STORED, len(encoded_name)))
            body.write(encoded_name)
            body.write(struct.pack(">i", len(encoded)))
            body.write(encoded)
    return gzip.compress(body.getvalue(), mtime=0)


def record_document(record: Record, *, packaging: str = "jar", size: int = 0) -> dict[str, str]:
    """The document ``IndexDataWriter`` writes for an artifact record."""
    classifier = record.classifier or NOT_AVAILABLE
    extension = record.extension or packaging
    uinfo = f"{record.group}|{record.artifact}|{record.version}|{classifier}|{extension}"
    millis = str(int(record.modified.timestamp() * 1000)) if record.modified else "0"
    if record.deleted:
        return {"del": uinfo, "m": millis}
    document = {
        "u": uinfo,
        "m": millis,
        "i": f"{packaging}|{millis}|{size}|0|0|0|{extension}",
    }
    if record.sha1:
        document["1"] = record.sha1
    return document


__all__ = [
    "PROPERTIES",
    "IndexFormatError",
    "IndexProperties",
    "Record",
    "chunk_name",
    "parse_properties",
    "read_chunk",
    "read_documents",
    "record_document",
    "render_properties",
    "to_record",
    "write_chunk",
]
