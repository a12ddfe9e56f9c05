#!/usr/bin/env python3
"""What TLS costs rat: the load generator's scenarios over TLS, rat against uvloop.

The generator (`rat bench`, with `--tls` for the TLS servers) drives each
server alone on loopback, one after the other, and measures the server's
CPU time (`--server-pid`).  Servers: `rat` (plain TCP), `rat-tls`
(`--tls-cert/--tls-key`), and bench/peers/asyncio_server.py on uvloop, plain
(`uvloop`) and with an ssl context (`uvloop-tls`), the way a competent
asyncio user adds TLS.  Needs `openssl` (for the certificate) and uvloop (the
`bench` extra).  Prints one line per run and the medians.

    python3 scripts/tls_bench.py                      # chat-2k and fanout-100, 3 reps
    python3 scripts/tls_bench.py --reps 1 --duration 2 --scenario fanout-100
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
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "chat-2k": ["chat", "--clients", "100", "--rate", "2000"],
    "fanout-100": ["fanout", "--publishers", "1", "--subscribers", "100", "--window", "1024"],
}
SERVERS = ("rat", "rat-tls", "uvloop", "uvloop-tls")


def make_certificate(where: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (the README's openssl command)."""
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def wait_listening(proc: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"listening on \S+?:(\d+)", log.read_text(errors="replace"))
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"server did not start: {log.read_text(errors='replace')}")


def start_server(
    kind: str, cert: str, key: str, where: Path
) -> tuple[subprocess.Popen[bytes], int]:
    log = where / f"{kind}.log"
    python = sys.executable
    if kind.startswith("rat"):
        cmd = [python, "-m", "rat", "serve", "--port", "0", "--log-level", "warning"]
        if kind == "rat-tls":
            cmd += ["--tls-cert", cert, "--tls-key", key]
    else:
        cmd = [python, str(ROOT / "bench/peers/asyncio_server.py"), "--uvloop", "--port", "0"]
        if kind == "uvloop-tls":
            cmd += ["--tls-cert", cert, "--tls-key", key]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out, env=env)
    return proc, wait_listening(proc, log)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_once(kind: str, scenario: str, duration: float, *, cert: str, key: str, where: Path) -> Any:
    server, port = start_server(kind, cert, key, where)
    try:
        cmd = [sys.executable, "-m", "rat", "bench", *SCENARIOS[scenario], "--port", str(port),
               "--server-pid", str(server.pid), "--duration", str(duration), "--json",
               "--no-progress", *(["--tls"] if kind.endswith("-tls") else [])]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        out = subprocess.run(cmd, capture_output=True, env=env, timeout=120, check=False)
        if out.returncode not in (0, 1):
            raise RuntimeError(f"bench failed: {out.stderr.decode(errors='replace')}")
        return json.loads(out.stdout)
    finally:
        stop(server)


def bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        cert, key = make_certificate(where)
        results: dict[tuple[str, str], list[Any]] = {}
        for scenario in args.scenario:
            for rep in range(args.reps):
                for kind in args.server:
                    r = run_once(kind, scenario, args.duration, cert=cert, key=key, where=where)
                    results.setdefault((scenario, kind), []).append(r)
                    m = r["server_metrics"]
                    print(
                        f"{scenario:11} {kind:11} rep {rep + 1}: cpu {m['cpu_s']:.3f} s,"
                        f" {m['ns_per_delivered']:.0f} ns/delivered line,"
                        f" {r['delivered_per_s']:.0f} delivered/s, p99"
                        f" {r['latency_us']['p99'] / 1000:.2f} ms, lost {r['lost']},"
                        f" rss {m['rss_kib_peak']} KiB",
                        flush=True,
                    )
        print("\nmedians:")
        for (scenario, kind), runs in results.items():
            cpu = statistics.median(r["server_metrics"]["cpu_s"] for r in runs)
            ns = statistics.median(r["server_metrics"]["ns_per_delivered"] for r in runs)
            rate = statistics.median(r["delivered_per_s"] for r in runs)
            p99 = statistics.median(r["latency_us"]["p99"] for r in runs) / 1000
            print(f"{scenario:11} {kind:11} cpu {cpu:.3f} s  {ns:6.0f} ns/line  "
                  f"{rate:9.0f} lines/s  p99 {p99:.2f} ms")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--server", action="append", choices=SERVERS)
    args = parser.parse_args()
    args.scenario = args.scenario or list(SCENARIOS)
    args.server = args.server or list(SERVERS)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
