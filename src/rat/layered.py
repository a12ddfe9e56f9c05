"""The seam for protocols over TCP: a sans-IO layer between the socket and the framer.

A plain TCP client's bytes are its lines.  A WebSocket client's bytes are
frames, a TLS client's bytes are records: a *layer* turns wire bytes into
application bytes and back, without touching a socket (the way h11, wsproto
and `ssl.SSLObject` do: bytes in, events or bytes out; its interface is
`rat.layer.Layer`, a pure module).  `LayeredConn` is a
`Conn` with a layer; everything else (the output queue, flush, WRITABLE
interest, `--max-pending`, the write timeout, graceful close) is the plain
connection's, because the queue always holds *wire* bytes.

    recv -> layer.receive -> framer -> hub          (Conn.received, overridden)
    turn -> layer.encode_turn -> queue -> send      (deliver_turn)

Fan-out stays shared where the protocol allows it: `encode_turn` may build
its wire bytes once per turn with `Turn.encoded` (WebSocket frames from
server to client are not masked, so every receiver gets the same bytes).  A
layer that must encode per receiver (TLS: every session has its own keys)
encodes per receiver, and costs what it costs.

A layered connection joins its room only once its layer is `ready` (the
WebSocket upgrade or the TLS handshake is done), so a half-open handshake
never receives a broadcast.  A layer that is not ready within
`handshake_timeout` seconds is closed.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from rat.connection import CLOSED, LINGER_SECONDS, OPEN, Conn
from rat.hub import Turn
from rat.layer import Layer, LayerError
from rat.net import close_reason

if TYPE_CHECKING:
    from rat.server import Server

log = logging.getLogger("rat")


class LayeredConn(Conn):
    """A connection whose wire bytes pass through a `Layer`.

    Backlogs
    --------
    Its queue holds wire bytes, and a cut (a slow consumer, a stop out of
    time) drops whole queued units (frames), never part of one.  That is
    wrong for a layer that `seals` (TLS): every record is encrypted with the
    next sequence number, so a client that misses one record can decrypt
    nothing after it, not even the `ERR` line that explains the cut.  So a
    sealing connection encrypts only while its queue is empty; behind a
    backlog its lines wait in the clear (`held`) and are encrypted, all at
    once, when the queue drains.  A cut then drops what is held (whole
    lines) and keeps every byte of ciphertext, which is at most about one
    turn.  `--max-pending` counts both.
    """

    __slots__ = ("held", "layer")

    layered = True

    def __init__(self, server: Server, sock: socket.socket, addr: str, layer: Layer) -> None:
        super().__init__(server, sock, addr)
        self.layer = layer
        self.held: bytearray | None = None  # a sealing layer's backlog, in the clear

    @property
    def over_limit(self) -> bool:
        """Wire bytes queued plus lines held in the clear exceed --max-pending."""
        held = self.held
        return self.pending + (len(held) if held else 0) > self.limit

    @property
    def transport(self) -> str:  # type: ignore[override]
        return self.layer.name

    def start(self) -> None:
        """Watch the socket; join the room once the handshake is done."""
        loop = self.server.loop
        loop.add(self.fd, self, self.interest)
        self._after_layer()
        timeout = self.layer.handshake_timeout
        if self.state == OPEN and self.room is None and timeout is not None:
            self.timer = loop.call_later(timeout, self._handshake_expired)

    def _handshake_expired(self) -> None:
        self.timer = None
        if self.state == OPEN and not self.layer.ready:
            log.info("disconnect %s: %s handshake timed out", self.addr, self.layer.name)
            self.close("handshake_timeout")

    def received(self, data: bytes) -> None:
        """Decode through the layer; answer what it needs answered; frame what it yields."""
        try:
            app = self.layer.receive(data)
        except LayerError as err:
            log.info("disconnect %s: %s (%s)", self.addr, err.reason.replace("_", " "), err.detail)
            if err.accepted and self.room is not None:
                super().received(err.accepted)
            self._send_layer_output()
            self.close_gracefully(err.reason)
            return
        self._after_layer(app)

    def _after_layer(self, app: bytes = b"") -> None:
        """Send what the layer wants sent; join when ready; frame `app`; close when over.

        `app` is framed after the join and before the close: a peer's last
        lines and its goodbye (a TLS close_notify, a WebSocket close) often
        arrive in one read, and the lines must not be lost to the goodbye.
        """
        self._send_layer_output()
        if self.state != OPEN:
            return
        layer = self.layer
        if self.room is None and layer.ready and not layer.finished:
            # The handshake timer, and only it: a join that does not make the
            # connection a member at once (a token gate, rat.auth) is called
            # again on the next read, when `timer` may be a write timeout.
            timer = self.timer
            if timer is not None and timer.callback == self._handshake_expired:
                self.server.loop.cancel(timer)
                self.timer = None
            self.server.join(self)
        if app and self.state == OPEN:
            super().received(app)
        if layer.finished and self.state == OPEN:
            # The peer ended the conversation: as for a TCP EOF, its
            # unfinished line is relayed with a newline added.
            tail = self.framer.take_partial()
            if tail:
                self.server.publish_lines(self, tail)
            self.close_gracefully("eof")

    def _send_layer_output(self) -> None:
        wire = self.layer.outgoing()
        if wire and self.state != CLOSED:
            self.queue([wire], self.server.loop.clock())

    def cut_queue(self) -> int:
        """Wire bytes are cut between chunks (frames), never inside one.

        A sealing layer keeps all its ciphertext (see "Backlogs") and drops
        what is held in the clear.
        """
        if not self.layer.seals:
            return self.cut_to_chunk_end()
        dropped = len(self.held) if self.held else 0
        self.held = None
        return dropped

    def _hold(self, data: bytes, lines: int) -> None:
        """Behind a backlog, a sealing layer's lines wait in the clear (see "Backlogs")."""
        self.server.counters.deliveries += lines
        if self.held is None:
            self.held = bytearray()
        self.held += data
        if self.over_limit:
            self.drop_slow_consumer()

    def _release_held(self) -> None:
        """Encrypt what was held, in one piece, behind the queue."""
        held = self.held
        self.held = None
        if held:
            if not self.pending:
                self.last_progress = self.server.loop.clock()
            self.append(self.layer.encode(bytes(held)))

    def flush(self) -> None:
        """Send what is queued; once it is all out, what was held goes next."""
        super().flush()
        while self.held and not self.pending and self.state == OPEN:
            self._release_held()
            super().flush()

    def deliver_turn(self, turn: Turn, now: float) -> None:
        """This turn's lines, encoded for this peer, sent (or queued behind a backlog).

        The same fast path as for plain members (`Server._deliver_turn`): with
        nothing queued, the (often shared) wire bytes go straight to `send`,
        and only what the kernel does not take is queued.  Behind a backlog,
        a sealing layer's lines wait in the clear (see "Backlogs").
        """
        if self.state != OPEN:
            return
        own = None if turn.echo else turn.own.get(self)
        layer = self.layer
        hold = layer.seals and self.pending
        if own is None:
            lines = turn.lines
            if hold:
                self._hold(turn.data, lines)
                return
            wire = layer.encode_turn(turn)
        else:
            chunks, lines = turn.chunks_for(self)
            if not chunks:
                return
            data = b"".join(chunks)
            if hold:
                self._hold(data, lines)
                return
            wire = layer.encode(data)
        if not wire:
            return
        counters = self.server.counters
        counters.deliveries += lines
        if self.pending:
            self.queue([wire], now)
            return
        try:
            sent = self.sock.send(wire)
        except BlockingIOError:
            sent = 0
        except OSError as err:
            self.close(close_reason(err))
            return
        counters.bytes_out += sent
        if sent < len(wire):
            self.keep_unsent(wire, sent, now)

    def send_lines(self, block: bytes) -> None:
        """Lines for this client alone (a chat reply), encoded by the layer."""
        if self.state != OPEN:
            return
        if self.layer.seals and self.pending:
            self._hold(block, 0)
        else:
            self.queue([self.layer.encode(block)], self.server.loop.clock())

    def close_gracefully(
        self,
        reason: str,
        message: bytes = b"",
        linger: float = LINGER_SECONDS,
        drop_queue: bool = False,
    ) -> None:
        """As for a plain connection, with the message and the close in the layer's terms."""
        if self.state != OPEN:
            return
        if self.held and not drop_queue:
            self._release_held()  # the backlog goes out before the goodbye, in order
        super().close_gracefully(reason, self.layer.farewell(message, reason), linger, drop_queue)
