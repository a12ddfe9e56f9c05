"""Publishing: when each publisher sends which lines.

Two schedules decide what is due:

- `TickSchedule` (a target rate): every `--tick-ms` each publisher queues
  the lines that became due since its last tick, stamped with the tick's
  time, and sends them with one `send`.  Publishers are spread over the
  tick (a phase each), but every publisher sends in bursts.
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
from collections.abc import Callable

from ratbench.plan import WorkerPlan, WorkerResult
from ratbench.poller import Poller
from ratbench.wire import LineEncoder, Wire

SEND_CHUNK_LINES = 1024  # lines per batch a publisher builds at most
MAX_OUTBUF = 4 * 1024 * 1024  # a rate publisher skips lines rather than queue more
INFINITY = 1 << 62


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


class Schedule:
    """The publishers of one worker and the sending they share (see the module notes)."""

    def __init__(
        self,
        plan: WorkerPlan,
        wire: Wire,
        poller: Poller,
        publishers: list[Publisher],
        result: WorkerResult,
    ) -> None:
        self.plan = plan
        self.wire = wire
        self.poller = poller
        self.publishers = publishers
        self.result = result
        self.active = False
        self.go_ns = 0
        self.end_ns = 0

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
            pub.outbuf += self.wire.publish(pub.encoder.lines(pub.seq, n, now))
            pub.seq += n
            count -= n
        self.result.last_tx_ns = now
        self.flush(pub)

    def flush(self, pub: Publisher) -> None:
        """Send queued bytes; watch for writability only while some are left."""
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
            pub.scheduled += due
            if len(pub.outbuf) > MAX_OUTBUF:
                pub.skipped += due
                continue
            self.queue(pub, due, now)
        if all(p.scheduled >= p.limit or not p.alive for p in self.publishers):
            self.stop()


class WindowSchedule(Schedule):
    """As fast as a bounded in-flight window allows (see the module notes)."""

    def __init__(
        self,
        plan: WorkerPlan,
        wire: Wire,
        poller: Poller,
        publishers: list[Publisher],
        result: WorkerResult,
        *,
        seen: Callable[[int, int], int],
    ) -> None:
        super().__init__(plan, wire, poller, publishers, result)
        self.seen = seen  # (pubid, fallback) -> lines of pubid the reference got in order

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
    """The schedule the plan asks for: a rate (ticks), or a window."""
    if plan.rate_per_publisher > 0:
        return TickSchedule(plan, wire, poller, publishers, result)
    return WindowSchedule(plan, wire, poller, publishers, result, seen=seen)
