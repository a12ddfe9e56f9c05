"""The generator's poller and the small process-wide helpers its loops share.

The generator uses *level-triggered* epoll (unlike rat): one `recv` per ready
socket per wake-up is enough, and a socket with data left is reported again
at the next wake-up, so a busy generator reads bigger chunks instead of
starving the others.  `select.poll` stands in where there is no epoll.
"""

from __future__ import annotations

import ctypes
import resource
import select
import ssl
import time
from typing import Any

PR_SET_TIMERSLACK = 29  # linux/prctl.h
M_TRIM_THRESHOLD = -1  # malloc.h (mallopt)
M_MMAP_THRESHOLD = -3

# What a non-blocking socket raises when it cannot go on now: for a TLS socket
# also "wants to read/write" (a record not complete yet, a session ticket).
WOULD_BLOCK: tuple[type[OSError], ...] = (
    BlockingIOError,
    InterruptedError,
    ssl.SSLWantReadError,
    ssl.SSLWantWriteError,
)


def client_tls(verify_with: str | None) -> ssl.SSLContext:
    """`--tls`: a client context; without a CA file, no verification (a benchmark, not trust)."""
    if verify_with is not None:
        return ssl.create_default_context(cafile=verify_with)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Poller:
    """epoll (level-triggered) where there is one; `select.poll` elsewhere."""

    def __init__(self) -> None:
        self._epoll = hasattr(select, "epoll")
        self._ep: Any = select.epoll() if self._epoll else select.poll()
        self.IN = select.EPOLLIN if self._epoll else select.POLLIN
        self.OUT = select.EPOLLOUT if self._epoll else select.POLLOUT

    def register(self, fd: int, events: int) -> None:
        self._ep.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self._ep.modify(fd, events)

    def unregister(self, fd: int) -> None:
        try:
            self._ep.unregister(fd)
        except (KeyError, OSError, ValueError):
            pass

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        """Events ready within `timeout` seconds (0: do not wait)."""
        if not self._epoll:
            result: list[tuple[int, int]] = self._ep.poll(max(0.0, timeout) * 1000)
            return result
        events: list[tuple[int, int]] = self._ep.poll(max(0.0, timeout), 4096)
        return events

    def wait(self, timeout_ns: int) -> list[tuple[int, int]]:
        """Events ready within `timeout_ns`, waking up to the microsecond.

        `epoll_wait` counts in whole milliseconds (CPython rounds up), too
        coarse for a line due every 10 us.  `select` on the epoll descriptor
        itself (readable while events are pending) sleeps to the microsecond;
        then a non-blocking poll collects the events.
        """
        if timeout_ns <= 0:
            return self.poll(0)
        if not self._epoll:
            return self.poll(timeout_ns / 1e9)
        ready, _, _ = select.select([self._ep.fileno()], [], [], timeout_ns / 1e9)
        return self.poll(0) if ready else []

    def close(self) -> None:
        if self._epoll:
            self._ep.close()


def precise_timers() -> None:
    """Ask Linux to wake this process within 1 us of a timeout (PR_SET_TIMERSLACK).

    The default slack of 50 us is more than the gap between two lines at
    100,000 lines/s.  Elsewhere (or if it fails) nothing changes.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def steady_malloc() -> None:
    """Keep freed memory in the process rather than handing it back at once (glibc).

    By default glibc serves an allocation of 128 KiB and more with its own
    mmap and returns it with munmap, and gives back the top of the heap once
    128 KiB of it are free.  A generator that falls behind receives bigger
    chunks, and every one of them would then cost fresh pages that the
    kernel must zero: a falling-behind generator would fall further behind
    (seen as a tenth of its time in the kernel's page clearing at 100,000
    lines/s).  With both thresholds raised, big buffers are reused.
    Elsewhere (or if it fails) nothing changes.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 512 << 20)
    except (OSError, AttributeError):
        pass


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def now_us() -> int:
    return time.monotonic_ns() // 1000
