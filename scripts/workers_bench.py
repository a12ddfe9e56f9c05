#!/usr/bin/env python3
"""`--workers 2` against `--workers 1` on the fan-out scenario, side by side.

    python scripts/workers_bench.py [--reps 5] [--subscribers 100] [--duration 3]

Each repetition starts `rat serve --workers 1` and `rat serve --workers 2`
(in alternating order) on a free loopback port, runs the same
`rat bench fanout` against each (one publisher, a 1,024-line window, 64-byte
lines), with `--server-pid` naming the workers (the supervisor only
supervises), and prints the medians: delivered lines/s, the workers' CPU and
CPU per delivered line, and the ratio 2/1.

Where things run: the generator is pinned to the last CPU; one worker is
pinned to CPU 0; two workers get every CPU, so on a 2-core machine the
second worker shares a core with the generator.  That is the limit this
measures on a small machine: a second worker needs a core of its own, and
the generator needs one too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
LISTENING = re.compile(r"listening on \S+?:(\d+)")


def start(workers: int, cpus: str) -> tuple[subprocess.Popen[str], int, list[int]]:
    """`rat serve --workers N` on a free port: the process, its port, its workers' PIDs."""
    server = subprocess.Popen(
        ["taskset", "-c", cpus, sys.executable, "-m", "rat", "serve", "--host", "127.0.0.1",
         "--port", "0", "--workers", str(workers), "--log-level", "warning"],
        env=ENV, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stderr is not None
    deadline = time.monotonic() + 20
    port = None
    while port is None and time.monotonic() < deadline:
        line = server.stderr.readline()
        if not line:
            break
        found = LISTENING.search(line)
        if found:
            port = int(found.group(1))
    if port is None:
        server.kill()
        raise SystemExit(f"rat serve --workers {workers} did not say where it listens")
    pids: list[int] = []
    while len(pids) < workers and time.monotonic() < deadline:
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        pids = [int(p) for p in children]
        time.sleep(0.1)
    time.sleep(0.5)  # the workers' mesh links up
    return server, port, pids


def stop(server: subprocess.Popen[str]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run(workers: int, args: argparse.Namespace, last_cpu: int) -> dict[str, float]:
    cpus = "0" if workers == 1 else f"0-{last_cpu}"
    server, port, pids = start(workers, cpus)
    try:
        done = subprocess.run(
            ["taskset", "-c", str(last_cpu), sys.executable, "-m", "ratbench", "fanout",
             "--publishers", "1", "--window", "1024", "--subscribers", str(args.subscribers),
             "--duration", str(args.duration), "--port", str(port),
             "--server-pid", ",".join(map(str, pids)), "--json"],
            env=ENV, capture_output=True, text=True, timeout=args.duration + 120, check=False,
        )  # fmt: skip
    finally:
        stop(server)
    if done.returncode != 0 and not done.stdout.strip():
        raise SystemExit(f"rat bench failed: {done.stderr.strip()[-400:]}")
    result = json.loads(done.stdout)
    sm = result.get("server_metrics") or {}
    return {
        "delivered_per_s": result["delivered_per_s"],
        "cpu": sm.get("cpu_busy") or 0.0,
        "ns_per_delivered": sm.get("ns_per_delivered") or 0.0,
        "anomalies": result["anomalies"] + result["disconnected"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    last_cpu = (os.cpu_count() or 2) - 1
    if last_cpu < 1:
        raise SystemExit("needs two CPUs at least")
    got: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for rep in range(args.reps):
        for workers in (1, 2) if rep % 2 == 0 else (2, 1):
            got[workers].append(run(workers, args, last_cpu))
            one = got[workers][-1]
            print(f"rep {rep + 1} --workers {workers}: {one['delivered_per_s']:,.0f} lines/s,"
                  f" CPU {one['cpu']:.0%}, {one['ns_per_delivered']:.0f} ns/line,"
                  f" {one['anomalies']:.0f} anomalies", flush=True)  # fmt: skip

    def med(workers: int, key: str) -> float:
        return statistics.median(r[key] for r in got[workers])

    print(f"\nfan-out 1 -> {args.subscribers}, medians of {args.reps}:")
    for workers in (1, 2):
        print(f"  --workers {workers}: {med(workers, 'delivered_per_s'):,.0f} delivered lines/s,"
              f" workers' CPU {med(workers, 'cpu'):.0%} of one core,"
              f" {med(workers, 'ns_per_delivered'):.0f} ns per delivered line,"
              f" {sum(r['anomalies'] for r in got[workers]):.0f} anomalies")  # fmt: skip
    ratio = med(2, "delivered_per_s") / med(1, "delivered_per_s")
    print(f"  throughput --workers 2 / --workers 1: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
