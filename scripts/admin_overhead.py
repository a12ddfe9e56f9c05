#!/usr/bin/env python3
"""What --admin costs the server, measured without the noise of scheduling.

    python scripts/admin_overhead.py [--clients 100] [--senders 5] [--turns 4000]
                                     [--scrape-every 400] [--rounds 6]

An end-to-end benchmark on a busy machine mostly measures the machine: a
server that waits for a CPU gathers more lines per turn and spends less per
line.  Here the workload is made identical for both runs: a server runs in
this process with `--clients` loopback clients; each turn, `--senders` of
them (in turn) send one 64-byte line, the server runs one loop turn (read,
publish, deliver to everyone), and the clients' sockets are drained outside
the measured time.  With --admin, every `--scrape-every` turns a scrape
happens as Prometheus and `rat top` would ask: /metrics and
/clients?sort=lag&limit=10, rendered in full (counted as server time).  At
2,000 lines/s, 400 turns of 5 lines are one second: one scrape per second.

The measure is this thread's CPU time inside the loop turns and the scrapes.
The two servers run side by side in this process, turn by turn, so that a
change in the machine's load hits both alike, and which is built first
alternates between rounds; the median ratio of the rounds is printed (use an
even number of rounds).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from rat.admin import serve_admin
from rat.admin.exposition import clients_view, render_metrics
from rat.config import Config
from rat.net import open_listeners
from rat.poller import make_poller
from rat.server import Server


class Rig:
    """A server (with or without the admin endpoint) and its loopback clients."""

    def __init__(self, admin_on: bool, args: argparse.Namespace) -> None:
        self.args = args
        self.server = server = Server(open_listeners("127.0.0.1", 0), make_poller("auto"), Config())
        self.admin = serve_admin(server, open_listeners("127.0.0.1", 0)) if admin_on else None
        port = server.acceptors[0].sock.getsockname()[1]  # type: ignore[union-attr]
        self.clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.clients)]
        while server.clients < args.clients:
            server.loop.run_once(0.01)
        for sock in self.clients:
            sock.setblocking(False)
        self.spent = 0.0  # server CPU seconds so far
        self._buf = bytearray(1 << 20)

    def turn(self, number: int) -> None:
        """One turn of the workload; only the server's part is counted."""
        args, server, admin = self.args, self.server, self.admin
        for i in range(args.senders):
            self.clients[(number * args.senders + i) % args.clients].send(LINE)
        start = time.thread_time()
        server.loop.run_once(0)
        if admin is not None and number % args.scrape_every == 0:
            render_metrics(server, admin.telemetry).encode()
            json.dumps(clients_view(server, admin.telemetry, "lag", 10)).encode()
        self.spent += time.thread_time() - start
        for sock in self.clients:  # the clients read: not server time
            try:
                while sock.recv_into(self._buf):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        for sock in self.clients:
            sock.close()
        if self.admin is not None:
            self.admin.close()
        self.server.close()


LINE = b"x" * 63 + b"\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--senders", type=int, default=5)
    parser.add_argument("--turns", type=int, default=4000)
    parser.add_argument("--scrape-every", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    ratios = []
    for round_no in range(1, args.rounds + 1):
        # Both servers run side by side, turn by turn (which goes first
        # alternates), so that both meet the machine in the same state.
        # Which one is built first matters by a few per cent (an A/A run of
        # two identical servers shows it), so that alternates too.
        admin_first = round_no % 2 == 0
        rigs = [Rig(admin_first, args), Rig(not admin_first, args)]
        try:
            for number in range(args.turns):
                for rig in rigs if number % 2 else reversed(rigs):
                    rig.turn(number)
        finally:
            for rig in rigs:
                rig.close()
        on, off = (rigs[0].spent, rigs[1].spent) if admin_first else (rigs[1].spent, rigs[0].spent)
        ratios.append(on / off)
        print(f"round {round_no}: without {off:.3f}s  with --admin {on:.3f}s  ratio {on / off:.3f}")
    print(
        f"median ratio {statistics.median(ratios):.3f} over {args.rounds} rounds"
        f" ({args.clients} clients, {args.senders} lines per turn, {args.turns} turns,"
        f" a scrape every {args.scrape_every} turns)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
