"""The broadcast server: listeners in, connections out, one delivery per turn.

`Server` puts the parts together: the loop (`rat.loop`), an `Acceptor` per
listening address (`rat.listener`), a `Conn` per client (`rat.connection`)
and the hub (`rat.hub`).  It owns the three decisions that belong to no
single connection:

- admission: `--allow`/`--deny` (rat.access), before a byte is read;
  `--max-clients`, and who gives up a slot when there is none (a
  half-closed client, oldest first);
- delivery: at the end of each turn, every room's new lines go to every
  member, one `send` per receiver per turn (`deliver`);
- the stop: on SIGINT/SIGTERM every connection closes gracefully, within
  `--shutdown-timeout`, and a second signal cuts it short.  SIGHUP stops the
  same way, unless something can be reloaded (`reloaders`: TLS certificates,
  the token file): then it reloads and the server keeps running.

Delivery, the fast path
-----------------------
The hub joins a turn's lines into one shared `bytes` object.  A member that
did not publish this turn and has nothing queued is sent that object
directly; only what the kernel does not take is queued (as a pointer into
the same object, not a copy), and only then is WRITABLE asked for.  Senders
(who get the turn minus their own lines) and members with a backlog (whose
new bytes must wait behind it) take `_enqueue`.  Many lines from many
senders cost one syscall per receiver per turn, the idea Redis uses when it
writes replies once per loop (`handleClientsWithPendingWrites`).  A turn that
gathers `TURN_BYTES` is delivered early, mid-turn, so a flood never builds a
delivery bigger than a client's queue limit.

Coalescing (`--coalesce-ms`)
----------------------------
When lines arrive one at a time, each turn holds one line and each line
costs one `send` per receiver.  With `--coalesce-ms W`, a delivery that
comes less than W ms after the previous one waits until W ms have passed,
gathering what arrives meanwhile: at most one delivery per W ms, at most W
ms of added latency, and none at all for a line that arrives after a quiet
spell.  See docs/BENCHMARKS.md for what it saves and costs.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from rat.config import Config
from rat.connection import CLOSING, OPEN, Conn
from rat.hub import Hub, Room, Turn
from rat.listener import Acceptor, SpareDescriptor, refuse
from rat.loop import Loop
from rat.metrics import Observer
from rat.net import close_reason, enable_keepalive, listen_address
from rat.poller import Poller
from rat.timers import Timer

if TYPE_CHECKING:
    from rat.access import AddressRules  # imported (ipaddress too) only with --allow/--deny

log = logging.getLogger("rat")

RECV_SIZE = 256 * 1024  # bytes asked for per recv()
# Deliver early once a turn has gathered this much: batching gains nothing
# more at this size, and a turn must stay far below any sane --max-pending so
# that a client reading at full speed is never taken for a slow consumer.
TURN_BYTES = 256 * 1024
HALF_CLOSE_PROBE = 1.0  # seconds between SO_ERROR checks (level-triggered pollers only)

ERR_SERVER_FULL = b"ERR server full\n"

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def plural(count: int, word: str, words: str = "") -> str:
    """'1 client', '2 clients' ('1 delivery', '2 deliveries' with `words`)."""
    return f"{count} {word}" if count == 1 else f"{count} {words or word + 's'}"


class Counters:
    """What the server has done; logged as one line at exit."""

    __slots__ = (
        "accepted",
        "bytes_in",
        "bytes_out",
        "closed",
        "deliveries",
        "dropped_bytes",
        "evicted",
        "lines_in",
        "rejected_busy",
        "rejected_denied",
        "rejected_full",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected_full = 0  # refused: --max-clients reached
        self.rejected_busy = 0  # refused: out of file descriptors
        self.rejected_denied = 0  # refused: --allow/--deny (rat.access)
        self.evicted = 0  # half-closed clients closed to make room
        self.lines_in = 0
        self.deliveries = 0  # lines queued to receivers
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped_bytes = 0  # queued output thrown away (cuts, stop timeout)
        self.closed: dict[str, int] = {}  # reason -> count

    def summary(self, emfile: int, address_rules: bool = False) -> str:
        """The exit line; `rejected_denied` only where --allow/--deny are in force."""
        closed = ", ".join(f"{reason}={n}" for reason, n in sorted(self.closed.items()))
        denied = f" rejected_denied={self.rejected_denied}" if address_rules else ""
        return (
            f"counters: accepted={self.accepted} rejected_full={self.rejected_full}"
            f" rejected_busy={self.rejected_busy}{denied}"
            f" emfile={emfile} evicted={self.evicted}"
            f" lines_in={self.lines_in} deliveries={self.deliveries}"
            f" bytes_in={self.bytes_in} bytes_out={self.bytes_out}"
            f" dropped_bytes={self.dropped_bytes}"
            f" slow_consumer={self.closed.get('slow_consumer', 0)}"
            f" closed=[{closed}]"
        )


class Server:
    """The broadcast server: owns the loop, the listeners, the hub and every client."""

    def __init__(
        self, listeners: list[socket.socket], poller: Poller, config: Config | None = None
    ) -> None:
        self.config = config = config or Config()
        self.limits = limits = config.limits
        # Reads and turns stay well below --max-pending, so that one busy
        # turn alone can never make a client that reads at full speed look
        # like a slow consumer.
        self.turn_bytes = min(TURN_BYTES, max(4096, limits.max_pending // 4))
        self.recv_size = min(RECV_SIZE, self.turn_bytes)
        # Every connection reads into this one buffer (see Conn.on_readable).
        self.read_buffer = bytearray(self.recv_size)
        self.read_view = memoryview(self.read_buffer)
        self.loop = loop = Loop(poller, trace=config.trace)
        self.hub = Hub(config.echo)
        self.counters = Counters()
        # --admin's per-client statistics (rat.admin.telemetry); None: off,
        # and each hook below is one `is None` test, never per receiver.
        self.observer: Observer | None = None
        # Connections not yet closed.  They are found through the loop's
        # handler table (`connections()`): a second table of 10,000 entries
        # would cost idle memory on every connection.
        self.clients = 0
        # Clients that sent EOF, oldest first: they give up their slot first.
        self.half_closed: dict[Conn, None] = {}
        self._probe_timer: Timer | None = None
        self.spare = SpareDescriptor()
        self.acceptors: list[Acceptor] = []
        # --allow/--deny (rat.access), checked at accept; None: everyone may connect.
        self.address_rules: AddressRules | None = None
        # What SIGHUP reloads (TLS certificates, the token file); none: SIGHUP stops.
        self.reloaders: list[Callable[[], object]] = []
        self.listen(listeners)
        self.coalesce = config.coalesce_ms / 1000.0
        self._last_delivery = float("-inf")
        self._hold_timer: Timer | None = None
        self.stopping = False
        self._stop_signals = 0
        self._stop_dropped = [0, 0]  # bytes, clients dropped by the stop
        loop.at_turn_end(self.deliver)
        if log.isEnabledFor(logging.DEBUG):
            loop.at_turn_end(self._debug_turn)
            self._last_counts = (0, 0, 0, 0)

    @property
    def addresses(self) -> list[str]:
        """Where the listeners listen ('127.0.0.1:8080', '[::1]:8080', 'web 127.0.0.1:8081').

        Other listeners than the plain TCP ones are named by their kind.
        """
        return [
            listen_address(a.sock) if a.kind == "listener" else f"{a.kind} {listen_address(a.sock)}"
            for a in self.acceptors
            if a.sock is not None
        ]

    # ----------------------------------------------------------------- run

    def serve_forever(self, ready: Callable[[], None] | None = None) -> int:
        """Run until a stop signal; flush, close everything, return 0.

        `ready` is called once the signal handlers are in place (the CLI logs
        "listening on" there): a signal sent as soon as that line appears is
        already handled gracefully.
        """
        restore = self.loop.install_signal_handlers(STOP_SIGNALS + IGNORED_SIGNALS, self.on_signal)
        try:
            if ready is not None:
                ready()
            self.loop.run(self.finished)
        finally:
            self.close()
            restore()
        dropped_bytes, dropped_clients = self._stop_dropped
        if dropped_bytes:
            log.warning(
                "stop dropped %d queued bytes for %s (each stream ends on a line boundary)",
                dropped_bytes,
                plural(dropped_clients, "client"),
            )
        emfile = sum(a.emfile for a in self.acceptors)
        log.info("%s", self.counters.summary(emfile, self.address_rules is not None))
        return 0

    def finished(self) -> bool:
        """The stop is complete: every connection has closed."""
        return self.stopping and not self.clients

    def close(self) -> None:
        """Close every socket now (the end of `serve_forever`, or a test's teardown)."""
        for conn in self.connections():
            conn.abort(conn.close_reason or "shutdown")
        for acceptor in self.acceptors:
            acceptor.close()
        self.spare.close()
        self.loop.close()

    # ----------------------------------------------------------- admission

    def listen(
        self,
        socks: list[socket.socket],
        factory: Callable[[Server, socket.socket, str], Conn] = Conn,
        kind: str = "listener",
        refusal: bytes = ERR_SERVER_FULL,
        busy: bytes | None = None,
    ) -> None:
        """Accept on `socks`; each new connection is `factory(server, sock, addr)`.

        Plain TCP listeners make a `Conn`; other listeners (the web port, the
        admin port) pass their own connection class, and `refusal`, what a
        client beyond `--max-clients` is told in their protocol; `busy`, what
        one shed for lack of descriptors is told (default: `ERR server busy`;
        b"": nothing, as under TLS).
        """
        for sock in socks:
            acceptor = Acceptor(
                self.loop,
                sock,
                functools.partial(self.on_accept, factory, refusal=refusal),
                self.make_room,
                self.spare,
                on_shed=self._on_shed,
                kind=kind,
                busy=busy,
            )
            self.acceptors.append(acceptor)

    def on_accept(
        self,
        factory: Callable[[Server, socket.socket, str], Conn],
        sock: socket.socket,
        addr: str,
        refusal: bytes = ERR_SERVER_FULL,
    ) -> None:
        """A new connection from an `Acceptor`: admit it, or refuse it with a reason."""
        if self.address_rules is not None and not self._address_admitted(sock, addr):
            return
        if self.clients >= self.limits.max_clients and not self.make_room():
            self.counters.rejected_full += 1
            log.warning(
                "refused %s: server full (%s)",
                addr,
                self.describe_clients(),
                extra={"addr": addr, "reason": "server_full"},
            )
            refuse(sock, refusal)
            return
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (a Unix socket)
            pass
        conn = factory(self, sock, addr)
        self.clients += 1
        self.counters.accepted += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connect %s (fd %d, %s)", addr, conn.fd, self.describe_clients())
        if self.observer is not None:
            self.observer.accepted(conn, self.loop.clock())
        conn.start()

    def _address_admitted(self, sock: socket.socket, addr: str) -> bool:
        """--allow/--deny: close a refused connection at once, before any byte is read."""
        assert self.address_rules is not None
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return True  # a Unix socket: its file's permissions decide
        try:
            ip = sock.getpeername()[0]
        except OSError:  # it is gone already
            ip = ""
        if ip and self.address_rules.admits(ip):
            return True
        self.counters.rejected_denied += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("refused %s: address not allowed (--allow/--deny)", addr)
        sock.close()
        return False

    def join(self, conn: Conn, room: Room | None = None) -> None:
        """`conn` starts receiving `room`'s broadcasts (the lobby by default)."""
        room = self.hub.lobby if room is None else room  # (an empty Room is falsy)
        conn.room = room
        self.hub.join(conn, room, layered=conn.layered)

    def connections(self) -> list[Conn]:
        """Every connection not yet closed (a snapshot)."""
        return [h for h in self.loop.handlers.values() if isinstance(h, Conn)]

    def describe_clients(self) -> str:
        """'3 clients, 1 half-closed'."""
        text = plural(self.clients, "client")
        return f"{text}, {len(self.half_closed)} half-closed" if self.half_closed else text

    def make_room(self) -> bool:
        """Close the oldest half-closed client to free a slot; False if there is none."""
        if not self.half_closed:
            return False
        conn = next(iter(self.half_closed))
        log.info(
            "disconnect %s: closed to make room (it had closed its sending side; %s)",
            conn.addr,
            self.describe_clients(),
            extra={"addr": conn.addr, "reason": "evicted"},
        )
        self.counters.evicted += 1
        conn.abort("evicted")
        return True

    def _on_shed(self, addr: str) -> None:
        del addr
        self.counters.rejected_busy += 1

    # ---------------------------------------------------- connection events

    def publish_lines(self, conn: Conn, block: bytes) -> None:
        """Complete lines from `conn`: into its room's turn (sent at the end of the turn)."""
        self.counters.lines_in += self.hub.publish(conn, block, conn.room)
        if self.hub.size >= self.turn_bytes:
            self._deliver_now()

    def publish_remote(self, room: Room, block: bytes) -> None:
        """Complete lines from another node (rat.cluster): for every member of `room`.

        They join the room's turn like local lines, from a sender that is no
        member (so nobody is left out), and are not forwarded again.
        """
        self.hub.publish_remote(block, room)
        if self.hub.size >= self.turn_bytes:
            self._deliver_now()

    def on_half_close(self, conn: Conn) -> None:
        """`conn` sent EOF: it keeps receiving, but gives up its slot first when full."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "eof from %s: the peer closed its sending side (it may have left; it keeps"
                " receiving until a send fails, and is closed first when the server is full)",
                conn.addr,
            )
        enable_keepalive(conn.sock)
        self.half_closed[conn] = None
        if not self.loop.poller.edge_triggered and self._probe_timer is None:
            # A level-triggered poller stops watching a socket with no
            # interest, so it would never report the reset of a vanished
            # half-closed peer: ask the sockets ourselves.
            self._probe_timer = self.loop.call_later(HALF_CLOSE_PROBE, self._probe_half_closed)

    def _probe_half_closed(self) -> None:
        self._probe_timer = None
        for conn in list(self.half_closed):
            if conn.state == OPEN:
                conn.check_half_closed()
        if self.half_closed:
            self._probe_timer = self.loop.call_later(HALF_CLOSE_PROBE, self._probe_half_closed)

    def on_leave(self, conn: Conn) -> None:
        """`conn` stops receiving broadcasts (it is closing)."""
        if conn.room is not None:
            self.hub.leave(conn, conn.room)
            conn.room = None

    def on_dropped(self, conn: Conn, dropped: int) -> None:
        """Queued output for `conn` was thrown away (a cut, or a stop out of time)."""
        self.counters.dropped_bytes += dropped
        if self.stopping:
            self._stop_dropped[0] += dropped
            self._stop_dropped[1] += 1

    def on_closed(self, conn: Conn, quiet: bool) -> None:
        """`conn`'s socket is closed: forget it."""
        self.clients -= 1
        was_half_closed = conn in self.half_closed
        if was_half_closed:
            del self.half_closed[conn]
        reason = conn.close_reason
        if was_half_closed and reason in ("reset", "timeout"):
            # It had closed its side, and now a send or a probe found it gone.
            reason = conn.close_reason = "eof"
        self.counters.closed[reason] = self.counters.closed.get(reason, 0) + 1
        if self.observer is not None:
            self.observer.closed(conn, self.loop.clock())
        if not quiet and log.isEnabledFor(logging.DEBUG):
            fields = {"addr": conn.addr, "reason": reason}
            if reason == "eof":
                log.debug(
                    "disconnect %s: left (it had closed its side; now gone)",
                    conn.addr,
                    extra=fields,
                )
            else:
                log.debug("disconnect %s: %s", conn.addr, reason.replace("_", " "), extra=fields)

    # ------------------------------------------------------------ delivery

    def deliver(self) -> None:
        """End of turn: hand each room's new lines to its members and send at once."""
        if not self.hub.size:
            return
        if self.coalesce and not self.stopping:
            now = self.loop.clock()
            hold_until = self._last_delivery + self.coalesce
            if now < hold_until:
                if self._hold_timer is None:
                    self._hold_timer = self.loop.call_at(hold_until, self._end_hold)
                return
        self._deliver_now()

    def _end_hold(self) -> None:
        """The hold is over.  Nothing to do here: the timer's only job was to
        wake the loop, and every turn ends with `deliver`, which now finds
        the window closed and sends."""
        self._hold_timer = None

    def _deliver_now(self) -> None:
        now = self.loop.clock()
        self._last_delivery = now
        for room, turn in self.hub.take_turns():
            self._deliver_turn(room, turn, now)

    def _deliver_turn(self, room: Room, turn: Turn, now: float) -> None:
        """The fast path (see the module docstring): one `send` per member, no copy."""
        if self.observer is not None:  # --admin: per-room totals, once per room and turn
            self.observer.turn(room, turn)
        data = turn.data
        size = len(data)
        lines = turn.lines
        own = turn.own
        delivered = sent_total = 0
        # A snapshot: a member whose send fails leaves the room at once.
        for conn in list(room.plain):
            if conn.pending or conn in own:
                self._enqueue(conn, turn, now)
                continue
            delivered += lines
            try:
                sent = conn.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as err:
                conn.close(close_reason(err))
                continue
            sent_total += sent
            if sent < size:
                conn.keep_unsent(data, sent, now)
        self.counters.deliveries += delivered
        self.counters.bytes_out += sent_total
        if room.layered:
            for layered in list(room.layered):
                layered.deliver_turn(turn, now)

    def _enqueue(self, conn: Conn, turn: Turn, now: float) -> None:
        """The turn's lines for a sender or a member with a backlog: queue, then send."""
        chunks, lines = turn.chunks_for(conn)
        if chunks:
            self.counters.deliveries += lines
            conn.send_now(chunks, now)

    # ---------------------------------------------------------------- stop

    def on_signal(self, signum: int) -> None:
        """A signal arrived during the turn (see `Loop.install_signal_handlers`)."""
        name = signal.Signals(signum).name
        if signum in IGNORED_SIGNALS:
            log.info("%s ignored (rat does nothing on it)", name)
            return
        if signum == signal.SIGHUP and self.reloaders and not self.stopping:
            log.info("SIGHUP: reloading (the server keeps running)")
            for reload in self.reloaders:
                reload()
            return
        self._stop_signals += 1
        if self._stop_signals == 1:
            self.begin_stop(name)
        else:
            self.stop_now()

    def begin_stop(self, why: str) -> None:
        """Stop accepting; every client gets what is queued for it, then a clean close."""
        self.stopping = True
        timeout = self.limits.shutdown_timeout
        conns = self.connections()
        queued = sum(conn.pending for conn in conns)
        log.info(
            "%s: closing the listener, flushing %d queued bytes (up to %.1fs)",
            why,
            queued,
            timeout,
        )
        for acceptor in self.acceptors:
            acceptor.close()
        self._deliver_now()  # lines already read still go out
        for conn in conns:
            if conn.state == OPEN:
                conn.close_gracefully("shutdown", linger=timeout)
            elif conn.state == CLOSING:
                conn.deadline = min(conn.deadline, self.loop.clock() + timeout)

    def stop_now(self) -> None:
        """A second signal: close everything at once (streams still end on a line boundary)."""
        conns = self.connections()
        log.warning(
            "second signal: exiting now, dropping %d queued bytes for %s",
            sum(conn.pending for conn in conns),
            plural(sum(1 for conn in conns if conn.pending), "client"),
        )
        for conn in conns:
            conn.abort(conn.close_reason or "shutdown")

    # ---------------------------------------------------------------- misc

    def _debug_turn(self) -> None:
        """--log-level debug: one line per turn that did something."""
        c = self.counters
        counts = (c.accepted, c.bytes_in, c.lines_in, c.deliveries)
        if counts != self._last_counts:
            last = self._last_counts
            self._last_counts = counts
            log.debug(
                "turn %d: %d accepted, %s read, %s in, %s; %s",
                self.loop.turns,
                counts[0] - last[0],
                plural(counts[1] - last[1], "byte"),
                plural(counts[2] - last[2], "line"),
                plural(counts[3] - last[3], "line delivery", "line deliveries"),
                self.describe_clients(),
            )
