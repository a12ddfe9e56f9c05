"""One load-generator process: its event loop and the phases of a run.

Theory of operation
===================
A worker owns a share of the run's connections and drives them from one
level-triggered epoll loop over non-blocking sockets (`ratbench.poller`).
The coordinator (`ratbench.runner`) talks to it over a pipe whose end sits
in the same epoll set (`ratbench.pipe`), in phases:

1. connect every connection of the plan (`ratbench.connect`) -> "ready";
2. wait for the sync line on every receiver -> "synced";
3. "go" -> publish until the end time (`ratbench.publish`) -> "published";
4. "expect" (what every publisher sent) -> receive until every receiver has
   everything or the grace period ends -> "result".

Every byte received is checked as it arrives (`ratbench.receive`: the
reference receiver and the fast path).  This module is the loop that ties
the parts together: it polls, hands readable sockets' bytes to the checker,
writable ones to the schedule, pipe messages to the link, and wakes up when
the schedule next has something due.

Costs that matter at millions of lines/s
----------------------------------------
- One receive buffer for all sockets (`recv_into`): `recv(256 KiB)` would
  allocate a fresh 256 KiB object per call, and glibc serves that with
  mmap/munmap while the loop never frees one whole (measured: 18 us against
  3 us per call).
- Level-triggered epoll and one `recv` per ready socket per wake-up: when
  the generator falls behind, chunks grow and the per-line cost falls.
- Only the timed receivers (and publish-only sockets) are watched by the
  loop's epoll during the load.  The others are read on a timer, every
  `LAZY_NS`, those with data (an epoll set of their own says which) until
  each has nothing more, `LAZY_BATCH` per turn of the loop so that lines due
  meanwhile are not held up: with `--pattern even` every line reaches every
  receiver on its own, and waking up for each would cost one `recv` per line
  per receiver (100 clients at 2,000 lines/s: 200,000 a second).  Their
  checking is exact all the same; only their arrival times would be late,
  and they are not timed.  A socket buffer holds far more than `LAZY_NS` of
  lines, so the server never sees them as slow.
- A receiver's unchecked bytes grow in place (`Checker.on_data`): one that
  waits for the reference must not copy its whole backlog per arrival.
- Freed memory stays in the process (`steady_malloc`): otherwise bigger
  chunks, when the generator falls behind, cost freshly zeroed pages.
- The arrival time is read once per wake-up, not per socket.
- The garbage collector is off during the run: the loop makes no cycles.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ratbench.connect import Connections, Connector
from ratbench.pipe import CoordinatorLink, worker_entry
from ratbench.plan import WorkerPlan, WorkerResult, room_of
from ratbench.poller import WOULD_BLOCK, Poller, now_us, precise_timers, raise_nofile, steady_malloc
from ratbench.procstat import runqueue_wait_ns, self_cpu_ns
from ratbench.publish import SPIN_NS, make_schedule
from ratbench.receive import RUNNING, SUBSCRIBED, Checker, Receiver, merge_latency
from ratbench.wire import Wire, make_wire, sync_line

RECV_SIZE = 256 * 1024
PROGRESS_NS = 250_000_000
LAZY_NS = 5_000_000  # untimed receivers are read this often during the load
LAZY_BATCH = 8  # of them, read per turn of the loop


class Worker:
    """The event loop of one worker process (see the module notes)."""

    def __init__(self, plan: WorkerPlan, link: CoordinatorLink) -> None:
        self.plan = plan
        self.link = link
        self.wire: Wire = make_wire(plan.proto, plan.line_size, plan.chat)
        self.frame = self.wire.frame_size
        self.poller = Poller()
        self.conns = Connections()
        # One receive buffer for every socket: recv() of a large size would
        # allocate (mmap) a fresh buffer per call, which costs more than the read.
        self.rbuf = bytearray(RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.result = WorkerResult(plan.index)
        self.ws_wire = (
            make_wire("ws", plan.line_size, plan.chat) if any(c.ws for c in plan.clients) else None
        )
        # One checker per wire (--ws-fraction: TCP and WebSocket), room and server,
        # each with its reference (see ratbench.receive); made once connected.
        self.checkers: list[Checker] = []
        self.schedule = make_schedule(
            plan,
            self.wire,
            self.poller,
            self.conns.publishers,
            self.result,
            seen=self.delivered_seq,
        )
        self.next_progress = 0
        self.lazy: list[Receiver] = []  # read on a timer (see the module notes)
        self.lazy_poller = Poller()  # which of them have data (one poll per timer)
        self.next_lazy = 0
        self.lazy_ready: deque[int] = deque()  # fds of `lazy` with data, not read yet

    def connect(self) -> None:
        """Connect everything, subscribe (Redis) and say "ready"; then wait for the sync."""
        plan = self.plan
        self.poller.register(self.link.fileno(), self.poller.IN)
        connector = Connector(
            plan,
            self.wire,
            self.poller,
            self.link,
            self.conns,
            rbuf=self.rview,
            ws_wire=self.ws_wire,
        )
        connector.connect_all()
        receivers = self.conns.receivers
        self.result.latency_receivers = sum(1 for r in receivers if r.hist is not None)
        self.result.receivers = len(receivers)
        self.checkers = self.make_checkers(receivers)
        deadline = time.monotonic() + plan.connect_timeout
        if any(c.wire.handshake for c in self.checkers):
            connector.wait_handshake(SUBSCRIBED, deadline, self.on_data)
        self.link.send("ready", len(self.conns.sockets))
        connector.wait_handshake(RUNNING, deadline, self.on_data)
        self.link.send("synced")

    def make_checkers(self, receivers: list[Receiver]) -> list[Checker]:
        """A checker for each wire, room and node in use, given its receivers (reference first)."""
        plan = self.plan
        sync = sync_line(plan.sync_nonce, plan.line_size)
        groups: dict[tuple[int, int, int], list[Receiver]] = {}
        for rx in receivers:  # the references come first (ratbench.connect)
            groups.setdefault((id(rx.wire), rx.room, rx.node), []).append(rx)
        checkers = []
        for mine in groups.values():
            first = mine[0]
            room = first.room

            def hears(pubid: int, room: int = room) -> bool:
                return room_of(pubid, plan.rooms) in (None, room)

            checker = Checker(
                first.wire, self.result, first.wire.received(sync), hears=hears, node=first.node
            )
            checker.attach(mine, plan.reference)
            checkers.append(checker)
        return checkers

    def on_data(self, rx: Receiver, data: bytes, t: int) -> None:
        """Bytes for `rx`, to the checker of its wire."""
        assert rx.checker is not None
        rx.checker.on_data(rx, data, t)

    def delivered_seq(self, pubid: int, fallback: int) -> int:
        """Window mode: what a reference in `pubid`'s room got in order (the first one)."""
        for checker in self.checkers:
            if checker.ref_rx is not None and checker.hears(pubid):
                return checker.delivered_seq(pubid, fallback)
        return fallback

    def wait_message(self, kind: str, deadline_ns: int) -> tuple[Any, ...]:
        """Keep the loop running until the coordinator sends `kind`; return it."""
        self.run_until(lambda: self.link.has(kind), deadline_ns)
        return self.link.take(kind)

    def run_until(self, done: Callable[[], bool], deadline_ns: int) -> None:
        """Run the I/O loop until `done()` or the deadline (monotonic ns)."""
        link = self.link
        pipe_fd = link.fileno()
        by_fd = self.conns.by_fd
        rview = self.rview
        drains = self.conns.drains
        poll = self.poller.poll
        on_data = self.on_data
        out = self.poller.OUT
        wait = self.poller.wait
        schedule = self.schedule
        clock = time.monotonic_ns
        while not (done() or link.aborted):
            now = clock()
            if now >= deadline_ns:
                return
            wake = min(deadline_ns, now + 50_000_000)
            if self.lazy:
                if not self.lazy_ready and now >= self.next_lazy:
                    self.next_lazy = now + LAZY_NS
                    self.lazy_ready.extend(fd for fd, _ in self.lazy_poller.poll(0))
                if self.lazy_ready:
                    self._read_lazy()
                wake = min(wake, now if self.lazy_ready else self.next_lazy)
            precise = False
            if schedule.active:
                if now >= schedule.end_ns:
                    schedule.stop()
                else:
                    due = min(schedule.service(now), schedule.end_ns)
                    if schedule.active:
                        wake = min(wake, due)
                        precise = schedule.precise
            if precise:
                # Sleep to the microsecond, then poll without blocking until it is due.
                left = wake - clock()
                events = poll(0) if left <= SPIN_NS else wait(left - SPIN_NS)
            else:
                events = poll(max(0.0, (wake - now) / 1e9))
            t = now_us()
            received = False
            for fd, ev in events:
                if fd == pipe_fd:
                    link.read()
                    continue
                rx, pub = by_fd[fd]
                if ev & out and pub is not None:
                    schedule.flush(pub)
                    if not ev & ~out:
                        continue
                sock = rx.sock if rx is not None else pub.sock  # type: ignore[union-attr]
                try:
                    n = sock.recv_into(rview)
                except WOULD_BLOCK:
                    continue
                except OSError:
                    n = 0
                if not n:
                    self._closed(fd)
                    continue
                if rx is not None and fd not in drains:
                    on_data(rx, rview[:n].tobytes(), t)
                    received = True
                else:
                    self.result.drained += n
            if received:
                self.result.last_rx_ns = t * 1000
            for checker in self.checkers:
                checker.unblock()
            if now >= self.next_progress:
                self.next_progress = now + PROGRESS_NS
                self._progress()
                for checker in self.checkers:
                    checker.trim()

    def _read_lazy(self) -> None:
        """Read the next few untimed receivers that had data, each to the end.

        One `epoll_wait` of their own, every `LAZY_NS`, says which have data
        (`lazy_ready`): a thousand idle sockets cost nothing, where a `recv`
        on each would cost a failed system call (and an exception) each, 200
        times a second.  They are read `LAZY_BATCH` at a time, one batch per
        turn of the loop, so that reading a hundred of them does not hold up
        the lines due meanwhile (`--pattern even`: one every 20 us at 50,000
        lines/s).
        """
        rview = self.rview
        on_data = self.on_data
        by_fd = self.conns.by_fd
        ready = self.lazy_ready
        t = now_us()
        got = False
        for _ in range(min(LAZY_BATCH, len(ready))):
            fd = ready.popleft()
            rx = by_fd[fd][0] if fd in by_fd else None
            if rx is None or rx.closed:
                continue
            while True:
                try:
                    n = rx.sock.recv_into(rview)
                except WOULD_BLOCK:
                    break
                except OSError:
                    n = 0
                if not n:
                    self._closed(fd)
                    break
                on_data(rx, rview[:n].tobytes(), t)
                got = True
                if n < len(rview) and not self.plan.tls:  # TLS: a record at a time
                    break
        if got:
            self.result.last_rx_ns = t * 1000
        for checker in self.checkers:
            checker.unblock()

    def _unwatch_untimed(self) -> None:
        """From now on read the untimed receivers on a timer (see the module notes)."""
        schedule = self.schedule
        for rx in self.conns.receivers:
            if rx.hist is not None or rx.closed:
                continue
            if rx.checker is not None and rx is rx.checker.ref_rx:
                continue  # read at once: the others are compared with what it got
            fd = rx.sock.fileno()
            self.lazy.append(rx)
            self.lazy_poller.register(fd, self.lazy_poller.IN)
            schedule.unwatched.add(fd)
            _, pub = self.conns.by_fd[fd]
            if pub is not None:
                schedule.watch(pub)
            else:
                self.poller.modify(fd, 0)

    def _closed(self, fd: int) -> None:
        rx, pub = self.conns.by_fd[fd]
        self.poller.unregister(fd)
        self.lazy_poller.unregister(fd)
        if rx is not None and rx.checker is not None:
            rx.checker.closed(rx)
        if pub is not None and pub.alive:
            pub.alive = False
            if rx is None:
                self.result.disconnected += 1

    def _progress(self) -> None:
        delivered = sum(r.total // r.wire.frame_size for r in self.conns.receivers)
        published = sum(p.seq for p in self.conns.publishers)
        self.link.send("progress", published, delivered)

    def publish(self, go_ns: int, end_ns: int) -> None:
        """Publish from `go_ns` to `end_ns`; say "published" with the counts."""
        self._unwatch_untimed()
        self.schedule.start(go_ns, end_ns)
        self.run_until(lambda: not self.schedule.active, end_ns + 10**9)
        self.schedule.stop()
        self.link.send("published", self.schedule.counts(), self.result.last_tx_ns)

    def drain(self, published: dict[int, int], grace_s: float) -> None:
        """Receive until every receiver has what was published, or the grace ends."""
        checker_of: dict[int, Checker] = {}
        for rx in self.conns.receivers:
            if rx.checker is not None:
                checker_of[id(rx)] = rx.checker
        receivers = [rx for rx in self.conns.receivers if id(rx) in checker_of]
        expected = {id(rx): checker_of[id(rx)].expected_lines(rx, published) for rx in receivers}
        waiting = set(receivers)
        next_check = 0

        def complete() -> bool:
            """Every receiver has every line (checked at most every 5 ms)."""
            nonlocal next_check
            now = time.monotonic_ns()
            if now < next_check:
                return False
            next_check = now + 5_000_000
            for rx in list(waiting):
                got = checker_of[id(rx)].received_lines(rx, published)
                if rx.closed or got >= expected[id(rx)]:
                    waiting.discard(rx)
            return not waiting

        self.run_until(complete, time.monotonic_ns() + int(grace_s * 1e9))
        next_check = 0
        self.result.complete = complete()

    def close(self) -> None:
        self.conns.close()
        self.poller.close()
        self.lazy_poller.close()


def run_worker(plan: WorkerPlan, link: CoordinatorLink) -> None:
    """The phases of one worker (see the module notes)."""
    raise_nofile()
    precise_timers()
    steady_malloc()
    worker = Worker(plan, link)
    try:
        worker.connect()
        far = time.monotonic_ns() + int(plan.connect_timeout * 4e9) + 3600 * 10**9
        msg = worker.wait_message("go", far)
        go_ns, end_ns = int(msg[1]), int(msg[2])
        # The hot loop makes no reference cycles; the collector's passes over
        # millions of short-lived bytes objects would only cost time.
        gc.collect()
        gc.freeze()
        gc.disable()
        cpu0 = self_cpu_ns()
        wait0 = runqueue_wait_ns("self")
        worker.publish(go_ns, end_ns)
        msg = worker.wait_message("expect", far)
        published: dict[int, int] = msg[1]
        worker.drain(published, float(msg[2]))
        worker.result.cpu_ns = self_cpu_ns() - cpu0
        worker.result.wait_ns = runqueue_wait_ns("self") - wait0
        for checker in worker.checkers:
            checker.finish(published)
        merge_latency(worker.conns.receivers, worker.result)
        worker.result.skipped = worker.schedule.skipped()
        worker.result.lateness = dict(worker.schedule.lateness.counts)
        link.send("result", worker.result)
    finally:
        worker.close()


def worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """Entry point of a worker process."""
    worker_entry(lambda link: run_worker(plan, link), pipe, plan.index)
