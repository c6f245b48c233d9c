"""The keys of a lookup body, parsed as a stream of JSON events.

``json.loads`` of a 15 MB ``{"keys": [...]}`` decodes the body to a string, then builds every
value in it, wanted or not: a body padded with ``[{}, {}, ...]`` becomes hundreds of MB of
dicts. Here ijson's C parser (yajl) walks the document as events with no recursion; only the
strings of the ``keys`` array are kept (a nested value in it is kept empty: it is answered as
an invalid key all the same), keys past the limit are counted but not kept, and every other
member is checked for syntax and skipped.

yajl turns a lone surrogate escape into ``?``; :func:`check_surrogates` refuses the body
first, as ``indexers.load_json`` would (every escape is read in order, so ``\\\\ud800``,
an escaped backslash, is not taken for one).
"""

from __future__ import annotations

import re
from decimal import Decimal

import ijson  # type: ignore[import-untyped]

#: Some escape of a UTF-16 surrogate: only then is the exact scan needed.
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")
#: One escape sequence; ``\\`` is matched whole, so what follows it is not an escape.
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


class BodyError(ValueError):
    """The body is not JSON, or not the object the endpoint takes; the message says which."""


class NotKeysObject(BodyError):
    """The body is JSON but not an object with a ``keys`` array."""


class TooManyKeys(BodyError):
    """The ``keys`` array holds more than the limit; ``count`` is how many it holds."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} keys")
        self.count = count


def check_surrogates(data: bytes) -> None:
    """Raise :class:`BodyError` if a string escape in the JSON ``data`` names half of a
    surrogate pair without the other half right after it."""
    if not _SURROGATE_HINT.search(data):
        return
    high_end = -1  # where the last unpaired high surrogate's escape ended
    for match in _ESCAPE.finditer(data):
        code = int(match[1], 16) if match[1] else -1
        if high_end >= 0:
            if match.start() != high_end or not 0xDC00 <= code <= 0xDFFF:
                break
            high_end = -1
        elif 0xD800 <= code <= 0xDBFF:
            high_end = match.end()
        elif 0xDC00 <= code <= 0xDFFF:
            break
    else:
        if high_end < 0:
            return
    raise BodyError("a string holds a lone surrogate escape, which is not Unicode text")


def lookup_keys(data: bytes, *, limit: int) -> list[object]:
    """The items of ``data``'s ``{"keys": [...]}``: strings, numbers, ``None``, and empty
    objects or arrays standing for nested ones. :class:`BodyError` for JSON that does not parse,
    :class:`NotKeysObject` for one with no ``keys`` array, :class:`TooManyKeys` for more than
    ``limit`` items."""
    check_surrogates(data)
    events = ijson.basic_parse(data)
    keys: list[object] | None = None
    count = 0
    depth = 0
    member = None  # the current top-level member's name
    skip_to = -1  # inside a nested key item: the depth at which it ends
    try:
        for event, value in events:
            if event in ("start_map", "start_array"):
                if depth == 0 and event != "start_map":
                    raise NotKeysObject("not a JSON object")
                if depth == 1 and member == "keys":
                    if event != "start_array":
                        raise NotKeysObject("keys is not an array")
                    keys, count = [], 0
                elif depth == 2 and member == "keys" and skip_to < 0:
                    count += 1
                    if count <= limit and keys is not None:
                        keys.append({} if event == "start_map" else [])
                    skip_to = depth
                depth += 1
            elif event in ("end_map", "end_array"):
                depth -= 1
                if depth == skip_to:
                    skip_to = -1
            elif depth == 1:
                if event == "map_key":
                    member = value
                elif member == "keys":
                    raise NotKeysObject("keys is not an array")
            elif depth == 2 and member == "keys" and skip_to < 0 and keys is not None:
                count += 1
                if count <= limit:
                    keys.append(float(value) if isinstance(value, Decimal) else value)
            elif depth == 0:
                raise NotKeysObject("not a JSON object")
    except ijson.JSONError as exc:
        message = exc.args[0] if exc.args else exc
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        raise BodyError(str(message).splitlines()[0][:200]) from None
    if keys is None:
        raise NotKeysObject("no keys array")
    if count > limit:
        raise TooManyKeys(count)
    return keys
