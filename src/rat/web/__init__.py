"""rat on the web: an HTTP/1.1 listener with the chat page and a WebSocket (`--web`).

Imported only when `--web` is given: the plain TCP server loads neither h11
nor wsproto.

    rat.web.http       the HTTP phase: one request (h11), answered or upgraded
                       (wsproto's handshake); the origin rule; the page
    rat.web.websocket  WebSocket messages <-> lines: frames built once per
                       turn for every receiver, client frames parsed by wsproto
    rat.web.layer      `WebLayer`, the sans-IO layer: HTTP, then WebSocket
    rat.web.conn       `WebConn`, a `LayeredConn` with a keepalive timer
    page.html          the chat page (HTML, CSS and JS in one file)

A WebSocket client is a member of the same rooms as the TCP clients: the
server's delivery hands each turn to `LayeredConn.deliver_turn`, which gets
the turn's frames from `WebLayer.encode_turn` (shared) and queues them like
any other bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from rat.layer import Layer
from rat.server import Server
from rat.web.conn import IDLE_TIMEOUT, PING_INTERVAL, WebConn
from rat.web.http import WebSite, canned_response, normalize_origin
from rat.web.layer import WebLayer

if TYPE_CHECKING:
    import socket

__all__ = [
    "IDLE_TIMEOUT",
    "PING_INTERVAL",
    "WebConn",
    "WebLayer",
    "WebSite",
    "normalize_origin",
    "serve_web",
]

SERVER_FULL = canned_response(503, b"server full\n")
# Out of descriptors (rat.listener sheds the connection): the same kind of 503.
SERVER_BUSY = canned_response(503, b"server busy\n")


def serve_web(
    server: Server,
    socks: list[socket.socket],
    max_line: int,
    origins: Iterable[str] = (),
    wrap: Callable[[Layer], Layer] | None = None,
) -> WebSite:
    """Serve the page and the WebSocket on `socks` (listening sockets) through `server`.

    `wrap` puts a layer under each connection's web layer (TLS for HTTPS/WSS).
    """
    site = WebSite.create(max_line, origins)
    factory = functools.partial(WebConn, site=site, wrap=wrap)
    # A connection shed for lack of descriptors is told so in HTTP; under TLS
    # it is closed without a word (HTTP in the clear is garbage to a TLS client).
    busy = SERVER_BUSY if wrap is None else b""
    server.listen(socks, factory, kind="web", refusal=SERVER_FULL, busy=busy)
    return site
