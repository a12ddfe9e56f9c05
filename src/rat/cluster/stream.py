"""A non-blocking byte stream between rat processes, as a handler on `rat.loop.Loop`.

The backplane's connections (to Redis, to the other workers) are not
clients: nobody joins a room through them, no `--max-line` or write timeout
applies, they never take the fan-out fast path.  So they are not `Conn`s
(nor `LayeredConn`s), but this small class: the same edge-triggered
discipline in fewer lines.

- Reading drains until `BlockingIOError` (edge triggering announces new
  bytes once), at most `READ_BUDGET` bytes per turn; past it the loop is
  asked to `resume` us next turn, so a flood from Redis cannot starve the
  clients.  Bytes go to `on_data(view)`, which must use them at once (the
  buffer is reused).
- Writing: `queue(chunks)` appends to the output queue (an `OutBuffer`)
  and sends at once unless the kernel is already full; WRITABLE interest is
  held only while bytes wait.  The queue is bounded by whoever calls
  `queue` (it reads `pending`): a backplane drops and counts, it never lets
  a slow peer grow the server's memory without limit.
- A failure (reset, EOF, refused connect) calls `on_lost(reason)` once;
  the stream is closed by then.
- `start_connect(...)` then `Stream(..., connected=False)`: a non-blocking
  connect; `on_connected()` is called when it completes (WRITABLE with no
  error pending), `on_lost` if it fails.
"""

from __future__ import annotations

import errno
import os
import socket

from rat.loop import Loop
from rat.outbuf import MAX_BUFFERS_PER_SEND, OutBuffer
from rat.poller import HANGUP, READABLE, WRITABLE

READ_SIZE = 64 * 1024
READ_BUDGET = 1024 * 1024  # bytes per turn, as for a client (rat.connection)
_NO_LIMIT = 1 << 62  # the queue's own limit is not used: callers bound it


def start_connect(family: int, sockaddr: tuple[object, ...]) -> socket.socket:
    """A TCP socket with a non-blocking connect under way (OSError if it failed at once).

    Hand it to a `Stream` with `connected=False`: `on_connected` follows.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
    except OSError:
        sock.close()
        raise
    return sock


class Stream(OutBuffer):
    """One non-blocking stream socket on the loop (subclass: on_data, on_lost)."""

    __slots__ = ("_buffer", "closed", "connected", "fd", "interest", "loop", "name", "sock")

    def __init__(self, loop: Loop, sock: socket.socket, name: str, connected: bool = True) -> None:
        OutBuffer.__init__(self, _NO_LIMIT)
        self.loop = loop
        self.sock = sock
        self.name = name
        self.fd = sock.fileno()
        self.connected = connected
        self.closed = False
        self._buffer = bytearray(READ_SIZE)
        sock.setblocking(False)
        self.interest = READABLE if connected else READABLE | WRITABLE
        loop.add(self.fd, self, self.interest)

    def describe(self) -> str:
        return self.name

    # ------------------------------------------------------------- hooks

    def on_connected(self) -> None:
        """The connect completed."""

    def on_data(self, view: memoryview) -> None:
        """Bytes arrived (valid only during the call)."""

    def on_lost(self, reason: str) -> None:
        """The stream failed or ended; it is closed."""

    # ------------------------------------------------------------ events

    def on_event(self, mask: int) -> None:
        if self.closed:
            return
        if not self.connected:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.lose(os.strerror(err))
                return
            if not mask & (WRITABLE | HANGUP):
                return
            self.connected = True
            self.on_connected()
            if self.closed:
                return
            self.update_interest()
        if mask & (READABLE | HANGUP):
            self.read()
        if mask & WRITABLE and not self.closed:
            self.flush()

    def on_resume(self) -> None:
        """The read budget ran out last turn: read on."""
        if not self.closed:
            self.read()

    def read(self) -> None:
        buf = self._buffer
        view = memoryview(buf)
        budget = READ_BUDGET
        while True:
            try:
                n = self.sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as err:
                self.lose(err.strerror or str(err))
                return
            if not n:
                self.lose("connection closed by the peer")
                return
            self.on_data(view[:n])
            if self.closed:
                return
            budget -= n
            if budget <= 0:
                self.loop.resume(self)
                return

    # ------------------------------------------------------------- write

    def queue(self, chunks: list[bytes | memoryview]) -> None:
        """Queue `chunks` and send what the kernel takes now."""
        for chunk in chunks:
            self.append(chunk)
        if self.connected and not self.interest & WRITABLE:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            buffers = self.peek()
            try:
                sent = self.sock.sendmsg(buffers)
            except BlockingIOError:
                sent = 0
            except OSError as err:
                self.lose(err.strerror or str(err))
                return
            if sent:
                self.advance(sent)
            if len(buffers) < MAX_BUFFERS_PER_SEND or sent < sum(map(len, buffers)):
                break  # the kernel is full (or all is sent)
        self.update_interest()

    def update_interest(self) -> None:
        interest = READABLE | (WRITABLE if self.pending or not self.connected else 0)
        if interest != self.interest:
            self.interest = interest
            self.loop.modify(self.fd, interest)

    # ------------------------------------------------------------- close

    def lose(self, reason: str) -> None:
        """Close, then tell the owner why (once)."""
        if not self.closed:
            self.close()
            self.on_lost(reason)

    def close(self) -> int:
        """Close now; return the bytes that were still queued (now dropped)."""
        if self.closed:
            return 0
        self.closed = True
        unsent = self.pending
        if unsent:
            self.advance(unsent)
        self.loop.remove(self.fd, self)
        self.sock.close()
        return unsent
