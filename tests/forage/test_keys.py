"""Key parsing: both spellings, platform aliases, and hostile input refused with InvalidKey."""

from __future__ import annotations

import pytest

from forage.errors import InvalidKey
from forage.lookup.keys import MAX_KEY_LENGTH, Key, parse_key
from indexers import InvalidName


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pkg:npm/%40scope/name@1.2.3", Key("npm", "@scope/name", "1.2.3")),
        ("pkg:npm/lodash@4.17.21", Key("npm", "lodash", "4.17.21")),
        ("pkg:pypi/requests@2.31.0", Key("pypi", "requests", "2.31.0")),
        (
            "pkg:golang/github.com/pkg/errors@v0.9.1",
            Key("golang", "github.com/pkg/errors", "v0.9.1"),
        ),
        ("pkg:cargo/serde@1.0.0", Key("cargo", "serde", "1.0.0")),
        ("pkg:gem/rails@7.1.0", Key("gem", "rails", "7.1.0")),
        ("npm:lodash:4.17.21", Key("npm", "lodash", "4.17.21")),
        ("Npm:@babel/core:7.0.0", Key("npm", "@babel/core", "7.0.0")),
        ("go:github.com/pkg/errors:v0.9.1", Key("golang", "github.com/pkg/errors", "v0.9.1")),
        ("Pypi:Django:5.0", Key("pypi", "Django", "5.0")),
        ("Rubygems:rails:7.1.0", Key("gem", "rails", "7.1.0")),
        ("npm:lodash", Key("npm", "lodash", None)),
        ("  pkg:npm/lodash@1.0.0\n", Key("npm", "lodash", "1.0.0")),
    ],
)
def test_both_spellings_parse_to_one_key(text: str, expected: Key) -> None:
    assert parse_key(text) == expected


def test_purl_round_trip_keeps_scope_encoded() -> None:
    assert parse_key("npm:@scope/name:1.2.3").purl() == "pkg:npm/%40scope/name@1.2.3"
    assert parse_key("go:github.com/pkg/errors:v0.9.1").purl() == (
        "pkg:golang/github.com/pkg/errors@v0.9.1"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty key"),
        ("lodash", "expected pkg:"),
        ("nuget:Newtonsoft.Json:13.0.1", "unknown platform 'nuget'"),
        ("pkg:npm/", "name"),
        ("npm::1.0.0", "missing package name"),
        ("npm:lo\x00dash:1.0.0", "control character"),
        ("npm:lo\x1fdash:1.0.0", "control character"),
        ("npm:lo\x7fdash:1.0.0", "control character"),
        ("x" * (MAX_KEY_LENGTH + 1), "longer than"),
    ],
)
def test_malformed_keys_raise_invalid_key(text: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason) as info:
        parse_key(text)
    assert info.value.key == text.strip()[: MAX_KEY_LENGTH + 1]


def test_normalizer_applies_and_its_rejection_names_the_key() -> None:
    def normalize(ecosystem: str, name: str) -> str:
        if ".." in name:
            raise InvalidName(ecosystem, name, "path traversal")
        return name.lower() if ecosystem == "pypi" else name

    assert parse_key("Pypi:Django:5.0", normalize=normalize).name == "django"
    assert parse_key("npm:Legacy:1.0.0", normalize=normalize).name == "Legacy"
    with pytest.raises(InvalidKey, match="path traversal") as info:
        parse_key("npm:../etc:1", normalize=normalize)
    assert info.value.key == "npm:../etc:1"
