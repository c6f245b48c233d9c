"""Pre-fork serving: one listening socket, several server processes accepting on it.

One Python process answers lookups on one core (a 1,000-key lookup is CPU work: parsing,
one query, rendering), so ``forage serve --processes N`` runs N. The parent binds the
listening sockets (:func:`bind`), forks N children that each run the whole application
with a database engine and blockstore handle of their own, opened after the fork (a
connection carried across a fork would be spoken on by two processes), and supervises them
(:func:`supervise`); it never accepts a connection itself.

The children accept on the socket they inherited rather than on sockets of their own bound
with ``SO_REUSEPORT``, because:

- there is one accept queue, and a connection goes to a process that is free to accept it; a
  process busy with a lookup is not accepting, while ``SO_REUSEPORT`` hashes each connection
  to one process whether it is busy or not;
- a child that dies loses nothing: connections waiting are still in the parent's queue for
  the others, where a dying ``SO_REUSEPORT`` socket resets the ones queued on it, and the port
  never closes while a child restarts;
- the parent knows the port before any child exists (``--port 0`` and the printed URL work),
  and the behaviour is the same on every Unix, where ``SO_REUSEPORT`` balances only on some.

This is the pre-fork model of gunicorn's arbiter and of nginx without ``reuseport``.

Supervision: a child that dies while serving is logged and started again after a delay that
doubles with each death of a child that had not lived :data:`STABLE` seconds (from
:data:`FIRST_DELAY` up to :data:`MAX_DELAY`), so a crash loop does not spin. If a child exits
before it ever served while no process serves yet, the server cannot start: the others are
stopped and :class:`ServerProcessesFailed` raised. SIGINT or SIGTERM to the parent is passed
on as SIGTERM to every child, which finishes its requests in flight and exits; the parent
waits for them all (at most ``stop_timeout`` seconds, then kills what is left). A child whose
parent died (``SIGKILL``) notices through a pipe only the parent holds open and stops too.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from forage.errors import ForageError

log = logging.getLogger(__name__)

#: Seconds before the first restart of a child that died.
FIRST_DELAY = 0.5
#: The longest wait before a restart, reached by doubling while children keep dying young.
MAX_DELAY = 30.0
#: A child that served this many seconds before dying was not crash-looping: its slot's delay
#: starts again from ``FIRST_DELAY``.
STABLE = 60.0
#: Connections the kernel queues for the processes to accept (aiohttp's default).
BACKLOG = 128

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)
_READY = b"r"


class ServerProcessesFailed(ForageError):
    """The server processes could not start, or did not stop cleanly."""


class EventLoop(Protocol):
    """What :meth:`ServerProcess.on_parent_exit` needs of an asyncio event loop."""

    def add_reader(self, fd: int, callback: Callable[..., object], /, *args: Any) -> None: ...

    def remove_reader(self, fd: int, /) -> bool: ...


@dataclass(frozen=True, slots=True)
class ServerProcess:
    """What one child is given: the listening sockets, a way to say it is serving, and a way
    to learn that its parent is gone."""

    number: int
    sockets: tuple[socket.socket, ...]
    _ready_fd: int
    _parent_fd: int

    def ready(self) -> None:
        """Tell the parent this process accepts connections (once, after its sites start)."""
        os.write(self._ready_fd, _READY)
        os.close(self._ready_fd)

    def on_parent_exit(self, loop: EventLoop, callback: Callable[[], object]) -> None:
        """Call ``callback`` (once) when the parent exits: the pipe only it writes to ends."""

        def gone() -> None:
            loop.remove_reader(self._parent_fd)
            callback()

        loop.add_reader(self._parent_fd, gone)


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to, all on one port (``port`` 0:
    the port the first one was given), as aiohttp's ``TCPSite`` would bind them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass(slots=True)
class _Slot:
    """One of the N places a child runs in, across its restarts."""

    number: int
    pid: int | None = None
    ready_fd: int | None = None
    served: bool = False
    started: float = 0.0
    delay: float = 0.0
    restart_at: float | None = None


@dataclass(slots=True)
class _Supervisor:
    sockets: list[socket.socket]
    main: Callable[[ServerProcess], int]
    on_serving: Callable[[], object]
    on_stopping: Callable[[], object]
    stop_timeout: float
    slots: list[_Slot]
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    serving: bool = False
    stopping: bool = False
    failures: list[str] = field(default_factory=list)
    _deadline: float = 0.0
    _signal_fds: tuple[int, int] = (-1, -1)
    _parent_fds: tuple[int, int] = (-1, -1)
    _handlers: dict[int, Any] = field(default_factory=dict)

    def run(self) -> None:
        self._signal_fds = _pipe()
        self._parent_fds = os.pipe()
        self.selector.register(self._signal_fds[0], selectors.EVENT_READ)
        # The pipe first, then the handlers: a signal between the two would be lost.
        previous_fd = signal.set_wakeup_fd(self._signal_fds[1], warn_on_full_buffer=False)
        self._handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
        for signum in _SIGNALS:
            signal.signal(signum, _note)
        try:
            for slot in self.slots:
                self._spawn(slot)
            while not (self.stopping and not self._children()):
                self._step()
        finally:
            self._kill_all()
            signal.set_wakeup_fd(previous_fd)
            for number, handler in self._handlers.items():
                signal.signal(number, handler)
            self.selector.close()
            for fd in (*self._signal_fds, *self._parent_fds):
                os.close(fd)
        if self.failures:
            raise ServerProcessesFailed("; ".join(self.failures))

    def _children(self) -> list[_Slot]:
        return [slot for slot in self.slots if slot.pid is not None]

    def _step(self) -> None:
        """Wait for a signal, a child's word or a restart falling due, and act on it."""
        due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        if self.stopping:
            timeout = min(timeout or 1.0, 1.0)
        for key, _events in self.selector.select(timeout):
            if key.fd == self._signal_fds[0]:
                self._signals(os.read(key.fd, 64))
            else:
                self._ready(key.fd)
        self._reap()
        if self.stopping:
            if time.monotonic() > self._deadline:
                self._give_up()
            return
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                self._spawn(slot)

    def _signals(self, received: bytes) -> None:
        if any(signum in (signal.SIGINT, signal.SIGTERM) for signum in received):
            self._stop(asked=True)

    def _stop(self, *, asked: bool) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._deadline = time.monotonic() + self.stop_timeout
        if asked:
            self.on_stopping()
        for slot in self.slots:
            slot.restart_at = None
            if slot.pid is not None:
                _kill(slot.pid, signal.SIGTERM)

    def _ready(self, fd: int) -> None:
        slot = next(slot for slot in self.slots if slot.ready_fd == fd)
        if os.read(fd, 1) == _READY:
            slot.served = True
            log.info("server process %d (%d) serving", slot.number, slot.pid)
        self._close_ready(slot)
        if not (self.serving or self.stopping) and all(slot.served for slot in self.slots):
            self.serving = True
            self.on_serving()

    def _close_ready(self, slot: _Slot) -> None:
        if slot.ready_fd is not None:
            self.selector.unregister(slot.ready_fd)
            os.close(slot.ready_fd)
            slot.ready_fd = None

    def _reap(self) -> None:
        for slot in self._children():
            assert slot.pid is not None
            pid, status = os.waitpid(slot.pid, os.WNOHANG)
            if pid != 0:
                self._exited(slot, status)

    def _exited(self, slot: _Slot, status: int) -> None:
        pid, how = slot.pid, _describe(status)
        slot.pid = None
        self._close_ready(slot)
        if self.stopping:
            # A stop signal ends a child still starting before it handles the signal itself.
            if os.waitstatus_to_exitcode(status) in (0, -signal.SIGTERM, -signal.SIGINT):
                log.debug("server process %d (%d) stopped", slot.number, pid)
            else:
                self.failures.append(f"server process {pid} {how} while stopping")
            return
        if not any(other.served for other in self.slots):  # (the docstring's start-up rule)
            self.failures.append(f"server process {pid} {how} before it could serve")
            self._stop(asked=False)
            return
        lived = time.monotonic() - slot.started
        young = min(MAX_DELAY, slot.delay * 2 or FIRST_DELAY)
        slot.delay = FIRST_DELAY if lived >= STABLE else young
        slot.restart_at = time.monotonic() + slot.delay
        log.warning(
            "server process %d (%d) %s after %.1f s; starting another in %.1f s",
            slot.number,
            pid,
            how,
            lived,
            slot.delay,
        )

    def _give_up(self) -> None:
        for slot in self._children():
            self.failures.append(
                f"server process {slot.pid} did not stop within {self.stop_timeout:g} s: killed"
            )
        self._kill_all()

    def _kill_all(self) -> None:
        """Leave no child behind, whatever ended the loop (an error in the parent included)."""
        for slot in self._children():
            assert slot.pid is not None
            _kill(slot.pid, signal.SIGKILL)
            os.waitpid(slot.pid, 0)
            slot.pid = None
            self._close_ready(slot)

    def _spawn(self, slot: _Slot) -> None:
        ready_read, ready_write = os.pipe()
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                os.close(ready_read)
                self._child(slot, ready_write)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        os.close(ready_write)
        slot.pid, slot.ready_fd, slot.served = pid, ready_read, False
        slot.started, slot.restart_at = time.monotonic(), None
        self.selector.register(ready_read, selectors.EVENT_READ)
        log.debug("server process %d started: pid %d", slot.number, pid)

    def _child(self, slot: _Slot, ready_fd: int) -> None:
        """In the forked child: drop the parent's signal handling and descriptors, run
        ``main``, and exit with its status without returning into the parent's stack."""
        code = 1
        try:
            # Until the child handles them itself, SIGINT and SIGTERM simply end it.
            signal.set_wakeup_fd(-1)
            for signum in _SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            self.selector.close()
            others = [other.ready_fd for other in self.slots if other.ready_fd is not None]
            for fd in (*self._signal_fds, self._parent_fds[1], *others):
                os.close(fd)
            process = ServerProcess(slot.number, tuple(self.sockets), ready_fd, self._parent_fds[0])
            code = self.main(process)
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            log.exception("server process %d failed", os.getpid())
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os._exit(code)


def supervise(
    sockets: list[socket.socket],
    count: int,
    main: Callable[[ServerProcess], int],
    *,
    on_serving: Callable[[], object],
    on_stopping: Callable[[], object],
    stop_timeout: float,
) -> None:
    """Run ``main`` in ``count`` forked children on ``sockets`` until SIGINT or SIGTERM;
    ``on_serving`` once all of them serve, ``on_stopping`` when asked to stop. Returns once
    every child stopped cleanly; :class:`ServerProcessesFailed` if they could not start or
    did not stop cleanly."""
    slots = [_Slot(number) for number in range(1, count + 1)]
    _Supervisor(sockets, main, on_serving, on_stopping, stop_timeout, slots).run()


def _note(signum: int, frame: object) -> None:
    """The parent's handler: the signal's number reaches the wakeup pipe, nothing else to do."""


def _pipe() -> tuple[int, int]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    return read, write


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _describe(status: int) -> str:
    """``exited with status 1`` or ``was killed by SIGKILL``."""
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
