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
