"""The `connect` scenario: connection churn, and what it costs a newcomer.

Theory of operation
===================
Two kinds of generator process run side by side:

- `--workers` *churn* processes, each a loop of non-blocking connects with
  `--in-flight` of them pending at once.  As soon as one completes it is
  closed: with `--close reset` by SO_LINGER 0 (the kernel sends RST, and the
  server may find the connection dead before or after accepting it); with
  `--close fin` by an ordinary close (the server reads EOF).  A connect still
  pending after `CONNECT_TIMEOUT_S` (its SYN unanswered: a full backlog) is
  given up and counted.  The loop stops at `--duration` or after
  `--max-connects` connections in total.
- One *newcomer* process: it keeps a *beacon* connection and, every
  `--newcomer-every` ms, opens one well-behaved newcomer: connect, then wait
  for the first broadcast line.  The beacon sends a line the moment the
  newcomer's connect completes and again every `--beacon-ms` until the
  newcomer got one (a line relayed before the server registered the
  newcomer never reaches it, so the beacon repeats).  The newcomer's times
  are from the start of its connect() to the completed handshake (*connect*)
  and to its first complete, well-formed line (*first line*).  A newcomer
  that is refused (`ERR ...` or closed) or gets nothing within
  `--newcomer-timeout` counts as failed, an anomaly (exit status 1).

Completed connects per second is what the server's accept loop sustains: a
server that does not accept fast enough fills its listen backlog, after
which new SYNs are dropped and connects stall (and time out here).  The
report also gives the server's CPU (user and system) over the churn.

Over TLS (`--tls`) and WebSocket (`--proto ws`) a churn connection counts
as completed once its transport is up: the TLS handshake done, the upgrade
answered with `101` (both, for WSS).  Then it is closed as above.  So the
rate is that of the whole transport's handshake (what a server does for
every client that comes and goes), and a newcomer goes through the same
before it waits for its line.

Connections: the beacon, one newcomer at a time (plus one trial newcomer
during set-up), and up to `--in-flight` per churn process.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from rat.argtypes import real_number, whole_number
from ratbench import ws
from ratbench.check import LatencyHistogram
from ratbench.connect import Probe, show_address
from ratbench.errors import BenchError, refusal
from ratbench.pipe import CoordinatorLink, WorkerPool, worker_entry
from ratbench.plan import Target
from ratbench.poller import WOULD_BLOCK, Poller, client_tls, precise_timers, raise_nofile
from ratbench.procstat import Sample, sample_all, self_cpu_ns
from ratbench.wire import encode_line, make_wire, parse_line

CONNECT_TIMEOUT_S = 3.0  # a churn connect pending this long is given up
GO_DELAY_NS = 50_000_000
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST

CONNECT_NOTES = """\
--workers churn processes each keep --in-flight connects pending; each one that
completes is closed at once (--close reset: RST by SO_LINGER 0; fin: a normal
close).  Meanwhile a newcomer joins every --newcomer-every ms: connect, then
wait for a broadcast line, which a beacon connection sends when the newcomer's
connect completes and every --beacon-ms after.  Reported: completed connects
per second (what the server's accept loop sustains), and the newcomers'
connect and first-line times.  A newcomer that gets no line is an anomaly.

Connections: the beacon, one newcomer at a time (and one trial newcomer during
set-up), plus up to --in-flight per churn process."""

_in_flight = whole_number(1, 4096)
_max_connects = whole_number(1, 10**8)
_ms = real_number(above=0, maximum=60_000)
_seconds = real_number(above=0, maximum=3600)


def add_connect_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `rat bench connect` that the other scenarios do not have."""
    load = parser.add_argument_group("load")
    load.add_argument(
        "--in-flight",
        type=_in_flight,
        default=32,
        metavar="N",
        help="connects pending at once in each churn process (--workers: how many processes)",
    )
    load.add_argument(
        "--close",
        choices=("reset", "fin"),
        default="reset",
        help="how a churn connection ends: reset (SO_LINGER 0, RST) or fin (a normal close)",
    )
    load.add_argument(
        "--max-connects",
        type=_max_connects,
        default=200_000,
        metavar="N",
        help="stop the churn after N connections in total (or at --duration)",
    )
    load.add_argument(
        "--newcomer-every",
        type=_ms,
        default=10.0,
        metavar="MS",
        help="start a newcomer this often (one at a time)",
    )
    load.add_argument(
        "--beacon-ms",
        type=_ms,
        default=1.0,
        metavar="MS",
        help="while a newcomer waits, the beacon broadcasts a line this often",
    )
    load.add_argument(
        "--newcomer-timeout",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="a newcomer without a line by then has failed",
    )


@dataclass
class ChurnConfig(Target):
    """One connect-scenario run, as given on the command line."""

    in_flight: int = 32
    close: str = "reset"
    max_connects: int = 200_000
    newcomer_every_ms: float = 10.0
    beacon_ms: float = 1.0
    newcomer_timeout: float = 2.0
    scenario: str = "connect"
    tls: bool = False
    tls_ca: str | None = None


def churn_config(args: argparse.Namespace, progress: bool) -> ChurnConfig:
    return ChurnConfig(
        **Target.options(args, progress),
        tls=args.tls or args.tls_ca is not None,
        tls_ca=args.tls_ca,
        in_flight=args.in_flight,
        close=args.close,
        max_connects=args.max_connects,
        newcomer_every_ms=args.newcomer_every,
        beacon_ms=args.beacon_ms,
        newcomer_timeout=args.newcomer_timeout,
    )


@dataclass
class ChurnPlan:
    """What one process of the connect scenario does (plain data: it crosses a pipe)."""

    index: int
    role: str  # "churn" or "newcomer"
    address: tuple[int, Any]  # (family, sockaddr)
    where: str
    proto: str
    line_size: int
    in_flight: int
    close: str
    max_connects: int
    newcomer_every_ns: int
    beacon_ns: int
    newcomer_timeout_ns: int
    setup_timeout: float
    host: str = "127.0.0.1"  # the server's name (TLS: the one it proves)
    tls: bool = False
    tls_ca: str | None = None


@dataclass
class ChurnResult:
    """What one process reports (churn counts, or the newcomers' times)."""

    index: int
    attempted: int = 0
    completed: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    first_ns: int = 0
    last_ns: int = 0
    newcomers: int = 0
    joined: int = 0
    failures: list[str] = field(default_factory=list)
    connect_us: dict[int, int] = field(default_factory=dict)
    first_line_us: dict[int, int] = field(default_factory=dict)
    cpu_ns: int = 0


def _wait_go(link: CoordinatorLink, poller: Poller) -> tuple[int, int]:
    while not link.has("go"):
        if poller.poll(0.5):
            link.read()
    msg = link.take("go")
    return int(msg[1]), int(msg[2])


def _sleep_until(t_ns: int) -> None:
    left = t_ns - time.monotonic_ns()
    if left > 0:
        time.sleep(left / 1e9)


# -- churn ---------------------------------------------------------------------------


class Transport:
    """Bringing one connection's transport up after its TCP connect: TLS, then the upgrade.

    Non-blocking: `step()` goes as far as it can and says whether the
    transport is up; it raises `TransportError` when the server refuses
    (a failed handshake, an upgrade answered with anything but `101`).
    """

    def __init__(self, sock: socket.socket, plan: ChurnPlan, tls: ssl.SSLContext | None) -> None:
        self.sock = sock
        self.wants = 0  # poller events to wait for before the next step
        self.shaking = tls is not None
        if tls is not None:
            self.sock = tls.wrap_socket(
                sock, server_hostname=plan.host, do_handshake_on_connect=False
            )
        self.upgrade = plan.proto == "ws"
        self.key = ws.new_key() if self.upgrade else b""
        self.request = ws.upgrade_request(plan.where, self.key) if self.upgrade else b""
        self.reply = bytearray()
        self.rest = b""  # bytes after the upgrade reply (the first frames)

    def step(self, poller: Poller) -> bool:
        if self.shaking:
            assert isinstance(self.sock, ssl.SSLSocket)
            try:
                self.sock.do_handshake()
            except ssl.SSLWantReadError:
                self.wants = poller.IN
                return False
            except ssl.SSLWantWriteError:
                self.wants = poller.OUT
                return False
            except (ssl.SSLError, OSError) as err:
                raise TransportError("TLS handshake", str(err)) from None
            self.shaking = False
        if self.request:
            try:
                sent = self.sock.send(self.request)
            except WOULD_BLOCK:
                self.wants = poller.OUT
                return False
            except OSError as err:
                raise TransportError("upgrade", err.strerror or str(err)) from None
            self.request = self.request[sent:]
            if self.request:
                self.wants = poller.OUT
                return False
        if self.upgrade:
            while True:
                try:
                    data = self.sock.recv(65536)
                except WOULD_BLOCK:
                    self.wants = poller.IN
                    return False
                except OSError as err:
                    raise TransportError("upgrade", err.strerror or str(err)) from None
                if not data:
                    raise TransportError("upgrade", "closed before the 101")
                self.reply += data
                end = self.reply.find(b"\r\n\r\n")
                if end >= 0:
                    why = ws.check_upgrade(bytes(self.reply[:end]), self.key)
                    if why is not None:
                        raise TransportError("upgrade", why)
                    self.rest = bytes(self.reply[end + 4 :])
                    self.upgrade = False
                    break
                if len(self.reply) > 16384:
                    raise TransportError("upgrade", "no end to the server's reply")
        return True


class TransportError(Exception):
    """The server refused the transport: `what` failed (a name for the counts), and why."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what} failed: {why}")
        self.what = what


def run_churn(plan: ChurnPlan, link: CoordinatorLink) -> None:
    """A churn process: connect and close, `in_flight` at a time (see the module notes)."""
    raise_nofile()
    poller = Poller()
    poller.register(link.fileno(), poller.IN)
    res = ChurnResult(plan.index)
    link.send("ready")
    go, end = _wait_go(link, poller)
    family, sockaddr = plan.address
    reset = plan.close == "reset"
    tls = client_tls(plan.tls_ca) if plan.tls else None
    layered = tls is not None or plan.proto == "ws"
    # fd -> (socket, when its connect started, its transport once TCP is up)
    pending: dict[int, tuple[socket.socket, int, Transport | None]] = {}
    failed: Counter[str] = Counter()
    timeout_ns = int(CONNECT_TIMEOUT_S * 1e9)
    _sleep_until(go)
    cpu0 = self_cpu_ns()
    res.first_ns = time.monotonic_ns()
    next_sweep = 0

    def done(fd: int, sock: socket.socket) -> None:
        del pending[fd]
        poller.unregister(fd)
        sock.close()

    try:
        while not link.aborted:
            now = time.monotonic_ns()
            if now >= end:
                break
            while len(pending) < plan.in_flight and res.attempted < plan.max_connects:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                res.attempted += 1
                err = sock.connect_ex(sockaddr)
                if err == errno.EINPROGRESS or (err == 0 and layered):
                    pending[sock.fileno()] = (sock, now, None)
                    poller.register(sock.fileno(), poller.OUT)
                    continue
                if err == 0:
                    res.completed += 1
                    res.last_ns = now
                else:
                    failed[errno.errorcode.get(err, str(err))] += 1
                sock.close()
                if err in (errno.EADDRNOTAVAIL, errno.EAGAIN):
                    break  # out of local ports for now: let some close first
            if not pending and res.attempted >= plan.max_connects:
                break
            for fd, _ in poller.poll(min(0.05, (end - now) / 1e9)):
                if fd == link.fileno():
                    link.read()
                    continue
                sock, started, transport = pending[fd]
                if transport is None:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        failed[errno.errorcode.get(err, str(err))] += 1
                        done(fd, sock)
                        continue
                    if layered:
                        transport = Transport(sock, plan, tls)
                        sock = transport.sock
                        pending[fd] = (sock, started, transport)
                if transport is not None:
                    try:
                        up = transport.step(poller)
                    except TransportError as err:
                        failed[err.what] += 1
                        done(fd, sock)
                        continue
                    if not up:
                        poller.modify(fd, transport.wants)
                        continue
                res.completed += 1
                res.last_ns = time.monotonic_ns()
                done(fd, sock)
            if now >= next_sweep:  # give up connects the server never answered
                next_sweep = now + 100_000_000
                for fd, (sock, started, _) in list(pending.items()):
                    if now - started > timeout_ns:
                        done(fd, sock)
                        failed["timed out"] += 1
    finally:
        for sock, _, _ in pending.values():
            sock.close()
        poller.close()
    res.failed = dict(failed)
    res.cpu_ns = self_cpu_ns() - cpu0
    link.send("result", res)


# -- newcomers -------------------------------------------------------------------------


class Newcomer:
    """One well-behaved client joining: connect (TLS, upgrade), then wait for a broadcast line."""

    def __init__(
        self, plan: ChurnPlan, poller: Poller, number: int, tls: ssl.SSLContext | None
    ) -> None:
        self.plan = plan
        self.poller = poller
        self.tls = tls
        self.wire = make_wire(plan.proto, plan.line_size)
        self.which = f"newcomer {number}"
        self.sock = socket.socket(plan.address[0], socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.start = time.monotonic_ns()
        self.connected = 0  # when the transport was up (0: not yet)
        self.transport: Transport | None = None
        self.reader = self.wire.reader()
        self.heard = False  # something arrived (a refusal comes first)
        err = self.sock.connect_ex(plan.address[1])
        if err not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise OSError(err, os.strerror(err))
        self.fd = self.sock.fileno()
        poller.register(self.fd, poller.OUT)

    def on_event(self) -> bool:
        """The connect finished (OSError if it failed), the transport moved on, or data came.

        True once a well-formed broadcast line arrived; BenchError if refused.
        """
        if not self.connected:
            if self.transport is None:
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                self.transport = Transport(self.sock, self.plan, self.tls)
                self.sock = self.transport.sock
            try:
                up = self.transport.step(self.poller)
            except TransportError as err:
                raise BenchError(f"{self.which} to {self.plan.where}: {err}") from None
            if not up:
                self.poller.modify(self.fd, self.transport.wants)
                return False
            self.connected = time.monotonic_ns()
            if self.wire.subscribe:
                self.sock.sendall(self.wire.subscribe)
            self.poller.modify(self.fd, self.poller.IN)
            if not self.transport.rest:
                return False
            return self._got(self.transport.rest)
        try:
            data = self.sock.recv(65536)
        except WOULD_BLOCK:
            return False
        except OSError:
            data = b""
        return self._got(data)

    def _got(self, data: bytes) -> bool:
        if not data or not self.heard:
            refused = refusal(data, self.which)
            if refused is not None:
                raise BenchError(refused)
        self.heard = True
        for line in self.reader.feed(data):
            if line is None:
                continue  # not a message: a subscribe acknowledgement, a control frame
            if parse_line(line, self.plan.line_size) is None:
                raise BenchError(
                    f"{self.which} got a line that is not a beacon line: {line[:80]!r};"
                    " is something else publishing on the server?"
                )
            return True
        return False

    def close(self) -> None:
        self.poller.unregister(self.fd)
        self.sock.close()


class Beacon:
    """The connection whose lines the newcomers wait for (TLS, WebSocket: as they are)."""

    def __init__(self, plan: ChurnPlan, tls: ssl.SSLContext | None) -> None:
        self.plan = plan
        self.wire = make_wire(plan.proto, plan.line_size)
        host, port = plan.host, int(plan.address[1][1])
        try:
            probe = Probe.open(host, port, plan.setup_timeout, self.wire, tls)
        except BenchError as err:
            raise BenchError(f"the beacon connection: {err}") from None
        self.sock = probe.sock
        self.sock.setblocking(False)
        self.seq = 0

    def send(self) -> None:
        line = encode_line(0, self.seq, time.monotonic_ns(), self.plan.line_size)
        self.seq += 1
        try:
            self.sock.send(self.wire.publish_one(line))
        except WOULD_BLOCK:
            pass  # the server is not reading: the newcomer will time out
        except OSError as err:
            raise BenchError(
                f"the beacon connection failed: {err.strerror or err} (the server closed it)"
            ) from None

    def drain(self) -> None:
        """Drop what the beacon receives (Redis: PUBLISH replies); refusal or close: error."""
        while True:
            try:
                data = self.sock.recv(65536)
            except WOULD_BLOCK:
                return
            except OSError:
                data = b""
            if not data or data.startswith((b"ERR ", b"-ERR ")):
                raise BenchError(refusal(data, "the beacon connection") or "")


def run_newcomers(plan: ChurnPlan, link: CoordinatorLink) -> None:
    """The newcomer process: a beacon and one newcomer at a time (see the module notes)."""
    raise_nofile()
    precise_timers()
    poller = Poller()
    poller.register(link.fileno(), poller.IN)
    tls = client_tls(plan.tls_ca) if plan.tls else None
    beacon = Beacon(plan, tls)
    poller.register(beacon.sock.fileno(), poller.IN)
    res = ChurnResult(plan.index)
    connect_hist, first_hist = LatencyHistogram(), LatencyHistogram()

    def one(deadline_ns: int, record: bool) -> None:
        """One newcomer from connect to its first line, or a failure (BenchError)."""
        res.newcomers += record
        try:
            nc = Newcomer(plan, poller, res.newcomers, tls)
        except OSError as err:
            raise BenchError(
                f"newcomer {res.newcomers} cannot connect to {plan.where}: {err.strerror}"
            ) from None
        next_beacon = 0
        try:
            while True:
                now = time.monotonic_ns()
                if now - nc.start > plan.newcomer_timeout_ns or now >= deadline_ns:
                    raise BenchError(
                        f"{nc.which} got no broadcast line within"
                        f" {plan.newcomer_timeout_ns / 1e9:g} s"
                        + (" (its connect never completed)" if not nc.connected else "")
                    )
                if nc.connected and now >= next_beacon:
                    beacon.send()
                    next_beacon = now + plan.beacon_ns
                wake = min(next_beacon if nc.connected else now + 10_000_000, deadline_ns)
                for fd, _ in poller.wait(max(0, wake - time.monotonic_ns())):
                    if fd == link.fileno():
                        link.read()
                        if link.aborted:
                            raise BenchError("aborted by the coordinator")
                    elif fd == beacon.sock.fileno():
                        beacon.drain()
                    else:
                        was_connected = nc.connected
                        try:
                            got = nc.on_event()
                        except OSError as err:
                            raise BenchError(
                                f"{nc.which} cannot connect to {plan.where}: {err.strerror}"
                            ) from None
                        if nc.connected and not was_connected:
                            if record:
                                connect_hist.add((nc.connected - nc.start) // 1000)
                            next_beacon = 0
                        if got:
                            if record:
                                first_hist.add((time.monotonic_ns() - nc.start) // 1000)
                                res.joined += 1
                            return
        finally:
            nc.close()

    # A trial newcomer proves the set-up (beacon registered, lines relayed).
    one(time.monotonic_ns() + int(plan.setup_timeout * 1e9), record=False)
    link.send("ready")
    go, end = _wait_go(link, poller)
    _sleep_until(go)
    cpu0 = self_cpu_ns()
    res.first_ns = time.monotonic_ns()
    next_start = go
    while not link.aborted:
        now = time.monotonic_ns()
        if now >= end:
            break
        if now < next_start:
            for fd, _ in poller.wait(min(next_start, end) - now):
                if fd == link.fileno():
                    link.read()
                elif fd == beacon.sock.fileno():
                    beacon.drain()
            continue
        next_start = now + plan.newcomer_every_ns
        try:
            one(end + plan.newcomer_timeout_ns, record=True)
        except BenchError as err:
            if link.aborted or "beacon" in str(err):
                raise
            if len(res.failures) < 10:
                res.failures.append(str(err))
    res.last_ns = time.monotonic_ns()
    res.cpu_ns = self_cpu_ns() - cpu0
    res.connect_us = dict(connect_hist.counts)
    res.first_line_us = dict(first_hist.counts)
    beacon.sock.close()
    poller.close()
    link.send("result", res)


def churn_main(plan: ChurnPlan, pipe: Connection) -> None:
    """Entry point of a connect-scenario process."""
    body = run_newcomers if plan.role == "newcomer" else run_churn
    worker_entry(lambda link: body(plan, link), pipe, plan.index)


# -- the coordinator -------------------------------------------------------------------


def run_connect(cfg: ChurnConfig) -> dict[str, Any]:
    """Run the connect scenario; its summary (what `--json` prints)."""
    raise_nofile()
    probe = Probe.open(cfg.host, cfg.port, min(10.0, cfg.setup_timeout))
    address = probe.address
    probe.close()  # it found the address; the beacon and newcomers prove the rest (TLS too)
    where = show_address(cfg.host, cfg.port)
    per_process = max(1, cfg.max_connects // cfg.workers)
    plans = [
        ChurnPlan(
            index=i,
            role="newcomer" if i == 0 else "churn",
            address=address,
            where=where,
            proto=cfg.proto,
            line_size=cfg.line_size,
            in_flight=cfg.in_flight,
            close=cfg.close,
            max_connects=per_process,
            newcomer_every_ns=int(cfg.newcomer_every_ms * 1e6),
            beacon_ns=int(cfg.beacon_ms * 1e6),
            newcomer_timeout_ns=int(cfg.newcomer_timeout * 1e9),
            setup_timeout=cfg.setup_timeout,
            host=cfg.host,
            tls=cfg.tls,
            tls_ca=cfg.tls_ca,
        )
        for i in range(cfg.workers + 1)
    ]
    pool = WorkerPool()
    pids = cfg.server_pids
    peak = [0]

    def sample() -> Sample | None:
        return sample_all(pids) if pids else None

    def tick() -> None:
        s = sample()
        if s is not None:
            peak[0] = max(peak[0], s.rss_kib)

    pool.on_tick = tick
    cpu0 = self_cpu_ns()
    try:
        pool.start(churn_main, plans)
        pool.gather(
            "ready",
            time.monotonic() + cfg.setup_timeout + 5,
            f"the set-up did not finish within {cfg.setup_timeout:g} s (--setup-timeout)",
        )
        before = sample()
        go = time.monotonic_ns() + GO_DELAY_NS
        end = go + int(cfg.duration * 1e9)
        pool.broadcast("go", go, end)
        results: list[ChurnResult] = [
            m[2]
            for m in pool.gather(
                "result",
                time.monotonic() + cfg.duration + cfg.newcomer_timeout + CONNECT_TIMEOUT_S + 10,
                "not every generator process reported its result",
            )
        ]
        after = sample()
    finally:
        pool.stop()
    return summarize(
        cfg,
        results,
        before=before,
        after=after,
        peak_rss_kib=peak[0],
        coordinator_cpu_ns=self_cpu_ns() - cpu0,
    )


def _percentiles(hist: dict[int, int], names: tuple[str, ...]) -> dict[str, int | None]:
    qs = {"p50": 0.5, "p99": 0.99, "p99.9": 0.999, "max": 1.0}
    values = LatencyHistogram()
    values.merge(hist)
    return dict(zip(names, values.percentiles([qs[n] for n in names]), strict=True))


def summarize(
    cfg: ChurnConfig,
    results: list[ChurnResult],
    *,
    before: Sample | None,
    after: Sample | None,
    peak_rss_kib: int,
    coordinator_cpu_ns: int,
) -> dict[str, Any]:
    """The connect run as plain data."""
    new = results[0]
    churners = results[1:]
    completed = sum(r.completed for r in churners)
    first = min((r.first_ns for r in churners if r.first_ns), default=0)
    last = max((r.last_ns for r in churners), default=0)
    span = (last - first) / 1e9 if last > first else cfg.duration
    failed: Counter[str] = Counter()
    for r in churners:
        failed.update(r.failed)
    connect_hist: Counter[int] = Counter()
    first_hist: Counter[int] = Counter()
    for r in results:
        connect_hist.update(r.connect_us)
        first_hist.update(r.first_line_us)
    cpu_s = (sum(r.cpu_ns for r in results) + coordinator_cpu_ns) / 1e9
    busiest = max((r.cpu_ns / 1e9 / span for r in churners), default=0.0) if span else 0.0
    s: dict[str, Any] = {
        "scenario": "connect",
        "proto": cfg.proto + ("+tls" if cfg.tls else ""),
        "server": show_address(cfg.host, cfg.port),
        "params": {
            "workers": cfg.workers,
            "in_flight": cfg.in_flight,
            "close": cfg.close,
            "duration_s": cfg.duration,
            "max_connects": cfg.max_connects,
            "newcomer_every_ms": cfg.newcomer_every_ms,
            "beacon_ms": cfg.beacon_ms,
            "newcomer_timeout_s": cfg.newcomer_timeout,
            "line_size": cfg.line_size,
        },
        "churn": {
            "attempted": sum(r.attempted for r in churners),
            "completed": completed,
            "per_s": round(completed / span, 1) if span else 0.0,
            "window_s": round(span, 3),
            "failed": dict(failed),
        },
        "newcomers": {
            "count": new.newcomers,
            "ok": new.joined,
            "failed": new.newcomers - new.joined,
            "failures": new.failures,
            "connect_us": _percentiles(dict(connect_hist), ("p50", "p99", "max")),
            "first_line_us": _percentiles(dict(first_hist), ("p50", "p99", "p99.9", "max")),
        },
        "server_metrics": None,
        "generator": {
            "processes": len(results),
            "cpu_s": round(cpu_s, 4),
            "busiest_churn_process": round(busiest, 3),
        },
        "disconnected": 0,
    }
    if before is not None and after is not None:
        wall = (after.at_ns - before.at_ns) / 1e9
        cpu = (after.cpu_ns - before.cpu_ns) / 1e9
        s["server_metrics"] = {
            "pid": cfg.server_pid,
            "cpu_s": round(cpu, 4),
            "user_s": round((after.user_ns - before.user_ns) / 1e9, 3),
            "sys_s": round((after.sys_ns - before.sys_ns) / 1e9, 3),
            "cpu_busy": round(cpu / wall, 3) if wall > 0 else None,
            "rss_kib_end": after.rss_kib,
            "rss_kib_peak": max(peak_rss_kib, after.rss_kib),
        }
    s["anomalies"] = s["newcomers"]["failed"]
    verdict = []
    if busiest >= 0.9:
        verdict.append(
            "GENERATOR-BOUND: a churn process used a whole CPU; the accept rate is a lower bound"
        )
    sm = s["server_metrics"]
    if sm and sm["cpu_busy"] is not None and sm["cpu_busy"] >= 0.9:
        verdict.append("server-bound: the server had work for a whole CPU")
    if failed.get("timed out"):
        n = failed["timed out"]
        verdict.append(
            f"{n:,} connect{'' if n == 1 else 's'} timed out: the server fell behind accepting"
            " (its listen backlog overflowed)"
        )
    if s["anomalies"]:
        n = s["anomalies"]
        verdict.append(f"{n:,} newcomer{'' if n == 1 else 's'} failed to join")
    if not verdict:
        verdict.append("every newcomer joined")
    s["verdict"] = verdict
    return s


def run_and_summarize(cfg: ChurnConfig, on_error: Callable[[str], None]) -> dict[str, Any] | None:
    try:
        return run_connect(cfg)
    except BenchError as err:
        on_error(str(err))
        return None
    except OSError as err:
        on_error(f"cannot reach {show_address(cfg.host, cfg.port)}: {err.strerror or err}")
        return None
