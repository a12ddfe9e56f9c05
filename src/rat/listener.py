"""Accepting connections: drain the backlog, and survive running out of descriptors.

An `Acceptor` owns one listening socket.  On each READABLE event it calls
`accept()` until `BlockingIOError` (edge triggering reports a burst of
connections once) and hands every new socket to `on_accept(sock, addr)`: the
server decides whether there is room for it (`--max-clients`).

Out of descriptors (EMFILE/ENFILE)
----------------------------------
When the process has no descriptor left, `accept()` fails and the connection
stays in the backlog, which stays readable: a level-triggered loop would spin
on it and an edge-triggered one would never hear of it again.  Three answers,
in order:

1. `make_room()`: the server closes a client that is only half there (it sent
   EOF, see SPEC "half-close") to free a descriptor, and we accept again.
2. The spare descriptor: we keep one descriptor open for this moment.  Closing
   it lets `accept()` take the waiting connection, which is told it is busy
   (in its listener's protocol, see below) and closed (shed), and the spare
   is reopened.  Linux reserves the new descriptor before it looks at the
   backlog, so EMFILE can also mean "nobody waiting": with the spare freed,
   `accept()` then says `BlockingIOError` and we know.
3. No spare (another process took the last descriptor: ENFILE): stop
   watching the listener for a while (doubling, capped), so that a backlog we
   cannot drain does not wake us in a loop, then try again.

The busy reply
--------------
A shed connection is told why in the protocol its listener speaks
(`Acceptor.busy`): by default the line `ERR server busy` (plain TCP and
Unix listeners); the web and admin ports set a minimal HTTP/1.1 503 with
`Connection: close` (`rat.web.SERVER_BUSY`: their clients expect HTTP, and a
browser shows the 503's text instead of garbage), built by their own HTTP
code so that this module imports no HTTP library.  b"" closes without a
word, as a TLS listener does (bytes in the clear would be garbage to a TLS
client).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable

from rat.loop import Loop
from rat.net import format_addr
from rat.poller import READABLE
from rat.timers import Timer

log = logging.getLogger("rat")

ACCEPT_BACKOFF_MIN = 0.05  # seconds to stop accepting when out of descriptors
ACCEPT_BACKOFF_MAX = 1.0
ERR_SERVER_BUSY = b"ERR server busy\n"


class SpareDescriptor:
    """One descriptor kept in reserve for shedding connections (shared by listeners)."""

    __slots__ = ("fd",)

    def __init__(self) -> None:
        self.fd: int | None = None
        self.restore()

    def release(self) -> bool:
        """Close the spare so that one accept() can succeed; False if there is none."""
        if self.fd is None:
            return False
        os.close(self.fd)
        self.fd = None
        return True

    def restore(self) -> bool:
        """Reopen the spare if it is not open; False if no descriptor is free."""
        if self.fd is None:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Acceptor:
    """The handler of one listening socket."""

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        on_accept: Callable[[socket.socket, str], None],
        make_room: Callable[[], bool],
        spare: SpareDescriptor,
        *,
        on_shed: Callable[[str], None] | None = None,
        kind: str = "listener",
        busy: bytes | None = None,
    ) -> None:
        """`busy`: what a shed connection is told (by default the line `ERR server busy`)."""
        self.loop = loop
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.kind = kind
        self.busy = ERR_SERVER_BUSY if busy is None else busy
        self.on_accept = on_accept
        self.make_room = make_room
        self.spare = spare
        self.on_shed = on_shed  # told the address of every shed connection
        self.emfile = 0  # accept() failures for lack of descriptors that cost a connection
        self._backoff = ACCEPT_BACKOFF_MIN
        self._resume_timer: Timer | None = None
        self._last_emfile_log = float("-inf")
        loop.add(self.fd, self, READABLE)

    def describe(self) -> str:
        return self.kind

    @property
    def paused(self) -> bool:
        return self._resume_timer is not None

    def on_event(self, mask: int) -> None:
        del mask
        self.accept_all()

    def accept_all(self) -> None:
        """Accept until the backlog is empty (BlockingIOError)."""
        sock = self.sock
        if sock is None or self.paused:
            return
        while True:
            try:
                conn, addr = sock.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE):
                    if self.make_room() or self._shed_one(err):
                        continue
                    return
                if err.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the connection died in the backlog; next one
                raise
            self._backoff = ACCEPT_BACKOFF_MIN  # descriptors are back
            self.on_accept(conn, format_addr(addr))
            if self.sock is None:  # on_accept stopped the server
                return

    def _shed_one(self, err: OSError) -> bool:
        """Free the spare descriptor to shed one waiting connection.

        Returns True if one was shed and the backlog may hold more.
        """
        sock = self.sock
        assert sock is not None
        if not self.spare.release():
            self._note_emfile(err)
            self._pause()
            return False
        try:
            conn, addr = sock.accept()
        except OSError:  # BlockingIOError: nobody was waiting after all
            conn = None
        if conn is not None:
            self._note_emfile(err)
            shown = format_addr(addr)
            log.debug("refused %s: out of file descriptors", shown)
            refuse(conn, self.busy)
            if self.on_shed is not None:
                self.on_shed(shown)
        return self.spare.restore() and conn is not None

    def _note_emfile(self, err: OSError) -> None:
        """Count a descriptor shortage that cost a connection; log it (at most once a second)."""
        self.emfile += 1
        now = self.loop.clock()
        if now - self._last_emfile_log >= 1.0:
            self._last_emfile_log = now
            log.warning(
                "out of file descriptors (%s): shedding new connections",
                os.strerror(err.errno or 0),
            )

    def _pause(self) -> None:
        """Stop watching the listener for a back-off period (doubling, capped)."""
        if self.sock is None or self.paused:
            return
        self.loop.remove(self.fd, self)
        log.warning("accept paused for %.2fs (out of file descriptors)", self._backoff)
        self._resume_timer = self.loop.call_later(self._backoff, self._resume)
        self._backoff = min(self._backoff * 2, ACCEPT_BACKOFF_MAX)

    def _resume(self) -> None:
        self._resume_timer = None
        self.spare.restore()
        if self.sock is not None:
            log.info("accepting again")
            # Registering re-checks readiness: a waiting connection reports now.
            self.loop.add(self.fd, self, READABLE)
            self.accept_all()

    def close(self) -> None:
        """Stop accepting: new connections are refused by the kernel from now on."""
        if self.sock is None:
            return
        if self.paused:
            self.loop.cancel(self._resume_timer)
            self._resume_timer = None
        else:
            self.loop.remove(self.fd, self)
        self.sock.close()
        self.sock = None


def refuse(sock: socket.socket, message: bytes) -> None:
    """Best-effort one-line reason, then close (never blocks)."""
    try:
        sock.setblocking(False)
        sock.send(message)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()
