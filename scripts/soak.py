#!/usr/bin/env python3
"""Bounded soak test for rat: a mix of good and bad clients over loopback.

    python scripts/soak.py [--duration 60] [--port PORT]

Without `--port` it starts its own server (`python -m rat serve` with
PYTHONPATH=src, a small `--max-pending` and `--write-timeout 5`) and reports
the server's log, counters, peak RSS and CPU.  With `--port` it drives a server
already listening on 127.0.0.1:PORT and can only report what the clients saw.

The clients, each a thread (or two), all stopped when the duration is up:

- well-behaved: join at staggered times, send numbered lines at a moderate
  rate, read everything as fast as it comes;
- slow readers: a tiny receive buffer, read only every few seconds; the server
  should drop them (slow consumer or write timeout) and they reconnect;
- flooders: send bursts of lines at a fixed rate and read (and discard);
- overlong senders: send a line over --max-line, whole or growing, expect
  `ERR line too long` and EOF, reconnect;
- resetters: send a few lines and a fragment, then close with an RST
  (SO_LINGER 0), reconnect.

How "lines lost" is exact.  A well-behaved receiver R notes the time it first
receives any byte: the server had R registered by then, so every line another
well-behaved client S *started* sending after that time must reach R (R never
leaves before the end).  At the end each S sends a DONE line after its last
numbered line; R waits until it has DONE from every S (per-sender order means
everything S sent before has arrived or never will).  Lost = lines S started
after R registered that R did not receive.  A well-behaved client that is
disconnected, a line delivered twice or out of order, a corrupted line or any
byte of an overlong line reaching anyone also fails the run (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\S+):(\d+)")
ERR_TOO_LONG = b"ERR line too long\n"
REASONS = ("slow consumer", "write timeout", "line too long")


@dataclass
class Totals:
    """Client-side event counts, shared by all worker threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    events: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.events[name] += n


def sleep_until(stop: threading.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; return True if `stop` was set meanwhile."""
    return stop.wait(seconds)


def wb_line(ident: int, seq: int) -> bytes:
    """Well-behaved line: its content is a function of (ident, seq), so corruption shows."""
    return b"W%02d %08d " % (ident, seq) + b"w" * (seq % 97 + 10) + b"\n"


# ---------------------------------------------------------------- well-behaved


class WellBehaved:
    """A client that sends numbered lines and reads everything, fast."""

    def __init__(self, ident: int, addr: tuple[str, int], totals: Totals) -> None:
        self.ident = ident
        self.addr = addr
        self.totals = totals
        self.sock: socket.socket | None = None
        self.send_times: list[float] = []  # index = seq; time the send started
        self.registered_at: float | None = None  # first byte received
        self.received: dict[int, list[int]] = {}  # sender ident -> seqs, arrival order
        self.done_from: set[int] = set()
        self.disconnected: str | None = None
        self.corrupt = 0
        self.leaked_overlong = 0
        self.closing = threading.Event()

    def connect(self) -> None:
        self.sock = socket.create_connection(self.addr, timeout=10)
        self.sock.settimeout(0.5)

    def send_loop(self, stop_sending: threading.Event, rng: random.Random) -> None:
        assert self.sock is not None
        try:
            while not stop_sending.is_set():
                seq = len(self.send_times)
                self.send_times.append(time.monotonic())
                try:
                    self.sock.sendall(wb_line(self.ident, seq))
                except OSError:
                    self.send_times.pop()  # possibly partial: not counted as sent
                    raise
                if sleep_until(stop_sending, rng.uniform(0.005, 0.04)):
                    break
            self.sock.sendall(b"D%02d %08d\n" % (self.ident, len(self.send_times)))
        except OSError as exc:
            self.disconnected = self.disconnected or f"send failed: {exc}"

    def read_loop(self) -> None:
        assert self.sock is not None
        buf = b""
        while not self.closing.is_set():
            try:
                chunk = self.sock.recv(1 << 18)
            except TimeoutError:
                continue
            except OSError as exc:
                self.disconnected = self.disconnected or f"recv failed: {exc}"
                return
            if not chunk:
                self.disconnected = self.disconnected or "EOF from server"
                return
            if self.registered_at is None:
                self.registered_at = time.monotonic()
            buf += chunk
            end = buf.rfind(b"\n")
            if end < 0:
                continue
            for line in buf[:end].split(b"\n"):
                self.on_line(line + b"\n")
            buf = buf[end + 1 :]

    def on_line(self, line: bytes) -> None:
        kind = line[:1]
        if kind == b"W":
            try:
                sender, seq = int(line[1:3]), int(line[4:12])
            except ValueError:
                self.corrupt += 1
                return
            if line != wb_line(sender, seq):
                self.corrupt += 1
                return
            self.received.setdefault(sender, []).append(seq)
        elif kind == b"D":
            self.done_from.add(int(line[1:3]))
        elif kind == b"L":
            self.leaked_overlong += 1


def lost_lines(clients: list[WellBehaved]) -> tuple[int, int, int, list[str]]:
    """(expected, lost, out-of-order/duplicate) over all receiver/sender pairs, and details."""
    expected_total = lost_total = disorder = 0
    details: list[str] = []
    for r in clients:
        if r.registered_at is None:
            details.append(f"W{r.ident:02d} never received anything")
            continue
        for s in clients:
            if s is r:
                continue
            expected = {i for i, t in enumerate(s.send_times) if t > r.registered_at}
            got = r.received.get(s.ident, [])
            if any(b <= a for a, b in itertools.pairwise(got)):
                disorder += 1
                details.append(f"W{r.ident:02d} got W{s.ident:02d}'s lines out of order")
            missing = expected - set(got)
            expected_total += len(expected)
            lost_total += len(missing)
            if missing:
                details.append(
                    f"W{r.ident:02d} missed {len(missing)} of W{s.ident:02d}'s lines "
                    f"(first seq {min(missing)})"
                )
    return expected_total, lost_total, disorder, details


# ---------------------------------------------------------------- misbehaving clients


def drain(sock: socket.socket, scratch: bytearray) -> bool:
    """Read whatever is available without blocking; False on EOF or reset."""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)  # MSG_DONTWAIT alone would still wait: Python polls first
    try:
        while True:
            try:
                n = sock.recv_into(scratch)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if n == 0:
                return False
    finally:
        sock.settimeout(timeout)


def slow_reader(addr: tuple[str, int], stop: threading.Event, totals: Totals, seed: int) -> None:
    """Tiny receive buffer, reads rarely and little. Expects to be dropped.

    Each wake-up (every 5.5-9 s, longer than the soak server's write timeout)
    reads at most 64 KiB, so its buffers stay full and the server queues for
    it: a flood pushes it past --max-pending, a calm spell lets the write
    timeout fire.  Every fourth wake-up it reads greedily for up to a second,
    enough to reach the EOF of a drop through the kernel buffers.
    """
    rng = random.Random(seed)
    scratch = bytearray(1 << 16)
    while not stop.is_set():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            sock.connect(addr)
            totals.add("slow reader connects")
            wakeups = 0
            while not sleep_until(stop, rng.uniform(5.5, 9.0)):
                wakeups += 1
                budget = float("inf") if wakeups % 4 == 0 else 65536
                deadline = time.monotonic() + 1.0
                sock.settimeout(0.1)
                alive = True
                while budget > 0 and time.monotonic() < deadline:
                    try:
                        n = sock.recv_into(scratch, int(min(budget, len(scratch))))
                    except TimeoutError:
                        break
                    except OSError:
                        alive = False
                        break
                    if n == 0:
                        alive = False
                        break
                    budget -= n
                if not alive:
                    totals.add("slow readers dropped")
                    break
        except OSError:
            totals.add("slow reader errors")
        finally:
            sock.close()


def stalled_reader(
    addr: tuple[str, int], stop: threading.Event, totals: Totals, seed: int, burst: int
) -> None:
    """Never reads; a companion socket sends one `burst` of lines right after it joins.

    The burst is a little more than the kernel buffers absorb for a peer that
    does not read (about 3 MB over loopback), so the server queues the rest
    and, in a calm spell, drops the client by the write timeout.  After 20 s it
    reads greedily to see whether it was dropped, then starts over.
    """
    rng = random.Random(seed)
    scratch = bytearray(1 << 16)
    line = b"T" + b"t" * 1022 + b"\n"
    while not stop.is_set():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            sock.connect(addr)
            totals.add("stalled reader connects")
            with socket.create_connection(addr, timeout=10) as companion:
                time.sleep(0.2)  # let the server register both
                piece = line * 64  # paced, like a flooder: 64 KiB every 5 ms
                for _ in range(burst // len(piece)):
                    companion.sendall(piece)
                    time.sleep(0.005)
            # (The companion is gone: it does not read either, and would be dropped too.)
            if sleep_until(stop, rng.uniform(20.0, 25.0)):
                break
            sock.settimeout(0.2)
            while True:
                if sock.recv_into(scratch) == 0:
                    totals.add("stalled readers dropped")
                    break
        except TimeoutError:
            totals.add("stalled readers not dropped")
        except OSError:
            totals.add("stalled readers dropped")
        finally:
            sock.close()


def flooder(
    ident: int,
    addr: tuple[str, int],
    stop: threading.Event,
    totals: Totals,
    seed: int,
    *,
    rate: float,
    burst_size: int,
) -> None:
    """Send bursts of lines at about `rate` bytes/s; read and discard everything.

    It floods for a few seconds, then rests for a few: while it rests, slow
    readers have little queued and are dropped by the write timeout instead.
    """
    rng = random.Random(seed)
    scratch = bytearray(1 << 18)
    seq = 0
    phase_end = time.monotonic() + rng.uniform(2.0, 4.0)
    phase_rate = rate * rng.uniform(0.1, 1.0)  # varies, so some phases overflow slow readers
    while not stop.is_set():
        try:
            sock = socket.create_connection(addr, timeout=10)
        except OSError:
            totals.add("flooder connect errors")
            sleep_until(stop, 0.5)
            continue
        totals.add("flooder connects")
        try:
            while not stop.is_set():
                burst = bytearray()
                while len(burst) < burst_size:
                    size = rng.randint(16, 2048)
                    burst += b"F%02d %08d " % (ident, seq) + b"f" * size + b"\n"
                    seq += 1
                started = time.monotonic()
                if started > phase_end:  # rest, still reading
                    rest_end = started + rng.uniform(6.0, 9.0)
                    while time.monotonic() < rest_end and not stop.is_set():
                        if not drain(sock, scratch):
                            raise ConnectionResetError("dropped while resting")
                        sleep_until(stop, 0.05)
                    phase_end = time.monotonic() + rng.uniform(2.0, 4.0)
                    phase_rate = rate * rng.uniform(0.1, 1.0)
                    started = time.monotonic()
                sock.sendall(burst)
                totals.add("flooder bytes", len(burst))
                if not drain(sock, scratch):
                    totals.add("flooders dropped")
                    break
                sleep_until(stop, max(0.0, len(burst) / phase_rate - (time.monotonic() - started)))
        except OSError:
            totals.add("flooders dropped")
        finally:
            sock.close()


def overlong_sender(
    addr: tuple[str, int], stop: threading.Event, totals: Totals, seed: int, max_line: int
) -> None:
    """Send a line over the limit (whole or growing); expect ERR line too long, then EOF."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            sock = socket.create_connection(addr, timeout=10)
        except OSError:
            totals.add("overlong connect errors")
            sleep_until(stop, 0.5)
            continue
        try:
            if rng.random() < 0.5:
                sock.sendall(b"L" * max_line + b"\n")  # one byte over
                totals.add("overlong sent whole")
            else:
                totals.add("overlong sent growing")
                with contextlib.suppress(OSError):  # the server may close us mid-send
                    for _ in range(max_line // 8192 + 2):
                        sock.sendall(b"L" * 8192)
                        time.sleep(0.005)
            # Read (and discard) the broadcast traffic until EOF; the ERR line comes last.
            tail = b""
            sock.settimeout(10)
            while True:
                chunk = sock.recv(1 << 18)
                if not chunk:
                    break
                tail = (tail + chunk)[-64:]
            if tail.endswith(ERR_TOO_LONG):
                totals.add("overlong ERR received")
            else:
                totals.add("overlong closed without ERR")
        except TimeoutError:
            totals.add("overlong not closed within 10s")
        except OSError:
            totals.add("overlong reset before ERR")
        finally:
            sock.close()
        sleep_until(stop, rng.uniform(0.3, 1.0))


def resetter(
    ident: int, addr: tuple[str, int], stop: threading.Event, totals: Totals, seed: int
) -> None:
    """A few lines and a fragment, then an RST; reconnect."""
    rng = random.Random(seed)
    seq = 0
    while not stop.is_set():
        try:
            sock = socket.create_connection(addr, timeout=10)
            for _ in range(rng.randint(0, 3)):
                sock.sendall(b"R%02d %08d line\n" % (ident, seq))
                seq += 1
            sock.sendall(b"R%02d %08d fragment without newline" % (ident, seq))
            seq += 1
            sleep_until(stop, rng.uniform(0.0, 0.3))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            totals.add("resets")
        except OSError:
            totals.add("resetter errors")
        sleep_until(stop, rng.uniform(0.05, 0.4))


# ---------------------------------------------------------------- the server


class Server:
    """Our own `python -m rat serve` child, its stderr collected by a thread."""

    def __init__(self, max_pending: int, write_timeout: float) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        args = [
            sys.executable,
            "-m",
            "rat",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--max-pending",
            str(max_pending),
            "--write-timeout",
            str(write_timeout),
            "--log-level",
            "info",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            errors="replace",
        )
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        self.port = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            m = LISTENING.search(line)
            if m:
                self.port = int(m.group(2))
                break
        if not self.port:
            self.proc.kill()
            self.proc.wait()
            sys.exit(f"rat did not start:\n{''.join(self.lines)}")
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        self.lines.extend(self.proc.stderr)

    def status(self, key: str) -> str:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return line.split(":", 1)[1].strip()
        return "?"

    def stop(self, timeout: float = 30.0) -> tuple[int, float, float]:
        """SIGTERM, wait; return (exit status, user CPU s, system CPU s) over its whole life."""
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                pid, status, usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.05)
        code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = code
        self.reader.join(5)
        return code, usage.ru_utime, usage.ru_stime


# ---------------------------------------------------------------- main


def main() -> int:
    """Parse arguments, run the soak, print the report; 0 if it passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of mixed load")
    parser.add_argument("--port", type=int, help="use a server already on 127.0.0.1:PORT")
    parser.add_argument("--max-pending", type=int, default=1 << 20)
    parser.add_argument("--write-timeout", type=float, default=5.0)
    parser.add_argument("--max-line", type=int, default=65536, help="the server's --max-line")
    parser.add_argument("--well-behaved", type=int, default=6)
    parser.add_argument("--slow-readers", type=int, default=3)
    parser.add_argument("--stalled-readers", type=int, default=1)
    parser.add_argument(
        "--stall-burst", type=int, default=3_500_000, help="bytes sent at each stalled reader"
    )
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--flood-rate", type=float, default=2e6, help="bytes/s per flooder")
    parser.add_argument("--flood-burst", type=int, default=65536, help="bytes per sendall")
    parser.add_argument("--resetters", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--server-log", type=Path, help="write the server's stderr to this file")
    args = parser.parse_args()

    server = None if args.port else Server(args.max_pending, args.write_timeout)
    try:
        return soak(args, server)
    finally:
        if server is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def soak(args: argparse.Namespace, server: Server | None) -> int:
    """Run the mixed load for args.duration seconds and report."""
    addr = ("127.0.0.1", args.port or (server.port if server else 0))
    totals = Totals()
    stop = threading.Event()  # stops the misbehaving clients
    stop_sending = threading.Event()  # stops the well-behaved senders
    rng = random.Random(args.seed)
    began = time.monotonic()
    print(f"soak: {args.duration:.0f}s against 127.0.0.1:{addr[1]}", flush=True)

    threads: list[threading.Thread] = []

    def spawn(target: Callable[..., None], *targs: object) -> None:
        t = threading.Thread(target=target, args=targs, daemon=True)
        t.start()
        threads.append(t)

    for _ in range(args.slow_readers):
        spawn(slow_reader, addr, stop, totals, rng.randrange(1 << 30))
    for _ in range(args.stalled_readers):
        spawn(stalled_reader, addr, stop, totals, rng.randrange(1 << 30), args.stall_burst)
    for i in range(args.flooders):
        spawn(
            functools.partial(flooder, rate=args.flood_rate, burst_size=args.flood_burst),
            i,
            addr,
            stop,
            totals,
            rng.randrange(1 << 30),
        )
    spawn(overlong_sender, addr, stop, totals, rng.randrange(1 << 30), args.max_line)
    for i in range(args.resetters):
        spawn(resetter, i, addr, stop, totals, rng.randrange(1 << 30))

    # Well-behaved clients join over the first fifth of the run and stay to the end.
    good: list[WellBehaved] = []
    good_threads: list[threading.Thread] = []
    joins = sorted(rng.uniform(0, args.duration / 5) for _ in range(args.well_behaved))
    for i, at in enumerate(joins):
        time.sleep(max(0.0, began + at - time.monotonic()))
        client = WellBehaved(i, addr, totals)
        client.connect()
        good.append(client)
        for target, targs in (
            (client.read_loop, ()),
            (client.send_loop, (stop_sending, random.Random(rng.randrange(1 << 30)))),
        ):
            t = threading.Thread(target=target, args=targs, daemon=True)
            t.start()
            good_threads.append(t)

    time.sleep(max(0.0, began + args.duration - time.monotonic()))
    rss = server.status("VmHWM") if server else "?"

    # Wind down: misbehaving clients first, then DONE lines, then wait for them all.
    stop.set()
    for t in threads:
        t.join(15)
    stop_sending.set()
    deadline = time.monotonic() + 30
    others = {c.ident for c in good}
    while time.monotonic() < deadline:
        if all(c.disconnected or c.done_from >= others - {c.ident} for c in good):
            break
        time.sleep(0.05)
    for c in good:
        c.closing.set()
    for t in good_threads:
        t.join(5)
    for c in good:
        if c.sock is not None:
            c.sock.close()

    expected, lost, disorder, details = lost_lines(good)
    sent = sum(len(c.send_times) for c in good)
    corrupt = sum(c.corrupt for c in good)
    leaked = sum(c.leaked_overlong for c in good)
    dropped_good = [f"W{c.ident:02d}: {c.disconnected}" for c in good if c.disconnected]
    missing_done = [c.ident for c in good if c.done_from < others - {c.ident}]

    print(f"well-behaved clients: {len(good)}, lines sent {sent}, deliveries expected {expected}")
    print(f"lines lost by well-behaved clients: {lost}")
    print(f"out of order: {disorder}, corrupt lines: {corrupt}, overlong bytes leaked: {leaked}")
    print(f"well-behaved clients disconnected: {len(dropped_good)} {dropped_good or ''}")
    if missing_done:
        print(f"well-behaved clients missing DONE lines: {missing_done}")
    for d in details[:20]:
        print(f"  {d}")
    print("client-side events:")
    for name, n in sorted(totals.events.items()):
        print(f"  {name}: {n}")

    status_ok = True
    if server is not None:
        code, utime, stime = server.stop()
        log = "".join(server.lines)
        if args.server_log:
            args.server_log.write_text(log)
        print("server disconnects by reason (from its log):")
        for reason in REASONS:
            n = sum(1 for line in server.lines if reason in line and "counters:" not in line)
            print(f"  {reason}: {n}")
        counters = [line.strip() for line in server.lines if "counters:" in line]
        print(f"server summary: {counters[-1] if counters else '(no counters: line)'}")
        print(f"server peak RSS (VmHWM): {rss}")
        print(f"server CPU: {utime + stime:.1f}s (user {utime:.1f}s, system {stime:.1f}s)")
        print(f"server exit status: {code}")
        if "Traceback" in log:
            print("server log has a Traceback:")
            print(log[log.index("Traceback") :][:3000])
            status_ok = False
        status_ok = status_ok and code == 0

    failed = lost or disorder or corrupt or leaked or dropped_good or missing_done
    print("RESULT:", "FAIL" if failed or not status_ok else "OK")
    return 1 if failed or not status_ok else 0


if __name__ == "__main__":
    sys.exit(main())
