"""The sans-IO layer of one web connection: HTTP until the upgrade, then WebSocket.

`WebLayer` is what `rat.layered.LayeredConn` calls between the socket and
the line framer.  It never sees a socket: bytes in, bytes out.

    phase      receive(wire)                           ready   finished
    HTTP       h11 parses the request (HttpExchange);  no      after a response
               the answer goes to `outgoing()`
    WebSocket  frames -> lines (MessageReader);        yes     after a close
               pongs and the close echo -> outgoing()
    closed     input is ignored                        no      yes

`ready` is what makes the connection join its room: a browser that has only
loaded the page, or a request still half-sent, never receives a broadcast.
The HTTP objects are dropped at the upgrade, so a WebSocket carries only a
`MessageReader` (itself without a parser while idle, see `rat.web.websocket`).

Output in the WebSocket phase: `encode_turn` returns the turn's frames,
built once per turn and shared by every WebSocket receiver (`Turn.encoded`),
and `farewell` ends the conversation with a close frame whose code says why
(1001 on shutdown, 1008 for a slow consumer, 1009 for a message that is too
long).
"""

from __future__ import annotations

from wsproto.frame_protocol import Opcode

from rat.hub import Turn
from rat.layer import Layer, LayerError
from rat.web.http import HttpExchange, WebSite
from rat.web.websocket import (
    GOING_AWAY,
    MESSAGE_TOO_BIG,
    NORMAL,
    POLICY_VIOLATION,
    MessageReader,
    WebSocketError,
    close_frame,
    control_frame,
    frame_lines,
)

HTTP_TIMEOUT = 10.0  # seconds for a client to finish its request (slow or stuck clients)
TURN_KEY = "ws"  # this layer's entry in `Turn.encoded`

# Close codes for the reasons rat ends a WebSocket (rat.connection's labels).
CLOSE_CODES = {
    "shutdown": GOING_AWAY,
    "idle_timeout": GOING_AWAY,
    "evicted": GOING_AWAY,
    "slow_consumer": POLICY_VIOLATION,
    "write_timeout": POLICY_VIOLATION,
    "line_too_long": MESSAGE_TOO_BIG,
}


def _frame_turn(turn: Turn) -> bytes:
    return frame_lines(turn.data)


class WebLayer(Layer):
    """HTTP, then WebSocket, for one connection (see the module docstring)."""

    __slots__ = ("_close_sent", "_finished", "_http", "_out", "_reader", "site")

    name = "ws"
    handshake_timeout = HTTP_TIMEOUT

    def __init__(self, site: WebSite) -> None:
        self.site = site
        self._http: HttpExchange | None = HttpExchange(site)
        self._reader: MessageReader | None = None
        self._out = b""  # wire bytes for `outgoing()`
        self._finished = False
        self._close_sent = False  # a close frame went out: nothing may follow it

    @property
    def ready(self) -> bool:
        return self._reader is not None and not self._close_sent

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def websocket(self) -> bool:
        """Past the upgrade."""
        return self._reader is not None

    @property
    def holds_parser(self) -> bool:
        """A frame parser is alive (for tests of the idle footprint)."""
        return self._reader is not None and self._reader.holds_parser

    def receive(self, data: bytes) -> bytes:
        http = self._http
        if http is not None:
            self._out += http.receive(data)
            if not http.upgraded:
                if http.done:
                    self._http = None
                    self._finished = True
                    if http.refusal:
                        raise LayerError(http.refusal, http.detail)
                return b""
            self._http = None  # the upgrade is done: drop h11 and the handshake
            self._reader = MessageReader(self.site.max_line)
            data = http.leftover  # frames the client sent right behind its request
        reader = self._reader
        if reader is None or not data:
            return b""
        try:
            lines = reader.feed(data)
        except WebSocketError as err:
            self._send_close(err.code, err.reason.replace("_", " "))
            raise LayerError(err.reason, err.detail, err.accepted) from None
        if reader.replies:
            self._out += reader.take_replies()
        if reader.closed is not None:  # the client closed; the echo is in `replies`
            self._close_sent = self._finished = True
        return lines

    def outgoing(self) -> bytes:
        out, self._out = self._out, b""
        return out

    def encode(self, data: bytes) -> bytes:
        return frame_lines(data)

    def encode_turn(self, turn: Turn) -> bytes:
        return turn.encoded(TURN_KEY, _frame_turn)  # type: ignore[no-any-return]

    def ping(self) -> bytes:
        """A keepalive ping (the connection decides when)."""
        return b"" if self._close_sent else control_frame(Opcode.PING)

    def farewell(self, message: bytes, reason: str) -> bytes:
        """`message` (an ERR line) as a message, then a close frame saying why."""
        if self._reader is None or self._close_sent:
            return b""  # HTTP: the response said it all; or the close went out already
        wire = frame_lines(message) if message else b""
        code = CLOSE_CODES.get(reason, NORMAL)
        self._send_close(code, reason.replace("_", " "))
        return wire + self.outgoing()

    def _send_close(self, code: int, why: str) -> None:
        self._out += close_frame(code, why)
        self._close_sent = self._finished = True
