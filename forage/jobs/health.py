"""What a background part of a process (the scheduler, a worker) says about itself.

A part that cannot do its work (a full disk, an unreachable database) keeps trying, and
says so meanwhile instead of stopping silently: ``/healthz`` answers 503 naming it
(:mod:`forage.server.ops`) until it works again. Only the error's class is reported; the
details go to the log, once when the trouble starts and once when it ends.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from forage.db.engine import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartHealth:
    """One part's state. ``part`` is its kind (``scheduler``, ``worker``); ``ok`` is False
    while it cannot work; ``state`` says what it does (``leading``, ``standby``, ``running``,
    ``down``); ``error`` is the class of the failure that keeps it down, ``since`` when that
    began."""

    part: str
    ok: bool
    state: str
    error: str | None = None
    since: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"ok": self.ok, "state": self.state}
        if self.error is not None:
            shown["error"] = self.error
        if self.since is not None:
            shown["since"] = self.since.isoformat().replace("+00:00", "Z")
        return shown


class Monitored(Protocol):
    """Anything that reports a :class:`PartHealth` (thread-safe, cheap: no I/O)."""

    def health(self) -> PartHealth: ...


class Trouble:
    """The failure a part is in, if any: set by :meth:`failed`, cleared by :meth:`recovered`,
    each logged once per episode rather than at every retry."""

    def __init__(self, part: str, owner: str) -> None:
        self.part = part
        self.name = f"{part} {owner}"
        self.error: str | None = None
        self.since: datetime | None = None
        self._lock = threading.Lock()

    def failed(self, exc: BaseException, doing: str) -> None:
        with self._lock:
            first = self.error is None
            self.error = type(exc).__name__
            if first:
                self.since = utcnow()
        if first:
            log.error("%s cannot %s: %s; retrying until it can", self.name, doing, exc)
        else:
            log.debug("%s still cannot %s: %s", self.name, doing, exc)

    def recovered(self) -> None:
        with self._lock:
            was, self.error, self.since = self.error, None, None
        if was is not None:
            log.warning("%s works again (it was down: %s)", self.name, was)

    @property
    def down(self) -> bool:
        return self.error is not None

    def health(self, state: str) -> PartHealth:
        with self._lock:
            if self.error is None:
                return PartHealth(self.part, True, state)
            return PartHealth(self.part, False, "down", self.error, self.since)
