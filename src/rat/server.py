"""The event loop: accept, read, frame, fan out, send.  One thread, one poller.

Theory of operation
===================
Every socket is non-blocking and watched by one poller (edge-triggered epoll
on Linux, see `rat.poller`).  One *turn* of the loop is:

1. `poll()` waits (at most `HOUSEKEEPING_INTERVAL`, sooner if a timer is due)
   and returns the fds that became ready.
2. For each event:
   - the listener: `accept()` until `BlockingIOError`.  With edge triggering a
     burst of connections is reported once; stopping early would strand the
     rest of the backlog until the next connection arrives.
   - a client, READABLE: `recv()` until `BlockingIOError` or EOF, for the same
     reason.  Each chunk goes through the client's `LineFramer`; the complete
     lines are `Hub.publish`ed.  No byte is sent yet.  (A client that keeps
     the socket full is read at most `READ_BUDGET` bytes per turn, then
     resumed next turn without waiting for a new edge: fairness without
     losing the edge.)
   - a client, WRITABLE: the kernel has buffer space again; flush below.
   - the wakeup socket: a signal arrived (see `_on_signal`).
3. Fan-out (`_deliver`): the hub joins the turn's lines into one shared bytes
   object; every client gets it appended to its `OutBuffer` (a pointer, not a
   copy) and, unless it is waiting for WRITABLE, is flushed at once with one
   `send`/`sendmsg`.  Many lines from many senders cost one syscall per
   receiver per turn, the same idea as Redis writing replies once per loop.
   (A turn that gathers `TURN_BYTES` is delivered early, mid-turn, so a
   flood never builds one delivery bigger than a client's queue limit;
   with a small `--max-pending` the turn and the reads shrink to match.)
4. Whatever the kernel did not take stays queued; only then do we ask the
   poller for WRITABLE on that client, and we drop that interest as soon as
   the queue drains.  Asking for WRITABLE on an empty queue would wake us for
   nothing (level-triggered: constantly).
5. Clients marked for closing during the turn are closed now, at a safe point
   (`_reap`), never in the middle of iterating over them.
6. Timers (write timeouts, lingering closes, resuming accept after EMFILE)
   run when due: the poll timeout guarantees a regular turn for them.

Trouble comes in two kinds.  A protocol violation (a line over `--max-line`)
gets `ERR ...` and a graceful disconnect.  An `OSError` on one client's socket
(reset, broken pipe) closes that client quietly.  Anything else is a bug in
rat and is allowed to crash loudly.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from rat.framing import DEFAULT_MAX_LINE, LineFramer, LineTooLong
from rat.hub import Hub, Turn
from rat.outbuf import DEFAULT_MAX_PENDING, MAX_BUFFERS_PER_SEND, OutBuffer
from rat.poller import READABLE, WRITABLE, Poller, TracingPoller

log = logging.getLogger("rat")

RECV_SIZE = 256 * 1024  # bytes asked for per recv()
READ_BUDGET = 1024 * 1024  # bytes read from one client per turn before moving on
# Deliver early once a turn has gathered this much: batching gains nothing
# more at this size, and a turn must stay far below any sane --max-pending so
# that a client reading at full speed is never taken for a slow consumer.
TURN_BYTES = 256 * 1024
HOUSEKEEPING_INTERVAL = 0.5  # seconds: the longest the loop sleeps
LINGER_SECONDS = 2.0  # how long a rejected client may take to read its ERR line
ACCEPT_BACKOFF_MIN = 0.05  # seconds to pause accepting when out of descriptors
ACCEPT_BACKOFF_MAX = 1.0

ERR_LINE_TOO_LONG = b"ERR line too long\n"
ERR_SLOW_CONSUMER = b"ERR slow consumer\n"
ERR_SERVER_FULL = b"ERR server full\n"
ERR_SERVER_BUSY = b"ERR server busy\n"


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits; each is enforced by the part that owns the resource."""

    max_line: int = DEFAULT_MAX_LINE  # LineFramer
    max_pending: int = DEFAULT_MAX_PENDING  # OutBuffer
    write_timeout: float = 30.0  # Server housekeeping
    max_clients: int = 10000  # Server accept
    shutdown_timeout: float = 5.0  # Server stop


class Counters:
    """What the server has done; logged as one line at exit."""

    __slots__ = (
        "accepted",
        "bytes_in",
        "bytes_out",
        "closed",
        "deliveries",
        "emfile",
        "lines_in",
        "rejected_busy",
        "rejected_full",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected_full = 0  # refused: --max-clients reached
        self.rejected_busy = 0  # refused: out of file descriptors
        self.emfile = 0  # accept() failed with EMFILE/ENFILE
        self.lines_in = 0
        self.deliveries = 0  # lines queued to receivers
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed: dict[str, int] = {}  # reason -> count

    def summary(self) -> str:
        closed = ", ".join(f"{reason}={n}" for reason, n in sorted(self.closed.items()))
        return (
            f"counters: accepted={self.accepted} rejected_full={self.rejected_full}"
            f" rejected_busy={self.rejected_busy} emfile={self.emfile}"
            f" lines_in={self.lines_in} deliveries={self.deliveries}"
            f" bytes_in={self.bytes_in} bytes_out={self.bytes_out}"
            f" slow_consumer={self.closed.get('slow consumer', 0)}"
            f" closed=[{closed}]"
        )


# Client states.
OPEN = 0  # reading and receiving broadcasts
LINGER = 1  # rejected: flushing its ERR line, then discarding input until EOF
CLOSED = 2  # closed; waiting to be reaped from the tables


class Client:
    """One connection: its socket, its framer and its outbound queue."""

    __slots__ = (
        "addr",
        "close_reason",
        "deadline",
        "eof",
        "fd",
        "framer",
        "interest",
        "last_progress",
        "out",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, addr: str, limits: Limits) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr  # "host:port", for logs
        self.framer = LineFramer(limits.max_line)
        self.out = OutBuffer(limits.max_pending)
        self.state = OPEN
        self.eof = False  # the peer shut its sending side (half-close)
        self.interest = READABLE  # what the poller watches this socket for
        self.last_progress = 0.0  # when the kernel last took bytes (or queue began)
        self.deadline = 0.0  # LINGER: when to give up waiting for EOF
        self.close_reason = ""


def format_addr(addr: tuple[str, int] | tuple[str, int, int, int] | str) -> str:
    """'host:port' (IPv6 as '[host]:port')."""
    if isinstance(addr, str):  # AF_UNIX, not used by rat but harmless
        return addr
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as err:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, hard, err)
    return soft


def open_listener(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """Bind and listen on host:port.  OSError (incl. gaierror) on failure."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """The broadcast server: owns the listener, the poller and every client."""

    def __init__(
        self,
        listener: socket.socket,
        poller: Poller,
        limits: Limits | None = None,
        echo: bool = False,
        trace: bool = False,
    ) -> None:
        self.limits = limits = limits or Limits()
        # Reads and turns stay well below --max-pending, so that one busy
        # turn alone can never make a client that reads at full speed look
        # like a slow consumer.
        self._turn_bytes = min(TURN_BYTES, max(4096, limits.max_pending // 4))
        self._recv_size = min(RECV_SIZE, self._turn_bytes)
        self.listener: socket.socket | None = listener
        self.listen_fd = listener.fileno()
        self.clients: dict[int, Client] = {}
        self.hub = Hub(echo)
        self.counters = Counters()
        # --trace wraps the poller; `_trace` also lets the loop note the few
        # things the poller cannot see (resumed reads, short sends).
        self._trace = TracingPoller(poller, self._describe_fd) if trace else None
        self.poller: Poller = self._trace or poller

        # Self-pipe for signals: the C-level handler writes the signal number
        # here, which wakes poll() at once (not at the next timeout).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.poller.register(self._wake_r.fileno(), READABLE)
        self.poller.register(self.listen_fd, READABLE)

        self._signals = 0  # SIGINT/SIGTERM received so far
        self._last_signal = 0  # the number of the latest one
        self._stopping_at = 0.0  # when the first signal arrived (monotonic)
        # Read budget ran out: resume next turn (a dict keeps insertion order
        # and holds each client once).
        self._unfinished: dict[Client, None] = {}
        self._doomed: list[Client] = []  # closed this turn; reap at the end of it
        self._lingering: set[Client] = set()
        # Half-closed clients: checked for a pending socket error at each
        # housekeeping, since a level-triggered poller stops watching them.
        self._half_closed: set[Client] = set()
        self._blocked: set[Client] = set()  # waiting for WRITABLE
        self._accept_paused_until = 0.0  # EMFILE back-off; 0.0 when accepting
        self._accept_backoff = ACCEPT_BACKOFF_MIN
        self._last_emfile_log = 0.0
        # A spare descriptor kept open so that, when accept() fails with
        # EMFILE, we can free one, accept the waiting connection, tell it we
        # are busy and close it, instead of leaving it stuck in the backlog.
        self._reserve_fd: int | None = self._open_reserve()

    # ----------------------------------------------------------------- run

    def serve_forever(self, ready: Callable[[], None] | None = None) -> int:
        """Run until SIGINT/SIGTERM; then flush, close everything, return 0.

        `ready` is called once the signal handlers are in place (the CLI logs
        "listening on" there): a signal sent as soon as that line appears is
        already handled gracefully.
        """
        restore_signals = self._install_signal_handlers()
        try:
            if ready is not None:
                ready()
            self._run()
        finally:
            self._close_all()
            restore_signals()
        log.info("%s", self.counters.summary())
        return 0

    def _run(self) -> None:
        poll = self.poller.poll
        clients = self.clients
        listen_fd = self.listen_fd
        wake_fd = self._wake_r.fileno()
        next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
        while True:
            # Clients left unfinished by the read budget need no event: don't sleep.
            timeout = 0.0 if self._unfinished else max(0.0, next_housekeeping - time.monotonic())
            events = poll(timeout)
            stopping = self._signals > 0
            unfinished, self._unfinished = self._unfinished, {}
            for fd, mask in events:
                client = clients.get(fd)
                if client is not None:
                    if mask & READABLE and not stopping:
                        self._on_readable(client)
                    if mask & WRITABLE and client.state != CLOSED:
                        self._on_writable(client)
                elif fd == listen_fd:
                    self._accept()
                elif fd == wake_fd:
                    self._on_signal()
            for client in unfinished:
                # Skip one that an event already had us read (and re-queue).
                if not stopping and client not in self._unfinished:
                    if self._trace:
                        self._trace.note(f"resume     fd={client.fd} {client.addr} (read budget)")
                    self._on_readable(client)
            self._deliver()
            self._reap()

            now = time.monotonic()
            if self._signals:
                # Acted on here, between turns, never inside the handler: the
                # handler may run in the middle of any line of the loop.
                if not self._stopping_at:
                    self._begin_stop(now)
                if self._signals > 1:
                    log.warning(
                        "second signal: exiting now, dropping %d queued bytes",
                        sum(c.out.pending for c in clients.values()),
                    )
                    return
                if not self._has_pending_output():
                    return
                if now - self._stopping_at >= self.limits.shutdown_timeout:
                    log.warning(
                        "shutdown timeout (%.1fs): dropping output still queued for %d client(s)",
                        self.limits.shutdown_timeout,
                        sum(1 for c in clients.values() if c.out),
                    )
                    return
            if now >= next_housekeeping:
                self._housekeeping(now)
                next_housekeeping = now + HOUSEKEEPING_INTERVAL
                if self._signals:
                    next_housekeeping = min(
                        next_housekeeping, self._stopping_at + self.limits.shutdown_timeout
                    )
                if self._accept_paused_until:
                    next_housekeeping = min(next_housekeeping, self._accept_paused_until)

    # -------------------------------------------------------------- accept

    def _accept(self) -> None:
        """Accept until the backlog is empty (BlockingIOError)."""
        listener = self.listener
        if listener is None or self._accept_paused_until:
            return
        while True:
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE):
                    if self._shed_one(err):
                        continue
                    return
                if err.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the connection died in the backlog; next one
                raise
            self._accept_backoff = ACCEPT_BACKOFF_MIN  # descriptors are back
            self._add_client(sock, format_addr(addr))

    def _add_client(self, sock: socket.socket, addr: str) -> None:
        if len(self.clients) >= self.limits.max_clients:
            self.counters.rejected_full += 1
            log.warning("refused %s: server full (%d clients)", addr, len(self.clients))
            self._refuse(sock, ERR_SERVER_FULL)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = Client(sock, addr, self.limits)
        self.clients[client.fd] = client
        self.counters.accepted += 1
        log.info("connect %s (fd %d, %d clients)", addr, client.fd, len(self.clients))
        self.poller.register(client.fd, READABLE)

    @staticmethod
    def _refuse(sock: socket.socket, message: bytes) -> None:
        """Best-effort one-line reason, then close (never blocks)."""
        try:
            sock.setblocking(False)
            sock.send(message)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    def _shed_one(self, err: OSError) -> bool:
        """accept() failed for lack of descriptors: shed one waiting connection.

        Linux reserves the new descriptor before looking at the backlog, so
        EMFILE can mean "no descriptor" with nobody waiting at all.  Freeing
        the reserve descriptor tells the two apart: accept() then returns the
        waiting connection (told `ERR server busy` and closed: shed) or
        raises BlockingIOError (nobody waiting; the next connection will
        trigger a new event).  Returns True if one was shed and the accept
        loop should go on draining the backlog.
        """
        listener = self.listener
        if self._reserve_fd is None or listener is None:
            # No spare descriptor (another process took it: ENFILE): stop
            # watching the listener for a while, so a backlog that cannot be
            # drained does not wake us in a loop.
            self._note_emfile(err)
            self._pause_accept()
            return False
        os.close(self._reserve_fd)
        self._reserve_fd = None
        try:
            sock, addr = listener.accept()
        except OSError:  # BlockingIOError: nobody was waiting
            sock = None
        if sock is not None:
            self._note_emfile(err)
            self.counters.rejected_busy += 1
            log.debug("refused %s: out of file descriptors", format_addr(addr))
            self._refuse(sock, ERR_SERVER_BUSY)
        self._reserve_fd = self._open_reserve()
        return sock is not None and self._reserve_fd is not None

    def _note_emfile(self, err: OSError) -> None:
        """Count a descriptor shortage that cost a connection; log it (rate-limited)."""
        self.counters.emfile += 1
        now = time.monotonic()
        if now - self._last_emfile_log >= 1.0:
            self._last_emfile_log = now
            log.warning(
                "out of file descriptors (%s): shedding new connections (%d clients)",
                os.strerror(err.errno or 0),
                len(self.clients),
            )

    def _pause_accept(self) -> None:
        """Stop watching the listener for a back-off period (doubling, capped)."""
        if self.listener is not None and not self._accept_paused_until:
            self.poller.unregister(self.listen_fd)
        self._accept_paused_until = time.monotonic() + self._accept_backoff
        log.warning("accept paused for %.2fs (out of file descriptors)", self._accept_backoff)
        self._accept_backoff = min(self._accept_backoff * 2, ACCEPT_BACKOFF_MAX)

    def _resume_accept(self) -> None:
        self._accept_paused_until = 0.0
        if self._reserve_fd is None:
            self._reserve_fd = self._open_reserve()
        if self.listener is not None:
            log.info("accepting again")
            # Registering re-checks readiness: a waiting connection reports now.
            self.poller.register(self.listen_fd, READABLE)

    @staticmethod
    def _open_reserve() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    # ---------------------------------------------------------------- read

    def _on_readable(self, client: Client) -> None:
        """recv() until BlockingIOError, EOF or the per-turn budget."""
        if client.state == CLOSED:
            return
        recv = client.sock.recv
        budget = READ_BUDGET
        while True:
            try:
                data = recv(self._recv_size)
            except BlockingIOError:
                return
            except OSError as err:
                self._close(client, _reason(err))
                return
            if not data:
                self._on_eof(client)
                return
            if client.state == OPEN:
                self._on_data(client, data)
            # (LINGER: a rejected client's input is read only to be dropped.)
            if client.state == CLOSED:
                return
            budget -= len(data)
            if budget <= 0:
                # Still readable, but others deserve a turn.  With edge
                # triggering no new event would come for the unread bytes,
                # so remember this client ourselves.
                self._unfinished[client] = None
                return

    def _on_data(self, client: Client, data: bytes) -> None:
        """Frame what arrived and publish the complete lines."""
        self.counters.bytes_in += len(data)
        try:
            block = client.framer.feed(data)
        except LineTooLong as err:
            if err.accepted:
                self.counters.lines_in += self.hub.publish(client, err.accepted)
                # (delivered at the end of the turn, like any other lines)
            self._reject(client, ERR_LINE_TOO_LONG, "line too long")
            return
        if block:
            self.counters.lines_in += self.hub.publish(client, block)
            if self.hub.size >= self._turn_bytes:
                self._deliver()

    def _on_eof(self, client: Client) -> None:
        """recv() returned b"": the peer shut its sending side.

        Its unfinished line is relayed with a newline added.  The peer may
        only have half-closed and still be reading, so it keeps receiving
        broadcasts until a send fails (SPEC: half-close).  TCP cannot tell a
        half-close from a full close, so keepalive probes are switched on:
        once the peer's socket is really gone they end in a reset, which the
        poller reports as a hang-up and we reap the client.
        """
        if client.state == LINGER:
            self._close(client, client.close_reason, logged=True)
            return
        if client.eof:
            # Woken again after EOF: a hang-up (epoll reports one even with
            # no interest).  recv() keeps returning b"" after a FIN even once
            # a reset has arrived, so ask the socket for its error.
            self._check_half_closed(client)
            return
        client.eof = True
        tail = client.framer.take_partial()
        if tail:
            self.counters.lines_in += self.hub.publish(client, tail)
        log.info("eof from %s (half-closed: still receiving until it goes)", client.addr)
        _enable_keepalive(client.sock)
        self._half_closed.add(client)
        self._update_interest(client)

    def _check_half_closed(self, client: Client) -> None:
        """Close a half-closed client whose socket has failed (reset, timeout)."""
        err = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._close(client, _reason(OSError(err, os.strerror(err))))

    # ------------------------------------------------------------ fan-out

    def _deliver(self) -> None:
        """Hand this turn's lines to every client and try to send them now.

        The common case gets a fast path: a client that did not publish this
        turn and has nothing queued is sent the shared bytes directly, and
        only what the kernel does not take goes into its `OutBuffer`.  Everyone
        else (senders, who get the turn minus their own lines, and clients with
        a backlog, whose new bytes must queue behind it) goes through
        `_enqueue`.
        """
        turn = self.hub.take_turn()
        if turn is None:
            return
        now = time.monotonic()
        data = turn.data
        size = len(data)
        own = turn.own
        delivered = sent_total = 0
        for client in self.clients.values():
            if client.state != OPEN:
                continue
            if client.out.pending or client in own:
                self._enqueue(client, turn, now)
                continue
            delivered += turn.lines
            try:
                sent = client.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as err:
                self._close(client, _reason(err))
                continue
            sent_total += sent
            if sent < size:
                if self._trace:
                    self._trace_short_send(client, sent, size)
                client.last_progress = now  # the write-timeout clock starts now
                client.out.append(memoryview(data)[sent:] if sent else data)
                if client.out.over_limit:
                    self._drop_slow_consumer(client)
                else:
                    self._update_interest(client)  # ask for WRITABLE
        self.counters.deliveries += delivered
        self.counters.bytes_out += sent_total

    def _enqueue(self, client: Client, turn: Turn, now: float) -> None:
        """Queue this turn's lines for `client` and, unless it is blocked, send.

        The limit is checked after the send attempt: it is about what a
        client leaves waiting here, not about how much a busy turn produced.
        """
        chunks, lines = turn.chunks_for(client)
        if not chunks:
            return
        out = client.out
        if not out:
            client.last_progress = now  # the write-timeout clock starts now
        for chunk in chunks:
            out.append(chunk)
        self.counters.deliveries += lines
        if not client.interest & WRITABLE:
            self._flush(client)
        if out.over_limit and client.state == OPEN:
            self._drop_slow_consumer(client)

    # --------------------------------------------------------------- send

    def _on_writable(self, client: Client) -> None:
        if client.out:
            self._flush(client)
        elif client.interest & WRITABLE:
            self._update_interest(client)

    def _flush(self, client: Client) -> None:
        """Send as much queued output as the kernel takes (usually one syscall).

        Asks for WRITABLE only if bytes are left over, and stops asking once
        the queue is empty.
        """
        out = client.out
        sock = client.sock
        while out:
            buffers = out.peek()
            try:
                sent = sock.send(buffers[0]) if len(buffers) == 1 else sock.sendmsg(buffers)
            except BlockingIOError:
                sent = 0
            except OSError as err:
                self._close(client, _reason(err))
                return
            if sent:
                out.advance(sent)
                self.counters.bytes_out += sent
                client.last_progress = time.monotonic()
            # Go round again only if sendmsg's buffer cap, not the kernel,
            # stopped us: a short send means the socket buffer is full.
            if len(buffers) < MAX_BUFFERS_PER_SEND or sent < sum(map(len, buffers)):
                if out and self._trace:
                    self._trace_short_send(client, sent, sent + out.pending)
                break
        if not out and client.state == LINGER:
            self._finish_reject(client)
            if client.state == CLOSED:
                return
        self._update_interest(client)

    def _trace_short_send(self, client: Client, sent: int, queued: int) -> None:
        assert self._trace is not None
        self._trace.note(f"send       fd={client.fd} {client.addr} took {sent} of {queued} bytes")

    def _update_interest(self, client: Client) -> None:
        """Watch for READABLE unless the peer sent EOF; WRITABLE only while queued."""
        interest = (0 if client.eof else READABLE) | (WRITABLE if client.out else 0)
        if interest != client.interest:
            client.interest = interest
            if interest & WRITABLE:
                self._blocked.add(client)
            else:
                self._blocked.discard(client)
            self.poller.modify(client.fd, interest)

    # ------------------------------------------------------------ closing

    def _reject(self, client: Client, message: bytes, reason: str) -> None:
        """A protocol violation: say why, then close gracefully.

        The ERR line goes after whatever is already queued (never inside a
        partly sent line).  Once it is sent we shut our side and discard the
        peer's input until it closes, because closing a socket with unread
        input makes the kernel send a RST, which can destroy the ERR line
        before the peer reads it.
        """
        log.info("disconnect %s: %s", client.addr, reason)
        client.state = LINGER
        client.close_reason = reason
        client.deadline = time.monotonic() + LINGER_SECONDS
        self._lingering.add(client)
        client.out.append(message)  # past --max-pending is fine: it is the last
        if not client.interest & WRITABLE:
            self._flush(client)

    def _finish_reject(self, client: Client) -> None:
        """ERR line sent: shut our side; wait (briefly) for the peer's EOF."""
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(client, client.close_reason, logged=True)
            return
        if client.eof:
            self._close(client, client.close_reason, logged=True)

    def _drop_slow_consumer(self, client: Client) -> None:
        """Its queue passed --max-pending (or stalled): best-effort ERR, close."""
        pending = client.out.pending
        log.warning(
            "disconnect %s: slow consumer (%d bytes queued, limit %d)",
            client.addr,
            pending,
            self.limits.max_pending,
        )
        self._abandon_output(client, ERR_SLOW_CONSUMER)
        self._close(client, "slow consumer", logged=True)

    def _abandon_output(self, client: Client, message: bytes) -> None:
        """Drop the queue, but finish a partly sent line and add `message`."""
        rest = client.out.discard_after_current()
        try:
            client.sock.sendmsg([*rest, message])
        except OSError:
            pass

    def _close(self, client: Client, reason: str, logged: bool = False) -> None:
        """Close now; remove from the tables at the end of the turn (`_reap`)."""
        if client.state == CLOSED:
            return
        client.state = CLOSED
        client.close_reason = reason
        self.counters.closed[reason] = self.counters.closed.get(reason, 0) + 1
        if not logged:
            log.info("disconnect %s: %s", client.addr, reason)
        try:
            self.poller.unregister(client.fd)
        except (KeyError, OSError, ValueError):
            pass
        client.sock.close()
        self._doomed.append(client)

    def _reap(self) -> None:
        """Forget the clients closed during this turn."""
        if not self._doomed:
            return
        clients = self.clients
        for client in self._doomed:
            # Its fd number may already belong to a client accepted later in
            # this turn (the kernel reuses the lowest free number): only
            # remove the entry if it is still this client's.
            if clients.get(client.fd) is client:
                del clients[client.fd]
            self._blocked.discard(client)
            self._lingering.discard(client)
            self._half_closed.discard(client)
        self._doomed.clear()

    # -------------------------------------------------------- housekeeping

    def _housekeeping(self, now: float) -> None:
        """Timers: write timeouts, lingering rejects, dead half-closed peers, accept."""
        timeout = self.limits.write_timeout
        for client in list(self._blocked):
            if client.state == OPEN and now - client.last_progress >= timeout:
                log.warning(
                    "disconnect %s: write timeout (no progress for %.1fs, %d bytes queued)",
                    client.addr,
                    now - client.last_progress,
                    client.out.pending,
                )
                self._abandon_output(client, ERR_SLOW_CONSUMER)
                self._close(client, "write timeout", logged=True)
        for client in list(self._lingering):
            if now >= client.deadline:
                log.info("disconnect %s: gave up waiting for EOF after ERR", client.addr)
                self._close(client, client.close_reason, logged=True)
        for client in list(self._half_closed):
            if client.state == OPEN:
                self._check_half_closed(client)
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._resume_accept()
            self._accept()
        self._reap()

    # ------------------------------------------------------------- signals

    def _install_signal_handlers(self) -> Callable[[], None]:
        """Route SIGINT/SIGTERM to the loop; return a function that undoes it."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            # Python runs this between bytecodes of the main thread: if we
            # were in poll(), when the interrupted call returns, before
            # retrying it; the retried poll() then returns at once because
            # the C-level handler already wrote to the wakeup socket.  Any
            # line of the loop may be interrupted, so only record.
            del frame
            self._signals += 1
            self._last_signal = signum

        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old.items():
                signal.signal(sig, handler)

        return restore

    def _on_signal(self) -> None:
        """The wakeup socket is readable: drain it.

        Its only job was to make poll() return at once; the handler has
        already counted the signal, and `_run` acts on it after this turn.
        """
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _begin_stop(self, now: float) -> None:
        """First signal: stop accepting; the loop now only flushes."""
        self._stopping_at = now
        name = signal.Signals(self._last_signal).name if self._last_signal else "signal"
        queued = sum(c.out.pending for c in self.clients.values())
        log.info(
            "%s: closing the listener, flushing %d queued bytes (up to %.1fs)",
            name,
            queued,
            self.limits.shutdown_timeout,
        )
        if self.listener is not None:
            if not self._accept_paused_until:
                self.poller.unregister(self.listen_fd)
            self.listener.close()
            self.listener = None

    def _has_pending_output(self) -> bool:
        return any(c.out for c in self.clients.values() if c.state != CLOSED)

    def _close_all(self) -> None:
        for client in list(self.clients.values()):
            if client.state != CLOSED:
                # A rejected client still lingering keeps its own reason.
                self._close(client, client.close_reason or "shutdown", logged=True)
        self._reap()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
        self.poller.close()
        self._wake_r.close()
        self._wake_w.close()

    # ---------------------------------------------------------------- misc

    def _describe_fd(self, fd: int) -> str:
        """Name an fd for --trace."""
        client = self.clients.get(fd)
        if client is not None:
            return client.addr
        if fd == self.listen_fd:
            return "listener"
        if fd == self._wake_r.fileno():
            return "signal-wakeup"
        return "?"


def _reason(err: OSError) -> str:
    """A short, stable name for why a client's socket failed."""
    if isinstance(err, ConnectionResetError) or err.errno == errno.ECONNRESET:
        return "reset"
    if isinstance(err, BrokenPipeError) or err.errno == errno.EPIPE:
        return "broken pipe"
    if isinstance(err, TimeoutError) or err.errno == errno.ETIMEDOUT:
        return "timed out"
    return os.strerror(err.errno) if err.errno else str(err)


def _enable_keepalive(sock: socket.socket) -> None:
    """Probe an idle half-closed peer so a vanished one is noticed (best effort)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass
