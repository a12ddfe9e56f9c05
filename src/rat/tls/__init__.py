"""TLS for rat's listeners (`--tls-cert`, `--tls-key`); imported only when they are given.

    rat.tls.layer    `TLSLayer`: an `ssl.SSLObject` over two memory buffers,
                     a sans-IO `rat.layered.Layer` (the edge-triggering essay)
    rat.tls.context  loading the certificate and key (one-line errors), and
                     `Certificates`, which swaps them on SIGHUP

A TLS client of the line protocol is a `rat.layered.LayeredConn` with a
`TLSLayer`: it joins the broadcast once its handshake is done, and from then
on is a member like any other (in the room's `layered` set).  A WebSocket
over TLS is a `rat.layered.Stack` of the TLS layer under the WebSocket one.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from rat.connection import Conn
from rat.layered import LayeredConn
from rat.server import Server
from rat.tls.context import CertificateError, Certificates, load_context
from rat.tls.layer import TLSLayer

__all__ = [
    "CertificateError",
    "Certificates",
    "TLSLayer",
    "load_context",
    "tls_line_factory",
]


def tls_line_factory(certificates: Certificates) -> Callable[[Server, socket.socket, str], Conn]:
    """Connections of the line protocol over TLS, each made from the current certificate."""

    def make(server: Server, sock: socket.socket, addr: str) -> Conn:
        return LayeredConn(server, sock, addr, TLSLayer(certificates.context))

    return make
