#!/usr/bin/env python3
"""How long the admin endpoint's answers take to build, with many clients connected.

    python scripts/admin_render.py [--clients 10000] [--repeat 20] [--stalled 100]

Runs a rat server *in this process* (its loop turned here), with --admin's
telemetry attached, and a child process that opens `--clients` connections
to it (the child holds the client ends, so that neither process needs more
than about that many descriptors).  `--stalled` of those clients never read
while a publisher sends them lines, so they have backlogs and a lag.  Once
everyone is connected it times, between loop turns, what a scrape costs the
server: rendering /metrics, building and encoding /clients (all of them,
and `?sort=lag&limit=10` as `rat top` asks), and the longest single piece of
the streamed /clients, which is what one loop turn pays when the whole list
is asked for.  Prints min and median in milliseconds.  Server time only: no
HTTP, no socket writes.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from rat.admin import serve_admin
from rat.admin.exposition import clients_stream, clients_view, render_metrics
from rat.config import Config, Limits
from rat.net import open_listeners, raise_nofile_limit
from rat.poller import make_poller
from rat.server import Server

# The child: connect N clients (the first `stalled` with a tiny receive
# buffer), say how many, then read everything the others get, until stdin
# closes.  The stalled ones are never read.
CHILD = r"""
import selectors, socket, sys
port, count, stalled = map(int, sys.argv[1:])
held = []
sel = selectors.DefaultSelector()
sel.register(sys.stdin, selectors.EVENT_READ)
for i in range(count):
    s = socket.socket()
    if i < stalled:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    held.append(s)
    if i >= stalled:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
print(len(held), flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is sys.stdin:
            sys.exit(0)
        try:
            key.fileobj.recv(1 << 16)
        except BlockingIOError:
            pass
"""


def timed(what: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        what()
        out.append((time.perf_counter() - start) * 1000)
    return out


def longest_piece(pieces: Callable[[], Iterator[bytes]], repeat: int) -> list[float]:
    """For each run, the longest time one `next()` of the stream took."""
    out = []
    for _ in range(repeat):
        stream = pieces()
        longest = 0.0
        while True:
            start = time.perf_counter()
            piece = next(stream, None)
            longest = max(longest, time.perf_counter() - start)
            if piece is None:
                break
        out.append(longest * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--stalled", type=int, default=100)
    args = parser.parse_args()
    raise_nofile_limit()
    limits = Limits(max_clients=args.clients + 10, max_pending=1 << 30, write_timeout=3600)
    config = Config(limits=limits)
    server = Server(open_listeners("127.0.0.1", 0), make_poller("auto"), config)
    admin = serve_admin(server, open_listeners("127.0.0.1", 0))
    port = server.acceptors[0].sock.getsockname()[1]  # type: ignore[union-attr]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(port), str(args.clients), str(args.stalled)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    publisher: socket.socket | None = None
    try:
        deadline = time.monotonic() + 120
        while server.clients < args.clients:
            if time.monotonic() > deadline:
                print(f"only {server.clients} of {args.clients} connected", file=sys.stderr)
                return 1
            server.loop.run_once(0.01)
        publisher = socket.create_connection(("127.0.0.1", port))
        publisher.setblocking(False)
        # Lines for everyone until the stalled clients have backlogs.
        line = b"x" * 255 + b"\n"
        for _ in range(400):
            try:
                publisher.send(line * 16)
            except BlockingIOError:
                pass
            server.loop.run_once(0.001)
        backlogs = sum(1 for conn in server.connections() if conn.pending)
        results = {
            "/metrics": timed(lambda: render_metrics(server, admin.telemetry), args.repeat),
            "/clients (all)": timed(
                lambda: json.dumps(clients_view(server, admin.telemetry)), args.repeat
            ),
            "/clients?sort=lag&limit=10": timed(
                lambda: json.dumps(clients_view(server, admin.telemetry, "lag", 10)), args.repeat
            ),
            "/clients, longest piece": longest_piece(
                lambda: clients_stream(server, admin.telemetry), args.repeat
            ),
        }
        print(
            f"{server.clients} clients connected, {backlogs} with a backlog;"
            f" {args.repeat} runs each (milliseconds of server time)"
        )
        for what, times in results.items():
            print(f"  {what:<28} min {min(times):7.2f}   median {statistics.median(times):7.2f}")
        return 0
    finally:
        if publisher is not None:
            publisher.close()
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)
        admin.close()
        server.close()


if __name__ == "__main__":
    sys.exit(main())
