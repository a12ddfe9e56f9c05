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
    """A connection whose wire bytes pass through a `Layer`."""

    __slots__ = ("layer",)

    layered = True

    def __init__(self, server: Server, sock: socket.socket, addr: str, layer: Layer) -> None:
        super().__init__(server, sock, addr)
        self.layer = layer

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
        self._after_layer()
        if app and self.state == OPEN:
            super().received(app)

    def _after_layer(self) -> None:
        """Send what the layer wants sent; join when ready; close when it is over."""
        self._send_layer_output()
        if self.state != OPEN:
            return
        layer = self.layer
        if self.room is None and layer.ready and not layer.finished:
            if self.timer is not None:  # the handshake timer
                self.server.loop.cancel(self.timer)
                self.timer = None
            self.server.join(self)
        if layer.finished:
            self.close_gracefully("eof")

    def _send_layer_output(self) -> None:
        wire = self.layer.outgoing()
        if wire and self.state != CLOSED:
            self.queue([wire], self.server.loop.clock())

    def cut_queue(self) -> int:
        """Wire bytes are cut between chunks (frames, records), never inside one."""
        return self.cut_to_chunk_end()

    def deliver_turn(self, turn: Turn, now: float) -> None:
        """This turn's lines, encoded for this peer, sent (or queued behind a backlog).

        The same fast path as for plain members (`Server._deliver_turn`): with
        nothing queued, the (often shared) wire bytes go straight to `send`,
        and only what the kernel does not take is queued.
        """
        if self.state != OPEN:
            return
        own = None if turn.echo else turn.own.get(self)
        if own is None:
            wire = self.layer.encode_turn(turn)
            lines = turn.lines
        else:
            chunks, lines = turn.chunks_for(self)
            wire = self.layer.encode(b"".join(chunks)) if chunks else b""
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
        if self.state == OPEN:
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
        super().close_gracefully(reason, self.layer.farewell(message, reason), linger, drop_queue)
