"""Helpers for the `rat bench` tests: running the generator, peers, a faulty relay.

`run_ratbench(*argv)` runs `python -m ratbench` as a child process (bounded by
a timeout); `bench(port, ...)` does that with `--json` and returns the
summary.  `PeerProcess` runs a peer server from bench/peers; `FaultyRelay` is
a small relay thread that can drop, swap, duplicate or corrupt lines.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from conftest import terminate

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PEERS = ROOT / "bench" / "peers"


def run_ratbench(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """`python -m ratbench *argv` with this checkout's sources; never hangs past `timeout`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "ratbench", *argv],
        env=env,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def bench(
    port: int | None, *argv: str, pid: int | None = None, timeout: float = 60
) -> dict[str, Any]:
    """Run `python -m ratbench ... --json`; return the summary (and check the exit code).

    `port` None: `argv` says where the server is.
    """
    cmd = [*argv, *([] if port is None else ["--port", str(port)]), "--json"]
    if pid is not None:
        cmd += ["--server-pid", str(pid)]
    proc = run_ratbench(*cmd, timeout=timeout)
    assert proc.returncode in (0, 1), proc.stderr.decode(errors="replace")
    summary: dict[str, Any] = json.loads(proc.stdout)
    assert proc.returncode == (0 if summary["anomalies"] == 0 else 1)
    return summary


def assert_clean(s: dict[str, Any]) -> None:
    bad = {
        k: s[k]
        for k in ("lost", "reordered", "duplicated", "malformed", "echoed", "disconnected")
        if s[k]
    }
    assert not bad, (bad, s)
    assert s["delivered"] == s["expected"] > 0
    assert s["complete"]
    assert s["latency_samples"] > 0


CHAT = ["chat", "--clients", "5", "--rate", "400", "--duration", "1", "--grace", "5"]
FANOUT = ["fanout", "--subscribers", "20", "--duration", "1", "--grace", "5"]
FANOUT2 = ["fanout", "--publishers", "3", "--subscribers", "8", "--workers", "2", "--duration", "1"]
IDLE = ["idle", "--connections", "200", "--hold", "0.3"]
IDS = ["chat", "fanout", "fanout-3-publishers-2-workers", "idle"]


class PeerProcess:
    """A peer server (`bench/peers/...`) as a child process.

    Its stderr is read to the end by a thread (the last lines are kept in
    `log`): a peer that logs a lot must never block on a full pipe.
    """

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"peer did not start: {line!r}")
        self.port = int(line.split(",")[0].rsplit(":", 1)[1])  # the first address named
        self.log: list[bytes] = []
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log = [*self.log[-50:], line]

    def stop(self) -> None:
        terminate(self.proc)
        if hasattr(self, "reader"):
            self.reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


Fault = Callable[[int, int, bytes], list[bytes]]


def read_or_drop(
    sel: selectors.BaseSelector, clients: dict[socket.socket, Any], sock: socket.socket
) -> bytes:
    """What a relay's client sent; b"" once it is gone (then it is dropped and closed)."""
    try:
        data = sock.recv(65536)
    except OSError:
        data = b""
    if not data:
        sel.unregister(sock)
        del clients[sock]
        sock.close()
    return data


class FaultyRelay:
    """A small relay (thread) that passes each line through `fault(receiver, n, line)`.

    `receiver` numbers connections in accept order (0 is the generator's probe,
    which connects first; in chat 1 is the reference subscriber), `n` counts
    the lines sent to that receiver so far (0 is the sync line), and the
    returned lines are sent instead.  Everything else follows the protocol.
    `host` may be "::1" (IPv6).
    """

    def __init__(self, fault: Fault, echo: bool = False, host: str = "127.0.0.1") -> None:
        self.fault = fault
        self.echo = echo
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family)
        self.port = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        self.sel.register(self.listener, selectors.EVENT_READ)
        clients: dict[socket.socket, list[Any]] = {}  # sock -> [number, lines sent, partial]
        accepted = 0
        while not self.stop_flag.is_set():
            for key, _ in self.sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    conn, _ = self.listener.accept()
                    clients[conn] = [accepted, 0, b""]
                    accepted += 1
                    self.sel.register(conn, selectors.EVENT_READ)
                    continue
                data = read_or_drop(self.sel, clients, sock)
                if not data:
                    continue
                state = clients[sock]
                buf = state[2] + data
                *lines, state[2] = buf.split(b"\n")
                for line in lines:
                    for other, ostate in list(clients.items()):
                        if other is sock and not self.echo:
                            continue
                        out = self.fault(ostate[0], ostate[1], line + b"\n")
                        ostate[1] += 1
                        try:
                            other.sendall(b"".join(out))
                        except OSError:
                            pass
        for sock in clients:
            sock.close()
        self.listener.close()
        self.sel.close()

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(10)


def faulty_relays() -> Iterator[Callable[..., FaultyRelay]]:
    """The body of a `faulty` fixture: a factory of relays, all stopped at the end."""
    relays: list[FaultyRelay] = []

    def start(fault: Fault, echo: bool = False, host: str = "127.0.0.1") -> FaultyRelay:
        relay = FaultyRelay(fault, echo, host)
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        relay.stop()


class ClusterRelay:
    """Two (or more) relay "nodes" of one broadcast, in one thread, like a Redis backplane.

    A line from a client of node A reaches the other clients of A at once and
    the clients of every other node `delay` seconds later, in a batch, so two
    senders on different nodes arrive in different orders on different nodes
    (the SPEC allows that); each sender's order is kept everywhere.  With
    `per_receiver=True` every receiver gets the remote batches at times of
    its own, so not even the receivers of one node share an order.
    """

    def __init__(self, nodes: int = 2, delay: float = 0.004, per_receiver: bool = False) -> None:
        self.delay = delay
        self.per_receiver = per_receiver
        self.listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(nodes)]
        self.ports = [lst.getsockname()[1] for lst in self.listeners]
        self.sel = selectors.DefaultSelector()
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        for node, listener in enumerate(self.listeners):
            self.sel.register(listener, selectors.EVENT_READ, node)
        # sock -> [node, partial line, remote lines waiting, when they are due]
        clients: dict[socket.socket, list[Any]] = {}
        clock = time.monotonic
        while not self.stop_flag.is_set():
            for key, _ in self.sel.select(0.001):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock in self.listeners:
                    conn, _ = sock.accept()
                    clients[conn] = [key.data, b"", [], 0.0]
                    self.sel.register(conn, selectors.EVENT_READ)
                    continue
                data = read_or_drop(self.sel, clients, sock)
                if not data:
                    continue
                state = clients[sock]
                *lines, state[1] = (state[1] + data).split(b"\n")
                if not lines:
                    continue
                block = b"".join(line + b"\n" for line in lines)
                now = clock()  # one due time for a node's receivers: they keep one order
                for other, ostate in list(clients.items()):
                    if other is sock:
                        continue
                    if ostate[0] == state[0]:
                        self._send(other, block)
                    else:
                        if not ostate[2]:
                            jitter = random.random() if self.per_receiver else 0.5
                            ostate[3] = now + self.delay * (0.5 + jitter)
                        ostate[2].append(block)
            now = clock()
            for other, ostate in list(clients.items()):
                if ostate[2] and now >= ostate[3]:
                    self._send(other, b"".join(ostate[2]))
                    ostate[2] = []
        for sock in clients:
            sock.close()
        for listener in self.listeners:
            listener.close()
        self.sel.close()

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(10)
