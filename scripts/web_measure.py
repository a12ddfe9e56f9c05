#!/usr/bin/env python3
"""Measure rat's WebSocket path against its TCP path: idle memory and fan-out CPU.

    python scripts/web_measure.py idle   --connections 10000 [--proto ws|tcp]
    python scripts/web_measure.py fanout --receivers 1000 --lines 20000 [--proto ws|tcp]

Each run starts its own `rat serve --port 0 --web 0` (from this checkout's
src/), connects from this process (non-blocking sockets; the server runs in
another process), and reads the server's CPU time and memory from /proc.

idle:   RSS before any client, then after N clients are connected (a
        WebSocket one has done its handshake and one ping/pong, so its frame
        parser was made and dropped again), minus the first: bytes per client.
fanout: one TCP sender, N receivers that only drain; L lines sent in paced
        bursts; server CPU time per delivered line (L x N deliveries).

A measuring script, not a benchmark suite: the load generator (`rat bench`)
is the reference; this is how the numbers in the web branch's report were
taken.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\S+):(\d+), web (\S+):(\d+)")
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
PING = b"\x89\x80\x00\x00\x00\x00"  # a masked ping (key 0) with no payload
PONG = b"\x8a\x00"


def start_server(*flags: str) -> tuple[subprocess.Popen[bytes], int, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rat", "serve", "--port", "0", "--web", "0", *flags],
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    match = LISTENING.search(line)
    if not match:
        proc.kill()
        raise SystemExit(f"rat did not start: {line}")
    return proc, int(match.group(2)), int(match.group(4))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def drain_until(socks: list[socket.socket], want: dict[int, int], timeout: float) -> None:
    """Read from every socket until each has given `want[fd]` bytes (then it is left alone)."""
    got = dict.fromkeys(want, 0)
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            if want[sock.fileno()]:
                sel.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        left = sum(1 for n in want.values() if n)
        while left and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    data = ready.recv(1 << 18)
                except BlockingIOError:
                    continue
                fd = ready.fileno()
                got[fd] += len(data)
                if not data or got[fd] >= want[fd]:
                    sel.unregister(ready)
                    left -= 1
        if left:
            raise SystemExit(f"{left} sockets did not get all their bytes in {timeout}s")


def response_size(port: int) -> int:
    """The length of rat's 101 response (the same for every handshake)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(HANDSHAKE)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
    return len(data)


def connect_all(count: int, port: int, ws: bool) -> list[socket.socket]:
    response = response_size(port) if ws else 0
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        if ws:
            sock.send(HANDSHAKE)
        socks.append(sock)
    if ws:  # every 101, then a ping each and its pong
        drain_until(socks, {s.fileno(): response for s in socks}, 60)
        for sock in socks:
            sock.send(PING)
        drain_until(socks, {s.fileno(): len(PONG) for s in socks}, 60)
    return socks


def idle(args: argparse.Namespace) -> None:
    proc, tcp_port, web_port = start_server("--max-clients", str(args.connections + 10))
    try:
        time.sleep(0.5)
        before = rss_bytes(proc.pid)
        ws = args.proto == "ws"
        socks = connect_all(args.connections, web_port if ws else tcp_port, ws)
        if not ws:  # make sure the server accepted them all: one line reaches every one
            probe = socket.create_connection(("127.0.0.1", tcp_port))
            probe.sendall(b"x\n")
            drain_until(socks, {s.fileno(): 2 for s in socks}, 60)
            probe.close()
        time.sleep(args.hold)
        after = rss_bytes(proc.pid)
        per = (after - before) / args.connections
        print(
            f"idle {args.proto}: {args.connections} connections, server RSS"
            f" {before / 2**20:.1f} -> {after / 2**20:.1f} MiB: {per / 1024:.2f} KiB each"
        )
        for sock in socks:
            sock.close()
    finally:
        proc.terminate()
        proc.wait(30)


def fanout(args: argparse.Namespace) -> None:
    proc, tcp_port, web_port = start_server("--max-clients", str(args.receivers + 10))
    try:
        ws = args.proto == "ws"
        receivers = connect_all(args.receivers, web_port if ws else tcp_port, ws)
        sender = socket.create_connection(("127.0.0.1", tcp_port))
        line = b"x" * (args.size - 8)
        frame_extra = 2 if ws else 0  # a short text frame's header replaces the newline
        lines = [b"%07d " % i + line + b"\n" for i in range(args.lines)]
        # Warm up (and make sure every receiver is a member): one line to all.
        sender.sendall(b"warm\n")
        warm = (2 + 4) if ws else 5
        drain_until(receivers, {s.fileno(): warm for s in receivers}, 60)
        per_receiver = sum(len(x) - 1 + frame_extra if ws else len(x) for x in lines)
        cpu0 = cpu_seconds(proc.pid)
        start = time.monotonic()
        burst = args.burst
        for i in range(0, len(lines), burst):
            sender.sendall(b"".join(lines[i : i + burst]))
            time.sleep(args.pause)
        drain_until(receivers, {s.fileno(): per_receiver for s in receivers}, 300)
        elapsed = time.monotonic() - start
        cpu = cpu_seconds(proc.pid) - cpu0
        deliveries = args.lines * args.receivers
        print(
            f"fanout {args.proto}: {args.lines} lines x {args.receivers} receivers in"
            f" {elapsed:.1f}s; server CPU {cpu:.2f}s = {cpu / deliveries * 1e9:.0f} ns"
            f" per delivered line"
        )
        sender.close()
        for sock in receivers:
            sock.close()
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p_idle = commands.add_parser("idle")
    p_idle.add_argument("--connections", type=int, default=10000)
    p_idle.add_argument("--proto", choices=("ws", "tcp"), default="ws")
    p_idle.add_argument("--hold", type=float, default=2.0)
    p_fan = commands.add_parser("fanout")
    p_fan.add_argument("--receivers", type=int, default=1000)
    p_fan.add_argument("--lines", type=int, default=20000)
    p_fan.add_argument("--size", type=int, default=64, help="bytes per line, newline included")
    p_fan.add_argument("--burst", type=int, default=1, help="lines per send")
    p_fan.add_argument("--pause", type=float, default=0.001, help="seconds between sends")
    p_fan.add_argument("--proto", choices=("ws", "tcp"), default="ws")
    args = parser.parse_args()
    raise_nofile()
    idle(args) if args.command == "idle" else fanout(args)


if __name__ == "__main__":
    main()
