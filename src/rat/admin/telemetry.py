"""What --admin keeps about clients, rooms and loop turns between scrapes.

Counters that the server keeps anyway (`Server.counters`: plain integers
bumped where things happen) cost nothing more with `--admin`; the exposition
reads them when scraped.  This module keeps what only the admin endpoint
needs, and keeps it off the fan-out fast path:

Lines out per client, without counting per receiver
---------------------------------------------------
Counting each receiver's lines in the fan-out loop would cost every
delivery to every client.  Instead each room keeps one running total, the
lines delivered to it (`RoomTotals.lines`, bumped once per room and turn),
and each client remembers that total as it stood when it joined (`base`).
A member receives every line of its room except its own (unless --echo):
its own lines are added to its `base` as the turn that holds them is
delivered, so `lines_out = room total - base`, plus what it received in
rooms it has left (`carried`).  The hub reports every join and leave
(`Hub.observer`), chat mode's `/join` included.

Bytes per client come from the kernel
-------------------------------------
TCP already counts, per socket, the bytes the peer acknowledged and the bytes
received (`TCP_INFO`: `tcpi_bytes_acked`, `tcpi_bytes_received`, Linux 4.1+).
One `getsockopt` per client when `/clients` is asked for, and once more as a
connection closes, costs less than one addition per send.  Where the kernel
has no such counts (a Unix socket, another OS) the fields are null.

Loop turns
----------
`turn_began` (right after `poll()` returns) and `turn_ended` (after the
delivery and after any admin responses) bracket the work of a turn: two
clock reads per turn, the sleep in `poll()` excluded.

The closed-connection log
-------------------------
The last `CLOSED_KEPT` closed connections, each as one JSON-ready dict: the
reason (the `rat_disconnects_total` label), how long it was connected, its
counts, and its queue and lag when it left its room (the moment the server
decided to close it, before a slow consumer's queue is cut).
"""

from __future__ import annotations

import math
import socket
import struct
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

from rat.connection import CLOSING, Conn
from rat.metrics import label
from rat.net import unacked_bytes

if TYPE_CHECKING:
    from rat.hub import Room, Turn
    from rat.server import Server

CLOSED_KEPT = 1000  # closed connections listed by /clients?state=closed

# Histogram buckets (upper bounds, seconds).  Lag: from "nothing waits" to
# the default --write-timeout and beyond.  Loop turns: from an idle wake-up
# to a turn that stalls everyone.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TURN_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

# struct tcp_info (linux/tcp.h): 8 one-byte fields, 24 u32 fields, then u64
# pacing_rate, max_pacing_rate, bytes_acked, bytes_received.
_TCP_INFO_BYTES = struct.Struct("=QQ")
_TCP_INFO_OFFSET = 8 + 24 * 4 + 2 * 8
_TCP_INFO_SIZE = _TCP_INFO_OFFSET + _TCP_INFO_BYTES.size
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def kernel_byte_counts(conn: Conn) -> tuple[int, int] | None:
    """(bytes the peer acknowledged, bytes received) on `conn`'s TCP socket; None if unknown."""
    sock = conn.sock
    if _TCP_INFO is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    except OSError:  # not TCP (a Unix socket), or closed
        return None
    if len(raw) < _TCP_INFO_SIZE:  # a kernel older than 4.1
        return None
    acked, received = _TCP_INFO_BYTES.unpack_from(raw, _TCP_INFO_OFFSET)
    # A FIN takes one sequence number, and the kernel counts it as a byte.
    if conn.eof:
        received -= 1
    if conn.shut and unacked_bytes(sock) == 0:  # ours was acknowledged
        acked -= 1
    return max(0, int(acked)), max(0, int(received))


class Histogram:
    """Counts per bucket (value <= bound), as Prometheus histograms want them."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def observe_all(self, values: list[float], zeros: int = 0) -> None:
        """Many values at once (sorted here), plus `zeros` observations of 0."""
        values.sort()
        counts = self.counts
        counts[0] += zeros
        start = 0
        for i, bound in enumerate(self.bounds):
            end = bisect_right(values, bound, start)
            counts[i] += end - start
            start = end
        counts[-1] += len(values) - start
        self.count += zeros + len(values)
        self.total += math.fsum(values)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it), ending with (inf, count)."""
        out = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class RoomTotals:
    """Lines delivered to one room so far."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines = 0


class ClientStats:
    """One client's counts (see the module docstring for lines out)."""

    __slots__ = ("base", "carried", "id", "lines_in", "parting", "since", "totals")

    def __init__(self, client_id: int, since: float) -> None:
        self.id = client_id
        self.since = since  # loop clock at accept
        self.lines_in = 0
        self.totals: RoomTotals | None = None  # of the room it is in
        self.base = 0  # that room's total when it joined, plus its own lines since
        self.carried = 0  # lines received in rooms it has left
        # (queued bytes, lag, room, nick) as it last left a room.
        self.parting: tuple[int, float, str, str | None] | None = None

    @property
    def lines_out(self) -> int:
        totals = self.totals
        return self.carried + (totals.lines - self.base if totals is not None else 0)


def nick_of(conn: Conn) -> str | None:
    """Chat mode: the client's nick, read from its session (None without one)."""
    nick = getattr(conn.session, "nick", None)
    return nick if isinstance(nick, str) else None


def connection_state(conn: Conn) -> str:
    if conn.state == CLOSING:
        return "closing"
    return "open" if conn.room is not None else "handshake"


class Telemetry:
    """The server's `Observer` with --admin: per-client counts, rooms, turns, the closed log."""

    def __init__(self, server: Server, wall_clock: Any = time.time) -> None:
        self.server = server
        self.clock = server.loop.clock
        self.wall_clock = wall_clock
        # Loop clock <-> wall clock, for "connected at" times.
        self.started = self.clock()
        self.started_wall = float(wall_clock())
        self.clients: dict[Hashable, ClientStats] = {}
        self.rooms: dict[str, RoomTotals] = {}
        self.closed_log: deque[dict[str, Any]] = deque(maxlen=CLOSED_KEPT)
        self.turn_times = Histogram(TURN_BUCKETS)
        self._turn_started = self.started
        self._second: tuple[int, str] = (-1, "")  # the last whole second formatted

    # --------------------------------------------------------------- Observer

    def accepted(self, conn: Hashable, now: float) -> None:
        self.clients[conn] = ClientStats(self.server.counters.accepted, now)

    def lines_received(self, conn: Hashable, block: bytes) -> None:
        stats = self.clients.get(conn)
        if stats is not None:
            stats.lines_in += block.count(b"\n")

    def joined(self, member: Hashable, room: Room) -> None:
        stats = self.clients.get(member)
        if stats is not None:
            totals = self._totals(room)
            stats.totals = totals
            stats.base = totals.lines

    def left(self, member: Hashable, room: Room) -> None:
        stats = self.clients.get(member)
        if stats is None or stats.totals is None or stats.totals is not self.rooms.get(room.name):
            return
        stats.carried = stats.lines_out
        stats.totals = None
        if isinstance(member, Conn):
            stats.parting = (member.pending, member.lag(self.clock()), room.name, nick_of(member))

    def turn(self, room: Room, turn: Turn) -> None:
        totals = self.rooms.get(room.name) or self._totals(room)
        totals.lines += turn.lines
        if turn.own:  # without --echo, senders do not get their own lines
            clients = self.clients
            for sender, (_, own_lines) in turn.own.items():
                stats = clients.get(sender)
                if stats is not None and stats.totals is totals:
                    stats.base += own_lines

    def closed(self, conn: Hashable, now: float) -> None:
        stats = self.clients.pop(conn, None)
        if stats is None or not isinstance(conn, Conn):
            return
        if stats.parting is not None:
            queued, lag, room, nick = stats.parting
        else:  # it never joined a room (a handshake that did not finish)
            queued, lag, room, nick = conn.pending, conn.lag(now), "", nick_of(conn)
        bytes_out, bytes_in = kernel_byte_counts(conn) or (None, None)
        self.closed_log.append(
            {
                "id": stats.id,
                "transport": conn.transport,
                "addr": conn.addr,
                "reason": label(conn.close_reason),
                "connected_at": self.wall_time(stats.since),
                "closed_at": self.wall_time(now),
                "duration_seconds": round(now - stats.since, 6),
                "room": room or None,
                "nick": nick,
                "lines_in": stats.lines_in,
                "lines_out": stats.lines_out,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "queued_bytes": queued,
                "lag_seconds": round(lag, 6),
            }
        )

    # ------------------------------------------------------------------ turns

    def turn_began(self) -> None:
        self._turn_started = self.clock()

    def turn_ended(self) -> None:
        # Histogram.observe, inlined: this runs every turn.
        elapsed = self.clock() - self._turn_started
        times = self.turn_times
        times.counts[bisect_left(times.bounds, elapsed)] += 1
        times.count += 1
        times.total += elapsed

    # ---------------------------------------------------------------- helpers

    def _totals(self, room: Room) -> RoomTotals:
        totals = self.rooms.get(room.name)
        if totals is None:
            totals = self.rooms[room.name] = RoomTotals()
        return totals

    def forget_rooms(self) -> None:
        """Drop totals of rooms the hub has forgotten (empty chat rooms)."""
        live = self.server.hub.rooms
        for name in [name for name in self.rooms if name not in live]:
            del self.rooms[name]

    def wall_time(self, when: float) -> str:
        """A loop-clock time as ISO 8601 UTC ('2026-05-09T07:35:25.123Z')."""
        stamp = self.started_wall + (when - self.started)
        second = int(stamp)
        if second != self._second[0]:  # clients connected in the same second share it
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int((stamp - second) * 1000):03d}Z"
