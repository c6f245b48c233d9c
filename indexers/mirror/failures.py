"""The answer a client gets when neither the upstream nor the archive can give it a file or
listing: a 5xx that its client reports as a registry failure and retries, never a 404 (which
``npm`` turns into "package does not exist", ``cargo`` into "no matching package" and Maven
caches as "not found" in the local repository until its update interval passes). A 404 stays
for what the upstream itself says does not exist.

The status names the failure. What the clients do with it: ``npm`` (make-fetch-happen) retries
every 5xx ``fetch-retries`` times, then prints ``E502``/``E503``/``E504`` with the message;
``cargo`` retries every 5xx as a spurious network error; ``pip`` retries 500 and 503 only, shows
a 502 or 504 on a file as "HTTP error 502 while getting <url>", and -- whatever the status --
logs a failed project page at debug level and goes on as if the project had no files (the
message and ``Forage-Upstream-Error`` are then for ``pip -vv`` and the server's log):

- ``504 Gateway Timeout``: the upstream did not answer in time (stalled, too slow, deadline);
- ``503 Service Unavailable``: the mirror did not ask -- it is offline (archive only), or the
  upstream failed moments ago and is being skipped (``Retry-After``: the skip window);
- ``502 Bad Gateway``: any other failure -- refused, reset, DNS, TLS, an error status, a cut
  body, bytes that fail their digest.

Go is the exception: a ``GOPROXY`` list falls through to its next entry only on 404/410, so
the Go mirror keeps those (:mod:`indexers.golang.mirror`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from indexers.errors import UpstreamFailed

#: Failure kinds that mean "no answer in time".
TIMEOUT_KINDS = frozenset({"timeout", "slow"})


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The status, one-line message and headers of an "upstream failed, nothing archived"
    answer; each ecosystem wraps ``message`` in its registry's error format."""

    status: int
    message: str
    headers: dict[str, str]


def unavailable(
    error: UpstreamFailed, headers: Mapping[str, str], *, retry_after: float = 0
) -> Unavailable:
    """The answer for ``error`` (see the module docstring); ``retry_after`` is the mirror's
    skip window in seconds, sent with a 503 for an upstream being skipped."""
    if error.kind in TIMEOUT_KINDS:
        status, what = 504, "upstream timed out"
    elif error.kind == "offline":
        status, what = 503, "mirror is offline"
    elif error.kind == "down":
        status, what = 503, "upstream is down"
    else:
        status, what = 502, "upstream failed"
    out = dict(headers)
    if error.kind == "down" and retry_after > 0:
        out["Retry-After"] = str(math.ceil(retry_after))
    message = f"{what} ({error.kind}: {error.reason}) and the archive has no copy"
    return Unavailable(status, message[:400], out)


__all__ = ["TIMEOUT_KINDS", "Unavailable", "unavailable"]
