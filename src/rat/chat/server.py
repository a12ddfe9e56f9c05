"""`ChatServer`: the broadcast server with chat mode's rules in front of its hub.

`rat serve --chat` builds a `ChatServer` instead of a `Server` (rat.cli), and
nothing else changes: the same loop, listeners, connections, limits, fan-out
and stop.  The plain server is not touched, so without `--chat` it runs
exactly as before and pays nothing for chat mode (not even this import).

Three of the server's seams are taken over, each a call the connections
already make:

- `join(conn)`: a connection is ready (accepted; a layered one once its
  handshake is done): `Chat.connect` gives it a nick, a greeting and the lobby;
- `publish_lines(conn, block)`: complete lines from a client go to
  `Chat.receive`, which publishes messages to the client's room and replies
  to the client alone;
- `on_leave(conn)`: a connection is closing: `Chat.disconnect` frees its
  nick and announces that it left.

And one of its rules: a client that sends EOF has left (`on_half_close`).

Because these are the only entry points, a WebSocket client (a
`rat.layered.LayeredConn`) is a chat client like any TCP one: its messages
arrive as lines, and replies reach it through `send_lines`, which its layer
encodes.
"""

from __future__ import annotations

import socket

from rat.chat.session import Chat
from rat.config import Config
from rat.connection import Conn
from rat.hub import Room
from rat.poller import Poller
from rat.server import Server


class ChatServer(Server):
    """A `Server` whose clients have nicks and rooms (SPEC: "Rooms and chat mode")."""

    def __init__(
        self, listeners: list[socket.socket], poller: Poller, config: Config | None = None
    ) -> None:
        super().__init__(listeners, poller, config)
        self.chat = Chat(
            self.hub,
            deliver_pending=self._deliver_now,
            history=self.config.history,
            announce_max=self.config.announce_max,
            history_budget=self.limits.max_pending // 2,
            # Under --workers N, worker k hands out guest<k>, guest<k+N>, ...
            first_guest=self.config.worker or 1,
            guest_step=self.config.workers if self.config.worker else 1,
        )

    def join(self, conn: Conn, room: Room | None = None) -> None:
        """A connection is ready: nick, greeting, lobby (rooms change by /join)."""
        del room
        self.chat.connect(conn)

    def publish_lines(self, conn: Conn, block: bytes) -> None:
        """Complete lines from `conn`: chat messages and commands."""
        self.counters.lines_in += block.count(b"\n")
        self.chat.receive(conn, block)
        if self.hub.size >= self.turn_bytes:
            self._deliver_now()

    def on_leave(self, conn: Conn) -> None:
        """`conn` is closing: it leaves its room (announced, unless everyone is leaving)."""
        self.chat.disconnect(conn, announce=not self.stopping)

    def on_half_close(self, conn: Conn) -> None:
        """EOF: in chat mode the client has left, and says so at once.

        Raw mode keeps a half-closed client as a receiver (v1: TCP cannot tell
        a half-close from a close).  A chat client that sent EOF is leaving:
        its nick and its place in the room are freed now, not when a send to
        it fails, so that the room hears of it and the nick can be taken
        again at once.  What is queued for it (replies to its last commands)
        is still sent before the close.
        """
        conn.close_gracefully("eof")

    def deliver(self) -> None:
        """End of turn: deliver, and make sure what the delivery itself published goes too.

        A client that a delivery drops (its send failed, it is a slow
        consumer) leaves its room with a notice, published after this turn's
        delivery.  Without another turn it would wait for the next event, so
        the loop is asked for one at once (it runs `on_resume`, then this).
        With --coalesce-ms holding the delivery, its timer does that.
        """
        super().deliver()
        if self.hub.size and self._hold_timer is None:
            self.loop.resume(self)

    def on_resume(self) -> None:
        """Nothing to do: the turn that calls this ends with a delivery."""
