"""The generator's poller and the small process-wide helpers its loops share.

The generator uses *level-triggered* epoll (unlike rat): one `recv` per ready
socket per wake-up is enough, and a socket with data left is reported again
at the next wake-up, so a busy generator reads bigger chunks instead of
starving the others.  `select.poll` stands in where there is no epoll.
"""

from __future__ import annotations

import resource
import select
import time
from typing import Any


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

    def close(self) -> None:
        if self._epoll:
            self._ep.close()


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
