"""``GET|HEAD /pieces/{piece_cid}`` per RFC 9110, over a real piece built from real archives.

What is shown: ``If-Range`` with the strong ETag (or the exact ``Last-Modified``) keeps the
range (206) and anything else gets the whole body (200); ``If-None-Match``,
``If-Modified-Since`` (304), ``If-Match`` and ``If-Unmodified-Since`` (412); a piece CID v2 is
served only when its height and padding are the piece's (the same bytes and ETag as v1), is a
404 otherwise and a 400 when its sizes cannot exist; several ranges give a 206
``multipart/byteranges`` whose parts, parsed back, are exactly the asked bytes (overlaps
coalesced, request order kept); unsatisfiable ranges give 416 with ``bytes */size``; malformed
or too many ranges give the whole 200; HEAD answers GET's headers without a body.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from multiformats import CID, multibase, multihash, varint

from forage.filecoin.pieces import build_pieces
from forage.server.app import make_app
from forage.server.byteranges import MAX_RANGES, Span, parse_range
from storage import piece_cid_v2, piece_commitment
from tests.forage.test_pieces import KIB, NOW, Env, make_env, payload

CAR = "application/vnd.ipld.car; version=1"


@dataclass
class Served:
    client: TestClient  # type: ignore[type-arg]
    cid: str
    raw: bytes
    padded_size: int

    @property
    def url(self) -> str:
        return f"/pieces/{self.cid}"


@pytest.fixture
def env(tmp_path: Path, migrated_url: str) -> Iterator[Env]:
    built = make_env(tmp_path, migrated_url)
    yield built
    built.sessionmaker.kw["bind"].dispose()


@pytest.fixture
async def served(env: Env) -> AsyncIterator[Served]:
    env.archive(payload(9, 20 * KIB))
    (built,) = build_pieces(env.config, env.sessionmaker, env.blockstore, partial=True, now=NOW)
    app = make_app(env.config, sessionmaker=env.sessionmaker, blockstore=env.blockstore)
    async with TestClient(TestServer(app)) as client:
        yield Served(client, built.piece_cid, built.path.read_bytes(), built.padded_size)


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a ``multipart/byteranges`` body by hand, strictly: every delimiter, CRLF and
    header where RFC 9110 §14.6 and RFC 2046 put them, and nothing after the close."""
    match = re.fullmatch(
        r"multipart/byteranges; boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})", content_type
    )
    assert match is not None, content_type
    delimiter = b"--" + match.group(1).encode()
    assert body.startswith(delimiter + b"\r\n") and body.endswith(b"\r\n" + delimiter + b"--\r\n")
    inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
    parts = []
    for chunk in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, blank, data = chunk.partition(b"\r\n\r\n")
        assert blank, chunk[:200]
        headers = dict(line.decode().split(": ", 1) for line in head.split(b"\r\n"))
        parts.append((headers, data))
    return parts


async def test_if_range_keeps_the_range_only_for_the_current_representation(
    served: Served,
) -> None:
    whole = await served.client.get(served.url)
    etag, last_modified = whole.headers["ETag"], whole.headers["Last-Modified"]
    assert etag == f'"{served.cid}"'  # strong: the piece CID fixes the bytes
    assert parsedate_to_datetime(last_modified) >= NOW
    size = len(served.raw)
    for validator in (etag, last_modified):
        kept = await served.client.get(
            served.url, headers={"Range": "bytes=10-19", "If-Range": validator}
        )
        assert kept.status == 206, validator
        assert kept.headers["Content-Range"] == f"bytes 10-19/{size}"
        assert await kept.read() == served.raw[10:20]
    earlier = format_datetime(parsedate_to_datetime(last_modified).replace(year=2001), usegmt=True)
    for validator in ('"bafyanother"', f"W/{etag}", earlier, "not a validator"):
        full = await served.client.get(
            served.url, headers={"Range": "bytes=10-19", "If-Range": validator}
        )
        assert full.status == 200, validator
        assert "Content-Range" not in full.headers
        assert await full.read() == served.raw


async def test_conditionals_answer_304_and_412(served: Served) -> None:
    whole = await served.client.get(served.url)
    etag, last_modified = whole.headers["ETag"], whole.headers["Last-Modified"]
    earlier = format_datetime(parsedate_to_datetime(last_modified).replace(year=2001), usegmt=True)
    cases = [
        ({"If-None-Match": etag}, 304),
        ({"If-None-Match": f'"x", W/{etag}'}, 304),  # If-None-Match compares weakly
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": '"x"'}, 200),
        ({"If-Modified-Since": last_modified}, 304),
        ({"If-Modified-Since": earlier}, 200),
        ({"If-None-Match": '"x"', "If-Modified-Since": last_modified}, 200),  # tag wins
        ({"If-Match": '"x"'}, 412),
        ({"If-Match": f"W/{etag}"}, 412),  # If-Match compares strongly
        ({"If-Match": etag}, 200),
        ({"If-Unmodified-Since": earlier}, 412),
        ({"If-Unmodified-Since": last_modified}, 200),
    ]
    for headers, status in cases:
        answer = await served.client.get(served.url, headers=headers)
        assert answer.status == status, headers
        body = await answer.read()
        if status == 304:
            assert body == b""
            assert (answer.headers["ETag"], answer.headers["Last-Modified"]) == (
                etag,
                last_modified,
            )
        elif status == 200:
            assert body == served.raw


async def test_a_v2_cid_is_served_only_with_the_pieces_own_height_and_padding(
    served: Served,
) -> None:
    commp, size, padded = piece_commitment(served.raw).commp, len(served.raw), served.padded_size
    right = piece_cid_v2(commp, padded, payload_size=size)
    answer = await served.client.get(f"/pieces/{right}")
    assert answer.status == 200
    assert await answer.read() == served.raw
    assert answer.headers["ETag"] == f'"{served.cid}"'
    ranged = await served.client.get(f"/pieces/{right}", headers={"Range": "bytes=-5"})
    assert (ranged.status, await ranged.read()) == (206, served.raw[-5:])
    padding = padded // 128 * 127 - size
    wrong = {
        "padding": piece_cid_v2(commp, padded, payload_size=size - 1),
        "height": piece_cid_v2(commp, 2 * padded, payload_size=2 * padded // 128 * 127 - padding),
        "no padding": piece_cid_v2(commp, padded),  # the FRC's conversion of (v1, padded size)
    }
    for what, cid in wrong.items():
        refused = await served.client.get(f"/pieces/{cid}")
        assert refused.status == 404, what
        assert "piece CID v2 names" in (await refused.json())["error"]["message"]
        head = await served.client.head(f"/pieces/{cid}")
        assert head.status == 404, what
    prefix = bytes([1]) + varint.encode(0x55) + varint.encode(0x1011)

    def v2(padding: int, height: int) -> str:
        digest = varint.encode(padding) + bytes([height]) + commp
        return multibase.encode(prefix + varint.encode(len(digest)) + digest, "base32")

    assert v2(padding, padded.bit_length() - 6) == right  # the hand-made encoding is FRC-0069's
    for malformed in (v2(0, 40), v2(0, 1), v2(padded // 128 * 127, padded.bit_length() - 6)):
        assert (await served.client.get(f"/pieces/{malformed}")).status == 400
    top_bits = CID("base32", 1, "fil-commitment-unsealed", multihash.wrap(b"\xff" * 32, 0x1012))
    answer = await served.client.get(f"/pieces/{top_bits}")  # not a commitment: a 400, no 500
    assert answer.status == 400
    assert "not a valid piece CID" in (await answer.json())["error"]["message"]


async def test_several_ranges_give_a_multipart_answer(served: Served) -> None:
    raw, size = served.raw, len(served.raw)
    cases = {
        "bytes=0-9,20-29": [(0, 9), (20, 29)],
        "bytes=500-599, 0-9, -7": [(500, 599), (0, 9), (size - 7, size - 1)],  # request order
        "bytes=100-109,0-9,5-19": [(100, 109), (0, 19)],  # overlaps coalesced
        f"bytes=30-39,{size}-,40-": [(30, size - 1)],  # adjacent joined, unsatisfiable dropped
    }
    for header, expected in cases.items():
        answer = await served.client.get(served.url, headers={"Range": header})
        assert answer.status == 206, header
        body = await answer.read()
        assert int(answer.headers["Content-Length"]) == len(body)
        if len(expected) == 1:
            ((first, last),) = expected
            assert answer.headers["Content-Type"] == CAR
            assert answer.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
            assert body == raw[first : last + 1]
            continue
        assert "Content-Range" not in answer.headers
        parts = parse_multipart(answer.headers["Content-Type"], body)
        assert [
            (headers["Content-Type"], headers["Content-Range"], data) for headers, data in parts
        ] == [(CAR, f"bytes {a}-{b}/{size}", raw[a : b + 1]) for a, b in expected]
        # The standard library's MIME parser reads the same parts from the same bytes.
        message = email.message_from_bytes(
            f"Content-Type: {answer.headers['Content-Type']}\r\n\r\n".encode() + body,
            policy=email.policy.HTTP,
        )
        assert isinstance(message, EmailMessage)
        assert [
            (str(part["Content-Range"]), part.get_payload(decode=True))
            for part in message.iter_parts()
        ] == [(f"bytes {a}-{b}/{size}", raw[a : b + 1]) for a, b in expected]
        head = await served.client.head(served.url, headers={"Range": header})
        assert (head.status, await head.read()) == (200, b"")  # ranges are for GET only
        assert int(head.headers["Content-Length"]) == size


async def test_unsatisfiable_ranges_give_416_and_malformed_ones_the_whole_body(
    served: Served,
) -> None:
    size = len(served.raw)
    for header in (f"bytes={size}-", "bytes=-0", f"bytes={size}-{size + 9},{size + 20}-"):
        answer = await served.client.get(served.url, headers={"Range": header})
        assert answer.status == 416, header
        assert answer.headers["Content-Range"] == f"bytes */{size}"
        assert (await answer.json())["error"]["status"] == 416
    many = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES + 1))
    for header in ("bytes=9-0", "bytes=a-b", "items=0-9", "bytes=", many):
        answer = await served.client.get(served.url, headers={"Range": header})
        assert answer.status == 200, header
        assert await answer.read() == served.raw


async def test_head_answers_the_headers_of_get(served: Served) -> None:
    get = await served.client.get(served.url)
    head = await served.client.head(served.url)
    assert (head.status, await head.read()) == (200, b"")
    names = ("Content-Type", "Content-Length", "ETag", "Last-Modified", "Accept-Ranges")
    assert [head.headers[n] for n in names] == [get.headers[n] for n in names]
    assert head.headers["Accept-Ranges"] == "bytes"
    assert int(head.headers["Content-Length"]) == len(served.raw)
    cached = await served.client.head(served.url, headers={"If-None-Match": get.headers["ETag"]})
    assert cached.status == 304


def test_parse_range_resolves_suffixes_clamps_and_coalesces() -> None:
    assert parse_range("bytes=0-", 100) == [Span(0, 99)]
    assert parse_range("bytes=90-200", 100) == [Span(90, 99)]
    assert parse_range("bytes=-500", 100) == [Span(0, 99)]
    assert parse_range("bytes=50-59,0-4,3-8,9-9", 100) == [Span(50, 59), Span(0, 9)]
    assert parse_range("bytes=100-", 100) == []
    assert parse_range("bytes=5-4", 100) is None
    assert parse_range("bytes=1-2-3", 100) is None
    assert parse_range("bytes=+1-2", 100) is None
