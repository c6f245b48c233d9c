"""Reference vectors from ``tests/data/vectors`` (copied from the project's shared vectors,
computed by established IPFS and Filecoin implementations) and the generator of their inputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).parent / "data" / "vectors"
BLOCK = 1 << 20


def load(name: str) -> list[dict[str, Any]]:
    """Return the ``vectors`` list of ``tests/data/vectors/<name>.json``."""
    return json.loads((VECTORS / f"{name}.json").read_text())["vectors"]


def content_chunks(label: str, size: int) -> Iterator[bytes]:
    """Yield the bytes a vector's ``content`` label names, in 1 MiB pieces.

    ``forage-vector:<SIZE>`` is SHAKE128('forage-vector:<SIZE>:<i>') in 1 MiB outputs,
    concatenated and cut to SIZE; ``hello world\\n`` is itself.
    """
    if not label.startswith("forage-vector:"):
        yield label.encode().decode("unicode_escape").encode()
        return
    remaining, i = size, 0
    while remaining > 0:
        piece = hashlib.shake_128(f"{label}:{i}".encode()).digest(BLOCK)
        yield piece[: min(remaining, BLOCK)]
        remaining -= BLOCK
        i += 1


def content(label: str, size: int) -> bytes:
    """Return a vector's whole input (for the small ones)."""
    return b"".join(content_chunks(label, size))
