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
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

CLIENTS: set[ServerConnection] = set()


async def relay(conn: ServerConnection) -> None:
    CLIENTS.add(conn)
    try:
        async for message in conn:
            data = message.encode() if isinstance(message, str) else message
            if data.endswith(b"\n"):
                data = data[:-1]
            others = CLIENTS - {conn}
            for line in data.split(b"\n"):
                try:
                    broadcast(others, line.decode())  # a text message when it is UTF-8
                except UnicodeDecodeError:
                    broadcast(others, line)
    finally:
        CLIENTS.discard(conn)


async def main_async(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set_result, None)
    async with serve(relay, host, port, max_size=None, ping_interval=None) as server:
        sock_host, sock_port = next(iter(server.sockets)).getsockname()[:2]
        print(f"listening on {sock_host}:{sock_port}", file=sys.stderr, flush=True)
        await stop


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8081, help="TCP port (0: any free port)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args()
    if args.uvloop:
        uvloop = importlib.import_module("uvloop")  # optional: the `bench` extra
        uvloop.run(main_async(args.host, args.port))
    else:
        asyncio.run(main_async(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
