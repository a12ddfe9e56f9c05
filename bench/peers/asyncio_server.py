#!/usr/bin/env python3
"""A line-broadcast server in idiomatic asyncio: the peer rat is compared with.

The rat protocol (see SPEC.md): every complete line a client sends is relayed
byte for byte to every *other* connected client; bytes after the last newline
wait for the rest of their line; a client that closes with a partial line has
it relayed with a newline appended, and a half-closed client keeps receiving.

This is what a competent asyncio user would write: the Protocol API (the
fastest asyncio layer), one `transport.write` per receiver for all the
complete lines of one read (so lines stay whole), no extra copies.  It
implements the relay only, not rat's limits.

    python bench/peers/asyncio_server.py --port 8080            # stdlib loop
    python bench/peers/asyncio_server.py --port 8080 --uvloop   # uvloop's loop
    python bench/peers/asyncio_server.py --port 8443 --uvloop --tls-cert C --tls-key K
(`RAT_PEER_UVLOOP=1` in the environment also selects uvloop.)  With a
certificate and key it speaks TLS only: the TLS peer for `rat bench --tls`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import ssl
import sys
from typing import cast


class Relay(asyncio.Protocol):
    """One client connection."""

    def __init__(self, clients: set[Relay]) -> None:
        self.clients = clients
        self.transport: asyncio.Transport | None = None
        self.partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self.clients.add(self)

    def data_received(self, data: bytes) -> None:
        end = data.rfind(b"\n") + 1
        if end == 0:  # no complete line yet
            self.partial += data
            return
        if self.partial:
            lines = self.partial + data[:end]
        else:
            lines = data[:end] if end < len(data) else data
        self.partial = data[end:]
        self.broadcast(lines)

    def eof_received(self) -> bool:
        if self.partial:
            self.broadcast(self.partial + b"\n")
            self.partial = b""
        return True  # half-closed: keep the transport open for writing

    def connection_lost(self, exc: Exception | None) -> None:
        self.clients.discard(self)

    def broadcast(self, lines: bytes) -> None:
        for client in self.clients:
            if client is not self and client.transport is not None:
                client.transport.write(lines)


async def serve(host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    clients: set[Relay] = set()
    server = await loop.create_server(lambda: Relay(clients), host, port, backlog=1024, ssl=tls)
    sock_host, sock_port = server.sockets[0].getsockname()[:2]
    print(f"listening on {sock_host}:{sock_port}", file=sys.stderr, flush=True)
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set_result, None)
    await stop
    server.close()
    for client in list(clients):  # not `async with server`: it would wait for them
        if client.transport is not None:
            client.transport.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--uvloop",
        action="store_true",
        default=os.environ.get("RAT_PEER_UVLOOP") == "1",
        help="run on uvloop's event loop",
    )
    parser.add_argument("--tls-cert", default=None, help="certificate (PEM): speak TLS")
    parser.add_argument("--tls-key", default=None, help="its private key (PEM)")
    args = parser.parse_args()
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    if args.uvloop:
        uvloop = importlib.import_module("uvloop")  # optional: the `bench` extra
        uvloop.run(serve(args.host, args.port, tls))
    else:
        asyncio.run(serve(args.host, args.port, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
