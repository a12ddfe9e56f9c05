"""The event loop: one poller, a table of handlers, timers, and the turn.

Theory of operation
===================
Every socket is non-blocking and watched by one poller (edge-triggered epoll
on Linux; see `rat.poller`).  The loop knows nothing about lines, clients or
broadcasts: it knows file descriptors, the *handler* that owns each one
(anything with `on_event(mask)` and `describe()`), timers, and the *turn*.
One turn (`run_once`) is:

1. `poll()` sleeps until an fd is ready or the next timer is due (not at
   all if a handler asked to be resumed), and returns the ready fds.
2. Each ready fd's handler gets `on_event(mask)`.  A listener accepts; a
   connection reads, frames and publishes (nothing is sent yet), or flushes
   queued output when the kernel has room again.
3. Handlers that stopped early on purpose get `on_resume()` (see below).
4. Due timers run (write timeouts, lingering closes, resuming accept).
5. End-of-turn hooks run: this is where the server delivers the turn's lines,
   one `send` per receiver however many lines the turn gathered.
6. Signals that arrived during the turn are handed to the server.

Why "drain until BlockingIOError", and the ready list
-----------------------------------------------------
With edge triggering the kernel reports an fd when it *becomes* ready, once.
A reader that stops before `recv` says `BlockingIOError` leaves bytes that no
new event will announce: the connection would hang until the peer happens to
send more.  So every reader drains.  But a client that keeps its socket full
could then hold the loop forever, so a connection reads at most a budget per
turn and, if bytes are left, asks `resume()` to be called next turn without
an event: fairness without losing the edge.  With a level-triggered poller
the kernel would report it again anyway; the ready list costs nothing there.

Signals
-------
A signal handler may run between any two bytecodes of the loop, so it only
records the signal.  `signal.set_wakeup_fd` makes the C-level handler write
the signal number to a socket the poller watches, so a `poll()` that was
sleeping returns at once, and the signal is acted on at the end of the turn.

The loop never closes a handler's fd behind its back: handlers call
`remove()` before closing, and an event for an fd that was removed earlier in
the same turn (or already belongs to a newer connection, since the kernel
reuses the lowest free number) is at worst a spurious wake-up, which every
handler tolerates (`BlockingIOError` means "nothing after all").
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Protocol

from rat.poller import READABLE, Poller, TracingPoller
from rat.timers import Timer, Timers

log = logging.getLogger("rat")


class Handler(Protocol):
    """Anything the loop watches: a listener, a connection, the wakeup socket."""

    def on_event(self, mask: int) -> None:
        """The poller reported `mask` (READABLE/WRITABLE/HANGUP) for this fd."""

    def describe(self) -> str:
        """A short name for logs and `--trace` (an address, "listener")."""


class Resumable(Protocol):
    def on_resume(self) -> None:
        """Called once at the next turn after `Loop.resume(self)`."""


class Loop:
    """Poller + fd -> handler table + timers + ready list + end-of-turn hooks."""

    def __init__(
        self,
        poller: Poller,
        trace: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # --trace wraps the poller; `tracer` also lets handlers note what the
        # poller cannot see (resumed reads, short sends).
        self.tracer = TracingPoller(poller, self.describe) if trace else None
        self.poller: Poller = self.tracer or poller
        self.clock = clock
        self.handlers: dict[int, Handler] = {}
        self.timers = Timers()
        self.turns = 0
        self._ready: dict[Resumable, None] = {}  # ordered, each handler once
        self._turn_start: list[Callable[[], None]] = []
        self._turn_end: list[Callable[[], None]] = []
        self.signals: list[int] = []  # received, not yet handed on
        self._on_signal: Callable[[int], None] | None = None
        # The signal wakeup socket (see "Signals" above).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.add(self._wake_r.fileno(), _Wakeup(self._wake_r), READABLE)

    # ------------------------------------------------------------ handlers

    def add(self, fd: int, handler: Handler, interest: int) -> None:
        """Watch `fd` for `interest` and send its events to `handler`."""
        self.handlers[fd] = handler
        self.poller.register(fd, interest)

    def modify(self, fd: int, interest: int) -> None:
        self.poller.modify(fd, interest)

    def remove(self, fd: int, handler: Handler) -> None:
        """Stop watching `fd` (call before closing it)."""
        try:
            self.poller.unregister(fd)
        except (KeyError, OSError, ValueError):
            pass
        if self.handlers.get(fd) is handler:
            del self.handlers[fd]

    def describe(self, fd: int) -> str:
        handler = self.handlers.get(fd)
        return handler.describe() if handler is not None else "?"

    def note(self, text: str) -> None:
        """A `--trace` line (no-op when not tracing)."""
        if self.tracer is not None:
            self.tracer.note(text)

    # -------------------------------------------------------------- timers

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return self.timers.call_at(when, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.timers.call_at(self.clock() + delay, callback)

    def cancel(self, timer: Timer | None) -> None:
        self.timers.cancel(timer)

    # ---------------------------------------------------------------- turn

    def resume(self, handler: Resumable) -> None:
        """Call `handler.on_resume()` next turn, without waiting for an event."""
        self._ready[handler] = None

    def at_turn_start(self, hook: Callable[[], None]) -> None:
        """Run `hook()` every turn as soon as the poller returns, before any handler.

        With `at_turn_end`, this brackets the work of a turn without the
        sleep in `poll()` (--admin times turns this way).
        """
        self._turn_start.append(hook)

    def at_turn_end(self, hook: Callable[[], None]) -> None:
        """Run `hook()` at the end of every turn, after events and timers."""
        self._turn_end.append(hook)

    def run_once(self, timeout: float | None = None) -> int:
        """One turn; sleep at most `timeout` seconds (None: until an event or timer).

        Returns the number of events the poller reported.
        """
        ready, self._ready = self._ready, {}
        if ready:
            wait: float | None = 0.0
        else:
            wait = timeout
            due = self.timers.next_due()
            if due is not None:
                until_due = max(0.0, due - self.clock())
                wait = until_due if wait is None else min(wait, until_due)
        events = self.poller.poll(wait)
        self.turns += 1
        for hook in self._turn_start:
            hook()
        handlers = self.handlers
        for fd, mask in events:
            handler = handlers.get(fd)
            if handler is not None:
                handler.on_event(mask)
        for resumable in ready:
            # Skip one that an event already read (and queued for next turn).
            if resumable not in self._ready:
                resumable.on_resume()
        if self.timers:
            self.timers.run_due(self.clock())
        for hook in self._turn_end:
            hook()
        while self.signals and self._on_signal is not None:
            self._on_signal(self.signals.pop(0))
        return len(events)

    def run(self, done: Callable[[], bool]) -> None:
        """Turn until `done()` is true (checked after every turn)."""
        while not done():
            self.run_once()

    # ------------------------------------------------------------- signals

    def install_signal_handlers(
        self, signums: Iterable[int], on_signal: Callable[[int], None]
    ) -> Callable[[], None]:
        """Route `signums` to `on_signal(signum)` at turn end; return an undo function."""

        def record(signum: int, frame: FrameType | None) -> None:
            # Python runs this between bytecodes of the main thread: if the
            # loop was in poll(), when the interrupted call returns and before
            # it is retried; the retried poll() returns at once because the
            # C-level handler already wrote to the wakeup socket.  Any line of
            # the loop may be interrupted, so only record.
            del frame
            self.signals.append(signum)

        self._on_signal = on_signal
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        old = {sig: signal.signal(sig, record) for sig in signums}

        def restore() -> None:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old.items():
                signal.signal(sig, handler)

        return restore

    def close(self) -> None:
        self.remove(self._wake_r.fileno(), self.handlers[self._wake_r.fileno()])
        self.poller.close()
        self._wake_r.close()
        self._wake_w.close()


class _Wakeup:
    """The signal wakeup socket's handler: drain it (its only job was waking poll)."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def on_event(self, mask: int) -> None:
        del mask
        try:
            while self._sock.recv(64):
                pass
        except BlockingIOError:
            pass

    def describe(self) -> str:
        return "signal-wakeup"
