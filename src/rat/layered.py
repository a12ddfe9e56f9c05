"""The seam for protocols over TCP: a sans-IO layer between the socket and the framer.

A plain TCP client's bytes are its lines.  A WebSocket client's bytes are
frames, a TLS client's bytes are records: a *layer* turns wire bytes into
application bytes and back, without touching a socket (the way h11, wsproto
and `ssl.SSLObject` do: bytes in, events or bytes out).  `LayeredConn` is a
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

if TYPE_CHECKING:
    from rat.server import Server

log = logging.getLogger("rat")


class LayerError(Exception):
    """The peer broke the layer's protocol; `reason` names it (a metrics label).

    `accepted` holds application bytes (whole lines) that the same input
    completed before the violation: they are the peer's good lines and are
    still relayed, as for a TCP line that is too long.
    """

    def __init__(self, reason: str, detail: str = "", accepted: bytes = b"") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason
        self.accepted = accepted


class Layer:
    """The interface a sans-IO protocol layer offers `LayeredConn` (subclass it)."""

    __slots__ = ()  # so that a slotted layer stays small (one exists per connection)

    name = "layer"  # the transport name in logs and metrics ("ws", "tls", ...)
    handshake_timeout: float | None = 10.0  # seconds to become `ready` (None: no limit)
    # True when each wire byte depends on every byte before it (TLS seals each
    # record with the next sequence number): queued wire bytes can then never
    # be dropped, so the connection keeps its backlog in the clear instead
    # (see LayeredConn, "Backlogs").
    seals = False

    @property
    def ready(self) -> bool:
        """The handshake is done: the connection may receive broadcasts."""
        return True

    @property
    def finished(self) -> bool:
        """The layer's conversation is over (a close handshake, a one-shot HTTP reply)."""
        return False

    def receive(self, data: bytes) -> bytes:
        """Wire bytes in; the application bytes they completed out (maybe b"").

        Raises `LayerError` if the peer broke the protocol.
        """
        raise NotImplementedError

    def outgoing(self) -> bytes:
        """Wire bytes the layer needs sent now (handshake, pong, close), or b""."""
        return b""

    def encode(self, data: bytes) -> bytes:
        """Application bytes (whole lines) for this peer -> wire bytes."""
        raise NotImplementedError

    def encode_turn(self, turn: Turn) -> bytes:
        """A whole turn for this peer; override to share the work via `turn.encoded`."""
        return self.encode(turn.data)

    def farewell(self, message: bytes, reason: str) -> bytes:
        """Wire bytes that end the conversation: `message` (an ERR line), then a close."""
        del reason
        return self.encode(message) if message else b""


class Stack(Layer):
    """Two layers as one: `outer` next to the wire, `inner` next to the lines.

    WebSocket over TLS (WSS) is `Stack(TLSLayer, WebLayer)`.  Bytes from the
    wire go through `outer.receive`, then `inner.receive`; bytes to the wire
    go the other way: `inner.encode_turn` (shared by every receiver of the
    turn, WebSocket frames) and then `outer.encode` (per receiver: each TLS
    session has its own keys).  The stack is ready when both are, and over
    when either is.
    """

    __slots__ = ("_name", "inner", "outer")

    def __init__(self, outer: Layer, inner: Layer, name: str = "") -> None:
        self.outer = outer
        self.inner = inner
        self._name = name or f"{inner.name}+{outer.name}"

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name

    @property
    def handshake_timeout(self) -> float | None:  # type: ignore[override]
        """The longer of the two (None if either has no limit)."""
        outer, inner = self.outer.handshake_timeout, self.inner.handshake_timeout
        return None if outer is None or inner is None else max(outer, inner)

    @property
    def seals(self) -> bool:  # type: ignore[override]
        return self.outer.seals or self.inner.seals

    @property
    def ready(self) -> bool:
        return self.outer.ready and self.inner.ready

    @property
    def finished(self) -> bool:
        return self.outer.finished or self.inner.finished

    def receive(self, data: bytes) -> bytes:
        middle = self.outer.receive(data)
        return self.inner.receive(middle) if middle else b""

    def outgoing(self) -> bytes:
        """The inner layer's replies (pongs, the HTTP upgrade), wrapped by the outer one."""
        reply = self.inner.outgoing()
        if reply:
            return self.outer.encode(reply)  # also carries what the outer had pending
        return self.outer.outgoing()

    def encode(self, data: bytes) -> bytes:
        return self.outer.encode(self.inner.encode(data))

    def encode_turn(self, turn: Turn) -> bytes:
        return self.outer.encode(self.inner.encode_turn(turn))

    def farewell(self, message: bytes, reason: str) -> bytes:
        """The inner goodbye (message, close frame), wrapped, then the outer's own."""
        return self.outer.farewell(self.inner.farewell(message, reason), reason)


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

    def _hold(self, data: bytes) -> None:
        """Behind a backlog, a sealing layer's lines wait in the clear (see "Backlogs")."""
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
        """This turn's lines, encoded for this peer, sent now (queued only if blocked).

        `send_now`, like the plain senders' path: a receiver that keeps up
        takes its wire bytes in one `send`, and the queue is never touched.
        """
        if self.state != OPEN:
            return
        own = None if turn.echo else turn.own.get(self)
        layer = self.layer
        held = layer.seals and self.pending  # behind a backlog: keep it in the clear
        if own is None:
            lines = turn.lines
            if held:
                self.server.counters.deliveries += lines
                self._hold(turn.data)
                return
            wire = layer.encode_turn(turn)
        else:
            chunks, lines = turn.chunks_for(self)
            if not chunks:
                return
            data = b"".join(chunks)
            if held:
                self.server.counters.deliveries += lines
                self._hold(data)
                return
            wire = layer.encode(data)
        if wire:
            self.server.counters.deliveries += lines
            self.send_now([wire], now)

    def send_lines(self, block: bytes) -> None:
        """Lines for this client alone (a chat reply), encoded by the layer."""
        if self.state != OPEN:
            return
        if self.layer.seals and self.pending:
            self._hold(block)
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
