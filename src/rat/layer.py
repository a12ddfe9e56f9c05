"""The interface of a sans-IO protocol layer (TLS, HTTP, WebSocket).  Pure: no sockets.

A layer turns wire bytes into application bytes and back, and knows nothing
of sockets, the loop or the server: bytes in, bytes out, as h11, wsproto and
`ssl.SSLObject` do.  `rat.layered.LayeredConn` is the connection that drives
one; see there for how a layered connection joins the broadcast.
"""

from __future__ import annotations

from rat.hub import Turn


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
    # (see rat.layered.LayeredConn, "Backlogs").
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
