"""The trustless gateway, over real HTTP on loopback, against a real filesystem blockstore
holding files imported with ``storage.unixfs`` (https://specs.ipfs.tech/http-gateways/trustless-gateway/)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from multiformats import CID, multihash

from forage.config import Config
from forage.db.engine import make_engine, make_sessionmaker
from forage.server.app import make_app
from forage.server.gateway import CACHE_CONTROL
from forage.server.gateway_request import ByteRange, parse_accept
from indexers.fakeserver import RunningServer, serve
from storage import (
    Block,
    FilesystemBlockstore,
    MemoryBlockstore,
    PackedBlockstore,
    PBLink,
    PBNode,
    UnixFSData,
    block_cid,
    decode_pbnode,
    encode_pbnode,
    encode_unixfs,
    import_file,
    read_car,
    read_file,
    walk_dag,
)

INTEROP = Path(__file__).parent.parent / "interop"
CAR_CONTENT_TYPE = "application/vnd.ipld.car; version=1; order=dfs; dups=n"
RAW = {"Accept": "application/vnd.ipld.raw"}
CAR = {"Accept": "application/vnd.ipld.car"}
#: The empty identity CID every trustless gateway should answer (the spec's probe).
PROBE = "bafkqaaa"


def content(size: int, seed: int = 1) -> bytes:
    """Deterministic bytes that do not repeat within a chunk (so leaves are distinct)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


@dataclass
class Gateway:
    url: str
    store: FilesystemBlockstore
    client: httpx.AsyncClient

    def add(self, data: bytes, **options: int) -> CID:
        return import_file(data, sink=self.store, **options).cid

    async def get(self, path: str, **kwargs: object) -> httpx.Response:
        return await self.client.get(self.url + path, **kwargs)  # type: ignore[arg-type]

    async def get_without_accept(self, path: str) -> httpx.Response:
        """A GET with no Accept header at all (httpx sends ``*/*`` unless told otherwise)."""
        request = self.client.build_request("GET", self.url + path)
        del request.headers["Accept"]
        return await self.client.send(request)

    async def car(self, path: str, **kwargs: object) -> list[Block]:
        response = await self.get(path, **kwargs)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == CAR_CONTENT_TYPE
        return list(read_car(io.BytesIO(response.content)))


@pytest.fixture(params=["packed", "flatfs"])
async def gateway(
    request: pytest.FixtureRequest, tmp_path: Path, http_client: httpx.AsyncClient
) -> AsyncIterator[Gateway]:
    layout = PackedBlockstore if request.param == "packed" else FilesystemBlockstore
    store = layout(tmp_path / "blocks", durable=False)
    engine = make_engine(f"sqlite:///{tmp_path / 'unused.db'}")  # the gateway reads no rows
    app = make_app(Config(), sessionmaker=make_sessionmaker(engine), blockstore=store)
    running: RunningServer
    async with serve(app) as running:
        yield Gateway(running.url, store, http_client)
    engine.dispose()


def dfs_order(store: FilesystemBlockstore, root: CID) -> list[CID]:
    return [block.cid for block in walk_dag(store, root)]


def rebuild(blocks: list[Block], root: CID) -> bytes:
    """The file the client rebuilds from the CAR's blocks alone."""
    memory = MemoryBlockstore()
    for block in blocks:
        memory.put(block)
    return b"".join(read_file(memory, root))


# -- raw blocks --------------------------------------------------------------------------------


async def test_raw_block_by_format_hashes_to_its_cid_with_spec_headers(gateway: Gateway) -> None:
    """?format=raw returns the block's exact bytes (their SHA-256 is the CID's digest) with
    every header the spec asks for."""
    data = content(5000)
    cid = gateway.add(data)
    response = await gateway.get(f"/ipfs/{cid}?format=raw")
    assert response.status_code == 200
    assert response.content == data
    assert multihash.digest(response.content, "sha2-256") == cid.digest
    headers = response.headers
    assert headers["content-type"] == "application/vnd.ipld.raw"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == CACHE_CONTROL == "public, max-age=29030400, immutable"
    assert headers["etag"] == f'"{cid}.raw"'
    assert headers["content-disposition"] == f'attachment; filename="{cid}.bin"'
    assert headers["vary"] == "Accept"
    assert "content-location" not in headers  # format was explicit


async def test_raw_block_by_accept_names_the_format_url(gateway: Gateway) -> None:
    """Accept alone selects raw; Content-Location gives the URL with ?format=raw."""
    cid = gateway.add(b"hello world\n")
    response = await gateway.get(f"/ipfs/{cid}", headers=RAW)
    assert response.status_code == 200
    assert response.content == b"hello world\n"
    assert response.headers["content-location"] == f"/ipfs/{cid}?format=raw"


async def test_raw_root_of_a_multi_block_file_is_the_dag_pb_node(gateway: Gateway) -> None:
    """A file's root CID names a dag-pb node; raw gives that node, not the file."""
    data = content(3 * 1024)
    cid = gateway.add(data, chunk_size=1024)
    response = await gateway.get(f"/ipfs/{cid}?format=raw", headers=RAW)
    assert response.status_code == 200
    assert response.content == gateway.store.get(cid).data
    assert response.content != data
    assert block_cid(response.content, codec=0x70) == cid


async def test_format_wins_over_accept(gateway: Gateway) -> None:
    """?format=raw with a CAR Accept header answers raw (format takes precedence)."""
    cid = gateway.add(b"precedence")
    response = await gateway.get(f"/ipfs/{cid}?format=raw", headers=CAR)
    assert response.headers["content-type"] == "application/vnd.ipld.raw"
    assert response.content == b"precedence"


async def test_head_raw_gives_headers_and_length_without_a_body(gateway: Gateway) -> None:
    cid = gateway.add(b"x" * 777)
    response = await gateway.client.head(f"{gateway.url}/ipfs/{cid}?format=raw")
    assert response.status_code == 200
    assert response.headers["content-length"] == "777"
    assert response.headers["etag"] == f'"{cid}.raw"'
    assert response.content == b""


async def test_raw_with_a_path_is_refused(gateway: Gateway) -> None:
    """Raw blocks are named by CID alone: a path is a 400."""
    cid = gateway.add(b"no paths")
    response = await gateway.get(f"/ipfs/{cid}/file.txt?format=raw")
    assert response.status_code == 400
    assert "no path" in response.json()["error"]["message"]


async def test_corrupt_stored_block_is_a_500_not_bad_bytes(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A block whose file on disk no longer hashes to its CID is never served; the fault is
    logged (a genuine server error, the one case the spec keeps 500 for)."""
    cid = gateway.add(b"original bytes")
    (path,) = [*gateway.store.root.glob("blocks/*/*.data"), *gateway.store.root.rglob("*.pack")]
    path.write_bytes(path.read_bytes().replace(b"original bytes", b"tampered bytes"))
    with caplog.at_level(logging.ERROR, logger="forage.server.gateway"):
        response = await gateway.get(f"/ipfs/{cid}?format=raw")
    assert response.status_code == 500
    assert b"tampered" not in response.content
    assert any("fails verification" in record.getMessage() for record in caplog.records)


# -- CAR streams -------------------------------------------------------------------------------


async def test_car_of_a_deep_file_is_dfs_without_duplicates_and_rebuilds_the_file(
    gateway: Gateway,
) -> None:
    """A three-level tree (1 KiB chunks, 4 links per node) comes back as a CARv1 rooted at the
    CID, blocks in depth-first order, each verified, the file rebuilt byte for byte."""
    data = content(40 * 1024 + 17)
    cid = gateway.add(data, chunk_size=1024, max_links=4)
    response = await gateway.get(f"/ipfs/{cid}?format=car", headers=CAR)
    assert response.status_code == 200
    headers = response.headers
    assert headers["content-type"] == CAR_CONTENT_TYPE
    assert headers["content-disposition"] == f'attachment; filename="{cid}.car"'
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == CACHE_CONTROL
    assert headers["etag"].startswith(f'"{cid}.car.')
    reader = read_car(io.BytesIO(response.content))
    assert reader.roots == (cid,)
    blocks = list(reader)
    order = [block.cid for block in blocks]
    assert order == dfs_order(gateway.store, cid)
    assert len(order) == len(set(order)) > 41
    assert rebuild(blocks, cid) == data


async def test_repeated_chunks_are_sent_once(gateway: Gateway) -> None:
    """A file of identical chunks has one distinct leaf: dups=n means it is sent once."""
    data = b"\0" * 8192
    cid = gateway.add(data, chunk_size=1024)
    blocks = await gateway.car(f"/ipfs/{cid}?format=car")
    assert len(blocks) == 2
    assert rebuild(blocks, cid) == data


async def test_car_negotiation_picks_the_variant_we_can_produce(gateway: Gateway) -> None:
    """From a list of CAR preferences the first one we can produce wins (order=foo cannot,
    order=dfs can); Content-Location names the format."""
    cid = gateway.add(b"negotiated")
    accept = "application/vnd.ipld.car;order=foo, application/vnd.ipld.car;order=dfs;q=0.5"
    response = await gateway.get(f"/ipfs/{cid}", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == CAR_CONTENT_TYPE
    assert response.headers["content-location"] == f"/ipfs/{cid}?format=car"
    raw_first = "application/vnd.ipld.car;q=0.4, application/vnd.ipld.raw;q=0.9"
    response = await gateway.get(f"/ipfs/{cid}", headers={"Accept": raw_first})
    assert response.headers["content-type"] == "application/vnd.ipld.raw"


@pytest.mark.parametrize(
    ("path", "headers", "status", "says"),
    [
        ("", {"Accept": "*/*"}, 406, "application/vnd.ipld.raw"),
        ("", {"Accept": "text/html,*/*;q=0.8"}, 406, "application/vnd.ipld.raw"),
        ("", {"Accept": "application/vnd.ipld.car; dups=y"}, 406, "dups=n"),
        ("", {"Accept": "application/vnd.ipld.car; version=2"}, 406, "version=1"),
        ("", {"Accept": "application/vnd.ipld.raw;q=0"}, 406, "serves"),
        ("?format=car", {"Accept": "application/vnd.ipld.car;dups=y"}, 406, "dups=n"),
        ("?format=car&car-dups=y", {}, 406, "dups=n"),
        ("?format=car&car-version=2", {}, 406, "version=1"),
        ("?format=car&car-version=7", {}, 400, "car-version"),
        ("?format=car&car-order=random", {}, 400, "car-order"),
        ("?format=tar", {}, 406, "format=tar"),
        ("?format=dag-json", {}, 406, "format=dag-json"),
        ("?format=../../etc/passwd", {}, 400, "format must be"),
        ("?format=car&dag-scope=everything", {}, 400, "dag-scope"),
        ("?format=car&entity-bytes=abc", {}, 400, "entity-bytes"),
        ("?format=car&entity-bytes=10:2", {}, 400, "before FROM"),
        ("?format=car&entity-bytes=0:*&dag-scope=block", {}, 400, "implies"),
        ("?format=car", {"Accept": "x" * 5000}, 400, "Accept header longer"),
    ],
)
async def test_requests_we_cannot_answer_get_the_spec_status(
    gateway: Gateway, path: str, headers: dict[str, str], status: int, says: str
) -> None:
    """No Accept and no format is a 400 (strict trustless mode); formats and CAR variants we
    do not produce are 406; malformed parameters are 400. Each says what to ask instead."""
    cid = gateway.add(b"refusals")
    response = await gateway.get(f"/ipfs/{cid}{path}", headers=headers)
    assert response.status_code == status
    assert says in response.json()["error"]["message"]


async def test_no_accept_and_no_format_is_400(gateway: Gateway) -> None:
    """A strict trustless gateway refuses a request naming no format (it serves no
    deserialized responses) and says how to ask."""
    cid = gateway.add(b"strict")
    response = await gateway.get_without_accept(f"/ipfs/{cid}")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "format=raw" in message
    assert "application/vnd.ipld.car" in message
    assert (await gateway.get_without_accept(f"/ipfs/{cid}?format=raw")).content == b"strict"


async def test_car_query_parameters_override_accept(gateway: Gateway) -> None:
    """car-dups=n in the URL wins over dups=y in Accept (query parameters take precedence)."""
    cid = gateway.add(b"override")
    response = await gateway.get(
        f"/ipfs/{cid}?format=car&car-dups=n", headers={"Accept": "application/vnd.ipld.car;dups=y"}
    )
    assert response.status_code == 200


async def test_dag_scope_block_sends_the_root_only(gateway: Gateway) -> None:
    data = content(10 * 1024)
    cid = gateway.add(data, chunk_size=1024)
    blocks = await gateway.car(f"/ipfs/{cid}?format=car&dag-scope=block")
    assert [block.cid for block in blocks] == [cid]


async def test_dag_scope_entity_of_a_file_is_the_whole_file(gateway: Gateway) -> None:
    data = content(10 * 1024)
    cid = gateway.add(data, chunk_size=1024, max_links=3)
    blocks = await gateway.car(f"/ipfs/{cid}?format=car&dag-scope=entity")
    assert [block.cid for block in blocks] == dfs_order(gateway.store, cid)


def range_blocks(store: FilesystemBlockstore, root: CID, first: int, last: int) -> list[CID]:
    """The blocks a client needs for bytes ``first..last``, worked out independently: every
    leaf overlapping the range (leaf offsets from walking the file's leaves in order) and all
    their ancestors, in DFS order."""
    parents: dict[CID, CID] = {}
    leaves: list[CID] = []
    for block in walk_dag(store, root):
        if block.cid.codec.name == "raw":
            leaves.append(block.cid)
        else:
            for link in decode_pbnode(block.data).links:
                parents[link.cid] = block.cid
    wanted: set[CID] = {root}
    offset = 0
    for leaf in leaves:
        size = len(store.get(leaf).data)
        if offset <= last and offset + size > first:
            node = leaf
            while node in parents or node == root:
                wanted.add(node)
                if node == root:
                    break
                node = parents[node]
        offset += size
    return [cid for cid in dfs_order(store, root) if cid in wanted]


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("0:*", 0, 20 * 1024 - 1),
        ("2048:3071", 2048, 3071),
        ("2047:2048", 2047, 2048),
        ("-1024:*", 19 * 1024, 20 * 1024 - 1),
        ("-1:-1", 20 * 1024 - 1, 20 * 1024 - 1),
        ("5000:999999", 5000, 20 * 1024 - 1),
        ("15000:-2000", 15000, 20 * 1024 - 2000),
        ("-999999:100", 0, 100),
    ],
)
async def test_entity_bytes_sends_the_blocks_covering_the_range(
    gateway: Gateway, spec: str, first: int, last: int
) -> None:
    """entity-bytes returns the root, the inner nodes on the way and exactly the leaves
    holding bytes first..last (inclusive, negatives from the end, * for the end); the
    client can read those bytes from the blocks alone."""
    data = content(20 * 1024)
    cid = gateway.add(data, chunk_size=1024, max_links=3)
    blocks = await gateway.car(f"/ipfs/{cid}?format=car&entity-bytes={spec}")
    assert [block.cid for block in blocks] == range_blocks(gateway.store, cid, first, last)
    assert len(blocks) < len(dfs_order(gateway.store, cid)) or spec == "0:*"


async def test_entity_bytes_outside_the_file(gateway: Gateway) -> None:
    """A range starting past the end is a 400 (known up front); one that resolves to no byte
    (ends before it starts once negatives are applied) answers like dag-scope=block."""
    data = content(4096)
    cid = gateway.add(data, chunk_size=1024)
    response = await gateway.get(f"/ipfs/{cid}?format=car&entity-bytes=4096:*")
    assert response.status_code == 400
    assert "past the end of the 4096-byte file" in response.json()["error"]["message"]
    blocks = await gateway.car(f"/ipfs/{cid}?format=car&entity-bytes=3000:-2000")
    assert [block.cid for block in blocks] == [cid]


def test_byte_range_resolution() -> None:
    """The arithmetic of entity-bytes against a 100-byte entity."""
    assert ByteRange(0, None).resolve(100) == (0, 99)
    assert ByteRange(-10, None).resolve(100) == (90, 99)
    assert ByteRange(10, -10).resolve(100) == (10, 90)
    assert ByteRange(-500, 5).resolve(100) == (0, 5)
    assert ByteRange(50, 500).resolve(100) == (50, 99)
    assert ByteRange(100, None).resolve(100) is None
    assert ByteRange(60, -50).resolve(100) is None
    assert ByteRange(0, None).resolve(0) is None


def test_accept_parsing_orders_by_quality() -> None:
    ranges = parse_accept('a/b;q=0.2, c/d;order="dfs";q=0.9, e/f, bad, g/h;q=nan')
    assert [(m.type, m.q) for m in ranges] == [
        ("e/f", 1.0),
        ("c/d", 0.9),
        ("a/b", 0.2),
        ("g/h", 0.0),
    ]
    assert ranges[1].params == {"order": "dfs"}


async def test_etag_varies_with_scope_and_range_and_answers_if_none_match(
    gateway: Gateway,
) -> None:
    """Each CAR variant has its own Etag; sending it back yields 304 with no body."""
    cid = gateway.add(content(4096), chunk_size=1024)
    etags = set()
    for query in ("", "&dag-scope=block", "&entity-bytes=0:10", "&entity-bytes=0:11"):
        response = await gateway.client.head(f"{gateway.url}/ipfs/{cid}?format=car{query}")
        assert response.status_code == 200
        etags.add(response.headers["etag"])
    assert len(etags) == 4
    first = (await gateway.get(f"/ipfs/{cid}?format=car")).headers["etag"]
    again = await gateway.get(f"/ipfs/{cid}?format=car", headers={"If-None-Match": first})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == first
    other = await gateway.get(f"/ipfs/{cid}?format=car", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200


# -- absent content, probes -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("fmt", ["raw", "car"])
async def test_absent_root_is_404(gateway: Gateway, method: str, fmt: str) -> None:
    missing = block_cid(b"never stored")
    response = await gateway.client.request(method, f"{gateway.url}/ipfs/{missing}?format={fmt}")
    assert response.status_code == 404


async def test_only_if_cached_absent_root_is_412(gateway: Gateway) -> None:
    missing = block_cid(b"never stored")
    response = await gateway.get(
        f"/ipfs/{missing}?format=raw", headers={"Cache-Control": "only-if-cached"}
    )
    assert response.status_code == 412


@pytest.mark.parametrize(
    "cid_text",
    ["not-a-cid", "bafy<script>alert(1)</script>", "Qm" + "1" * 44, "b" + "a" * 2000],
)
async def test_malformed_cids_are_400_as_json(gateway: Gateway, cid_text: str) -> None:
    """A malformed CID is a 400 with a JSON body: nothing is reflected as HTML."""
    response = await gateway.get(f"/ipfs/{cid_text}?format=raw")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["message"].startswith("invalid CID")


async def test_probe_cid_answers_raw_and_car(gateway: Gateway) -> None:
    """bafkqaaa (identity, empty) gives an empty raw body and a CAR rooted at it with no
    identity block in it, as the spec's probe requires."""
    raw = await gateway.get(f"/ipfs/{PROBE}?format=raw", headers=RAW)
    assert raw.status_code == 200
    assert raw.content == b""
    response = await gateway.get(f"/ipfs/{PROBE}?format=car", headers=CAR)
    assert response.status_code == 200
    reader = read_car(io.BytesIO(response.content))
    assert [str(root) for root in reader.roots] == [PROBE]
    assert list(reader) == []
    head = await gateway.client.head(f"{gateway.url}/ipfs/{PROBE}?format=car")
    assert head.status_code == 200


async def test_missing_child_block_cuts_the_car_short(gateway: Gateway) -> None:
    """Once streaming has begun the status is 200; a missing leaf ends the body early, so
    the client sees an incomplete response rather than a CAR that looks whole."""
    data = content(6 * 1024)
    cid = gateway.add(data, chunk_size=1024)
    order = dfs_order(gateway.store, cid)
    gateway.store.delete(order[3])
    async with gateway.client.stream("GET", f"{gateway.url}/ipfs/{cid}?format=car") as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()


async def test_non_unixfs_codec(gateway: Gateway) -> None:
    """A dag-cbor block is served raw and as a one-block CAR, but its whole DAG cannot be
    followed here: 501 says so before anything is streamed."""
    data = b"\xa1\x61a\x01"  # {"a": 1}
    cid = CID("base32", 1, "dag-cbor", multihash.digest(data, "sha2-256"))
    gateway.store.put(Block(cid, data))
    assert (await gateway.get(f"/ipfs/{cid}?format=raw")).content == data
    blocks = await gateway.car(f"/ipfs/{cid}?format=car&dag-scope=block")
    assert blocks == [Block(cid, data)]
    blocks = await gateway.car(f"/ipfs/{cid}?format=car&dag-scope=entity")
    assert blocks == [Block(cid, data)]
    response = await gateway.get(f"/ipfs/{cid}?format=car")
    assert response.status_code == 501
    assert "dag-scope=block" in response.json()["error"]["message"]


# -- content paths -----------------------------------------------------------------------------


def put_directory(store: FilesystemBlockstore, entries: dict[str, CID]) -> CID:
    """A plain UnixFS directory node linking ``entries`` by name."""
    links = tuple(
        PBLink(bytes(cid), name, len(store.get(cid).data)) for name, cid in sorted(entries.items())
    )
    data = encode_pbnode(PBNode(links, encode_unixfs(UnixFSData(type=1))))
    cid = block_cid(data, codec=0x70)
    store.put(Block(cid, data))
    return cid


async def test_car_with_a_path_proves_the_path_then_sends_the_file(gateway: Gateway) -> None:
    """/ipfs/{dir}/sub/file.txt: the directory blocks on the path come first, then the file's
    DAG; the header's root is the CID asked for."""
    data = content(3000)
    file_cid = gateway.add(data, chunk_size=1024)
    inner = put_directory(gateway.store, {"file.txt": file_cid})
    outer = put_directory(gateway.store, {"sub": inner, "other": gateway.add(b"other")})
    response = await gateway.get(f"/ipfs/{outer}/sub/file.txt?format=car")
    assert response.status_code == 200
    reader = read_car(io.BytesIO(response.content))
    assert reader.roots == (outer,)
    blocks = list(reader)
    assert [b.cid for b in blocks] == [outer, inner, *dfs_order(gateway.store, file_cid)]
    assert rebuild(blocks[2:], file_cid) == data
    scoped = await gateway.car(f"/ipfs/{outer}/sub?format=car&dag-scope=entity")
    assert [b.cid for b in scoped] == [outer, inner]


@pytest.mark.parametrize("tail", ["missing", "sub/missing", "sub/file.txt/below", "..%2F.."])
async def test_car_with_a_bad_path_is_404(gateway: Gateway, tail: str) -> None:
    file_cid = gateway.add(b"leaf")
    inner = put_directory(gateway.store, {"file.txt": file_cid})
    outer = put_directory(gateway.store, {"sub": inner})
    response = await gateway.get(f"/ipfs/{outer}/{tail}?format=car")
    assert response.status_code == 404


# -- interop and memory ------------------------------------------------------------------------


def node_reader() -> list[str]:
    if not (INTEROP / "node_modules").is_dir() or shutil.which("node") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("interop check needs `npm ci --prefix tests/interop` and node under CI")
        pytest.skip("tests/interop/node_modules missing: run npm ci --prefix tests/interop")
    return ["node", str(INTEROP / "read_car.mjs")]


async def test_javascript_ipfs_reads_gateway_cars(gateway: Gateway, tmp_path: Path) -> None:
    """@ipld/car and ipfs-unixfs-exporter read CARs fetched from the gateway (a one-block
    file and a two-level tree with Kubo's default chunking): our root, no duplicates, no
    corrupt block, and the exported file is the original."""
    command = node_reader()
    files = {"small": content(100), "tree": content(3 * 262_144 + 5, seed=2)}
    paths, expected = [], []
    for name, data in files.items():
        cid = gateway.add(data)
        response = await gateway.get(f"/ipfs/{cid}?format=car", headers=CAR)
        assert response.status_code == 200
        path = tmp_path / f"{name}.car"
        path.write_bytes(response.content)
        ours = list(read_car(io.BytesIO(response.content)))
        assert rebuild(ours, cid) == data
        paths.append(str(path))
        expected.append((cid, data))
    proc = await asyncio.create_subprocess_exec(
        *command, *paths, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    reports = [json.loads(line) for line in out.decode().splitlines()]
    for report, (cid, data) in zip(reports, expected, strict=True):
        assert report["roots"] == [str(cid)]
        assert report["order"][0] == str(cid)
        assert report["duplicates"] == []
        assert report["corrupt"] == []
        assert report["size"] == len(data)
        assert report["sha256"] == hashlib.sha256(data).hexdigest()


async def test_car_streams_in_constant_memory(gateway: Gateway) -> None:
    """Serving a 48 MiB file as a CAR (a two-level tree of 192 leaves) allocates a small,
    fixed amount: the peak traced while it streams stays under 8 MiB, a sixth of the file."""
    size = 48 << 20
    chunk = content(262_144, seed=3)
    pieces = (chunk[:1] + bytes([i % 256, i // 256]) + chunk[3:] for i in range(size // 262_144))
    cid = gateway.add(b"".join(pieces))
    received = 0
    tracemalloc.start()
    try:
        async with gateway.client.stream("GET", f"{gateway.url}/ipfs/{cid}?format=car") as resp:
            assert resp.status_code == 200
            async for part in resp.aiter_raw():
                received += len(part)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert received > size
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


async def test_cid_in_another_base_names_the_same_block(gateway: Gateway) -> None:
    """A CIDv1 written in base58btc is the same CID; headers use its base32 form."""
    cid = gateway.add(b"bases")
    response = await gateway.get(f"/ipfs/{cid.encode('base58btc')}?format=raw")
    assert response.status_code == 200
    assert response.content == b"bases"
    assert response.headers["etag"] == f'"{cid}.raw"'


async def test_client_leaving_mid_car_is_not_an_error(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that hangs up during a large CAR ends the stream quietly: no error logged,
    and the gateway keeps answering."""
    cid = gateway.add(content(8 << 20, seed=4))
    with caplog.at_level(logging.DEBUG):
        async with gateway.client.stream("GET", f"{gateway.url}/ipfs/{cid}?format=car") as resp:
            assert resp.status_code == 200
            async for _ in resp.aiter_raw():
                break
        await asyncio.sleep(0.5)
        again = await gateway.get(f"/ipfs/{cid}?format=raw")
    assert again.status_code == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
