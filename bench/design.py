#!/usr/bin/env python3
"""Measure the two fan-out design choices rat makes, side by side, in one run.

rat's server (see `rat.hub` and `Server._deliver`) queues a loop turn's lines
as ONE shared bytes object and sends it to each receiver with ONE syscall.
This script measures what that buys against the obvious alternatives, on real
non-blocking sockets (socketpairs), without any event loop around it:

  per-line send    one send() per line per receiver (what a naive server or
                   an asyncio Protocol writing per line does)
  copy per client  one send per receiver per turn, but each receiver gets its
                   own copy of the joined lines (b"".join per receiver)
  sendmsg list     one sendmsg() per receiver with the turn's line objects as
                   an iovec list (shared, no join)
  shared join      rat: join the turn's lines once, send the same object to
                   every receiver (one send per receiver per turn)

Receivers are drained between turns, outside the timed region.  The result is
CPU nanoseconds per delivered line (process CPU time, so sleeping is not
counted), the median of --repeat runs.

    python bench/design.py                 # 100 receivers, 1/10/50 lines per turn
    python bench/design.py --receivers 1000 --repeat 5
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from collections.abc import Callable

Sender = Callable[[list[socket.socket], list[bytes]], None]


def per_line(socks: list[socket.socket], lines: list[bytes]) -> None:
    for sock in socks:
        for line in lines:
            sock.send(line)


def copy_per_client(socks: list[socket.socket], lines: list[bytes]) -> None:
    for sock in socks:
        sock.send(b"".join(lines))


def sendmsg_list(socks: list[socket.socket], lines: list[bytes]) -> None:
    for sock in socks:
        sock.sendmsg(lines)


def shared_join(socks: list[socket.socket], lines: list[bytes]) -> None:
    data = b"".join(lines)
    for sock in socks:
        sock.send(data)


VARIANTS: dict[str, Sender] = {
    "per-line send": per_line,
    "copy per client": copy_per_client,
    "sendmsg list": sendmsg_list,
    "shared join": shared_join,
}


def drain(socks: list[socket.socket]) -> None:
    for sock in socks:
        try:
            while sock.recv(1 << 20):
                pass
        except BlockingIOError:
            pass


def measure(
    send: Sender,
    pairs: list[tuple[socket.socket, socket.socket]],
    lines_per_turn: int,
    turns: int,
) -> float:
    """CPU ns per delivered line for `turns` turns of `lines_per_turn` 64-byte lines."""
    senders = [a for a, _ in pairs]
    readers = [b for _, b in pairs]
    lines = [b"%06d " % i + b"x" * 56 + b"\n" for i in range(lines_per_turn)]
    cpu = 0
    for _ in range(turns):
        start = time.process_time_ns()
        send(senders, lines)
        cpu += time.process_time_ns() - start
        drain(readers)
    return cpu / (turns * lines_per_turn * len(senders))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receivers", type=int, default=100)
    parser.add_argument("--lines", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    pairs = [socket.socketpair() for _ in range(args.receivers)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    print(f"{args.receivers} receivers, {args.turns} turns, median of {args.repeat} runs")
    print(f"{'lines/turn':>10}  " + "  ".join(f"{name:>16}" for name in VARIANTS))
    for n in args.lines:
        results = {
            name: statistics.median(measure(send, pairs, n, args.turns) for _ in range(args.repeat))
            for name, send in VARIANTS.items()
        }
        base = results["shared join"]
        print(
            f"{n:>10}  " + "  ".join(f"{ns:>8.0f} ns {ns / base:4.1f}x" for ns in results.values())
        )
    for a, b in pairs:
        a.close()
        b.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
