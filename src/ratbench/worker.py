"""One load-generator process: its connections, publishers, receivers and checks.

Theory of operation
===================
A worker owns a share of the run's connections and drives them from one
level-triggered epoll loop over non-blocking sockets.  The coordinator
(`ratbench.runner`) talks to it over a pipe whose end sits in the same
epoll set, in phases: connect -> "ready"; wait for the sync line on every
receiver -> "synced"; "go" -> publish until the end time -> "published";
"expect" (what every publisher sent) -> receive until every receiver has
everything or the grace period ends -> "result".

Checking every line without parsing every line
----------------------------------------------
A receiver in a chat of 100 clients at 50,000 lines/s gets ~5 million lines
per second in total: far more than Python can parse one by one.  So each
worker has one *reference* receiver (a silent subscriber) that parses and
checks every line it gets: well-formed, and for every publisher exactly the
next sequence number.  As long as that holds, the reference's bytes are the
run's global order of lines (`Reference`), and every other receiver must
get exactly those bytes, minus the lines it published itself (the protocol
does not echo).  A server that relays lines has one global order (the rat
SPEC says so; a single-threaded relay gets it for free), so a receiver's
chunk is checked with one `memcmp` per run of foreign lines against the
reference bytes.  Lines are fixed-size, so positions are arithmetic.

Whenever that comparison fails, or the reference itself sees an anomaly, or
the reference has nothing more to compare against when the run ends, the
receiver falls back for good to the slow path: it parses every line and
feeds a `SeqTracker`, which counts lost, reordered, duplicated and malformed
lines exactly.  The fast path is an optimisation with no effect on what is
counted: if the bytes match the checked reference, parsing them would find
the same lines.

A server without one global order is still checked correctly, only slowly:
its receivers all end up on the slow path.

Latency
-------
Every line of the *timed* receivers is timed (all receivers unless that
would exceed ~500k timed lines/s; the report says how many): arrival time,
taken once per `epoll_wait` wake-up, minus the send time in the line.  A
publisher stamps a whole batch with one time, so the reference keeps runs
of equal send times and a chunk is timed with one histogram update per run
rather than per line.

Costs that matter at millions of lines/s
----------------------------------------
- One receive buffer for all sockets (`recv_into`): `recv(256 KiB)` would
  allocate a fresh 256 KiB object per call, and glibc serves that with
  mmap/munmap while the loop never frees one whole (measured: 18 us against
  3 us per call).
- Level-triggered epoll and one `recv` per ready socket per wake-up: when
  the generator falls behind, chunks grow and the per-line cost falls.
- Publishers send on ticks (`--tick-ms`), one `send` per publisher per tick.
- The garbage collector is off during the run: the loop makes no cycles.
"""

from __future__ import annotations

import errno
import gc
import os
import resource
import select
import signal
import socket
import time
import traceback
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ratbench.check import LatencyHistogram, SeqTracker
from ratbench.procstat import runqueue_wait_ns, self_cpu_ns
from ratbench.wire import (
    LineEncoder,
    RedisWire,
    RespReader,
    Wire,
    make_wire,
    parse_line,
    sync_line,
)

RECV_SIZE = 256 * 1024
MAX_CONNECTING = 128  # connects in flight at once (stays under listen backlogs)
SEND_CHUNK_LINES = 1024  # lines per batch a publisher builds at most
MAX_OUTBUF = 4 * 1024 * 1024  # a rate publisher skips lines rather than queue more
PROGRESS_NS = 250_000_000
TRIM_LINES = 65536  # reference lines consumed by all before trimming its buffer
INFINITY = 1 << 62

# Receiver phases.
CONNECTED = 0
SUBSCRIBED = 1  # Redis: SUBSCRIBE acknowledged (the line protocol skips this)
RUNNING = 2  # got the sync line: what follows is measured


@dataclass
class WorkerPlan:
    """What one worker does; built by the coordinator, sent to the worker."""

    index: int
    host: str
    port: int
    proto: str
    line_size: int
    sync_nonce: int
    # (pubid, publishes, receives) for every client of this worker; pubid 0: none
    clients: list[tuple[int, bool, bool]]
    reference: bool  # add a silent reference subscriber of our own
    rate_per_publisher: float  # lines/s; 0 = as fast as the window allows
    window: int  # fanout: lines in flight per publisher
    max_lines_per_publisher: int
    latency_receivers: int  # receivers whose every line is timed; -1 = all
    tick_ns: int
    connect_timeout: float


@dataclass
class WorkerResult:
    """What a worker reports at the end (plain data: it crosses a pipe)."""

    index: int
    receivers: int = 0
    delivered: int = 0
    expected: int = 0
    lost: int = 0
    reordered: int = 0
    duplicated: int = 0
    malformed: int = 0
    echoed: int = 0
    unexpected: int = 0
    disconnected: int = 0
    publisher_errors: int = 0
    skipped: int = 0  # rate mode: lines not sent because the socket backed up
    slow_path_receivers: int = 0
    latency: dict[int, int] = field(default_factory=dict)
    latency_receivers: int = 0
    last_rx_ns: int = 0
    first_tx_ns: int = 0
    last_tx_ns: int = 0
    cpu_ns: int = 0
    wait_ns: int = 0  # runnable, waiting for a CPU, over the same span
    complete: bool = False


class BenchError(Exception):
    """The run cannot go on (connection refused, server rejected us, timeout)."""


class Receiver:
    """One receiving connection and what it has got so far."""

    __slots__ = (
        "closed",
        "echoed",
        "fast",
        "frames",
        "g",
        "hist",
        "last_t",
        "malformed",
        "marks",
        "own",
        "own_k",
        "pending",
        "phase",
        "pos",
        "pubid",
        "resp",
        "skip_sync",
        "slow_buf",
        "sock",
        "sync_tail",
        "total",
        "tracker",
    )

    def __init__(self, sock: socket.socket, pubid: int, hist: LatencyHistogram | None) -> None:
        self.sock = sock
        self.pubid = pubid  # the client's own publisher id (0: publishes nothing)
        self.hist = hist  # None: latency not measured on this receiver
        self.phase = CONNECTED
        self.skip_sync = True  # drop repeated sync frames before the first measured line
        self.sync_tail = b""
        self.closed = False
        self.fast = True
        self.pending = b""  # unchecked bytes from `pos` on (fast path)
        self.pos = 0
        self.total = 0  # bytes received since the sync frame
        self.frames = 0  # frames checked on the fast path
        self.g = 0  # next reference index this receiver expects
        self.own: array[int] | None = None  # reference indices of its own lines
        self.own_k = 0  # own lines skipped so far
        self.marks: deque[tuple[int, int]] = deque()  # (frames complete, arrival us)
        self.tracker = SeqTracker()
        self.slow_buf = bytearray()
        self.resp: RespReader | None = None
        self.malformed = 0
        self.echoed = 0
        self.last_t = 0


class Publisher:
    """One publishing connection."""

    __slots__ = (
        "alive",
        "encoder",
        "limit",
        "outbuf",
        "phase",
        "pubid",
        "scheduled",
        "seq",
        "skipped",
        "sock",
    )

    def __init__(self, sock: socket.socket, pubid: int, line_size: int, limit: int) -> None:
        self.sock = sock
        self.pubid = pubid
        self.encoder = LineEncoder(pubid, line_size)
        self.seq = 0  # next sequence number = lines sent (queued) so far
        self.skipped = 0  # lines due in rate mode that were not queued
        self.scheduled = 0  # lines due so far in rate mode
        self.limit = limit
        self.outbuf = bytearray()
        self.phase = 0.0
        self.alive = True


class Reference:
    """The checked global order of lines, as seen by this worker's reference receiver."""

    def __init__(self) -> None:
        self.data = bytearray()  # frames [base, end)
        self.base = 0
        self.end = 0  # index one past the last checked line
        self.pubids: array[int] = array("q")
        self.send_us: array[int] = array("q")  # send time of each line, us
        # Runs of lines with the same send time (a publisher stamps a whole batch
        # at once): timing a chunk costs one step per run instead of per line.
        self.run_start: array[int] = array("q")
        self.run_us: array[int] = array("q")
        self.counts: dict[int, int] = {}
        self.own: dict[int, array[int]] = {}  # pubid -> its indices (local publishers)
        self.clean = True  # False once the reference saw an anomaly
        self.closed = False  # the reference connection is gone

    def counts_at(self, g: int) -> dict[int, int]:
        """Lines per publisher among the first `g` reference lines."""
        tail = Counter(self.pubids[g : self.end])
        return {p: n - tail.get(p, 0) for p, n in self.counts.items()}


class Poller:
    """epoll (level-triggered) where there is one; `select.poll` elsewhere."""

    def __init__(self) -> None:
        self._epoll = hasattr(select, "epoll")
        self._ep: Any = select.epoll() if self._epoll else select.poll()
        self.IN = select.EPOLLIN if self._epoll else select.POLLIN
        self.OUT = select.EPOLLOUT if self._epoll else select.POLLOUT

    def register(self, fd: int, events: int) -> None:
        self._ep.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self._ep.modify(fd, events)

    def unregister(self, fd: int) -> None:
        try:
            self._ep.unregister(fd)
        except (KeyError, OSError, ValueError):
            pass

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        if not self._epoll:
            result: list[tuple[int, int]] = self._ep.poll(max(0.0, timeout) * 1000)
            return result
        events: list[tuple[int, int]] = self._ep.poll(max(0.0, timeout), 4096)
        return events

    def close(self) -> None:
        if self._epoll:
            self._ep.close()


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def now_us() -> int:
    return time.monotonic_ns() // 1000


class Worker:
    """The event loop of one worker process (see the module notes)."""

    def __init__(self, plan: WorkerPlan, pipe: Connection) -> None:
        self.plan = plan
        self.pipe = pipe
        self.wire: Wire = make_wire(plan.proto, plan.line_size)
        self.frame = self.wire.frame_size
        self.poller = Poller()
        self.receivers: list[Receiver] = []
        self.publishers: list[Publisher] = []
        self.by_fd: dict[int, tuple[Receiver | None, Publisher | None]] = {}
        # One receive buffer for every socket: recv() of a large size would
        # allocate (mmap) a fresh buffer per call, which costs more than the read.
        self.rbuf = bytearray(RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.drains: set[int] = set()  # fds whose input is read and dropped
        self.sockets: list[socket.socket] = []
        self.ref = Reference()
        self.ref_rx: Receiver | None = None
        self.blocked: set[Receiver] = set()
        self.result = WorkerResult(plan.index)
        self.messages: deque[tuple[Any, ...]] = deque()
        self.go_ns = 0
        self.end_ns = 0
        self.publishing = False
        self.sync = sync_line(plan.sync_nonce, plan.line_size)
        self.sync_frame = self.sync  # as a receiver gets it
        if isinstance(self.wire, RedisWire):
            self.sync_frame = self.wire.frame_prefix + self.sync[:-1] + b"\r\n"
        self.next_progress = 0
        self.aborted = False  # the coordinator gave up (or went away)
        self.last_trim = 0

    # -- set-up -------------------------------------------------------------

    def connect_all(self) -> None:
        """Open every connection of the plan; a pipe message when all are up."""
        plan = self.plan
        wanted: list[tuple[int, str]] = []  # (pubid, role) role: "both", "pub", "sub"
        # The reference is a silent subscriber: the first one of the plan if there
        # is one (fanout), else a connection of its own (chat).
        need_ref = plan.reference
        for pubid, publishes, receives in plan.clients:
            if need_ref and receives and not publishes:
                wanted.insert(0, (pubid, "ref"))
                need_ref = False
            elif publishes and receives and self.wire.split_connections:
                wanted += [(pubid, "pub"), (pubid, "sub")]
            elif publishes and receives:
                wanted.append((pubid, "both"))
            elif publishes:
                wanted.append((pubid, "pub"))
            else:
                wanted.append((pubid, "sub"))
        if need_ref:
            wanted.insert(0, (0, "ref"))
        deadline = time.monotonic() + plan.connect_timeout
        connecting: dict[int, tuple[socket.socket, int, str]] = {}
        todo = deque(wanted)
        sampled = 0
        while todo or connecting:
            while todo and len(connecting) < MAX_CONNECTING:
                pubid, role = todo.popleft()
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sockets.append(sock)
                err = sock.connect_ex((plan.host, plan.port))
                if err not in (0, errno.EINPROGRESS):
                    raise BenchError(
                        f"cannot connect to {plan.host}:{plan.port}: {os.strerror(err)}"
                    )
                connecting[sock.fileno()] = (sock, pubid, role)
                self.poller.register(sock.fileno(), self.poller.OUT)
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(
                    f"timed out connecting: {len(connecting) + len(todo)} of"
                    f" {len(wanted)} connections not established"
                )
            for fd, _ in self.poller.poll(min(left, 0.5)):
                if fd not in connecting:  # already connected (and has data): later
                    continue
                sock, pubid, role = connecting.pop(fd)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise BenchError(
                        f"cannot connect to {plan.host}:{plan.port}: {os.strerror(err)}"
                    )
                timed = plan.latency_receivers < 0 or sampled < plan.latency_receivers
                self._add(sock, pubid, role, timed)
                if role != "pub" and timed:
                    sampled += 1
        self.result.latency_receivers = sum(1 for r in self.receivers if r.hist is not None)
        self.result.receivers = len(self.receivers)
        self.ref_rx = self.receivers[0] if plan.reference else None
        if self.ref_rx is not None:
            for r in self.receivers[1:]:
                if r.pubid and not self.wire.echo:
                    r.own = self.ref.own.setdefault(r.pubid, array("q"))
        else:
            for r in self.receivers:
                r.fast = False

    def _add(self, sock: socket.socket, pubid: int, role: str, timed: bool) -> None:
        fd = sock.fileno()
        rx: Receiver | None = None
        pub: Publisher | None = None
        if role in ("ref", "both", "sub"):
            rx = Receiver(sock, pubid, LatencyHistogram() if timed else None)
            if self.wire.subscribe:
                rx.resp = RespReader()
                sock.sendall(self.wire.subscribe)  # a few bytes into an empty buffer
            if role == "ref":
                self.receivers.insert(0, rx)
            else:
                self.receivers.append(rx)
        if role in ("both", "pub"):
            pub = Publisher(sock, pubid, self.plan.line_size, self.plan.max_lines_per_publisher)
            self.publishers.append(pub)
            if rx is None:
                self.drains.add(fd)
        self.by_fd[fd] = (rx, pub)
        self.poller.modify(fd, self.poller.IN)

    def wait_handshake(self, want: int, deadline: float) -> None:
        """Read until every receiver reached phase `want` (SUBSCRIBED or RUNNING).

        Redis: a subscriber is SUBSCRIBED once its SUBSCRIBE is acknowledged,
        which proves the server registered it.  Every receiver is RUNNING once
        it got the probe's sync line: everything after that is measured.
        """
        what = "the subscribe acknowledgement" if want == SUBSCRIBED else "the sync line"
        while True:
            behind = sum(1 for r in self.receivers if r.phase < want)
            if not behind:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(
                    f"timed out waiting for {what} on {behind} of {len(self.receivers)} connections"
                )
            for fd, _ in self.poller.poll(min(left, 0.5)):
                if fd == self.pipe.fileno():
                    self._read_pipe()
                    if any(m[0] == "abort" for m in self.messages):
                        raise BenchError("aborted by the coordinator")
                    continue
                rx, pub = self.by_fd[fd]
                sock = rx.sock if rx is not None else pub.sock if pub is not None else None
                assert sock is not None
                try:
                    data = self.rview[: sock.recv_into(self.rview)].tobytes()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as err:
                    raise BenchError(f"connection failed before the sync line: {err}") from None
                if not data:
                    raise BenchError("the server closed a connection before the sync line")
                if rx is None:
                    continue  # a publish-only connection: drop what it gets
                if rx.phase == RUNNING:
                    self._on_data(rx, data, now_us())
                    continue
                rx.slow_buf += data
                rest = self._handshake(rx)
                if rest:
                    self._on_data(rx, rest, now_us())

    def _handshake(self, rx: Receiver) -> bytes:
        """Consume the subscribe ack and the sync frame; return the bytes after them."""
        if rx.resp is None:  # the line protocol
            nl = rx.slow_buf.find(b"\n")
            if nl < 0:
                if len(rx.slow_buf) > 4 * len(self.sync):
                    raise BenchError(f"unexpected data before sync: {bytes(rx.slow_buf[:80])!r}")
                return b""
            line = bytes(rx.slow_buf[: nl + 1])
            if line != self.sync:
                raise BenchError(f"unexpected line before sync: {line[:80]!r}")
            rx.phase = RUNNING
            rest = bytes(rx.slow_buf[nl + 1 :])
            rx.slow_buf = bytearray()
            return rest
        rx.resp.feed(bytes(rx.slow_buf))
        rx.slow_buf = bytearray()
        while True:
            try:
                item = rx.resp.next()
            except ValueError as err:
                raise BenchError(f"bad reply from server: {err}") from None
            if item is RespReader.NEED_MORE:
                return b""
            if isinstance(item, Exception):
                raise BenchError(f"server error reply: {item}")
            if isinstance(item, list) and item and item[0] == b"subscribe":
                rx.phase = max(rx.phase, SUBSCRIBED)
                continue
            if (
                rx.phase == SUBSCRIBED
                and isinstance(item, list)
                and len(item) == 3
                and item[0] == b"message"
                and item[2] == self.sync[:-1]
            ):
                rx.phase = RUNNING
                rest = rx.resp.pending
                rx.resp = RespReader()  # for the slow path, should it be needed
                return rest
            raise BenchError(f"unexpected reply before sync: {item!r:.80}")

    def _strip_syncs(self, rx: Receiver, data: bytes) -> bytes:
        """Drop repeated sync frames at the start of the measured stream.

        The coordinator repeats the sync line until every worker saw one, so
        a receiver may get a few more before the first measured line.
        """
        buf = rx.sync_tail + data
        frame = self.sync_frame
        while buf.startswith(frame):
            buf = buf[len(frame) :]
        if len(buf) < len(frame) and frame.startswith(buf):
            rx.sync_tail = buf  # perhaps the start of another sync frame: wait
            return b""
        rx.sync_tail = b""
        rx.skip_sync = False
        return buf

    # -- the loop -------------------------------------------------------------

    def serve_pipe_until(self, done: Callable[[], bool], deadline_ns: int) -> None:
        """Run the I/O loop until `done()` or the deadline (monotonic ns)."""
        rate = self.plan.rate_per_publisher
        tick_ns = self.plan.tick_ns
        next_tick = 0
        pipe_fd = self.pipe.fileno()
        by_fd = self.by_fd
        rview = self.rview
        drains = self.drains
        poll = self.poller.poll
        on_data = self._on_data
        out = self.poller.OUT
        while not (done() or self.aborted):
            now = time.monotonic_ns()
            if now >= deadline_ns:
                return
            timeout = min((deadline_ns - now) / 1e9, 0.05)
            if self.publishing:
                if now >= self.end_ns:
                    self._stop_publishing()
                elif rate > 0:
                    if now >= next_tick:
                        self._publish_due(now)
                        next_tick = now + tick_ns
                    timeout = min(timeout, (next_tick - now) / 1e9)
                elif self._publish_window(now):
                    timeout = 0.0  # the window reopened: keep going
                else:
                    timeout = min(timeout, 0.01)
                if self.publishing:
                    timeout = min(timeout, max(0.0, (self.end_ns - now) / 1e9))
            events = poll(timeout)
            t = now_us()
            received = False
            for fd, ev in events:
                if fd == pipe_fd:
                    self._read_pipe()
                    continue
                rx, pub = by_fd[fd]
                if ev & out and pub is not None:
                    self._flush(pub)
                    if not ev & ~out:
                        continue
                sock = rx.sock if rx is not None else pub.sock  # type: ignore[union-attr]
                try:
                    n = sock.recv_into(rview)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    n = 0
                if not n:
                    self._closed(fd)
                    continue
                if rx is not None and fd not in drains:
                    on_data(rx, rview[:n].tobytes(), t)
                    received = True
            if received:
                self.result.last_rx_ns = t * 1000
            if self.blocked and self.ref.end > 0:
                for r in list(self.blocked):
                    self.blocked.discard(r)
                    self._advance(r)
            if now >= self.next_progress:
                self.next_progress = now + PROGRESS_NS
                self._progress()
                self._trim()

    def _read_pipe(self) -> None:
        while self.pipe.poll():
            try:
                msg = self.pipe.recv()
            except (EOFError, OSError):
                msg = ("abort",)
            self.messages.append(msg)
            if msg[0] == "abort":
                self.aborted = True
                return

    def _progress(self) -> None:
        delivered = sum(r.total for r in self.receivers) // self.frame
        published = sum(p.seq for p in self.publishers)
        self.pipe.send(("progress", self.plan.index, published, delivered))

    # -- publishing -------------------------------------------------------------

    def start_publishing(self, go_ns: int, end_ns: int) -> None:
        self.go_ns, self.end_ns = go_ns, end_ns
        n = max(1, len(self.publishers))
        for i, pub in enumerate(self.publishers):
            pub.phase = (self.plan.index + i / n) % 1.0  # spread the sends in time
        self.publishing = bool(self.publishers)
        self.result.first_tx_ns = go_ns

    def _stop_publishing(self) -> None:
        self.publishing = False

    def _publish_due(self, now: int) -> None:
        """Rate mode: queue each publisher's lines that are due by now."""
        per_ns = self.plan.rate_per_publisher / 1e9
        elapsed = now - self.go_ns
        if elapsed < 0:
            return
        for pub in self.publishers:
            if not pub.alive:
                continue
            due = min(int(elapsed * per_ns + pub.phase), pub.limit) - pub.scheduled
            if due <= 0:
                continue
            pub.scheduled += due
            if len(pub.outbuf) > MAX_OUTBUF:
                pub.skipped += due
                continue
            self._queue(pub, due, now)
        if all(p.scheduled >= p.limit or not p.alive for p in self.publishers):
            self._stop_publishing()

    def _publish_window(self, now: int) -> bool:
        """Window mode: top every publisher up to its window.  True if any sent."""
        if now < self.go_ns:
            return False
        window = self.plan.window
        ref = self.ref
        ref_rx = self.ref_rx
        sent = False
        for pub in self.publishers:
            if not pub.alive or pub.seq >= pub.limit or pub.outbuf:
                continue
            if ref.clean:
                seen = ref.counts.get(pub.pubid, 0)
            elif ref_rx is not None:
                seen = ref_rx.tracker.next_seq(pub.pubid)
            else:
                seen = pub.seq
            room = min(window - (pub.seq - seen), pub.limit - pub.seq)
            if room >= max(1, window // 4) or (room > 0 and pub.seq == seen):
                self._queue(pub, min(room, SEND_CHUNK_LINES), now)
                sent = True
        if all(p.seq >= p.limit or not p.alive for p in self.publishers):
            self._stop_publishing()
        return sent

    def _queue(self, pub: Publisher, count: int, now: int) -> None:
        while count > 0:
            n = min(count, SEND_CHUNK_LINES)
            pub.outbuf += self.wire.publish(pub.encoder.lines(pub.seq, n, now))
            pub.seq += n
            count -= n
        self.result.last_tx_ns = now
        self._flush(pub)

    def _flush(self, pub: Publisher) -> None:
        if not pub.alive:
            return
        try:
            sent = pub.sock.send(pub.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            pub.alive = False
            self.result.publisher_errors += 1
            return
        del pub.outbuf[:sent]
        fd = pub.sock.fileno()
        want = self.poller.IN | (self.poller.OUT if pub.outbuf else 0)
        self.poller.modify(fd, want)

    # -- receiving ---------------------------------------------------------------

    def _closed(self, fd: int) -> None:
        rx, pub = self.by_fd[fd]
        self.poller.unregister(fd)
        if rx is not None and not rx.closed:
            rx.closed = True
            self.result.disconnected += 1
            if rx is self.ref_rx:
                self.ref.closed = True
        if pub is not None and pub.alive:
            pub.alive = False
            if rx is None:
                self.result.disconnected += 1

    def _on_data(self, rx: Receiver, data: bytes, t: int) -> None:
        if rx.skip_sync:
            data = self._strip_syncs(rx, data)
            if not data:
                return
        rx.total += len(data)
        rx.last_t = t
        if not rx.fast:
            self._slow(rx, data, t)
            return
        if rx.pos >= len(rx.pending):
            rx.pending = data
        else:
            rx.pending = rx.pending[rx.pos :] + data
        rx.pos = 0
        if rx.hist is not None:
            rx.marks.append((rx.total // self.frame, t))
        if rx is self.ref_rx:
            self._reference(rx)
        else:
            self._advance(rx)

    def _reference(self, rx: Receiver) -> None:
        """Check the reference receiver's new complete frames; extend the reference."""
        ref = self.ref
        frame = self.frame
        pending, pos = rx.pending, rx.pos
        n = (len(pending) - pos) // frame
        if n == 0:
            return
        match = self.wire.frame_re.match
        counts = ref.counts
        own = ref.own
        pubids, send_us = ref.pubids, ref.send_us
        run_start, run_us = ref.run_start, ref.run_us
        last_us = run_us[-1] if run_us else -1
        good = 0
        g = ref.end
        for start in range(pos, pos + n * frame, frame):
            m = match(pending, start)
            if m is None:
                break
            pubid = int(m[1])
            seq = int(m[2])
            if seq != counts.get(pubid, 0):
                break
            stamp = int(m[3])
            counts[pubid] = seq + 1
            pubids.append(pubid)
            us = stamp // 1000
            send_us.append(us)
            if us != last_us:
                run_start.append(g)
                run_us.append(us)
                last_us = us
            mine = own.get(pubid)
            if mine is not None:
                mine.append(g)
            g += 1
            good += 1
        nbytes = good * frame
        ref.data += pending[pos : pos + nbytes]
        ref.end = g
        rx.pos = pos + nbytes
        rx.g = g
        if rx.hist is not None and good:
            self._latency(rx, g - good, good)
        rx.frames += good
        if good < n:  # an anomaly: the reference is complete only up to here
            ref.clean = False
            self._to_slow(rx)

    def _advance(self, rx: Receiver) -> None:
        """Fast path: match this receiver's complete frames against the reference."""
        ref = self.ref
        frame = self.frame
        data = ref.data
        own = rx.own
        while True:
            avail = (len(rx.pending) - rx.pos) // frame
            if avail <= 0:
                return
            g = rx.g
            if g >= ref.end:
                if not ref.clean or ref.closed:
                    self._to_slow(rx)
                else:
                    self.blocked.add(rx)
                return
            nxt = INFINITY
            if own is not None and rx.own_k < len(own):
                nxt = own[rx.own_k]
                if nxt == g:  # our own line: not delivered to us
                    rx.g = g + 1
                    rx.own_k += 1
                    continue
            end = min(nxt, ref.end, g + avail)
            n = end - g
            nbytes = n * frame
            with memoryview(rx.pending) as view:
                same = data.startswith(view[rx.pos : rx.pos + nbytes], (g - ref.base) * frame)
            if not same:
                self._to_slow(rx)
                return
            if rx.hist is not None:
                self._latency(rx, g, n)
            rx.pos += nbytes
            rx.g = end
            rx.frames += n

    def _latency(self, rx: Receiver, g: int, n: int) -> None:
        """Time the `n` checked frames from reference index `g` using the arrival marks."""
        hist = rx.hist
        assert hist is not None
        marks = rx.marks
        ref = self.ref
        send_us, run_start, run_us = ref.send_us, ref.run_start, ref.run_us
        i = rx.frames  # the receiver's frame count before these
        while n > 0 and marks:
            end_i, t = marks[0]
            if end_i <= i:
                marks.popleft()
                continue
            take = min(n, end_i - i)
            first = bisect_right(run_start, g) - 1
            last = bisect_left(run_start, g + take)  # runs [first, last) overlap
            if (last - first) * 8 <= take:
                for k in range(first, last):
                    lo = max(run_start[k], g)
                    hi = min(run_start[k + 1] if k + 1 < len(run_start) else ref.end, g + take)
                    hist.add(t - run_us[k], hi - lo)
            else:
                hist.add_many(map(t.__sub__, send_us[g : g + take]))
            i += take
            g += take
            n -= take

    def _to_slow(self, rx: Receiver) -> None:
        """Leave the fast path for good: parse everything from here on."""
        if not rx.fast:
            return
        rx.fast = False
        self.blocked.discard(rx)
        self.result.slow_path_receivers += 1
        for pubid, count in self.ref.counts_at(rx.g).items():
            if pubid != rx.pubid or self.wire.echo:
                rx.tracker.start_at(pubid, count)
        rx.tracker.lines = rx.frames
        rest = rx.pending[rx.pos :]
        rx.pending, rx.pos = b"", 0
        rx.marks.clear()
        if rx.resp is None and self.wire.subscribe:
            rx.resp = RespReader()
        if rest:
            self._slow(rx, rest, rx.last_t)

    def _slow(self, rx: Receiver, data: bytes, t: int) -> None:
        """Slow path: parse and check every line."""
        lines: list[bytes | None] = []
        if rx.resp is None:
            buf = rx.slow_buf
            buf += data
            start = 0
            while True:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                lines.append(bytes(buf[start : nl + 1]))
                start = nl + 1
            del buf[:start]
        else:
            rx.resp.feed(data)
            while True:
                try:
                    item = rx.resp.next()
                except ValueError:
                    rx.malformed += 1
                    rx.resp = RespReader()  # give up on the rest of this data
                    break
                if item is RespReader.NEED_MORE:
                    break
                if (
                    isinstance(item, list)
                    and len(item) == 3
                    and item[0] == b"message"
                    and isinstance(item[2], bytes)
                ):
                    lines.append(item[2] + b"\n")
                else:
                    lines.append(None)
        size = self.plan.line_size
        hist = rx.hist
        for line in lines:
            parsed = None if line is None else parse_line(line, size)
            if parsed is None:
                rx.malformed += 1
                rx.tracker.lines += 1
                continue
            pubid, seq, stamp = parsed
            if pubid == rx.pubid and pubid and not self.wire.echo:
                rx.echoed += 1
                rx.tracker.lines += 1
                continue
            rx.tracker.observe(pubid, seq)
            if hist is not None:
                hist.add(t - stamp // 1000)

    def _trim(self) -> None:
        """Drop reference bytes that every fast receiver has moved past."""
        ref = self.ref
        low = min((r.g for r in self.receivers if r.fast), default=ref.end)
        if low - ref.base >= TRIM_LINES:
            del ref.data[: (low - ref.base) * self.frame]
            ref.base = low

    # -- the end -------------------------------------------------------------------

    def received_lines(self, rx: Receiver, published: dict[int, int]) -> int:
        """Distinct published lines this receiver got, checked (duplicates don't count)."""
        if rx.fast:
            return rx.g - rx.own_k
        exclude = None if self.wire.echo else (rx.pubid or None)
        return sum(rx.tracker.received(p, n) for p, n in published.items() if p != exclude)

    def finish(self, published: dict[int, int]) -> None:
        """Settle every receiver and fill in the result."""
        for rx in self.receivers:
            if rx.fast and rx is not self.ref_rx:
                self._advance(rx)
                if (len(rx.pending) - rx.pos) >= self.frame:
                    self._to_slow(rx)
        res = self.result
        for rx in self.receivers:
            exclude = None if self.wire.echo else (rx.pubid or None)
            expected = sum(n for p, n in published.items() if p != exclude)
            res.expected += expected
            if rx.fast:
                got = rx.g - rx.own_k
                res.delivered += got
                res.lost += max(0, expected - got)
            else:
                tr = rx.tracker
                res.delivered += tr.lines
                res.lost += tr.lost(published, exclude)
                res.reordered += tr.reordered
                res.duplicated += tr.duplicated
                res.unexpected += tr.unexpected(published)
                res.malformed += rx.malformed
                res.echoed += rx.echoed
            if rx.hist is not None:
                for value, count in rx.hist.counts.items():
                    res.latency[value] = res.latency.get(value, 0) + count
        res.skipped = sum(p.skipped for p in self.publishers)

    def close(self) -> None:
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass
        self.poller.close()


def _wait_message(worker: Worker, kind: str, deadline_ns: int) -> tuple[Any, ...]:
    def got() -> bool:
        return any(m[0] in (kind, "abort") for m in worker.messages)

    worker.serve_pipe_until(got, deadline_ns)
    while worker.messages:
        msg = worker.messages.popleft()
        if msg[0] == "abort":
            raise BenchError("aborted by the coordinator")
        if msg[0] == kind:
            return msg
    raise BenchError(f"timed out waiting for {kind!r} from the coordinator")


def _report_error(pipe: Connection, index: int, message: str) -> None:
    try:
        pipe.send(("error", index, message))
    except OSError:
        pass  # the coordinator is gone: nobody to tell


def worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the coordinator stops us
    raise_nofile()
    worker = Worker(plan, pipe)
    try:
        worker.poller.register(pipe.fileno(), worker.poller.IN)
        worker.connect_all()
        deadline = time.monotonic() + plan.connect_timeout
        if worker.wire.subscribe:
            worker.wait_handshake(SUBSCRIBED, deadline)
        pipe.send(("ready", plan.index, len(worker.sockets)))
        worker.wait_handshake(RUNNING, deadline)
        pipe.send(("synced", plan.index))
        far = time.monotonic_ns() + int(plan.connect_timeout * 4e9) + 3600 * 10**9
        msg = _wait_message(worker, "go", far)
        go_ns, end_ns = int(msg[1]), int(msg[2])
        # The hot loop makes no reference cycles; the collector's passes over
        # millions of short-lived bytes objects would only cost time.
        gc.collect()
        gc.freeze()
        gc.disable()
        cpu0 = self_cpu_ns()
        wait0 = runqueue_wait_ns("self")
        worker.start_publishing(go_ns, end_ns)
        worker.serve_pipe_until(lambda: not worker.publishing, end_ns + 10**9)
        worker.publishing = False
        counts = {p.pubid: p.seq for p in worker.publishers}
        pipe.send(("published", plan.index, counts, worker.result.last_tx_ns))
        msg = _wait_message(worker, "expect", far)
        published: dict[int, int] = msg[1]
        grace_end = time.monotonic_ns() + int(float(msg[2]) * 1e9)
        expected = {
            id(rx): sum(
                n for p, n in published.items() if worker.wire.echo or p != rx.pubid or not rx.pubid
            )
            for rx in worker.receivers
        }

        waiting = set(worker.receivers)
        next_check = 0

        def complete() -> bool:
            """Every receiver has every line (checked at most every 5 ms)."""
            nonlocal next_check
            now = time.monotonic_ns()
            if now < next_check:
                return False
            next_check = now + 5_000_000
            for rx in list(waiting):
                if rx.closed or worker.received_lines(rx, published) >= expected[id(rx)]:
                    waiting.discard(rx)
            return not waiting

        worker.serve_pipe_until(complete, grace_end)
        next_check = 0
        worker.result.complete = complete()
        worker.result.cpu_ns = self_cpu_ns() - cpu0
        worker.result.wait_ns = runqueue_wait_ns("self") - wait0
        worker.finish(published)
        pipe.send(("result", plan.index, worker.result))
    except BenchError as err:
        _report_error(pipe, plan.index, str(err))
    except Exception as err:  # a bug: report it rather than hang the coordinator
        _report_error(pipe, plan.index, f"worker crashed: {err!r}\n{traceback.format_exc()}")
    finally:
        worker.close()
        pipe.close()
