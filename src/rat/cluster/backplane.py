"""The backplane: this node's lines out to the other nodes, theirs in, once per turn.

Theory of operation
===================
Several rat processes (nodes: `--redis`, or the workers of `--workers`)
form one broadcast.  Each node's `Backplane` sits between its hub and a
*link* (`rat.cluster.redis.RedisLink`, or the worker mesh,
`rat.cluster.workers.MeshLink`):

    out: client -> hub.publish -> Hub.forward -> Backplane.forward   (gathered)
         end of turn, after local delivery -> one message per room
         -> link.send(...)   (one pipelined write per turn)
    in:  link -> Backplane.receive -> Server.publish_remote -> hub
         -> delivered to every local member at the end of the turn

- Once per turn.  `forward` only remembers the blocks, per room; the
  end-of-turn hook (registered after the server's delivery, so local clients
  are served first) joins each room's blocks into one message and hands the
  whole turn to the link, which writes it in one `send`: a busy turn of a
  thousand lines costs one message per room and one syscall, not a thousand
  round trips.
- Never twice.  Every message carries the sending node's origin id
  (`rat.cluster.message`).  Redis sends a node's own messages back to it; a
  node drops messages with its own origin.  Remote lines enter the hub
  through `publish_remote`, which does not call `Hub.forward`: they are never
  forwarded again, so nothing loops between nodes.
- Everyone local.  Remote lines come from no local sender, so every local
  member of the room receives them (a room with no local member drops them).

Ordering (SPEC "Scale")
-----------------------
Per sender, order is kept everywhere: a sender's lines are published in
order into its node's turns, a node's turns are written in order on one
connection, Redis (or a worker's socket) delivers them in order, and the
receiving node publishes them in order into its own turns.  One global
order exists only within one node: node A may deliver A1 before B1 while
node B delivers B1 before A1, because each node puts its own lines first
and the other's when they arrive.  Like NATS, rat promises per-publisher
order, not one order for all receivers across nodes.

Degraded, not down
------------------
While the link is down, lines still reach local clients; they are counted
as dropped (`dropped_disconnected`), not queued for later: pub/sub is
at-most-once, and lines replayed after an outage would arrive out of place.
A link whose output backs up (a slow Redis, a stuck worker) refuses a
turn's message once its queue is past its bound: counted
(`dropped_overflow`) and logged once per episode, never silent.  In chat
mode every member is told with a `* ` line when the link goes down and when
it is back.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import TYPE_CHECKING, Protocol

from rat.cluster.message import decode, header
from rat.hub import Room

if TYPE_CHECKING:
    from rat.server import Server

log = logging.getLogger("rat")

# Upper bounds (seconds) of the backplane lag histogram's buckets.
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

NOTICE_DOWN = (
    b"* cluster link down: messages now reach only the people on this server; they will"
    b" reach everyone again when it is back\n"
)
NOTICE_BACK = b"* cluster link back: messages reach everyone again\n"

# (room name, header line, payload): one message of a turn.
Outgoing = tuple[str, bytes, bytes]


class Link(Protocol):
    """Where a backplane sends its turns (Redis, or the other workers)."""

    @property
    def up(self) -> bool:
        """Messages sent now can reach the other nodes."""

    def send(self, messages: list[Outgoing]) -> bool:
        """Write one turn's messages; False if refused (the output is full)."""

    def close(self) -> None:
        """Close every connection (at exit)."""


class Histogram:
    """Counts of observations per bucket (Prometheus style: cumulative at exposition)."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...] = LAG_BUCKETS) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) for every bucket, +Inf last."""
        out = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            total += n
            out.append((bound, total))
        return out


class BackplaneCounters:
    """What the backplane did; plain integers, bumped once per message, not per line."""

    __slots__ = (
        "dropped_disconnected",
        "dropped_overflow",
        "lag",
        "lines_forwarded",
        "lines_received",
        "malformed",
        "messages_forwarded",
        "messages_received",
        "reconnects",
        "unrouted",
    )

    def __init__(self) -> None:
        self.lines_forwarded = 0  # local lines handed to the link
        self.messages_forwarded = 0
        self.lines_received = 0  # remote lines that arrived (own echoes excluded)
        self.messages_received = 0
        self.unrouted = 0  # remote lines for a room with no local member
        self.reconnects = 0  # times the link came back after being lost
        self.dropped_overflow = 0  # local lines not forwarded: the link's output was full
        self.dropped_disconnected = 0  # local lines not forwarded: the link was down
        self.malformed = 0  # messages on the channel that were not rat's
        self.lag = Histogram()  # remote publish -> local delivery, seconds

    def summary(self) -> str:
        return (
            f"backplane: forwarded={self.lines_forwarded} received={self.lines_received}"
            f" unrouted={self.unrouted} dropped_overflow={self.dropped_overflow}"
            f" dropped_disconnected={self.dropped_disconnected} reconnects={self.reconnects}"
            f" malformed={self.malformed}"
        )


class Backplane:
    """One node's side of the broadcast between nodes (see the module doc)."""

    def __init__(self, server: Server, origin: bytes, notices: bool) -> None:
        self.server = server
        self.hub = server.hub
        self.origin = origin
        self.notices = notices  # chat mode: tell members when the link goes down / comes back
        self.counters = BackplaneCounters()
        self.link: Link | None = None
        self._pending: dict[str, list[bytes]] = {}  # room name -> blocks this turn
        self._arrivals: list[int] = []  # sender clocks of messages received this turn
        self._overflow: int | None = None  # lines dropped in the current overflow episode
        self._malformed_logged = False
        self.hub.forward = self.forward
        server.loop.at_turn_end(self.end_of_turn)  # after Server.deliver
        # For the admin endpoint (rat.admin reads it without importing us).
        server.backplane = self  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ out

    def forward(self, room: Room, block: bytes) -> None:
        """`Hub.forward`: a local block was published to `room` (sent at turn end)."""
        blocks = self._pending.get(room.name)
        if blocks is None:
            self._pending[room.name] = [block]
        else:
            blocks.append(block)

    def end_of_turn(self) -> None:
        """After local delivery: time what arrived, send what was published."""
        if self._arrivals:
            now = time.time_ns()
            lag = self.counters.lag
            for sent_ns in self._arrivals:
                lag.observe(max(0, now - sent_ns) / 1e9)
            self._arrivals.clear()
        if self._pending:
            self._send_turn()

    def _send_turn(self) -> None:
        pending, self._pending = self._pending, {}
        counters = self.counters
        link = self.link
        if link is None or not link.up:
            counters.dropped_disconnected += sum(
                block.count(b"\n") for blocks in pending.values() for block in blocks
            )
            return
        sent_ns = time.time_ns()
        messages: list[Outgoing] = []
        lines = 0
        for room, blocks in pending.items():
            payload = blocks[0] if len(blocks) == 1 else b"".join(blocks)
            lines += payload.count(b"\n")
            messages.append((room, header(self.origin, sent_ns, room), payload))
        if link.send(messages):
            counters.lines_forwarded += lines
            counters.messages_forwarded += len(messages)
            if self._overflow is not None:
                log.warning(
                    "cluster: the link caught up; %d lines were not forwarded meanwhile"
                    " (local clients got them)",
                    self._overflow,
                )
                self._overflow = None
            return
        counters.dropped_overflow += lines
        if self._overflow is None:
            log.warning(
                "cluster: the link is not keeping up (its output queue is full): lines are"
                " not forwarded to other nodes until it drains; local clients get every line"
            )
            self._overflow = 0
        self._overflow += lines

    # ------------------------------------------------------------------- in

    def receive(self, data: bytes) -> None:
        """A message from the link: deliver another node's lines to local members."""
        message = decode(data)
        counters = self.counters
        if message is None:
            counters.malformed += 1
            if not self._malformed_logged:
                self._malformed_logged = True
                log.warning(
                    "cluster: ignoring a message that is not rat's (%r...); is another"
                    " program publishing on the channel? (logged once)",
                    data[:40],
                )
            return
        if message.origin == self.origin:
            return  # our own, back from Redis: already delivered locally
        lines = message.lines
        counters.messages_received += 1
        counters.lines_received += lines
        self._arrivals.append(message.sent_ns)
        room = self.hub.rooms.get(message.room)
        if room is None or not room:
            counters.unrouted += lines
            return
        self.server.publish_remote(room, message.payload)

    # ---------------------------------------------------------- link state

    def on_link_down(self) -> None:
        """The link was lost (logged by the link): tell chat members."""
        self._notify(NOTICE_DOWN)

    def on_link_back(self) -> None:
        """The link is back after a loss: count it, tell chat members."""
        self.counters.reconnects += 1
        self._notify(NOTICE_BACK)

    def _notify(self, notice: bytes) -> None:
        if not self.notices or self.server.stopping:
            return
        for room in list(self.hub.rooms.values()):
            if room:
                self.server.publish_remote(room, notice)
        # The link may fail in our own end-of-turn hook, after this turn's
        # delivery: ask for another turn at once, which ends with one.
        self.server.loop.resume(self)

    def on_resume(self) -> None:
        """Nothing to do: the turn that calls this ends with a delivery."""

    def prometheus(self) -> str:
        """The backplane's metric families in the Prometheus text format (for /metrics)."""
        c = self.counters
        out: list[str] = []

        def family(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        family(
            "rat_backplane_lines_forwarded_total",
            "counter",
            "Local lines handed to the backplane for other nodes.",
            [("", c.lines_forwarded)],
        )
        family(
            "rat_backplane_lines_received_total",
            "counter",
            "Lines from other nodes that reached this node.",
            [("", c.lines_received)],
        )
        family(
            "rat_backplane_reconnects_total",
            "counter",
            "Times the backplane link came back after being lost.",
            [("", c.reconnects)],
        )
        family(
            "rat_backplane_dropped_total",
            "counter",
            "Local lines not forwarded to other nodes, by reason.",
            [
                ('{reason="overflow"}', c.dropped_overflow),
                ('{reason="disconnected"}', c.dropped_disconnected),
            ],
        )
        lag = c.lag
        buckets = [
            ('{le="%s"}' % ("+Inf" if bound == float("inf") else f"{bound:g}"), count)
            for bound, count in lag.cumulative()
        ]
        out.append(
            "# HELP rat_backplane_lag_seconds Time from a remote node's publish to"
            " local delivery (sender's wall clock)."
        )
        out.append("# TYPE rat_backplane_lag_seconds histogram")
        out.extend(f"rat_backplane_lag_seconds_bucket{le} {n}" for le, n in buckets)
        out.append(f"rat_backplane_lag_seconds_sum {lag.sum:g}")
        out.append(f"rat_backplane_lag_seconds_count {lag.count}")
        return "\n".join(out) + "\n"

    def close(self) -> None:
        """At exit: close the link, log what was done."""
        if self.link is not None:
            self.link.close()
        log.info("%s", self.counters.summary())
