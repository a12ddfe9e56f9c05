"""One client connection: read, frame, publish; flush; close gracefully.

The line data path, in the order bytes travel:

    on_readable   recv() until BlockingIOError, EOF or the read budget
    received      the seam: bytes from the wire -> complete lines (the framer);
                  a layered connection (TLS, WebSocket) decodes here first
    server.publish_lines   the lines go to the hub (nothing is sent yet)
    ...           at the end of the turn the server delivers (rat.server)
    flush         send what is queued; WRITABLE only while something is left
    close_gracefully / close   say why, let the peer read it, then close

A plain TCP connection is one small slotted object: an idle one costs a few
hundred bytes, and the fan-out fast path in `Server.deliver` touches only
`conn.pending` and `sock.send` on it.

States.  OPEN: a member of its room, reading and receiving broadcasts.
CLOSING: out of the room; what is queued (and maybe one last `ERR` line)
drains, then our side is shut and the peer's input is discarded until it
closes or has acknowledged every byte, within a deadline.  CLOSED: the
socket is closed and the server has forgotten the connection.

Why CLOSING and not just close(): closing a socket that still holds unread
input makes the kernel answer with a reset, and a reset throws away whatever
the kernel had not yet sent, an `ERR` line or the end of a flush included.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from rat.framing import LineFramer, LineTooLong
from rat.hub import Room
from rat.metrics import Backlog, human_rate
from rat.net import close_reason, make_room_in_send_buffer, socket_error, unacked_bytes
from rat.outbuf import MAX_BUFFERS_PER_SEND, OutBuffer
from rat.poller import HANGUP, READABLE, WRITABLE
from rat.timers import Timer

if TYPE_CHECKING:
    from rat.server import Server

log = logging.getLogger("rat")

READ_BUDGET = 1024 * 1024  # bytes read from one client per turn before the next gets a go
LINGER_SECONDS = 2.0  # how long a rejected client may take to read its ERR line
CLOSE_CHECK_FIRST = 0.01  # seconds between "has the peer got everything?" checks, doubling
CLOSE_CHECK_MAX = 0.25

ERR_LINE_TOO_LONG = b"ERR line too long\n"
ERR_SLOW_CONSUMER = b"ERR slow consumer\n"

# States.
OPEN = 0
CLOSING = 1
CLOSED = 2


class Conn(OutBuffer):
    """One client: its socket, its framer, its output queue and its room.

    A connection *is* its output queue (it extends `OutBuffer`): the fan-out
    fast path reads `conn.pending` with one attribute lookup, and an idle
    connection carries one object fewer (64 bytes of 10,000 idle clients'
    memory each).  Note that this makes a connection with nothing queued
    falsy, like an empty queue: test `conn.pending`, never `conn`.
    """

    __slots__ = (
        "addr",
        "backlog",
        "close_reason",
        "deadline",
        "eof",
        "fd",
        "framer",
        "interest",
        "last_progress",
        "room",
        "server",
        "session",
        "shut",
        "sock",
        "state",
        "timer",
    )

    transport = "tcp"  # class attributes: they cost no memory per connection
    layered = False  # a `rat.layered.LayeredConn` says True

    def __init__(self, server: Server, sock: socket.socket, addr: str) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr  # "host:port", for logs
        limits = server.limits
        self.framer = LineFramer(limits.max_line)
        OutBuffer.__init__(self, limits.max_pending)
        self.state = OPEN
        self.eof = False  # the peer shut its sending side (half-close)
        self.shut = False  # we shut our sending side (closing)
        self.interest = READABLE  # what the poller watches this socket for
        self.last_progress = 0.0  # when the kernel last took bytes (or the queue began)
        # While bytes wait: when they were queued, how fast they drain
        # (rat.metrics; None for a client with nothing waiting).
        self.backlog: Backlog | None = None
        self.deadline = 0.0  # CLOSING: when to stop waiting for the peer
        self.timer: Timer | None = None  # write timeout, or the closing checks
        self.close_reason = ""
        self.room: Room | None = None
        self.session: object | None = None  # chat mode: what a line means

    def __repr__(self) -> str:
        return f"<Conn fd={self.fd} {self.addr} state={self.state}>"

    def describe(self) -> str:
        return self.addr

    def start(self) -> None:
        """Accepted and admitted: watch the socket, join the lobby."""
        self.server.loop.add(self.fd, self, self.interest)
        self.server.join(self)

    # -------------------------------------------------------------- events

    def on_event(self, mask: int) -> None:
        if mask & READABLE:
            self.on_readable(drain=bool(mask & HANGUP))
        if mask & WRITABLE and self.state != CLOSED:
            self.on_writable()

    def on_resume(self) -> None:
        """The read budget ran out last turn; read on (no event will come for it).

        The event that started this read, and whether it reported a hang-up,
        is gone by now, so this read drains until `BlockingIOError` or EOF
        rather than trusting a short read (see `on_readable`).
        """
        if self.state != CLOSED:
            self.server.loop.note(f"resume     fd={self.fd} {self.addr} (read budget)")
            self.on_readable(drain=True)

    # ---------------------------------------------------------------- read

    def on_readable(self, drain: bool = False) -> None:
        """recv() until the socket is empty, EOF, or the per-turn budget is spent.

        "Empty" is `BlockingIOError`, or a read that returned less than asked
        for: the kernel hands over everything it has, so a short read means
        the queue was empty at that moment, and any byte arriving later
        raises a new edge.  That saves the extra `recv` that would only say
        `BlockingIOError`.  Not when the event reported a hang-up (`drain`):
        the peer's FIN may already be queued behind the data, and it would
        raise no new edge, so we read on until EOF.

        All connections read into one buffer of the server's and copy out
        what arrived.  `recv(256 KiB)` allocates a 256 KiB `bytes` first and
        shrinks it to what arrived; glibc serves an allocation that big with
        mmap, and the shrink (a realloc) unmaps it without raising glibc's
        mmap threshold, so every such `recv` costs an mmap, an mremap and a
        munmap (strace shows it).  One buffer costs none.
        """
        if self.state == CLOSED:
            return
        server = self.server
        recv_into = self.sock.recv_into
        buf = server.read_buffer
        view = server.read_view
        size = server.recv_size
        budget = READ_BUDGET
        while True:
            try:
                n = recv_into(buf, size)
            except BlockingIOError:
                return
            except OSError as err:
                self.close(close_reason(err))
                return
            if not n:
                self.on_eof()
                return
            server.counters.bytes_in += n
            if self.state == OPEN:
                self.received(view[:n].tobytes())
            # (CLOSING: the peer's input is read only to be dropped.)
            if self.state == CLOSED or (n < size and not drain):
                return
            budget -= n
            if budget <= 0:
                # Still readable, but others deserve a turn.  With edge
                # triggering no new event would come for the unread bytes,
                # so the loop remembers this connection for us.
                server.loop.resume(self)
                return

    def received(self, data: bytes) -> None:
        """Bytes from the wire: frame them, publish the complete lines.

        This is the seam where a sans-IO layer sits: a layered connection
        overrides it to decode its protocol first (and may answer on the wire).
        """
        try:
            block = self.framer.feed(data)
        except LineTooLong as err:
            if err.accepted:
                self._publish(err.accepted)
            self.reject(ERR_LINE_TOO_LONG, "line_too_long")
            return
        if block:
            self._publish(block)

    def _publish(self, block: bytes) -> None:
        server = self.server
        if server.observer is not None:  # --admin: count this client's lines
            server.observer.lines_received(self, block)
        server.publish_lines(self, block)

    def on_eof(self) -> None:
        """recv() returned b"": the peer shut its sending side.

        Its unfinished line is relayed with a newline added.  The peer may
        only have half-closed and still be reading, so it keeps receiving
        broadcasts (SPEC: half-close), but TCP cannot tell that from a peer
        that has left, so it no longer holds a slot: the server closes it
        first when it needs room.  Keepalive probes are switched on, so that
        a peer that is really gone ends in a reset that reaps it.
        """
        if self.state == CLOSING:
            self.eof = True
            if not self.pending:  # nothing left to send, nothing more to read
                self.close(self.close_reason, quiet=True)
            else:
                self.update_interest()
            return
        if self.eof:
            # Woken again after EOF: a hang-up (epoll reports one even with
            # no interest).  recv() keeps returning b"" after a FIN even once
            # a reset has arrived, so ask the socket for its error.
            self.check_half_closed()
            return
        self.eof = True
        server = self.server
        tail = self.framer.take_partial()
        if tail:
            server.publish_lines(self, tail)
        server.on_half_close(self)
        if self.state == OPEN:
            self.update_interest()

    def check_half_closed(self) -> None:
        """Close a half-closed client whose socket has failed (reset, timeout)."""
        err = socket_error(self.sock)
        if err is not None:
            self.close(close_reason(err))

    # ---------------------------------------------------------------- send

    def on_writable(self) -> None:
        if self.pending:
            self.flush()
        elif self.interest & WRITABLE:
            self.update_interest()

    def flush(self) -> None:
        """Send as much queued output as the kernel takes (usually one syscall).

        Asks for WRITABLE only if bytes are left over, and stops asking once
        the queue is empty.
        """
        sock = self.sock
        server = self.server
        since = self.last_progress  # when the bytes not yet in a backlog were queued
        flushed = 0
        while self.pending:
            buffers = self.peek()
            try:
                sent = sock.send(buffers[0]) if len(buffers) == 1 else sock.sendmsg(buffers)
            except BlockingIOError:
                sent = 0
            except OSError as err:
                self.close(close_reason(err))
                return
            if sent:
                self.advance(sent)
                server.counters.bytes_out += sent
                flushed += sent
                now = self.last_progress = server.loop.clock()
                if self.backlog is not None:
                    self.backlog.took(sent, self.pending, now)
            # Go round again only if sendmsg's buffer cap, not the kernel,
            # stopped us: a short send means the socket buffer is full.
            if len(buffers) < MAX_BUFFERS_PER_SEND or sent < sum(map(len, buffers)):
                if self.pending:
                    self.note_short_send(sent, sent + self.pending)
                break
        if not self.pending:
            self.backlog = None
        elif self.backlog is None:
            # Bytes stay behind: from now on, remember when they were queued.
            self.backlog = Backlog(self.pending, since, flushed)
        if not self.pending and self.state == CLOSING:
            self._queue_sent()
            if self.state == CLOSED:
                return
        self.update_interest()

    def queue(self, chunks: list[bytes | memoryview], now: float) -> None:
        """Queue `chunks` behind what is queued and, unless blocked, send now.

        The limit is checked after the send attempt: it is about what a
        client leaves waiting here, not about how much a busy turn produced.
        """
        if not self.pending:
            self.last_progress = now  # the write-timeout clock starts now
            self.backlog = None
        elif self.backlog is None:
            # Left over by a send on the fan-out fast path, which keeps no
            # backlog: those bytes were queued when the queue began.
            self.backlog = Backlog(self.pending, self.last_progress)
        for chunk in chunks:
            self.append(chunk)
        if self.backlog is not None:
            self.backlog.queued(self.pending, now)
        if not self.interest & WRITABLE:
            self.flush()
        if self.over_limit and self.state == OPEN:
            self.drop_slow_consumer()

    def send_now(self, chunks: list[bytes | memoryview], now: float) -> None:
        """Send `chunks` straight away if nothing is queued; queue what the kernel leaves.

        The sender's path in a busy chat: every sender gets the turn minus its
        own lines, as a few slices, and most of the time the kernel takes
        them all in one `sendmsg`, so the queue is never touched.
        """
        if self.pending or self.interest & WRITABLE or len(chunks) > MAX_BUFFERS_PER_SEND:
            self.queue(chunks, now)
            return
        sock = self.sock
        try:
            sent = sock.send(chunks[0]) if len(chunks) == 1 else sock.sendmsg(chunks)
        except BlockingIOError:
            sent = 0
        except OSError as err:
            self.close(close_reason(err))
            return
        self.server.counters.bytes_out += sent
        for chunk in chunks:  # queue the rest, if any
            size = len(chunk)
            if sent >= size:
                sent -= size
                continue
            if not self.pending:
                self.last_progress = now  # the write-timeout clock starts now
                self.note_short_send(sent, size)
            # The partly sent chunk is queued whole and advanced past what
            # the kernel took, so the queue knows its stream is inside a line
            # (a cut then finishes that line rather than tearing it).
            self.append(chunk)
            if sent:
                self.advance(sent)
            sent = 0
        if self.pending:
            if self.over_limit:
                self.drop_slow_consumer()
            else:
                self.update_interest()  # ask for WRITABLE

    def send_lines(self, block: bytes) -> None:
        """Lines (whole, newline-terminated) for this client alone: a chat reply.

        Queued behind what is already queued, like a broadcast.  Callers hand
        over application bytes; a layered connection overrides this to encode
        them for its wire (a WebSocket frames each line).
        """
        if self.state == OPEN:
            self.queue([block], self.server.loop.clock())

    def keep_unsent(self, data: bytes, sent: int, now: float) -> None:
        """A direct send took `sent` bytes of `data`: queue the rest (no copy), want WRITABLE.

        The end of the fan-out fast path (`Server._deliver_turn`, and
        `LayeredConn.deliver_turn`), for a receiver whose queue was empty.
        """
        if self.server.loop.tracer is not None:
            self.note_short_send(sent, len(data))
        self.last_progress = now  # the write-timeout clock starts now
        self.append_unsent(data, sent)  # no copy; a cut still finishes the line or frame
        if self.over_limit:
            self.drop_slow_consumer()
        else:
            self.update_interest()  # ask for WRITABLE

    def drop_slow_consumer(self) -> None:
        """Its queue passed --max-pending: best-effort ERR, close."""
        text, fields = self.describe_backlog("slow_consumer")
        log.warning(
            "disconnect %s: slow consumer (%d bytes queued, limit %d; %s)",
            self.addr,
            self.pending,
            self.limit,
            text,
            extra=fields,
        )
        self.cut("slow_consumer")

    def lag(self, now: float) -> float:
        """Seconds since its oldest unsent byte was queued (0 if nothing waits)."""
        if not self.pending:
            return 0.0
        backlog = self.backlog
        return backlog.lag(now) if backlog is not None else max(0.0, now - self.last_progress)

    def drain(self, now: float) -> tuple[float, float] | None:
        """(bytes/s its socket took, bytes/s its queue grew) lately; None if not known."""
        if not self.pending:
            return None
        backlog = self.backlog
        if backlog is None:
            # Left by the fast path and untouched since: had the socket taken
            # anything, or anything been queued, there would be a backlog.
            return 0.0, 0.0
        return backlog.rates(self.pending, now)

    def describe_backlog(self, reason: str) -> tuple[str, dict[str, object]]:
        """For the log line of a cut: 'lag 3.2s, draining 0 B/s', and the same as fields."""
        now = self.server.loop.clock()
        lag = self.lag(now)
        rates = self.drain(now)
        drain = rates[0] if rates is not None else None
        text = f"lag {lag:.3f}s, draining {human_rate(drain)}"
        fields: dict[str, object] = {
            "addr": self.addr,
            "reason": reason,
            "queued_bytes": self.pending,
            "lag_seconds": round(lag, 6),
            "drain_bytes_per_second": None if drain is None else round(drain, 1),
        }
        return text, fields

    def note_short_send(self, sent: int, queued: int) -> None:
        self.server.loop.note(f"send       fd={self.fd} {self.addr} took {sent} of {queued} bytes")

    def update_interest(self) -> None:
        """Watch for READABLE unless the peer sent EOF; WRITABLE only while queued."""
        interest = (0 if self.eof else READABLE) | (WRITABLE if self.pending else 0)
        if interest != self.interest:
            if interest & WRITABLE and self.timer is None and self.state == OPEN:
                # Blocked: the write-timeout clock runs from the last progress.
                # The timer is not cancelled when the queue drains: it fires
                # once, sees nothing queued, and ends (`_check_progress`),
                # which is cheaper than cancelling and re-arming it each time
                # the client blocks for a moment.
                timeout = self.server.limits.write_timeout
                self.timer = self.server.loop.call_at(
                    self.last_progress + timeout, self._check_progress
                )
            self.interest = interest
            self.server.loop.modify(self.fd, interest)

    def _check_progress(self) -> None:
        """The write-timeout timer: cut a client whose queue has not moved for that long."""
        self.timer = None
        if self.state != OPEN or not self.pending:
            return
        server = self.server
        timeout = server.limits.write_timeout
        stalled = server.loop.clock() - self.last_progress
        if stalled < timeout:  # it moved since the timer was set: look again later
            self.timer = server.loop.call_at(self.last_progress + timeout, self._check_progress)
            return
        text, fields = self.describe_backlog("write_timeout")
        log.warning(
            "disconnect %s: write timeout (no progress for %.1fs, %d bytes queued; %s)",
            self.addr,
            stalled,
            self.pending,
            text,
            extra=fields,
        )
        self.cut("write_timeout")

    # ------------------------------------------------------------- closing

    def reject(self, message: bytes, reason: str) -> None:
        """A protocol violation: say why after what is queued, then close gracefully."""
        log.info(
            "disconnect %s: %s",
            self.addr,
            reason.replace("_", " "),
            extra={"addr": self.addr, "reason": reason},
        )
        self.close_gracefully(reason, message)

    def cut(self, reason: str, message: bytes = ERR_SLOW_CONSUMER) -> None:
        """Drop the queue (finishing a partly sent line), say why, close gracefully."""
        self.close_gracefully(reason, message, drop_queue=True)

    def close_gracefully(
        self,
        reason: str,
        message: bytes = b"",
        linger: float = LINGER_SECONDS,
        drop_queue: bool = False,
    ) -> None:
        """Leave the room; send what is queued and `message`; shut our side; close.

        With `drop_queue`, only the rest of a partly sent line stays queued
        (the stream still ends on a line boundary).  The peer gets `linger`
        seconds to read it all; meanwhile its input is read and dropped.
        """
        if self.state != OPEN:
            return
        server = self.server
        server.on_leave(self)
        self.state = CLOSING
        self.close_reason = reason
        if drop_queue:
            server.on_dropped(self, self.cut_queue())
        if message:
            self.append(message)  # past --max-pending is fine: it is the last
        if drop_queue or message:
            # Let the kernel take the last bytes at once if it can.
            make_room_in_send_buffer(self.sock, self.pending)
        loop = server.loop
        loop.cancel(self.timer)
        self.deadline = loop.clock() + linger
        self.timer = loop.call_at(self.deadline, self._closing_check)
        if not self.interest & WRITABLE:
            self.flush()

    def _queue_sent(self) -> None:
        """CLOSING, and nothing is queued any more: shut our side, wait for the peer."""
        if self.eof:
            # It sends nothing more, so closing cannot cause a reset: the
            # kernel still delivers what it holds, then a FIN.
            self.close(self.close_reason, quiet=True)
            return
        if not self.shut:
            self.shut = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close(self.close_reason, quiet=True)
                return
        if unacked_bytes(self.sock) == 0:
            self.close(self.close_reason, quiet=True)
            return
        loop = self.server.loop
        loop.cancel(self.timer)
        self.timer = loop.call_later(CLOSE_CHECK_FIRST, self._closing_check)

    def _closing_check(self) -> None:
        """CLOSING: close once the peer has everything, or at the deadline."""
        self.timer = None
        if self.state != CLOSING:
            return
        loop = self.server.loop
        now = loop.clock()
        if now >= self.deadline:
            self.abort(self.close_reason)
            return
        if self.shut and unacked_bytes(self.sock) == 0:
            self.close(self.close_reason, quiet=True)
            return
        if self.shut:
            # Look again, less often the longer the peer has been silent.
            wait = min(CLOSE_CHECK_MAX, max(CLOSE_CHECK_FIRST, (now - self.last_progress) / 2))
            self.timer = loop.call_at(min(self.deadline, now + wait), self._closing_check)
        else:
            self.timer = loop.call_at(self.deadline, self._closing_check)

    def cut_queue(self) -> int:
        """Drop the queue but the rest of a partly sent line; return bytes dropped."""
        return self.cut_to_line_end()

    def abort(self, reason: str) -> None:
        """Close now: finish a partly sent line (best effort), drop the rest."""
        if self.state == CLOSED:
            return
        dropped = self.cut_queue()
        if self.pending:
            make_room_in_send_buffer(self.sock, self.pending)
            try:
                sent = self.sock.sendmsg(self.peek())
            except OSError:
                sent = 0
            dropped += self.pending - sent
        if dropped:
            self.server.on_dropped(self, dropped)
        self.close(reason, quiet=self.state == CLOSING)

    def close(self, reason: str, quiet: bool = False) -> None:
        """Close the socket now and forget the connection.

        `quiet`: the disconnect was already logged (or is not worth a line),
        so no debug "disconnect" line is written for it.
        """
        if self.state == CLOSED:
            return
        if self.state == OPEN:
            self.server.on_leave(self)
        self.state = CLOSED
        self.close_reason = reason
        server = self.server
        loop = server.loop
        loop.cancel(self.timer)
        self.timer = None
        loop.remove(self.fd, self)
        # The server is told while the socket is still open: with --admin it
        # reads the kernel's byte counts for the closed-connection log.
        server.on_closed(self, quiet)
        self.sock.close()
