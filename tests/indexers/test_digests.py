"""SRI parsing, hex normalization and the streaming DigestVerifier."""

from __future__ import annotations

import base64
import hashlib
import random

import httpx
import pytest

from indexers.digests import DigestVerifier, normalize_hex, parse_sri, to_sri
from indexers.errors import DigestMismatch, InvalidDigest
from indexers.fakeserver import RunningServer
from indexers.npm.fake import FakeNpmRegistry
from indexers.npm.indexer import NpmIndexer

DATA = random.Random(7).randbytes(300_000)


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def test_sri_with_several_algorithms_and_options() -> None:
    sha512 = hashlib.sha512(DATA).digest()
    sha1 = hashlib.sha1(DATA).digest()  # noqa: S324
    sri = f"sha512-{b64(sha512)}?opt=1 sha1-{b64(sha1)} md5-ignored foo"
    assert parse_sri(sri) == {"sha512": sha512.hex(), "sha1": sha1.hex()}


def test_sri_keeps_the_first_value_of_a_repeated_algorithm() -> None:
    first, second = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    assert parse_sri(f"sha256-{b64(first)} sha256-{b64(second)}") == {"sha256": first.hex()}


@pytest.mark.parametrize(
    ("sri", "reason"),
    [
        ("sha512-not*base64", "not base64"),
        ("sha512-" + b64(b"short"), "5 bytes, expected 64"),
        ("md5-abc unknown", "no sha512"),
        ("", "no sha512"),
    ],
)
def test_bad_sri_raises_invalid_digest(sri: str, reason: str) -> None:
    with pytest.raises(InvalidDigest) as caught:
        parse_sri(sri)
    assert reason in caught.value.reason


def test_hex_is_lowercased_and_length_checked() -> None:
    digest = hashlib.sha256(DATA).hexdigest()
    assert normalize_hex("sha256", digest.upper()) == digest
    with pytest.raises(InvalidDigest, match="not hexadecimal"):
        normalize_hex("sha256", "zz" * 32)
    with pytest.raises(InvalidDigest, match="31 bytes, expected 32"):
        normalize_hex("sha256", digest[:62])


def test_to_sri_renders_the_strongest_digest() -> None:
    digests = {"sha1": hashlib.sha1(DATA).hexdigest(), "sha512": hashlib.sha512(DATA).hexdigest()}  # noqa: S324
    assert to_sri(digests) == f"sha512-{b64(hashlib.sha512(DATA).digest())}"
    assert parse_sri(to_sri(digests)) == {"sha512": digests["sha512"]}
    with pytest.raises(InvalidDigest):
        to_sri({"md5": hashlib.md5(DATA).hexdigest()})  # noqa: S324


def feed(verifier: DigestVerifier, data: bytes) -> None:
    rng = random.Random(1)
    position = 0
    while position < len(data):
        step = rng.randint(1, 70_000)
        verifier.update(data[position : position + step])
        position += step


def test_verifier_accepts_matching_bytes_in_uneven_chunks() -> None:
    expected = {
        "sha512": hashlib.sha512(DATA).hexdigest(),
        "sha1": hashlib.sha1(DATA).hexdigest().upper(),  # noqa: S324
        "blake2b_256": hashlib.blake2b(DATA, digest_size=32).hexdigest(),
    }
    verifier = DigestVerifier("http://f/x", expected, size=len(DATA), also=("sha256",))
    feed(verifier, DATA)
    check = verifier.finish()
    assert check.verified == ("sha512", "blake2b_256", "sha1")
    assert check.unchecked == ()
    assert check.size == len(DATA)
    assert check.actual["sha256"] == hashlib.sha256(DATA).hexdigest()


def test_verifier_reports_the_strongest_mismatch() -> None:
    expected = {
        "sha1": hashlib.sha1(DATA).hexdigest(),  # noqa: S324
        "sha512": hashlib.sha512(DATA).hexdigest(),
    }
    tampered = bytearray(DATA)
    tampered[123_456] ^= 0x01
    verifier = DigestVerifier("http://f/x.tgz", expected)
    feed(verifier, bytes(tampered))
    with pytest.raises(DigestMismatch) as caught:
        verifier.finish()
    assert caught.value.algorithm == "sha512"
    assert caught.value.expected == expected["sha512"]
    assert caught.value.actual == hashlib.sha512(bytes(tampered)).hexdigest()
    assert caught.value.url == "http://f/x.tgz"


def test_verifier_checks_size_first() -> None:
    verifier = DigestVerifier("http://f/x", {"sha256": hashlib.sha256(DATA).hexdigest()}, size=10)
    verifier.update(DATA)
    with pytest.raises(DigestMismatch) as caught:
        verifier.finish()
    assert (caught.value.algorithm, caught.value.expected) == ("size", "10")


def test_h1_is_unchecked_unless_the_caller_computes_it() -> None:
    """Go's h1 hashes the files inside a zip, so the verifier leaves it to the caller."""
    expected = {"h1": "h1:abc=", "sha256": hashlib.sha256(DATA).hexdigest()}
    plain = DigestVerifier("u", expected)
    plain.update(DATA)
    check = plain.finish()
    assert (check.verified, check.unchecked) == (("sha256",), ("h1",))

    matched = DigestVerifier("u", expected)
    matched.update(DATA)
    assert matched.finish(computed={"h1": "h1:abc="}).verified == ("sha256", "h1")

    wrong = DigestVerifier("u", expected)
    wrong.update(DATA)
    with pytest.raises(DigestMismatch) as caught:
        wrong.finish(computed={"h1": "h1:xyz="})
    assert (caught.value.algorithm, caught.value.actual) == ("h1", "h1:xyz=")


def test_unknown_extra_algorithm_and_malformed_expected_digest_are_rejected() -> None:
    with pytest.raises(InvalidDigest, match="unknown algorithm"):
        DigestVerifier("u", {}, also=("sha3_999",))
    with pytest.raises(InvalidDigest):
        DigestVerifier("u", {"sha512": "abcd"})


async def test_npm_tarball_streamed_from_the_fake_verifies(
    npm_registry: FakeNpmRegistry, npm_server: RunningServer, http_client: httpx.AsyncClient
) -> None:
    """End to end: the artifact the npm indexer maps verifies against the bytes served."""
    npm_registry.publish("streamed", "1.0.0", files={"big.bin": DATA})
    npm = NpmIndexer(http_client, registry_url=npm_server.url, replicate_url=npm_server.url)
    (release,) = (await npm.package("streamed")).releases
    (artifact,) = release.artifacts

    verifier = DigestVerifier.for_artifact(artifact)
    async with http_client.stream("GET", artifact.url) as response:
        async for chunk in response.aiter_bytes(16_384):
            verifier.update(chunk)
    assert verifier.finish().verified == ("sha512", "sha1")

    npm_registry.tarballs["/streamed/-/streamed-1.0.0.tgz"] = npm_registry.publish(
        "streamed", "1.0.1"
    )
    tampered = DigestVerifier.for_artifact(artifact)
    tampered.update((await http_client.get(artifact.url)).content)
    with pytest.raises(DigestMismatch):
        tampered.finish()
