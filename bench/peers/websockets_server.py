#!/usr/bin/env python3
"""A line-broadcast server on the `websockets` library: the WebSocket peer rat is compared with.

The rat protocol over WebSocket (see SPEC.md, "Web"): a text or binary
message is input like a TCP line (a message without a final newline gets
one; a message holding several newlines is several lines), and each line is
relayed to every *other* client as one message without the newline.

Written the way the library's documentation shows a broadcast: a set of
connections and its `broadcast()` helper, which writes to every connection
without waiting for any (a slow one does not hold the others up).  The relay
only, not rat's limits.  Any path is accepted (the generator uses /ws).

    python bench/peers/websockets_server.py --port 8081            # asyncio's loop
    python bench/peers/websockets_server.py --port 8081 --uvloop   # uvloop's loop
    python bench/peers/websockets_server.py --port 8081 --tcp-port 8080   # and TCP lines

With `--tcp-port`, TCP clients of the line protocol join the same broadcast
(as with rat's `--web`), which is what `rat bench --ws-fraction` needs.  The
`listening on` line names the WebSocket port first, then the TCP port.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from typing import cast

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

CLIENTS: set[ServerConnection] = set()
TCP: set[LineClient] = set()


class LineClient(asyncio.Protocol):
    """A TCP client of the line protocol in the same broadcast."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        TCP.add(self)

    def data_received(self, data: bytes) -> None:
        end = data.rfind(b"\n") + 1
        if end == 0:
            self.partial += data
            return
        lines, self.partial = self.partial + data[:end], data[end:]
        for client in TCP:
            if client is not self and client.transport is not None:
                client.transport.write(lines)
        for line in lines[:-1].split(b"\n"):
            send_ws(CLIENTS, line)

    def connection_lost(self, exc: Exception | None) -> None:
        TCP.discard(self)


def send_ws(conns: set[ServerConnection], line: bytes) -> None:
    """One line to these WebSocket clients: a text message when it is UTF-8."""
    try:
        broadcast(conns, line.decode())
    except UnicodeDecodeError:
        broadcast(conns, line)


async def relay(conn: ServerConnection) -> None:
    CLIENTS.add(conn)
    try:
        async for message in conn:
            data = message.encode() if isinstance(message, str) else message
            if data.endswith(b"\n"):
                data = data[:-1]
            others = CLIENTS - {conn}
            for line in data.split(b"\n"):
                send_ws(others, line)
            if TCP:
                chunk = data + b"\n"
                for client in TCP:
                    if client.transport is not None:
                        client.transport.write(chunk)
    except ConnectionClosed:
        pass  # a reset (the connect scenario's churn): not worth a traceback in the log
    finally:
        CLIENTS.discard(conn)


async def main_async(host: str, port: int, tcp_port: int | None) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set_result, None)
    async with serve(relay, host, port, max_size=None, ping_interval=None) as server:
        sock_host, sock_port = next(iter(server.sockets)).getsockname()[:2]
        shown = f"listening on {sock_host}:{sock_port}"
        tcp = None
        if tcp_port is not None:
            tcp = await loop.create_server(LineClient, host, tcp_port, backlog=1024)
            shown += f", tcp {tcp.sockets[0].getsockname()[1]}"
        print(shown, file=sys.stderr, flush=True)
        await stop
        if tcp is not None:
            tcp.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8081, help="TCP port (0: any free port)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument(
        "--tcp-port", type=int, default=None, help="also serve TCP line clients on this port"
    )
    args = parser.parse_args()
    run = main_async(args.host, args.port, args.tcp_port)
    if args.uvloop:
        uvloop = importlib.import_module("uvloop")  # optional: the `bench` extra
        uvloop.run(run)
    else:
        asyncio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
