"""Publishing: when each publisher sends which lines.

Three schedules decide what is due:

- `EvenSchedule` (`--pattern even`, a target rate R over P publishers): line
  k of the whole run (all workers together) is due at exactly go + k/R and
  is sent by publisher k mod P, on its own, in one `send`, stamped with the
  time it was sent.  Deadlines are absolute, computed from k, so being late
  once does not shift the rest, and a late line is followed by the next at
  its own time (catching up sends what is overdue at once).  A worker owns
  the publishers whose index is its share; it sleeps with `Poller.wait`
  (microsecond timeouts) until `SPIN_NS` before the next deadline and polls
  without blocking from there, which keeps the receiving going while it
  waits.  How late each line left is recorded (`lateness`, in us) and
  reported, so a reader can see whether the schedule was kept.
- `TickSchedule` (`--pattern ticks`): every `--tick-ms` each publisher
  queues the lines that became due since its last tick, stamped with the
  tick's time, and sends them with one `send`.  Publishers are spread over
  the tick (a phase each), but every publisher sends in bursts; lateness is
  recorded against the even deadlines, so it shows the burstiness.
- `WindowSchedule` (fanout at the highest rate): a publisher may have
  `--window` lines in flight (sent, not yet seen by the worker's reference
  receiver); it tops the window up whenever a quarter of it is free.

A publisher never queues more than `MAX_OUTBUF` bytes: when the server stops
reading, a rate publisher skips the lines that are due (counted as skipped)
rather than building an unbounded backlog in the generator.  Each schedule's
`service(now)` sends what is due and says when it wants to run next; the
worker's loop (`ratbench.worker`) sleeps in epoll until then.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable

from ratbench.check import LatencyHistogram
from ratbench.plan import WorkerPlan, WorkerResult
from ratbench.poller import WOULD_BLOCK, Poller
from ratbench.wire import LineEncoder, Wire

SEND_CHUNK_LINES = 1024  # lines per batch a publisher builds at most
MAX_OUTBUF = 4 * 1024 * 1024  # a rate publisher skips lines rather than queue more
INFINITY = 1 << 62
SPIN_NS = 100_000  # `--pattern even`: stop sleeping this long before a deadline


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
        "wire",
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
        self.wire: Wire | None = None  # set when connected (--ws-fraction mixes two)


class Schedule:
    """The publishers of one worker and the sending they share (see the module notes)."""

    def __init__(
        self,
        plan: WorkerPlan,
        wire: Wire,
        poller: Poller,
        publishers: list[Publisher],
        result: WorkerResult,
        *,
        seen: Callable[[int, int], int] | None = None,
    ) -> None:
        self.plan = plan
        # (pubid, fallback) -> lines of pubid the reference got in order (window mode)
        self.seen = seen or (lambda pubid, fallback: fallback)
        self.wire = wire
        self.poller = poller
        self.publishers = publishers
        self.result = result
        self.active = False
        self.go_ns = 0
        self.end_ns = 0
        self.lateness = LatencyHistogram()  # us each line was sent after it was due
        self.unwatched: set[int] = set()  # fds read on a timer, not watched for input

    precise = False  # True: the loop must wake up at `service`'s time to the microsecond

    def start(self, go_ns: int, end_ns: int) -> None:
        """Publish from `go_ns` until `end_ns` (monotonic ns)."""
        self.go_ns, self.end_ns = go_ns, end_ns
        self.active = bool(self.publishers)
        self.result.first_tx_ns = go_ns

    def stop(self) -> None:
        self.active = False

    def service(self, now: int) -> int:
        """Send what is due at `now`; return when to call again (monotonic ns)."""
        raise NotImplementedError

    def counts(self) -> dict[int, int]:
        """Lines sent so far, per publisher id."""
        return {p.pubid: p.seq for p in self.publishers}

    def skipped(self) -> int:
        return sum(p.skipped for p in self.publishers)

    def queue(self, pub: Publisher, count: int, now: int) -> None:
        """Queue `count` lines stamped `now` and send what the socket takes."""
        while count > 0:
            n = min(count, SEND_CHUNK_LINES)
            pub.outbuf += (pub.wire or self.wire).publish(pub.encoder.lines(pub.seq, n, now))
            pub.seq += n
            count -= n
        self.result.last_tx_ns = now
        self.flush(pub)

    def flush(self, pub: Publisher) -> None:
        """Send queued bytes; watch for writability only while some are left."""
        if not pub.alive:
            return
        sent = self.send(pub, pub.outbuf)
        if pub.alive:
            del pub.outbuf[:sent]
            self.watch(pub)

    def send(self, pub: Publisher, data: bytes | bytearray) -> int:
        """One `send`: the bytes taken (0 when the socket is full; a failure kills `pub`)."""
        try:
            return pub.sock.send(data)
        except WOULD_BLOCK:
            return 0
        except OSError:
            pub.alive = False
            self.result.publisher_errors += 1
            return 0

    def watch(self, pub: Publisher) -> None:
        """Watch `pub` for input (unless it is read on a timer) and, while backlogged, output."""
        fd = pub.sock.fileno()
        want = 0 if fd in self.unwatched else self.poller.IN
        self.poller.modify(fd, want | (self.poller.OUT if pub.outbuf else 0))


class TickSchedule(Schedule):
    """A fixed rate, sent in batches every tick (see the module notes)."""

    next_tick = 0

    def start(self, go_ns: int, end_ns: int) -> None:
        super().start(go_ns, end_ns)
        self.next_tick = 0
        n = max(1, len(self.publishers))
        for i, pub in enumerate(self.publishers):
            pub.phase = (self.plan.index + i / n) % 1.0  # spread the sends in time

    def service(self, now: int) -> int:
        if now >= self.next_tick:
            self._publish_due(now)
            self.next_tick = now + self.plan.tick_ns
        return self.next_tick

    def _publish_due(self, now: int) -> None:
        """Queue each publisher's lines that are due by now."""
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
            first = pub.scheduled
            pub.scheduled += due
            if len(pub.outbuf) > MAX_OUTBUF:
                pub.skipped += due
                continue
            # Line s of this publisher was due when elapsed * per_ns + phase reached s + 1.
            base = self.go_ns - pub.phase / per_ns
            late = self.lateness.add_many
            late(int(now - base - (s + 1) / per_ns) // 1000 for s in range(first, first + due))
            self.queue(pub, due, now)
        if all(p.scheduled >= p.limit or not p.alive for p in self.publishers):
            self.stop()


class EvenSchedule(Schedule):
    """Every line at its own, evenly spaced time (see the module notes)."""

    precise = True

    def start(self, go_ns: int, end_ns: int) -> None:
        super().start(go_ns, end_ns)
        # Publisher ids are 1 + the publisher's index over the whole run.
        self.order = sorted(self.publishers, key=lambda p: p.pubid)
        self.slots = [p.pubid - 1 for p in self.order]
        self.total = self.plan.publishers_total
        self.period = 1e9 / (self.plan.rate_per_publisher * self.total)
        self.round = 0
        self.i = 0
        self.finished = 0
        self.late: Counter[int] = Counter()  # us late -> lines (merged into `lateness`)
        # Line `round * total + slot` of the run is due `period` ns after the one before.
        self.next_due = self.go_ns + int(self.slots[0] * self.period) if self.slots else end_ns

    def service(self, now: int) -> int:
        if not self.order:
            self.stop()
            return INFINITY
        end = self.end_ns
        order = self.order
        late = self.late
        clock = time.monotonic_ns
        while self.next_due <= now:
            due = self.next_due
            if due >= end:
                self.stop()
                return end
            pub = order[self.i]
            if pub.alive and pub.seq < pub.limit:
                now = clock()
                self.send_one(pub, now)
                late[(now - due) // 1000] += 1
                self.result.last_tx_ns = now
                if pub.seq >= pub.limit:
                    self.finished += 1
                    if self.finished >= len(order):
                        self.stop()
                        return end
            self.i += 1
            if self.i == len(order):
                self.i = 0
                self.round += 1
            self.next_due = self.go_ns + int(
                (self.round * self.total + self.slots[self.i]) * self.period
            )
        return self.next_due

    def stop(self) -> None:
        super().stop()
        if self.late:  # into the histogram (which bounds its size) once, not per line
            self.lateness.merge(self.late)
            self.late.clear()

    def backlog(self, pub: Publisher, rest: bytes) -> None:
        """The socket took only part of a line: queue the rest, watch for writability."""
        pub.outbuf += rest
        self.watch(pub)

    def send_one(self, pub: Publisher, now: int) -> None:
        """Send one line now, or queue it behind what the socket did not take yet."""
        pub.scheduled += 1
        if pub.outbuf:
            if len(pub.outbuf) > MAX_OUTBUF:
                pub.skipped += 1
                return
            pub.outbuf += (pub.wire or self.wire).publish_one(pub.encoder.line(pub.seq, now))
            pub.seq += 1
            self.result.last_tx_ns = now
            return
        data = (pub.wire or self.wire).publish_one(pub.encoder.line(pub.seq, now))
        pub.seq += 1
        sent = self.send(pub, data)
        if pub.alive and sent < len(data):
            self.backlog(pub, data[sent:])


class WindowSchedule(Schedule):
    """As fast as a bounded in-flight window allows (see the module notes)."""

    def service(self, now: int) -> int:
        if self._publish_window(now):
            return now  # the window reopened: keep going
        return now + 10_000_000

    def _publish_window(self, now: int) -> bool:
        """Top every publisher up to its window.  True if any sent."""
        if now < self.go_ns:
            return False
        window = self.plan.window
        sent = False
        for pub in self.publishers:
            if not pub.alive or pub.seq >= pub.limit or pub.outbuf:
                continue
            seen = self.seen(pub.pubid, pub.seq)
            room = min(window - (pub.seq - seen), pub.limit - pub.seq)
            if room >= max(1, window // 4) or (room > 0 and pub.seq == seen):
                self.queue(pub, min(room, SEND_CHUNK_LINES), now)
                sent = True
        if all(p.seq >= p.limit or not p.alive for p in self.publishers):
            self.stop()
        return sent


def make_schedule(
    plan: WorkerPlan,
    wire: Wire,
    poller: Poller,
    publishers: list[Publisher],
    result: WorkerResult,
    *,
    seen: Callable[[int, int], int],
) -> Schedule:
    """The schedule the plan asks for: a rate (even or in ticks), or a window."""
    kind: type[Schedule] = WindowSchedule
    if plan.rate_per_publisher > 0:
        kind = EvenSchedule if plan.pattern == "even" else TickSchedule
    return kind(plan, wire, poller, publishers, result, seen=seen)
