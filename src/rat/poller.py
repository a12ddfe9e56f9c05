"""Pollers: one small interface over the kernel's readiness APIs.

The server asks a poller three things: watch this fd for these conditions
(`register`/`modify`/`unregister`), and "what is ready?" (`poll`).  Conditions
are rat's own flags, translated to and from the backend's at this boundary,
so the loop never sees an `EPOLL*` constant.

Backends
--------
`EpollPoller` (Linux, the default) uses `select.epoll` in *edge-triggered*
mode (EPOLLET): the kernel reports an fd when it *becomes* ready, once, and
not again until new data or new buffer space arrives.  The caller must
therefore drain every ready fd until `BlockingIOError` (or remember that it
did not).  In exchange, an fd with unread data is not reported on every
`epoll_wait`, and the ready list holds only what changed.

`SelectorPoller` wraps the standard library's `selectors.DefaultSelector`
(level-triggered: epoll on Linux, kqueue on BSD/macOS, poll or select
elsewhere).  Level-triggered reports an fd *while* it is ready.  Because the
server drains fds anyway and asks for WRITABLE only while it has output
queued, the same loop is correct on both.

Some facts worth knowing
------------------------
- Spurious wakeups happen: a reported fd may have nothing to read by the time
  we look.  Readers treat `BlockingIOError` as "done for now", never an error.
- EPOLLHUP and EPOLLERR are always reported, asked for or not, and mean "the
  next read or write will tell you what happened": they wake both directions.
- EPOLLRDHUP reports that the peer shut down its sending side; the next
  `recv` returns b"".  The peer may still be able to receive.
- `epoll_ctl(MOD)` re-checks readiness, so adding WRITABLE interest to a
  socket that already has buffer space produces an event right away.
"""

from __future__ import annotations

import select
import selectors
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TextIO

# rat's interest and event flags.  HANGUP only ever appears in events.
READABLE = 1
WRITABLE = 2
HANGUP = 4

Event = tuple[int, int]  # (fd, READABLE|WRITABLE|HANGUP)

# The epoll event bits, in the order --trace prints them.
EPOLL_NAMES = [
    (getattr(select, name), name)
    for name in ("EPOLLIN", "EPOLLOUT", "EPOLLRDHUP", "EPOLLHUP", "EPOLLERR", "EPOLLPRI")
    if hasattr(select, name)
]


def describe_mask(mask: int) -> str:
    """'R', 'W', 'H' letters for a mask; '-' for none (used by --trace)."""
    letters = "".join(
        c for bit, c in ((READABLE, "R"), (WRITABLE, "W"), (HANGUP, "H")) if mask & bit
    )
    return letters or "-"


class Poller(ABC):
    """Watch file descriptors; report which are ready."""

    name: str
    edge_triggered: bool

    @abstractmethod
    def register(self, fd: int, interest: int) -> None:
        """Start watching `fd` for `interest` (READABLE and/or WRITABLE)."""

    @abstractmethod
    def modify(self, fd: int, interest: int) -> None:
        """Change what `fd` is watched for.

        `interest` may be 0: no readiness is wanted, but hang-ups and errors
        are still reported where the backend can (epoll always reports them).
        """

    @abstractmethod
    def unregister(self, fd: int) -> None:
        """Stop watching `fd`.  Call it before closing the fd."""

    @abstractmethod
    def poll(self, timeout: float | None) -> list[Event]:
        """Wait up to `timeout` seconds (None: forever) for ready fds."""

    @abstractmethod
    def close(self) -> None:
        """Release the poller's own resources."""

    # For --trace: the kernel's own view of an event, before translation.

    def poll_raw(self, timeout: float | None) -> list[tuple[int, int]]:
        """Like `poll`, but with the backend's own event masks."""
        return self.poll(timeout)

    def translate(self, raw: int) -> int:
        """A backend mask from `poll_raw` as rat's flags."""
        return raw

    def kernel_names(self, raw: int) -> str:
        """A backend mask from `poll_raw` in the backend's own words."""
        return describe_mask(raw)


class EpollPoller(Poller):
    """Edge-triggered `select.epoll`."""

    name = "epoll"
    edge_triggered = True

    def __init__(self) -> None:
        self._epoll = select.epoll()
        # Event masks repeat endlessly (mostly EPOLLIN or EPOLLOUT), so the
        # translation is memoised rather than recomputed per event.
        self._events: dict[int, int] = {}

    @staticmethod
    def _to_epoll(interest: int) -> int:
        mask = select.EPOLLET
        if interest & READABLE:
            mask |= select.EPOLLIN | select.EPOLLRDHUP
        if interest & WRITABLE:
            mask |= select.EPOLLOUT
        return mask

    def _from_epoll(self, mask: int) -> int:
        flags = 0
        if mask & select.EPOLLIN:
            flags |= READABLE
        if mask & select.EPOLLOUT:
            flags |= WRITABLE
        if mask & select.EPOLLRDHUP:
            # Peer shut its write side: the read will see EOF.
            flags |= READABLE | HANGUP
        if mask & (select.EPOLLHUP | select.EPOLLERR):
            # Hang-up or error: wake both directions so whichever runs first
            # meets the error (recv/send raise it) and the client is reaped.
            flags |= READABLE | WRITABLE | HANGUP
        self._events[mask] = flags
        return flags

    def register(self, fd: int, interest: int) -> None:
        self._epoll.register(fd, self._to_epoll(interest))

    def modify(self, fd: int, interest: int) -> None:
        self._epoll.modify(fd, self._to_epoll(interest))

    def unregister(self, fd: int) -> None:
        self._epoll.unregister(fd)

    def poll(self, timeout: float | None) -> list[Event]:
        table = self._events
        return [
            (fd, table.get(mask) or self._from_epoll(mask))
            for fd, mask in self._epoll.poll(-1 if timeout is None else timeout)
        ]

    def close(self) -> None:
        self._epoll.close()

    def poll_raw(self, timeout: float | None) -> list[tuple[int, int]]:
        return self._epoll.poll(-1 if timeout is None else timeout)

    def translate(self, raw: int) -> int:
        return self._events.get(raw) or self._from_epoll(raw)

    def kernel_names(self, raw: int) -> str:
        return "|".join(name for bit, name in EPOLL_NAMES if raw & bit) or "0"


class SelectorPoller(Poller):
    """The portable fallback: the stdlib's default selector, level-triggered."""

    name = "select"
    edge_triggered = False

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        # selectors cannot watch an fd for nothing, so an fd whose interest
        # drops to 0 is unregistered and comes back on the next modify().
        self._parked: set[int] = set()

    @staticmethod
    def _to_selector(interest: int) -> int:
        return (selectors.EVENT_READ if interest & READABLE else 0) | (
            selectors.EVENT_WRITE if interest & WRITABLE else 0
        )

    def register(self, fd: int, interest: int) -> None:
        if interest:
            self._selector.register(fd, self._to_selector(interest))
        else:
            self._parked.add(fd)

    def modify(self, fd: int, interest: int) -> None:
        if fd in self._parked:
            if interest:
                self._parked.discard(fd)
                self._selector.register(fd, self._to_selector(interest))
        elif interest:
            self._selector.modify(fd, self._to_selector(interest))
        else:
            self._selector.unregister(fd)
            self._parked.add(fd)

    def unregister(self, fd: int) -> None:
        if fd in self._parked:
            self._parked.discard(fd)
        else:
            self._selector.unregister(fd)

    def poll(self, timeout: float | None) -> list[Event]:
        return [
            (
                key.fd,
                (READABLE if ev & selectors.EVENT_READ else 0)
                | (WRITABLE if ev & selectors.EVENT_WRITE else 0),
            )
            for key, ev in self._selector.select(timeout)
        ]

    def close(self) -> None:
        self._selector.close()

    def poll_raw(self, timeout: float | None) -> list[tuple[int, int]]:
        return [(key.fd, ev) for key, ev in self._selector.select(timeout)]

    def translate(self, raw: int) -> int:
        return (READABLE if raw & selectors.EVENT_READ else 0) | (
            WRITABLE if raw & selectors.EVENT_WRITE else 0
        )

    def kernel_names(self, raw: int) -> str:
        names = ("EVENT_READ", selectors.EVENT_READ), ("EVENT_WRITE", selectors.EVENT_WRITE)
        return "|".join(name for name, bit in names if raw & bit) or "0"


class TracingPoller(Poller):
    """Wraps a poller and prints every event and interest change (`--trace`).

    It is only put in place when tracing is on, so tracing costs nothing
    otherwise.  `describe(fd)` names an fd (a client's address, "listener").
    """

    def __init__(
        self, inner: Poller, describe: Callable[[int], str], out: TextIO = sys.stderr
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.edge_triggered = inner.edge_triggered
        self._describe = describe
        self._out = out

    def note(self, text: str) -> None:
        """Print one trace line (the server adds its own, e.g. short sends)."""
        self._out.write(f"trace: {text}\n")
        self._out.flush()

    def register(self, fd: int, interest: int) -> None:
        self.inner.register(fd, interest)
        self.note(f"register   fd={fd} {self._describe(fd)} interest={describe_mask(interest)}")

    def modify(self, fd: int, interest: int) -> None:
        self.inner.modify(fd, interest)
        self.note(f"modify     fd={fd} {self._describe(fd)} interest={describe_mask(interest)}")

    def unregister(self, fd: int) -> None:
        self.note(f"unregister fd={fd} {self._describe(fd)}")
        self.inner.unregister(fd)

    def poll(self, timeout: float | None) -> list[Event]:
        """Poll, and print each event as the kernel reported it and as rat reads it."""
        inner = self.inner
        raw = inner.poll_raw(timeout)
        if raw:
            self.note(f"poll -> {len(raw)} event{'s' if len(raw) > 1 else ''}")
        events = []
        for fd, bits in raw:
            mask = inner.translate(bits)
            self.note(
                f"  event    fd={fd} {self._describe(fd)} {inner.kernel_names(bits)}"
                f" -> {describe_mask(mask)}"
            )
            events.append((fd, mask))
        return events

    def close(self) -> None:
        self.inner.close()


BACKENDS: dict[str, type[Poller]] = {"epoll": EpollPoller, "select": SelectorPoller}


def make_poller(backend: str = "auto") -> Poller:
    """'auto' (epoll on Linux, else the selectors default), 'epoll' or 'select'."""
    if backend == "auto":
        backend = "epoll" if hasattr(select, "epoll") else "select"
    if backend == "epoll" and not hasattr(select, "epoll"):
        raise ValueError("the epoll backend needs Linux; use --backend select")
    try:
        return BACKENDS[backend]()
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}") from None
