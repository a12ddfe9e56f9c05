"""The admin package without a subprocess.

- per-client lines out, derived from room totals, against what the hub
  really hands each member (hypothesis over joins, leaves and publishes);
- `rat top`'s parser and frame, on an exposition rendered by the server;
- in-process servers (real loopback sockets, our own turns) for what needs a
  short timeout: the request timeout and the connection limit.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from rat.admin import endpoint, exposition, serve_admin
from rat.admin.endpoint import Admin
from rat.admin.exposition import render_metrics
from rat.admin.telemetry import Histogram, Telemetry
from rat.admin.top import Scrape, parse_exposition, quantile, render_frame
from rat.config import Config
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
