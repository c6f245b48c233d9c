"""JSON from untrusted clients, refused unless every string in it is Unicode text.

``json.loads`` accepts an escape naming half of a UTF-16 surrogate pair with no other half
(``"\\ud800"``) and returns a ``str`` holding a lone surrogate. Nothing downstream can encode
that string: the database driver, ``orjson`` and the response writer all fail, far from the
request and after work (an import queued, a lookup run) is done. :func:`load_json` refuses
such a document where it is read, so a client gets told at once and nothing is done for it.
RFC 8259 section 8.2 calls these strings' behaviour unpredictable; we choose to refuse them.
"""

from __future__ import annotations

import json
from typing import Any


class LoneSurrogate(ValueError):
    """A JSON string holds an unpaired UTF-16 surrogate escape, which is not Unicode text.

    A ``ValueError`` like ``json.JSONDecodeError``, so callers catching what ``json.loads``
    raises for bad JSON refuse this too.
    """


def load_json(data: str | bytes) -> Any:
    """``json.loads(data)``, raising :class:`LoneSurrogate` if any key or string value in the
    document (at any depth) is not encodable as UTF-8."""
    document = json.loads(data)
    stack: list[Any] = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return document


def _check_text(value: str) -> None:
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        raise LoneSurrogate(
            f"a string holds a lone surrogate (\\u{code:04x} without its pair), "
            "which is not Unicode text"
        ) from None
