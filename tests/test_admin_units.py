"""The admin package without a subprocess.

- per-client lines out, derived from room totals, against what the hub
  really hands each member (hypothesis over joins, leaves and publishes);
- `rat top`'s parser and frame, on an exposition rendered by the server;
  `rat top` itself on a scripted fetch: frames redrawn in place on a
  terminal (never scrolling), plain frames to a pipe;
- the histograms: bucket bounds as prometheus_client reads them, and a value
  (a client's lag, a loop turn) in the bucket it belongs to;
- a server on a test clock with socketpairs through its admission path: a
  queue's growth and the time left before --max-pending, a slow consumer's
  closed record, the closed ring's last 1000;
- in-process servers (real loopback sockets, our own turns) for what needs a
  short timeout (the request timeout and the connection limit) and for a
  closed record's kernel byte counts.
"""

from __future__ import annotations

import io
import json
import math
import socket
import struct
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from rat.admin import endpoint, exposition, serve_admin, top
from rat.admin.endpoint import Admin
from rat.admin.exposition import render_metrics
from rat.admin.telemetry import CLOSED_KEPT, LAG_BUCKETS, Histogram, Telemetry
from rat.admin.top import Scrape, parse_exposition, quantile, render_frame
from rat.config import Config, Limits
from rat.connection import Conn
from rat.net import open_listeners
from rat.poller import make_poller
from rat.server import Server


@pytest.fixture
def bare_server() -> Iterator[Server]:
    """A server with no listeners: a loop, a hub and counters to observe."""
    server = Server([], make_poller("select"), Config())
    yield server
    server.close()


# ---------------------------------------------------------------- lines out

# An action: (kind, member, room): join, leave (its room), publish 1-3 lines, deliver.
actions = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "publish", "publish", "deliver"]),
        st.integers(min_value=0, max_value=3),
        st.sampled_from(["#lobby", "#a", "#b"]),
        st.integers(min_value=1, max_value=3),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(actions=actions, echo=st.booleans())
def test_lines_out_matches_what_the_hub_hands_out(
    actions: list[tuple[str, int, str, int]], echo: bool
) -> None:
    server = Server([], make_poller("select"), Config(echo=echo))
    try:
        hub = server.hub
        telemetry = Telemetry(server)
        hub.observer = telemetry
        members = [f"client{i}" for i in range(4)]
        for member in members:
            telemetry.accepted(member, 0.0)
        where: dict[str, str] = {}
        received = dict.fromkeys(members, 0)

        def deliver() -> None:
            for room, turn in hub.take_turns():
                telemetry.turn(room, turn)  # what Server._deliver_turn does first
                for member in list(room.plain):
                    received[member] += turn.chunks_for(member)[1]

        for kind, index, room_name, lines in actions:
            member = members[index]
            if kind == "join" and member not in where:
                hub.join(member, hub.room(room_name))
                where[member] = room_name
            elif kind == "leave" and member in where:
                hub.leave(member, hub.room(where.pop(member)))
            elif kind == "publish" and member in where:
                hub.publish(member, b"line\n" * lines, hub.room(where[member]))
            elif kind == "deliver":
                deliver()
        deliver()
        for member in members:
            assert telemetry.clients[member].lines_out == received[member], member
    finally:
        server.close()


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.0, 0.1, 0.5, 2.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert histogram.total == 2.6
    assert quantile(histogram.cumulative(), 0.5) == 0.1
    assert quantile(histogram.cumulative(), 1.0) == float("inf")
    assert quantile([(1.0, 0.0), (float("inf"), 0.0)], 0.5) is None


# ---------------------------------------------------------------- rat top


def test_top_parses_what_the_server_renders(bare_server: Server) -> None:
    telemetry = Telemetry(bare_server)
    bare_server.counters.closed.update({"eof": 3, "Strange Reason": 1})
    text = render_metrics(bare_server, telemetry)
    ours = parse_exposition(text)
    theirs = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    flat = {
        (name, labels): value for name, series in ours.items() for labels, value in series.items()
    }
    assert flat == theirs
    assert ours["rat_disconnects_total"][(("reason", "strange_reason"),)] == 1


def test_top_frame_shows_rates_and_laggiest_clients(bare_server: Server) -> None:
    telemetry = Telemetry(bare_server)
    before = Scrape(0.0, parse_exposition(render_metrics(bare_server, telemetry)), {})
    counters = bare_server.counters
    counters.lines_in, counters.deliveries = 200, 2000
    counters.bytes_in, counters.bytes_out = 4096, 40960
    counters.accepted = 10
    clients = {
        "count": 2,
        "clients": [
            {
                "id": 7,
                "addr": "127.0.0.1:5555",
                "transport": "ws",
                "room": "#ops",
                "nick": "alice",
                "queued_bytes": 3 << 20,
                "lag_seconds": 4.25,
                "drain_bytes_per_second": 1024.0,
                "until_max_pending_seconds": 12.0,
                "until_write_timeout_seconds": 30.0,
            },
            {"id": 8, "addr": "127.0.0.1:6666", "queued_bytes": 0, "lag_seconds": 0.0},
        ],
    }
    after = Scrape(2.0, parse_exposition(render_metrics(bare_server, telemetry)), clients)
    frame = "\n".join(render_frame("127.0.0.1:9100", before, after))
    assert "lines      in 100.0/s   out 1,000.0/s" in frame
    assert "bytes      in 2.0 KiB/s   out 20.0 KiB/s" in frame
    assert "5.0/s accepted" in frame
    assert "laggiest clients (of 2)" in frame
    (row,) = [line for line in frame.splitlines() if "127.0.0.1:5555" in line]
    for text in ("ws", "#ops", "alice", "3.0 MiB", "4.25 s", "1.0 KiB/s", "12.0 s (max pending)"):
        assert text in row, (text, row)
    assert "127.0.0.1:6666" not in frame  # nothing queued, no lag: not behind
    narrow = render_frame("127.0.0.1:9100", before, after, width=40)
    assert max(map(len, narrow)) <= 40


# ---------------------------------------------------------------- in-process endpoint


class Running:
    """A server and its admin endpoint in this process, turned by the test."""

    def __init__(self) -> None:
        self.server = Server(open_listeners("127.0.0.1", 0), make_poller("auto"), Config())
        admin_socks = open_listeners("127.0.0.1", 0)
        self.admin_port = admin_socks[0].getsockname()[1]
        self.admin: Admin = serve_admin(self.server, admin_socks)
        self.clients: list[socket.socket] = []

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.admin_port))
        sock.setblocking(False)
        self.clients.append(sock)
        return sock

    def turn_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out"
            self.server.loop.run_once(0.02)

    def close(self) -> None:
        for sock in self.clients:
            sock.close()
        self.admin.close()
        self.server.close()


@pytest.fixture
def running() -> Iterator[Running]:
    run = Running()
    yield run
    run.close()


def read_to_eof(run: Running, sock: socket.socket) -> bytes:
    data = bytearray()
    ended = False

    def got_eof() -> bool:
        nonlocal ended
        try:
            while chunk := sock.recv(65536):
                data.extend(chunk)
            ended = True
        except BlockingIOError:
            pass
        return ended

    run.turn_until(got_eof)
    return bytes(data)


def test_a_request_that_never_ends_gets_408_and_a_close(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoint, "REQUEST_TIMEOUT", 0.2)
    silent, partial = running.connect(), running.connect()
    partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")
    for sock in (silent, partial):
        assert read_to_eof(running, sock).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    running.turn_until(lambda: not running.admin.conns)


def test_a_response_nobody_takes_is_closed(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoint, "RESPONSE_TIMEOUT", 0.2)
    monkeypatch.setattr(endpoint, "LINGER_SECONDS", 0.2)
    sock = running.connect()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    # The client never reads and never closes: the server gives up on it.
    running.turn_until(lambda: not running.admin.conns)


def test_admin_connections_beyond_the_limit_get_503(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoint, "MAX_CONNECTIONS", 2)
    first, second = running.connect(), running.connect()
    running.turn_until(lambda: len(running.admin.conns) == 2)
    third = running.connect()
    assert read_to_eof(running, third).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    first.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_to_eof(running, first).endswith(b"\r\n\r\nok\n")
    del second


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body, decoded."""
    out = bytearray()
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            return bytes(out)
        out += rest[:size]
        body = rest[size + 2 :]


def test_a_long_client_list_is_streamed_and_complete(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exposition, "STREAM_BATCH", 2)  # 7 clients: 4 pieces, 4 turns
    port = running.server.acceptors[0].sock.getsockname()[1]  # type: ignore[union-attr]
    lines = [socket.create_connection(("127.0.0.1", port)) for _ in range(7)]
    running.clients += lines
    running.turn_until(lambda: running.server.clients == 7)
    for version, chunked in ((b"1.1", True), (b"1.0", False)):
        sock = running.connect()
        sock.sendall(b"GET /clients HTTP/" + version + b"\r\nHost: x\r\n\r\n")
        head, _, body = read_to_eof(running, sock).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert (b"transfer-encoding: chunked" in head.lower()) == chunked
        view = json.loads(dechunk(body) if chunked else body)
        assert view["count"] == 7
        ids = [c["id"] for c in view["clients"]]
        assert ids == sorted(ids)
        assert len(ids) == 7
        assert all(
            c["addr"] == "{}:{}".format(*s.getsockname())
            for c, s in zip(view["clients"], lines, strict=True)
        )


# ---------------------------------------------------------------- histograms


def histogram_bounds(text: str, name: str) -> list[float]:
    """A histogram family's `le` bounds, in exposition order, as prometheus_client reads them."""
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    assert family.type == "histogram"
    return [float(s.labels["le"]) for s in family.samples if s.name == f"{name}_bucket"]


@pytest.mark.parametrize(
    ("name", "lowest", "highest"),
    [("rat_client_lag_seconds", 0.001, 60.0), ("rat_loop_turn_seconds", 1e-05, 1.0)],
)
def test_histogram_buckets_span_the_values_they_measure(
    bare_server: Server, name: str, lowest: float, highest: float
) -> None:
    bounds = histogram_bounds(render_metrics(bare_server, Telemetry(bare_server)), name)
    *finite, last = bounds
    assert last == float("inf")
    assert finite[0] == lowest
    assert finite[-1] == highest
    assert all(a < b for a, b in pairwise(bounds)), bounds
    # Dense enough to say something between the ends: no gap wider than 3x.
    assert all(b / a <= 3 for a, b in pairwise(finite)), finite


def bucket_counts(text: str, name: str) -> dict[float, float]:
    """{upper bound: cumulative count} of one histogram, via prometheus_client."""
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    return {float(s.labels["le"]): s.value for s in family.samples if s.name == f"{name}_bucket"}


def test_histogram_one_value_one_bucket_both_ways() -> None:
    """`observe` (turn times) and `observe_all` (lag) agree, and a bound is inclusive."""
    for value, bound in ((0.3, 0.5), (0.25, 0.25), (0.0, 0.001), (61.0, float("inf"))):
        one, many = Histogram(LAG_BUCKETS), Histogram(LAG_BUCKETS)
        one.observe(value)
        many.observe_all([value])
        assert one.cumulative() == many.cumulative()
        first = next(b for b, running in one.cumulative() if running)
        assert first == bound, value


class Clock:
    """A loop clock the test moves."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Clocked:
    """A listener-less server on a test clock, with telemetry as its observer."""

    def __init__(self, config: Config) -> None:
        self.server = Server([], make_poller("select"), config)
        self.clock = Clock()
        self.server.loop.clock = self.clock  # before Telemetry, which keeps it
        self.telemetry = Telemetry(self.server)
        self.server.observer = self.server.hub.observer = self.telemetry
        self.peers: list[socket.socket] = []

    def accept(self, addr: str) -> Conn:
        """A socketpair through the server's admission path; the test keeps the peer."""
        ours, peer = socket.socketpair()
        self.peers.append(peer)
        self.server.on_accept(Conn, ours, addr)
        conn = self.server.loop.handlers[ours.fileno()]
        assert isinstance(conn, Conn)
        return conn

    def close(self) -> None:
        self.server.close()
        for peer in self.peers:
            peer.close()


@pytest.fixture
def clocked() -> Iterator[Clocked]:
    run = Clocked(Config(limits=Limits(max_pending=100_000)))
    yield run
    run.close()


def fill_kernel(conn: Conn) -> None:
    """Fill the socket's buffer (the peer never reads): from now on, what is queued stays."""
    for size in (65536, 1):
        try:
            while True:
                conn.sock.send(b"\n" * size)
        except BlockingIOError:
            pass


def test_a_lagging_client_lands_in_its_lag_bucket(clocked: Clocked) -> None:
    clocked.accept("pair:idle")
    slow = clocked.accept("pair:slow")
    fill_kernel(slow)
    slow.queue([b"line\n" * 10], clocked.clock())
    assert slow.pending == 50
    clocked.clock.now += 0.3
    text = render_metrics(clocked.server, clocked.telemetry)
    counts = bucket_counts(text, "rat_client_lag_seconds")
    assert counts[0.001] == 1  # the idle one: lag 0
    assert counts[0.25] == 1
    assert counts[0.5] == 2  # 0.3 s: above 0.25, within 0.5
    assert counts[float("inf")] == 2
    sums = parse_exposition(text)
    assert sums["rat_client_lag_seconds_sum"][()] == pytest.approx(0.3)
    assert sums["rat_client_lag_seconds_count"][()] == 2


def test_a_loop_turn_lands_in_its_turn_bucket(bare_server: Server) -> None:
    clock = Clock()
    bare_server.loop.clock = clock
    telemetry = Telemetry(bare_server)
    for elapsed in (0.0003, 1e-05, 0.5, 2.0):  # 1e-05 and 0.5: on a bound, which is inclusive
        clock.now = 0.0
        telemetry.turn_began()
        clock.now = elapsed
        telemetry.turn_ended()
    counts = bucket_counts(render_metrics(bare_server, telemetry), "rat_loop_turn_seconds")
    assert counts[1e-05] == 1
    assert counts[0.00025] == 1
    assert counts[0.0005] == 2
    assert counts[0.25] == 2
    assert counts[0.5] == 3
    assert counts[1.0] == 3
    assert counts[float("inf")] == 4


# ---------------------------------------------------------------- /clients


def test_until_max_pending_follows_the_queue_growth(clocked: Clocked) -> None:
    conn = clocked.accept("pair:slow")
    fill_kernel(conn)
    start = clocked.clock()
    for step in range(4):  # 1,000 bytes every 0.5 s: 2,000 B/s, nothing taken
        clocked.clock.now = start + step * 0.5
        conn.queue([b"x" * 999 + b"\n"], clocked.clock())
    view = exposition.client_view(
        clocked.server, clocked.telemetry, conn, clocked.clock(), kernel_counts=False
    )
    assert view["queued_bytes"] == 4000
    assert view["lag_seconds"] == pytest.approx(1.5)
    assert view["drain_bytes_per_second"] == 0.0
    assert view["queue_growth_bytes_per_second"] == pytest.approx(2000.0)
    until = view["until_max_pending_seconds"]
    assert isinstance(until, float) and math.isfinite(until) and until > 0
    assert until == pytest.approx((100_000 - 4000) / 2000.0)  # 48 s
    assert view["until_write_timeout_seconds"] == pytest.approx(30.0 - 1.5)
    # The same numbers reach /clients.
    (listed,) = exposition.clients_view(clocked.server, clocked.telemetry)["clients"]
    assert listed["until_max_pending_seconds"] == until


def test_a_cut_slow_consumer_is_recorded_with_its_queue_and_lag(clocked: Clocked) -> None:
    conn = clocked.accept("pair:slow")
    fill_kernel(conn)
    start = clocked.clock()
    conn.queue([b"x" * 999 + b"\n"], start)
    clocked.clock.now = start + 2.0
    conn.queue([b"y" * 99_999 + b"\n"], clocked.clock())  # past --max-pending: cut
    assert conn.close_reason == "slow_consumer"
    clocked.clock.now = start + 2.5
    conn.abort(conn.close_reason)
    (record,) = exposition.closed_view(clocked.telemetry)["clients"]
    assert record["reason"] == "slow_consumer"
    assert record["addr"] == "pair:slow"
    assert record["queued_bytes"] == 101_000  # as it was cut, before the queue was dropped
    assert record["lag_seconds"] == pytest.approx(2.0)
    assert record["duration_seconds"] == pytest.approx(2.5)
    assert record["room"] == "#lobby"


# ---------------------------------------------------------------- closed ring


def test_the_closed_ring_keeps_the_last_1000(clocked: Clocked) -> None:
    for i in range(CLOSED_KEPT + 5):
        conn = clocked.accept(f"pair:{i}")  # one descriptor pair at a time
        conn.close("eof")
        clocked.peers.pop().close()
    view = exposition.closed_view(clocked.telemetry)
    assert (view["state"], view["count"], view["kept"]) == ("closed", 1000, 1000)
    ids = [record["id"] for record in view["clients"]]
    assert ids == list(range(6, 1006))  # ids 1-5, the oldest, are gone; oldest first
    assert [r["addr"] for r in view["clients"][:2]] == ["pair:5", "pair:6"]
    last = exposition.closed_view(clocked.telemetry, limit=3)
    assert [r["id"] for r in last["clients"]] == [1003, 1004, 1005]
    assert last["count"] == 1000
    text = render_metrics(clocked.server, clocked.telemetry)
    assert parse_exposition(text)["rat_disconnects_total"][(("reason", "eof"),)] == 1005


CLOSED_FIELDS = {
    "id",
    "transport",
    "addr",
    "reason",
    "connected_at",
    "closed_at",
    "duration_seconds",
    "room",
    "nick",
    "lines_in",
    "lines_out",
    "bytes_in",
    "bytes_out",
    "queued_bytes",
    "lag_seconds",
}


def test_a_closed_record_has_every_field(running: Running) -> None:
    port = running.server.acceptors[0].sock.getsockname()[1]  # type: ignore[union-attr]
    leaver, stayer = (socket.create_connection(("127.0.0.1", port)) for _ in range(2))
    running.clients += [leaver, stayer]
    for sock in (leaver, stayer):
        sock.setblocking(False)
    running.turn_until(lambda: running.server.clients == 2)

    def gets(sock: socket.socket, size: int) -> Callable[[], bool]:
        got = bytearray()

        def done() -> bool:
            try:
                got.extend(sock.recv(65536))
            except BlockingIOError:
                pass
            return len(got) >= size

        return done

    stayer.sendall(b"x\n")
    running.turn_until(gets(leaver, 2))
    # The leaver's lines carry its ACK of the 2 bytes: the kernel's counts are exact.
    leaver.sendall(b"hello\nhello\n")
    running.turn_until(gets(stayer, 12))
    leaver_addr = "{}:{}".format(*leaver.getsockname())
    leaver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    leaver.close()  # a reset: closed at once, not half-closed
    running.clients.remove(leaver)
    running.turn_until(lambda: running.server.clients == 1)
    (record,) = exposition.closed_view(running.admin.telemetry)["clients"]
    assert set(record) == CLOSED_FIELDS
    assert record["id"] == 1
    assert record["transport"] == "tcp"
    assert record["addr"] == leaver_addr
    assert record["reason"] == "reset"
    assert record["room"] == "#lobby"
    assert record["nick"] is None
    assert (record["lines_in"], record["lines_out"]) == (2, 1)
    assert (record["bytes_in"], record["bytes_out"]) == (12, 2)
    assert (record["queued_bytes"], record["lag_seconds"]) == (0, 0.0)
    assert 0 <= record["duration_seconds"] < 60
    assert record["connected_at"] <= record["closed_at"]
    assert record["closed_at"].endswith("Z")


# ---------------------------------------------------------------- rat top, live


class Terminal(io.StringIO):
    """What `rat top` writes to, taken for a terminal."""

    def isatty(self) -> bool:
        return True


class Scripted:
    """`rat top`'s fetch and sleep, scripted: scrapes of a server whose counters move."""

    def __init__(self, server: Server, refreshes: int, clients: dict[str, Any]) -> None:
        self.server = server
        self.telemetry = Telemetry(server)
        self.refreshes = refreshes
        self.clients = clients
        self.fetched: list[tuple[str, int, int]] = []
        self.sleeps: list[float] = []

    def fetch(self, host: str, port: int, clients: int) -> Scrape:
        self.fetched.append((host, port, clients))
        at = float(len(self.fetched) - 1)
        self.server.counters.lines_in = 100 * len(self.fetched)
        metrics = parse_exposition(render_metrics(self.server, self.telemetry))
        return Scrape(at, metrics, self.clients)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) > self.refreshes:
            raise KeyboardInterrupt  # Ctrl-C, after `refreshes` frames


def run_top(
    monkeypatch: pytest.MonkeyPatch,
    server: Server,
    out: io.StringIO,
    refreshes: int = 2,
    clients: dict[str, Any] | None = None,
) -> Scripted:
    script = Scripted(server, refreshes, clients or {"count": 0, "clients": []})
    monkeypatch.setattr(top, "fetch", script.fetch)
    status = top.run(
        host="127.0.0.1",
        port=9100,
        interval=0.5,
        clients=10,
        once=False,
        out=out,
        sleep=script.sleep,
    )
    assert status == 0
    assert len(script.fetched) == refreshes + 1  # a first scrape, then one per frame
    assert script.sleeps == [0.5] * (refreshes + 1)
    return script


HIDE, SHOW, HOME, CLEAR_LINE, CLEAR_REST = "\x1b[?25l", "\x1b[?25h\n", "\x1b[H", "\x1b[K", "\x1b[J"


def live_frames(text: str) -> list[list[str]]:
    """The frames `rat top` drew on a terminal, each as its lines (escapes checked, removed)."""
    assert text.startswith(HIDE) and text.endswith(SHOW)
    body = text[len(HIDE) : -len(SHOW)]
    assert body.startswith(HOME)
    frames = []
    for drawn in body.split(HOME)[1:]:
        # Each line is cleared to its end; after the last, the rest of the screen.
        assert drawn.endswith("\n" + CLEAR_REST), drawn[-40:]
        lines = drawn[: -len(CLEAR_REST)].split("\n")[:-1]
        assert all(line.endswith(CLEAR_LINE) for line in lines)
        frames.append([line[: -len(CLEAR_LINE)] for line in lines])
    return frames


def test_top_redraws_each_frame_in_place_on_a_terminal(
    bare_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("LINES", "40")
    out = Terminal()
    run_top(monkeypatch, bare_server, out)
    frames = live_frames(out.getvalue())
    assert len(frames) == 2
    for frame in frames:
        assert frame[0].startswith("rat top  127.0.0.1:9100  up ")
        assert any(line.startswith("lines      in 100.0/s") for line in frame), frame
        assert max(map(len, frame)) <= 100
        assert "\x1b" not in "".join(frame)  # no other escape inside a frame
    # Nothing written between frames: no line scrolls the terminal.
    assert out.getvalue().count("\n") == sum(map(len, frames)) + 1  # + the one after SHOW


def test_top_writes_plain_frames_to_a_pipe(
    bare_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    run_top(monkeypatch, bare_server, out)
    text = out.getvalue()
    assert "\x1b" not in text
    before, first, second = text.split("rat top  127.0.0.1:9100  up ")  # two frames
    assert before == ""
    assert first.endswith("anyone\n\n")  # a frame, then a blank line
    assert second.endswith("anyone\n\n")


def test_top_frames_fit_the_terminal_height(
    bare_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More laggiest clients than rows: the frame is cut, or each redraw would scroll."""
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("LINES", "16")
    behind = [
        {
            "id": i,
            "addr": f"127.0.0.1:{5000 + i}",
            "queued_bytes": 1000 * (30 - i),
            "lag_seconds": 1.0,
        }
        for i in range(1, 21)
    ]
    out = Terminal()
    run_top(monkeypatch, bare_server, out, clients={"count": 20, "clients": behind})
    frames = live_frames(out.getvalue())
    assert len(frames) == 2
    for frame in frames:
        # The last line's newline must not scroll either: at most LINES - 1 lines.
        assert len(frame) == 15
        assert frame[0].startswith("rat top  127.0.0.1:9100")
        # 12 lines before the table's rows: room for the 3 laggiest, the rest cut off.
        assert "127.0.0.1:5001" in frame[12]
        assert "127.0.0.1:5003" in frame[14]
        assert "127.0.0.1:5004" not in "".join(frame)
