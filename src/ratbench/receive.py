"""Receiving and checking: every line that arrives is checked, few are parsed.

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

Rooms and nodes
---------------
The order that the fast path relies on is one room's (chat mode, `--rooms`)
on one server (several servers of one cluster, each with its own order:
the SPEC lets two senders on different nodes arrive in different orders on
different nodes).  So there is one `Checker`, with a reference of its own,
per room and node (and wire): the reference checks each publisher's
sequence, which holds everywhere, and the receivers of its room on its
node are compared with it.  If a server did not keep even that order, its
receivers would fall back to the slow path, whose checks are per publisher:
nothing it is allowed to do is ever counted as reordered.

Notices
-------
In chat mode the server sends lines of its own (`* alice joined #r1`).  A
comparison or the reference's pattern fails on one; only then is the frame
there asked whether it is one (`Wire.skippable`), and if so it is cut out
of the pending bytes and counted, and checking goes on.  WebSocket control
frames (pings) are skipped the same way.

Latency
-------
Every line of the *timed* receivers is timed (all receivers unless that
would exceed ~500k timed lines/s; the report says how many): arrival time,
taken once per `epoll_wait` wake-up, minus the send time in the line.  When
only some are timed, they are spread evenly over the order in which they
connected (`ratbench.connect.is_timed`): a server that sends a turn's lines
in accept order serves the first ones first, and timing only those would
flatter it.  The timed receivers of one server share one histogram.  A
publisher that stamps a whole batch with one time (`--pattern ticks`) makes
runs of equal send times; the reference keeps those runs, and a chunk is
timed with one histogram update per run rather than per line.

The reference buffer is trimmed (`Checker.trim`) once every fast receiver
has moved past a stretch of it, so a long run holds only what some receiver
still has to compare.
"""

from __future__ import annotations

import socket
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Callable

from ratbench.check import LatencyHistogram, SeqTracker
from ratbench.plan import WorkerResult
from ratbench.wire import NOTICE, LineReader, RespReader, Wire, parse_line

TRIM_LINES = 65536  # reference lines consumed by all before trimming its buffer
COMPACT_BYTES = 1 << 16  # a receiver's checked bytes kept before dropping them
INFINITY = 1 << 62

# Receiver phases.
CONNECTED = 0
SUBSCRIBED = 1  # Redis: SUBSCRIBE acknowledged (the line protocol skips this)
RUNNING = 2  # got the sync line: what follows is measured


class Receiver:
    """One receiving connection and what it has got so far."""

    __slots__ = (
        "checker",
        "closed",
        "echoed",
        "fast",
        "frames",
        "g",
        "hist",
        "last_t",
        "malformed",
        "marks",
        "node",
        "notices",
        "own",
        "own_k",
        "pending",
        "phase",
        "pos",
        "pubid",
        "reader",
        "resp",
        "room",
        "skip_sync",
        "slow_buf",
        "sock",
        "sync_tail",
        "total",
        "tracker",
        "wire",
    )

    def __init__(
        self, sock: socket.socket, pubid: int, hist: LatencyHistogram | None, wire: Wire
    ) -> None:
        self.sock = sock
        self.wire = wire  # how it talks to the server (--ws-fraction mixes two)
        self.pubid = pubid  # the client's own publisher id (0: publishes nothing)
        self.hist = hist  # None: latency not measured on this receiver
        self.phase = CONNECTED
        self.skip_sync = True  # drop repeated sync frames before the first measured line
        self.sync_tail = b""
        self.closed = False
        self.fast = True
        self.pending: bytes | bytearray = b""  # unchecked bytes from `pos` on (fast path)
        self.pos = 0
        self.total = 0  # bytes received since the sync frame
        self.frames = 0  # frames checked on the fast path
        self.g = 0  # next reference index this receiver expects
        self.own: array[int] | None = None  # reference indices of its own lines
        self.own_k = 0  # own lines skipped so far
        self.marks: deque[tuple[int, int]] = deque()  # (bytes received, arrival us)
        self.tracker = SeqTracker()
        self.slow_buf = bytearray()
        self.resp: RespReader | None = None  # Redis: the handshake's reader
        self.reader: LineReader | None = None  # the slow path's (see `Wire.reader`)
        self.checker: Checker | None = None  # the one that checks it (one per wire)
        self.malformed = 0
        self.echoed = 0
        self.last_t = 0
        self.room = 0  # chat mode, --rooms: its room
        self.node = 0  # several servers: the one it is connected to
        self.notices = 0  # chat notices (and WebSocket control frames) skipped


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


class Checker:
    """Checks what every receiver of one worker gets (see the module notes)."""

    def __init__(
        self,
        wire: Wire,
        result: WorkerResult,
        sync_frame: bytes,
        *,
        hears: Callable[[int], bool] | None = None,
        node: int = 0,
    ) -> None:
        """`hears(pubid)`: do these receivers get that publisher's lines (its room)?"""
        self.wire = wire
        self.sync_frame = sync_frame  # the sync line as a receiver gets it
        self.hears = hears or (lambda pubid: True)
        self.node = node  # the server these receivers are connected to
        self._published: dict[int, int] | None = None  # `heard`'s memo
        self._heard: dict[int, int] = {}
        self.frame = wire.frame_size
        self.line_size = wire.line_size
        self.result = result
        self.receivers: list[Receiver] = []
        self.ref = Reference()
        self.ref_rx: Receiver | None = None
        self.blocked: set[Receiver] = set()  # fast receivers ahead of the reference
        self.unblocked_at = 0  # the reference's end when they were last let go on

    def attach(self, receivers: list[Receiver], reference: bool) -> None:
        """Take the connected receivers; the first is the reference if `reference`."""
        self.receivers = receivers
        for r in receivers:
            r.checker = self
        self.ref_rx = receivers[0] if reference and receivers else None
        if self.ref_rx is not None:
            for r in receivers[1:]:
                if r.pubid and not self.wire.echo:
                    r.own = self.ref.own.setdefault(r.pubid, array("q"))
        else:
            for r in receivers:
                r.fast = False

    def delivered_seq(self, pubid: int, fallback: int) -> int:
        """How many of `pubid`'s lines the reference got in order (window mode)."""
        if self.ref.clean:
            return self.ref.counts.get(pubid, 0)
        if self.ref_rx is not None:
            return self.ref_rx.tracker.next_seq(pubid)
        return fallback

    def closed(self, rx: Receiver) -> None:
        if rx.closed:
            return
        rx.closed = True
        self.result.disconnected += 1
        if rx is self.ref_rx:
            self.ref.closed = True

    def on_data(self, rx: Receiver, data: bytes, t: int) -> None:
        """Bytes `data` arrived on `rx` at `t` (us)."""
        if rx.skip_sync:
            data = self._strip_syncs(rx, data)
            if not data:
                return
        rx.total += len(data)
        rx.last_t = t
        if not rx.fast:
            self._slow(rx, data, t)
            return
        pending = rx.pending
        if rx.pos >= len(pending):
            rx.pending, rx.pos = data, 0  # the usual case: nothing left over, no copy
        else:
            # Bytes left over (a partial frame, or a receiver waiting for the
            # reference): append in place.  Copying what is left into a new
            # object on every arrival would cost O(backlog) per chunk, and a
            # receiver that falls behind would fall further behind.
            if isinstance(pending, bytes):
                pending = rx.pending = bytearray(pending[rx.pos :])
                rx.pos = 0
            elif rx.pos >= COMPACT_BYTES and rx.pos * 2 >= len(pending):
                del pending[: rx.pos]
                rx.pos = 0
            pending += data
        if rx.hist is not None:
            rx.marks.append((rx.total, t))
        if rx is self.ref_rx:
            self._reference(rx)
        else:
            self._advance(rx)

    def unblock(self) -> None:
        """Let fast receivers that waited for the reference go on (if it moved on)."""
        ref = self.ref
        if self.blocked and (ref.end > self.unblocked_at or ref.closed or not ref.clean):
            self.unblocked_at = ref.end
            for r in list(self.blocked):
                self.blocked.discard(r)
                self._advance(r)

    def _strip_syncs(self, rx: Receiver, data: bytes) -> bytes:
        """Drop repeated sync frames (and notices) at the start of the measured stream.

        The coordinator repeats the sync line until every worker saw one, so
        a receiver may get a few more before the first measured line (in
        chat mode with notices of the probe moving between rooms).
        """
        buf = rx.sync_tail + data
        frame = self.sync_frame
        while True:
            if buf.startswith(frame):
                buf = buf[len(frame) :]
                continue
            skip = self.wire.skippable(buf, 0)
            if skip <= 0:
                break
            buf = buf[skip:]
            rx.notices += 1
        if (len(buf) < len(frame) and frame.startswith(buf)) or skip < 0:
            rx.sync_tail = buf  # perhaps the start of another sync frame (or notice): wait
            return b""
        rx.sync_tail = b""
        rx.skip_sync = False
        return buf

    def _reference(self, rx: Receiver) -> None:
        """Check the reference receiver's new complete frames; extend the reference."""
        while True:
            bad = self._reference_run(rx)
            if bad < 0:
                return
            cut = self.wire.skippable(rx.pending, bad)
            if cut < 0:
                return  # wait for the rest of what may be a notice
            if cut == 0:  # an anomaly: the reference is complete only up to here
                self.ref.clean = False
                self._to_slow(rx)
                return
            self._cut(rx, bad, cut)

    def _reference_run(self, rx: Receiver) -> int:
        """Check and take the complete frames in order; where one fails, its offset (else -1)."""
        ref = self.ref
        frame = self.frame
        pending, pos = rx.pending, rx.pos
        n = (len(pending) - pos) // frame
        if n == 0:
            return -1
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
        return rx.pos if good < n else -1

    def _cut(self, rx: Receiver, at: int, length: int) -> None:
        """Remove a notice of `length` bytes at offset `at` of `rx.pending`.

        The arrival marks count bytes of the stream without notices: those
        after the notice move back by its length.
        """
        pending = rx.pending
        rx.pending = pending[:at] + pending[at + length :]
        where = rx.total - (len(pending) - at)  # the notice's offset in the stream
        rx.total -= length
        if rx.marks and rx.marks[-1][0] > where:
            rx.marks = deque(
                (end if end <= where else max(where, end - length), t) for end, t in rx.marks
            )
        rx.notices += 1

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
                # Take the frames before the first that differs; is that one a notice?
                n = self._matching(rx, g, n)
                if n:
                    self._take(rx, g, n)
                    continue
                cut = self.wire.skippable(rx.pending, rx.pos)
                if cut > 0:
                    self._cut(rx, rx.pos, cut)
                    continue
                if cut == 0:
                    self._to_slow(rx)
                return
            self._take(rx, g, n)

    def _take(self, rx: Receiver, g: int, n: int) -> None:
        """`n` frames from reference index `g` arrived right: time them, move on."""
        if rx.hist is not None:
            self._latency(rx, g, n)
        rx.pos += n * self.frame
        rx.g = g + n
        rx.frames += n

    def _matching(self, rx: Receiver, g: int, n: int) -> int:
        """How many of the next `n` frames match the reference (the slow way: a mismatch)."""
        frame = self.frame
        data = self.ref.data
        base = (g - self.ref.base) * frame
        pending, pos = rx.pending, rx.pos
        for i in range(n):
            at = i * frame
            if data[base + at : base + at + frame] != pending[pos + at : pos + at + frame]:
                return i
        return n

    def _latency(self, rx: Receiver, g: int, n: int) -> None:
        """Time the `n` checked frames from reference index `g` using the arrival marks."""
        hist = rx.hist
        assert hist is not None
        marks = rx.marks
        ref = self.ref
        send_us, run_start, run_us = ref.send_us, ref.run_start, ref.run_us
        i = rx.frames  # the receiver's frame count before these
        frame = self.frame
        while n > 0 and marks:
            end_i, t = marks[0]
            end_i //= frame  # frames complete at that arrival
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
        rest = bytes(rx.pending[rx.pos :])
        rx.pending, rx.pos = b"", 0
        rx.marks.clear()
        if rest:
            self._slow(rx, rest, rx.last_t)

    def _slow(self, rx: Receiver, data: bytes, t: int) -> None:
        """Slow path: parse and check every line."""
        if rx.reader is None:
            rx.reader = self.wire.reader()
        lines = rx.reader.feed(data)
        size = self.line_size
        hist = rx.hist
        wire = self.wire
        for relayed in lines:
            line = relayed
            if wire.chat and relayed is not None:
                if relayed.startswith(NOTICE):
                    rx.notices += 1
                    continue
                line = wire.unprefix(relayed)
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

    def trim(self) -> None:
        """Drop reference bytes that every fast receiver has moved past."""
        ref = self.ref
        low = min((r.g for r in self.receivers if r.fast), default=ref.end)
        if low - ref.base >= TRIM_LINES:
            del ref.data[: (low - ref.base) * self.frame]
            ref.base = low

    # -- the end -------------------------------------------------------------------

    def heard(self, published: dict[int, int]) -> dict[int, int]:
        """What was published that these receivers should get (their room's publishers).

        Worked out once per `published` (the drain asks every few ms, for
        every receiver; a run may have thousands of publishers).
        """
        if published is not self._published:
            self._published = published
            self._heard = {p: n for p, n in published.items() if self.hears(p)}
        return self._heard

    def expected_lines(self, rx: Receiver, published: dict[int, int]) -> int:
        """Lines `rx` should get: everything its room published, less its own (unless echoed)."""
        exclude = None if self.wire.echo else (rx.pubid or None)
        return sum(n for p, n in self.heard(published).items() if p != exclude)

    def received_lines(self, rx: Receiver, published: dict[int, int]) -> int:
        """Distinct published lines this receiver got, checked (duplicates don't count)."""
        if rx.fast:
            return rx.g - rx.own_k
        exclude = None if self.wire.echo else (rx.pubid or None)
        heard = self.heard(published)
        return sum(rx.tracker.received(p, n) for p, n in heard.items() if p != exclude)

    def finish(self, published: dict[int, int]) -> None:
        """Settle every receiver and fill in the result (but latency: `merge_latency`)."""
        for rx in self.receivers:
            if not rx.fast:
                continue
            if rx is not self.ref_rx:
                self._advance(rx)
            while (cut := self.wire.skippable(rx.pending, rx.pos)) > 0:
                self._cut(rx, rx.pos, cut)  # notices shorter than a frame, at the end
            if rx is not self.ref_rx and (len(rx.pending) - rx.pos) >= self.frame:
                self._to_slow(rx)
        res = self.result
        heard = self.heard(published)
        node = self.node
        for rx in self.receivers:
            exclude = None if self.wire.echo else (rx.pubid or None)
            expected = self.expected_lines(rx, published)
            res.expected += expected
            if rx.fast:
                got = rx.g - rx.own_k
                lost = max(0, expected - got)
            else:
                tr = rx.tracker
                got = tr.lines
                lost = tr.lost(heard, exclude)
                res.reordered += tr.reordered
                res.duplicated += tr.duplicated
                res.unexpected += tr.unexpected(heard)
                res.malformed += rx.malformed
                res.echoed += rx.echoed
            res.delivered += got
            res.lost += lost
            res.notices += rx.notices + (rx.reader.skipped if rx.reader is not None else 0)
            res.node_delivered[node] = res.node_delivered.get(node, 0) + got
            res.node_lost[node] = res.node_lost.get(node, 0) + lost


def merge_latency(receivers: list[Receiver], result: WorkerResult) -> None:
    """Add the timed receivers' latencies to `result`: in all and per server.

    The timed receivers of one server share one histogram (`ratbench.connect`),
    so each histogram is counted once.
    """
    seen: set[int] = set()
    for rx in receivers:
        hist = rx.hist
        if hist is None or id(hist) in seen:
            continue
        seen.add(id(hist))
        by_node = result.node_latency.setdefault(rx.node, {})
        for value, count in hist.counts.items():
            result.latency[value] = result.latency.get(value, 0) + count
            by_node[value] = by_node.get(value, 0) + count
