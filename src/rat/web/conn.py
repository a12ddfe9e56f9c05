"""A web client on the loop: a `LayeredConn` with a `WebLayer`, and its keepalive.

Everything a TCP client has, a web client has too, because the queue, the
flush, `--max-pending`, the write timeout and the graceful close are
`rat.connection.Conn`'s: the layer only changes what the bytes look like.
What this class adds is time, which a sans-IO layer does not have:

- keepalive: a WebSocket that has sent nothing for `PING_INTERVAL` seconds
  is pinged (every `PING_INTERVAL` seconds while it stays silent); one that
  has sent nothing for `IDLE_TIMEOUT` seconds is closed (1001).  A browser
  answers pings by itself, so a live page is never closed, and a client
  that vanished without a FIN (a phone that lost its network) is noticed
  within a minute.  One timer per connection, re-armed lazily: receiving
  only stores the time (`heard`); the timer, when it fires, looks at it and
  sets itself for the next deadline.
- EOF: a WebSocket cannot be half-closed, and an HTTP request that stops in
  the middle will never be finished, so EOF ends the conversation.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rat.connection import LINGER_SECONDS, OPEN
from rat.layered import LayeredConn
from rat.timers import Timer
from rat.web.http import WebSite
from rat.web.layer import WebLayer

if TYPE_CHECKING:
    import socket

    from rat.server import Server

log = logging.getLogger("rat")

PING_INTERVAL = 25.0  # seconds of silence from the client before a ping (SPEC "Web")
IDLE_TIMEOUT = 60.0  # seconds of silence before the close


class WebConn(LayeredConn):
    """One web connection: HTTP, then maybe a WebSocket member of a room."""

    __slots__ = ("heard", "keepalive")

    layer: WebLayer

    def __init__(self, server: Server, sock: socket.socket, addr: str, site: WebSite) -> None:
        super().__init__(server, sock, addr, WebLayer(site))
        self.heard = 0.0  # when the client last sent anything
        self.keepalive: Timer | None = None

    def received(self, data: bytes) -> None:
        self.heard = self.server.loop.clock()
        super().received(data)
        if self.keepalive is None and self.state == OPEN and self.layer.ready:
            self._arm_keepalive(self.heard + PING_INTERVAL)

    def on_eof(self) -> None:
        if self.state == OPEN:
            self.eof = True
            self.close_gracefully("eof")
        else:
            super().on_eof()

    # ----------------------------------------------------------- keepalive

    def _arm_keepalive(self, when: float) -> None:
        self.keepalive = self.server.loop.call_at(when, self._keepalive_due)

    def _keepalive_due(self) -> None:
        """Ping a silent client, close one silent for too long, or look again later.

        Deadlines are compared as computed (`heard + ...`), never as
        differences, so a timer that fires exactly on time is always due.
        """
        self.keepalive = None
        if self.state != OPEN:
            return
        loop = self.server.loop
        now = loop.clock()
        give_up = self.heard + IDLE_TIMEOUT
        if now >= give_up:
            log.info("disconnect %s: idle (nothing received for %.0fs)", self.addr, IDLE_TIMEOUT)
            self.close_gracefully("idle_timeout")
            return
        next_ping = self.heard + PING_INTERVAL
        if now >= next_ping:
            self.queue([self.layer.ping()], now)
            if self.state != OPEN:  # the ping found a slow consumer
                return
            next_ping = now + PING_INTERVAL
        self._arm_keepalive(min(next_ping, give_up))

    # ------------------------------------------------------------- closing

    def close_gracefully(
        self,
        reason: str,
        message: bytes = b"",
        linger: float = LINGER_SECONDS,
        drop_queue: bool = False,
    ) -> None:
        self._stop_keepalive()
        super().close_gracefully(reason, message, linger, drop_queue)

    def close(self, reason: str, quiet: bool = False) -> None:
        self._stop_keepalive()
        super().close(reason, quiet)

    def _stop_keepalive(self) -> None:
        if self.keepalive is not None:
            self.server.loop.cancel(self.keepalive)
            self.keepalive = None
