"""The admin endpoint's answers, computed only when asked for.

`render_metrics` writes the Prometheus text exposition format (version
0.0.4): for each family a `# HELP` and a `# TYPE` line, then its samples.
Counters are read from `Server.counters`, gauges and the lag histogram from
one pass over the open connections, the loop-turn histogram from
`Telemetry`.  No family has a per-client label: a scrape's size does not
grow with the number of clients (per-client detail is `/clients`).

`clients_view` and `closed_view` build the `/clients` JSON: one object per
connection, with its counts, its queue, its lag, and how long it has before
`--max-pending` or `--write-timeout` would cut it.  A long list of open
connections is written in batches (`clients_stream`), one batch per loop
turn: 10,000 entries take a few hundred milliseconds to build, and the
broadcast must not wait for them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from rat.admin.telemetry import (
    LAG_BUCKETS,
    Histogram,
    Telemetry,
    connection_state,
    kernel_byte_counts,
    nick_of,
)
from rat.connection import CLOSED, Conn
from rat.metrics import label, time_to_cut

if TYPE_CHECKING:
    from rat.server import Server

# Labels every scrape shows, even at 0, so that dashboards and alerts find
# the series before the first such event.
TRANSPORTS = ("tcp", "tls", "ws", "wss", "unix")
DISCONNECT_REASONS = (
    "eof",
    "reset",
    "line_too_long",
    "slow_consumer",
    "write_timeout",
    "shutdown",
    "evicted",
    "auth",
)


class Exposition:
    """Prometheus text, family by family."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, text: str) -> None:
        self.lines.append(f"# HELP {name} {text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        if labels:
            inner = ",".join(f'{key}="{escape(val)}"' for key, val in labels.items())
            name = f"{name}{{{inner}}}"
        self.lines.append(f"{name} {number(value)}")

    def single(self, name: str, kind: str, text: str, value: float) -> None:
        self.family(name, kind, text)
        self.sample(name, value)

    def by_label(
        self, name: str, kind: str, text: str, key: str, values: Iterable[tuple[str, float]]
    ) -> None:
        self.family(name, kind, text)
        for val, count in values:
            self.sample(name, count, {key: val})

    def histogram(self, name: str, text: str, histogram: Histogram) -> None:
        self.family(name, "histogram", text)
        for bound, running in histogram.cumulative():
            self.sample(f"{name}_bucket", running, {"le": number(bound)})
        self.sample(f"{name}_sum", histogram.total)
        self.sample(f"{name}_count", histogram.count)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def escape(value: str) -> str:
    """A label value as the text format wants it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: float) -> str:
    """Integers as integers, infinities as +Inf, other floats as repr (1e-05)."""
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(value)


def with_defaults(counts: dict[str, int], defaults: Iterable[str]) -> list[tuple[str, float]]:
    merged: dict[str, int] = dict.fromkeys(defaults, 0)
    for key, value in counts.items():
        merged[label(key)] = merged.get(label(key), 0) + value
    return sorted(merged.items())


def render_metrics(server: Server, telemetry: Telemetry) -> str:
    """The whole `/metrics` answer."""
    now = server.loop.clock()
    # The open connections are the loop's handlers that are Conns.  Most of
    # them have nothing queued: they count as lag 0 without a look at each.
    conns = server.connections()
    transports = Counter(dict.fromkeys(TRANSPORTS, 0))
    transports.update(map(attrgetter("transport"), conns))
    waiting = [conn for conn in conns if conn.pending]
    queued = sum(conn.pending for conn in waiting)
    lag = Histogram(LAG_BUCKETS)
    lag.observe_all([conn.lag(now) for conn in waiting], zeros=len(conns) - len(waiting))
    c = server.counters
    out = Exposition()
    out.by_label(
        "rat_connections",
        "gauge",
        "Client connections open now, by transport (admin connections not included).",
        "transport",
        sorted(transports.items()),
    )
    out.single(
        "rat_connections_accepted_total", "counter", "Client connections admitted.", c.accepted
    )
    out.by_label(
        "rat_connections_rejected_total",
        "counter",
        "Client connections refused at accept, by reason.",
        "reason",
        [
            ("denied", c.rejected_denied),  # --allow/--deny (rat.access)
            ("out_of_descriptors", c.rejected_busy),
            ("server_full", c.rejected_full),
        ],
    )
    out.by_label(
        "rat_disconnects_total",
        "counter",
        "Client connections closed, by reason.",
        "reason",
        with_defaults(c.closed, DISCONNECT_REASONS),
    )
    out.single(
        "rat_lines_received_total", "counter", "Complete lines received from clients.", c.lines_in
    )
    out.single(
        "rat_lines_delivered_total",
        "counter",
        "Lines handed to receivers (one line to N receivers counts N).",
        c.deliveries,
    )
    out.single("rat_bytes_received_total", "counter", "Bytes read from client sockets.", c.bytes_in)
    out.single("rat_bytes_sent_total", "counter", "Bytes written to client sockets.", c.bytes_out)
    out.single(
        "rat_dropped_bytes_total",
        "counter",
        "Queued output thrown away (slow consumers cut, a stop out of time).",
        c.dropped_bytes,
    )
    out.single("rat_queued_bytes", "gauge", "Output queued in the server for all clients.", queued)
    out.single(
        "rat_half_closed_connections",
        "gauge",
        "Clients that sent EOF and still receive (closed first when the server is full).",
        len(server.half_closed),
    )
    out.histogram(
        "rat_client_lag_seconds",
        "Connected clients by the age of their oldest unsent byte (0 if nothing waits).",
        lag,
    )
    out.histogram(
        "rat_loop_turn_seconds",
        "Event loop turns by the time spent working (the sleep in poll excluded).",
        telemetry.turn_times,
    )
    out.single(
        "rat_rooms", "gauge", "Rooms that exist now (1 without --chat).", len(server.hub.rooms)
    )
    out.single(
        "rat_start_time_seconds",
        "gauge",
        "When the admin endpoint started, in seconds since the Unix epoch.",
        telemetry.started_wall,
    )
    text = out.text()
    # --redis / --workers (rat.cluster) hang a backplane on the server; it is
    # read by duck typing, since feature packages do not import each other.
    backplane = getattr(server, "backplane", None)
    if backplane is not None:
        text += backplane.prometheus()
    return text


def client_view(
    server: Server, telemetry: Telemetry, conn: Conn, now: float, kernel_counts: bool = True
) -> dict[str, Any]:
    """One open connection, as /clients lists it."""
    stats = telemetry.clients.get(conn)
    pending = conn.pending
    drain = growth = by_limit = by_timeout = None
    lag = 0.0
    if pending:  # (most clients have nothing queued: no lag, no rates, no deadline)
        lag = conn.lag(now)
        rates = conn.drain(now)
        if rates is not None:
            drain, growth = rates
        limits = server.limits
        by_limit, by_timeout = time_to_cut(
            pending=pending,
            limit=limits.max_pending,
            growth=growth,
            last_progress=conn.last_progress,
            write_timeout=limits.write_timeout,
            now=now,
        )
    counts = kernel_byte_counts(conn) if kernel_counts else None
    bytes_out, bytes_in = counts or (None, None)
    return {
        "id": stats.id if stats is not None else None,
        "transport": conn.transport,
        "addr": conn.addr,
        "state": connection_state(conn),
        "connected_at": telemetry.wall_time(stats.since) if stats is not None else None,
        "connected_seconds": round(now - stats.since, 3) if stats is not None else None,
        "room": conn.room.name if conn.room is not None else None,
        "nick": nick_of(conn),
        "lines_in": stats.lines_in if stats is not None else None,
        "lines_out": stats.lines_out if stats is not None else None,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "queued_bytes": pending,
        "lag_seconds": round(lag, 6),
        "drain_bytes_per_second": None if drain is None else round(drain, 1),
        "queue_growth_bytes_per_second": None if growth is None else round(growth, 1),
        "until_max_pending_seconds": None if by_limit is None else round(by_limit, 3),
        "until_write_timeout_seconds": None if by_timeout is None else round(by_timeout, 3),
    }


SORT_KEYS = ("id", "lag", "queued")
STREAM_BATCH = 200  # /clients entries built per loop turn


def clients_view(
    server: Server, telemetry: Telemetry, sort: str = "id", limit: int | None = None
) -> dict[str, Any]:
    """The open connections, sorted by `sort` (laggiest, fullest first), at most `limit`."""
    now = server.loop.clock()
    conns = sorted_connections(server, telemetry, sort, now)
    total = len(conns)
    if limit is not None:
        conns = conns[:limit]
    return {
        "state": "open",
        "count": total,
        "clients": [client_view(server, telemetry, conn, now) for conn in conns],
    }


def clients_stream(
    server: Server, telemetry: Telemetry, sort: str = "id", limit: int | None = None
) -> Iterator[bytes]:
    """`clients_view` as JSON text in pieces: the caller takes one piece per loop turn.

    The order is fixed at the start; each entry is as of its own batch, and a
    connection that closed before its batch is left out (`count` is as of the
    start).
    """
    conns = sorted_connections(server, telemetry, sort, server.loop.clock())
    total = len(conns)
    if limit is not None:
        conns = conns[:limit]
    yield f'{{"state":"open","count":{total},"clients":['.encode()
    separator = ""
    for start in range(0, len(conns), STREAM_BATCH):
        now = server.loop.clock()
        batch = [
            client_view(server, telemetry, conn, now)
            for conn in conns[start : start + STREAM_BATCH]
            if conn.state != CLOSED
        ]
        if batch:
            yield (separator + json.dumps(batch, separators=(",", ":"))[1:-1]).encode()
            separator = ","
    yield b"]}\n"


def sorted_connections(server: Server, telemetry: Telemetry, sort: str, now: float) -> list[Conn]:
    conns = server.connections()
    if sort == "lag":
        # Lag first, then queue size: clients with the same lag (0) stay in a useful order.
        conns.sort(key=lambda conn: (conn.lag(now), conn.pending), reverse=True)
    elif sort == "queued":
        conns.sort(key=lambda conn: conn.pending, reverse=True)
    else:
        conns.sort(key=lambda conn: _id_of(telemetry, conn))
    return conns


def _id_of(telemetry: Telemetry, conn: Conn) -> int:
    stats = telemetry.clients.get(conn)
    return stats.id if stats is not None else 0


def closed_view(telemetry: Telemetry, sort: str = "id", limit: int | None = None) -> dict[str, Any]:
    """The last closed connections, most recent last (or laggiest/fullest first)."""
    records = list(telemetry.closed_log)
    if sort == "lag":
        records.sort(key=lambda r: (r["lag_seconds"], r["queued_bytes"]), reverse=True)
    elif sort == "queued":
        records.sort(key=lambda r: r["queued_bytes"], reverse=True)
    total = len(records)
    if limit is not None:
        records = records[-limit:] if sort == "id" else records[:limit]
    kept = telemetry.closed_log.maxlen
    return {"state": "closed", "count": total, "kept": kept, "clients": records}
