"""Ruby ``Marshal`` 4.8, written: the gemspecs ``gem install`` asks a compact-index source for.

RubyGems' ``gem install`` (3.3, on these machines) resolves through ``/info/NAME`` and then
fetches ``quick/Marshal.4.8/NAME-V[-PLATFORM].gemspec.rz`` for each gem it picked
(``Gem::Resolver::APISpecification#spec`` -> ``Gem::Source#fetch_spec``): a zlib-deflated
``Marshal.dump`` of a ``Gem::Specification``. When the upstream cannot answer, the mirror
writes one from what ``/info`` says (name, version, platform, runtime dependencies, required
Ruby and RubyGems versions), which is all the resolver reads before the ``.gem`` itself,
whose own metadata the installer uses.

The format (``ruby/ruby: doc/marshal.rdoc``): ``\\x04\\x08`` then one value; ``Gem::Version``
and ``Gem::Requirement`` dump as user-marshalled arrays (``U``), ``Gem::Specification`` as
its ``_dump`` string (``u``) holding a marshalled 19-field array (``MARSHAL_FIELDS[4]`` of
``Gem::Specification._load``), ``Gem::Dependency`` as a plain object (``o``) with ivars.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from indexers.gem.compact import InfoEntry

_OPERATOR = re.compile(r"\s*(=|!=|>=|<=|>|<|~>)?\s*(\S+)\s*")


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str


@dataclass(frozen=True, slots=True)
class UserMarshal:
    """An object dumped with ``marshal_dump`` (``U``): its class name and the dumped value."""

    cls: str
    value: object


@dataclass(frozen=True, slots=True)
class UserDump:
    """An object dumped with ``_dump`` (``u``): its class name and the dumped bytes."""

    cls: str
    data: bytes


@dataclass(frozen=True, slots=True)
class RubyObject:
    """A plain object (``o``): class name and instance variables (names with ``@``)."""

    cls: str
    ivars: tuple[tuple[str, object], ...]


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray(b"\x04\x08")
        self.symbols: dict[str, int] = {}

    def fixnum(self, value: int) -> None:
        if value == 0:
            self.out.append(0)
        elif 0 < value < 123:
            self.out.append(value + 5)
        elif -124 < value < 0:
            self.out.append((value - 5) & 0xFF)
        else:
            size = (max(value.bit_length(), (~value).bit_length()) + 8) // 8
            if size > 4:
                raise ValueError(f"{value} is too large for a Marshal fixnum")
            raw = value.to_bytes(size, "little", signed=True)
            self.out.append(size if value > 0 else (-size) & 0xFF)
            self.out += raw

    def symbol(self, name: str) -> None:
        if name in self.symbols:
            self.out += b";"
            self.fixnum(self.symbols[name])
            return
        self.symbols[name] = len(self.symbols)
        raw = name.encode()
        self.out += b":"
        self.fixnum(len(raw))
        self.out += raw

    def value(self, value: object) -> None:
        if value is None:
            self.out += b"0"
        elif value is True:
            self.out += b"T"
        elif value is False:
            self.out += b"F"
        elif isinstance(value, int):
            self.out += b"i"
            self.fixnum(value)
        elif isinstance(value, str):
            raw = value.encode()
            self.out += b'I"'
            self.fixnum(len(raw))
            self.out += raw
            self.fixnum(1)
            self.symbol("E")
            self.out += b"T"
        elif isinstance(value, Symbol):
            self.symbol(value.name)
        elif isinstance(value, list | tuple):
            self.out += b"["
            self.fixnum(len(value))
            for item in value:
                self.value(item)
        elif isinstance(value, dict):
            self.out += b"{"
            self.fixnum(len(value))
            for key, item in value.items():
                self.value(key)
                self.value(item)
        elif isinstance(value, UserMarshal):
            self.out += b"U"
            self.symbol(value.cls)
            self.value(value.value)
        elif isinstance(value, UserDump):
            self.out += b"u"
            self.symbol(value.cls)
            self.fixnum(len(value.data))
            self.out += value.data
        elif isinstance(value, RubyObject):
            self.out += b"o"
            self.symbol(value.cls)
            self.fixnum(len(value.ivars))
            for name, item in value.ivars:
                self.symbol(name)
                self.value(item)
        else:
            raise TypeError(f"cannot marshal {type(value).__name__}")


def dump(value: object) -> bytes:
    """``Marshal.dump(value)`` for the Ruby values this module models."""
    writer = _Writer()
    writer.value(value)
    return bytes(writer.out)


def gem_version(text: str) -> UserMarshal:
    return UserMarshal("Gem::Version", [text])


def requirement(texts: Iterable[str]) -> UserMarshal:
    """A ``Gem::Requirement`` of ``[">= 1.0", "< 2"]``; none is ``>= 0``."""
    pairs = []
    for text in texts:
        match = _OPERATOR.fullmatch(text)
        if match is None:
            continue
        pairs.append([match.group(1) or "=", gem_version(match.group(2))])
    return UserMarshal("Gem::Requirement", [pairs or [[">=", gem_version("0")]]])


def _dependency(name: str, requirements: tuple[str, ...]) -> RubyObject:
    required = requirement(requirements)
    return RubyObject(
        "Gem::Dependency",
        (
            ("@name", name),
            ("@requirement", required),
            ("@type", Symbol("runtime")),
            ("@prerelease", False),
            ("@version_requirements", required),
        ),
    )


def quick_gemspec(name: str, entry: InfoEntry, *, date: str | None = None) -> bytes:
    """The ``quick/Marshal.4.8/<gem>.gemspec.rz`` body of one ``/info`` entry: deflated."""
    fields: list[object] = [
        "3.3.15",  # rubygems_version: informative only
        4,  # specification_version
        name,
        gem_version(entry.version),
        date,  # a "YYYY-MM-DD" string, or nil for today
        "",  # summary
        requirement(entry.ruby),
        requirement(entry.rubygems),
        entry.platform,  # original_platform
        [_dependency(dep, reqs) for dep, reqs in entry.dependencies],
        None,  # rubyforge_project
        None,  # email
        [],  # authors
        None,  # description
        None,  # homepage
        True,  # has_rdoc
        entry.platform,  # new_platform (Gem::Specification#platform= takes a string)
        [],  # licenses
        {},  # metadata
    ]
    return zlib.compress(dump(UserDump("Gem::Specification", dump(fields))))


__all__ = ["RubyObject", "Symbol", "UserDump", "UserMarshal", "dump", "quick_gemspec"]
