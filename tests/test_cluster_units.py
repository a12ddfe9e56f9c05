"""Scale-out logic without child processes: the message envelope, RESP, the back-off,
the backplane, the Redis link's writes, the supervisor's restart schedule.

The backplane is driven through a real `Hub` and a stand-in server and link:
what a turn forwards, what arrives, what is dropped and counted.  The Redis
link runs on a real loop against a listening socket that plays Redis, with
its sockets' writes recorded.  The supervisor's restart decisions are driven
with a fake clock and made-up wait statuses, without forking.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rat.cluster.redis as redis_link
from rat.cluster import resp
from rat.cluster.backoff import backoff_delay
from rat.cluster.backplane import NOTICE_BACK, NOTICE_DOWN, Backplane, Histogram, Outgoing
from rat.cluster.message import Message, decode, encode, header, new_origin
from rat.cluster.stream import start_connect
from rat.cluster.workers import RESTART_CAP, RESTART_FIRST, STABLE_AFTER, Supervisor
from rat.config import Config
from rat.hub import Hub, Room
from rat.loop import Loop
from rat.poller import make_poller

# ------------------------------------------------------------------ message

origins = st.binary(min_size=8, max_size=8).map(lambda b: b.hex().encode())
rooms = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1
).filter(lambda r: not any(c.isspace() for c in r))
# Complete lines with any bytes at all but the newline.
payloads = st.lists(st.binary().map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=20).map(
    b"".join
)


@given(origins, st.integers(0, 2**63), rooms, payloads)
def test_a_message_round_trips_with_any_payload(
    origin: bytes, sent_ns: int, room: str, payload: bytes
) -> None:
    data = encode(origin, sent_ns, room, payload)
    assert decode(data) == Message(origin, sent_ns, room, payload)
    assert data.startswith(header(origin, sent_ns, room))
    assert decode(data) is not None and decode(data).lines == payload.count(b"\n")  # type: ignore[union-attr]


def test_the_header_is_readable_text() -> None:
    origin = b"0123456789abcdef"
    assert encode(origin, 42, "#lobby", b"hi\n") == b"rat1 0123456789abcdef 42 #lobby\nhi\n"


@given(st.binary(max_size=200))
def test_decode_refuses_what_is_not_a_message_and_never_raises(data: bytes) -> None:
    message = decode(data)
    if message is not None:  # only if it really is one: it encodes back to the same bytes
        assert encode(message.origin, message.sent_ns, message.room, message.payload) == data


@pytest.mark.parametrize(
    "data",
    [
        b"hello",  # someone ran `redis-cli publish rat hello`
        b"rat1 0123456789abcdef 42 #lobby\nno newline at the end",  # would break line atomicity
        b"rat1 0123456789ABCDEF 42 #lobby\nx\n",  # origin not lower-case hex
        b"rat1 0123456789abcdef -1 #lobby\nx\n",
        b"rat1 0123456789abcdef 42\nx\n",  # no room
        b"rat2 0123456789abcdef 42 #lobby\nx\n",  # another version
        b"rat1 0123456789abcdef 42 #lo by\nx\n",
    ],
)
def test_decode_refuses(data: bytes) -> None:
    assert decode(data) is None


def test_encode_refuses_bad_parts() -> None:
    origin = new_origin()
    assert len(origin) == 16 and origin != new_origin()
    bad: Callable[[], bytes]
    for bad in (
        lambda: encode(b"xyz", 1, "#a", b"x\n"),
        lambda: encode(origin, -1, "#a", b"x\n"),
        lambda: encode(origin, 1, "", b"x\n"),
        lambda: encode(origin, 1, "# a", b"x\n"),
        lambda: encode(origin, 1, "#a", b"partial"),
    ):
        with pytest.raises(ValueError):
            bad()


# ------------------------------------------------------------------ back-off


@given(st.integers(0, 10_000))
def test_backoff_grows_and_is_capped(failures: int) -> None:
    delay = backoff_delay(failures)
    assert 0.1 <= delay <= 5.0
    assert backoff_delay(failures + 1) >= delay


def test_backoff_schedule() -> None:
    assert [backoff_delay(k) for k in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff_delay(3, first=1.0, cap=60.0, factor=3.0) == 27.0
    assert backoff_delay(10**9) == 5.0  # no overflow however long the outage


@given(st.integers(0, 50), st.floats(0, 1), st.floats(0, 1, exclude_max=True))
def test_backoff_jitter_only_shortens_within_bounds(
    failures: int, jitter: float, rand: float
) -> None:
    full = backoff_delay(failures)
    delay = backoff_delay(failures, jitter=jitter, rand=rand)
    assert full * (1 - jitter) - 1e-12 <= delay <= full


def test_backoff_refuses_nonsense() -> None:
    for kwargs in ({"first": 0}, {"first": 2, "cap": 1}, {"factor": 0.5}, {"jitter": 2}):
        with pytest.raises(ValueError):
            backoff_delay(1, **kwargs)
    with pytest.raises(ValueError):
        backoff_delay(-1)


# ---------------------------------------------------------------------- RESP

# Replies as Redis sends them, and what a reader must make of them.
Reply = Any
leaf = st.one_of(
    st.binary().map(lambda b: (b"$%d\r\n%s\r\n" % (len(b), b), b)),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: (b":%d\r\n" % n, n)),
    st.text(st.characters(min_codepoint=32, max_codepoint=126)).map(
        lambda t: (b"+%s\r\n" % t.encode(), t.encode())
    ),
    st.just((b"$-1\r\n", None)),
    st.just((b"*-1\r\n", None)),
)
replies = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=5).map(
        lambda items: (
            b"*%d\r\n" % len(items) + b"".join(wire for wire, _ in items),
            [value for _, value in items],
        )
    ),
    max_leaves=20,
)


def both_readers() -> list[Callable[[], resp.Reader]]:
    return [lambda: resp.make_reader(prefer_hiredis=True), resp.PyReader]


@pytest.mark.parametrize("make", both_readers(), ids=["hiredis", "python"])
@given(st.lists(replies, min_size=1, max_size=10), st.data())
def test_readers_parse_replies_cut_anywhere(
    make: Callable[[], resp.Reader], items: list[tuple[bytes, Reply]], data: st.DataObject
) -> None:
    wire = b"".join(w for w, _ in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    reader = make()
    got: list[Reply] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        reader.feed(wire, start, end - start)
        while (reply := reader.gets()) is not False:
            got.append(reply)
    assert got == [value for _, value in items]


@pytest.mark.parametrize("make", both_readers(), ids=["hiredis", "python"])
def test_readers_return_error_replies_and_raise_on_garbage(
    make: Callable[[], resp.Reader],
) -> None:
    reader = make()
    reader.feed(b"-ERR unknown command 'FOO'\r\n:1\r\n")
    error = reader.gets()
    assert isinstance(error, resp.REPLY_ERRORS) and "unknown command" in str(error)
    assert reader.gets() == 1
    assert reader.gets() is False
    reader.feed(b"?what\r\n")
    with pytest.raises(resp.PROTOCOL_ERRORS):
        reader.gets()


@given(st.lists(st.binary(), min_size=1, max_size=6))
def test_a_command_is_an_array_of_bulk_strings(args: list[bytes]) -> None:
    reader = resp.PyReader()
    reader.feed(resp.command(*args))
    assert reader.gets() == args


@given(st.binary(min_size=1, max_size=30), st.binary())
def test_publish_head_then_payload_is_a_publish_command(channel: bytes, payload: bytes) -> None:
    reader = resp.PyReader()
    reader.feed(resp.publish_head(channel, len(payload)) + payload + resp.CRLF)
    assert reader.gets() == [b"PUBLISH", channel, payload]


def test_without_hiredis_the_python_reader_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare Python (no hiredis wheel): rat.cluster.resp still imports and parses."""
    import importlib  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "hiredis", None)  # import hiredis -> ImportError
    try:
        fallback = importlib.reload(resp)
        assert isinstance(fallback.make_reader(), fallback.PyReader)
        assert "pure-Python" in fallback.reader_name()
        assert (fallback.ReplyError,) == fallback.REPLY_ERRORS
    finally:
        monkeypatch.undo()
        importlib.reload(resp)
    assert "hiredis" in resp.reader_name()


# ------------------------------------------------------------------ histogram


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram((0.01, 0.1, 1.0))
    for value in (0.001, 0.01, 0.05, 0.5, 3.0):
        hist.observe(value)
    assert hist.cumulative() == [(0.01, 2), (0.1, 3), (1.0, 4), (float("inf"), 5)]
    assert hist.count == 5 and hist.sum == pytest.approx(3.561)


# ------------------------------------------------------------------ backplane


class FakeLoop:
    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []
        self.resumed: list[object] = []

    def at_turn_end(self, hook: Callable[[], None]) -> None:
        self.hooks.append(hook)

    def resume(self, handler: object) -> None:
        self.resumed.append(handler)


class FakeServer:
    """What the backplane uses of a server: its hub, loop and publish_remote."""

    def __init__(self) -> None:
        self.hub = Hub()
        self.loop = FakeLoop()
        self.stopping = False

    def publish_remote(self, room: Room, block: bytes) -> None:
        self.hub.publish_remote(block, room)

    def end_turn(self) -> dict[str, bytes]:
        """Deliver (what each room's non-member would get), then the end-of-turn hooks."""
        delivered = {room.name: turn.data for room, turn in self.hub.take_turns()}
        for hook in self.loop.hooks:
            hook()
        return delivered


class FakeLink:
    def __init__(self, accept: bool = True) -> None:
        self.up = True
        self.accept = accept
        self.turns: list[list[Outgoing]] = []

    def send(self, messages: list[Outgoing]) -> bool:
        if self.accept:
            self.turns.append(messages)
        return self.accept

    def close(self) -> None:
        pass


def node(notices: bool = False) -> tuple[FakeServer, Backplane, FakeLink]:
    server = FakeServer()
    backplane = Backplane(server, new_origin(), notices=notices)  # type: ignore[arg-type]
    link = FakeLink()
    backplane.link = link
    return server, backplane, link


def test_one_message_per_room_per_turn_in_publish_order() -> None:
    server, backplane, link = node()
    rust = server.hub.room("#rust")
    server.hub.join("c", rust)
    server.hub.publish("a", b"a1\n")
    server.hub.publish("b", b"b1\nb2\n")
    server.hub.publish("c", b"c1\n", rust)
    server.hub.publish("a", b"a2\n")
    server.end_turn()
    assert len(link.turns) == 1
    sent = {room: (head, payload) for room, head, payload in link.turns[0]}
    assert sent["#lobby"][1] == b"a1\nb1\nb2\na2\n" and sent["#rust"][1] == b"c1\n"
    message = decode(sent["#lobby"][0] + sent["#lobby"][1])
    assert message is not None and message.origin == backplane.origin
    assert backplane.counters.lines_forwarded == 5 and backplane.counters.messages_forwarded == 2
    server.end_turn()
    assert len(link.turns) == 1  # a quiet turn sends nothing


def test_remote_lines_reach_every_member_and_are_never_forwarded_again() -> None:
    server, backplane, link = node()
    server.hub.join("alice", server.hub.lobby)
    backplane.receive(encode(new_origin(), 1, "#lobby", b"from afar\n"))
    server.hub.publish("alice", b"local\n")
    delivered = server.end_turn()
    turn_data = delivered["#lobby"]
    assert turn_data == b"from afar\nlocal\n"
    assert [payload for _, _, payload in link.turns[0]] == [b"local\n"]  # only the local line
    assert backplane.counters.lines_received == 1
    assert backplane.counters.lag.count == 1


def test_own_messages_are_dropped_and_unknown_rooms_are_counted() -> None:
    server, backplane, _ = node()
    server.hub.join("alice", server.hub.lobby)
    backplane.receive(encode(backplane.origin, 1, "#lobby", b"mine\n"))
    backplane.receive(encode(new_origin(), 1, "#nobody-here", b"x\ny\n"))
    backplane.receive(b"garbage")
    assert server.end_turn() == {}
    counters = backplane.counters
    assert counters.lines_received == 2 and counters.unrouted == 2 and counters.malformed == 1


def test_down_or_full_link_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    server, backplane, link = node()
    link.up = False
    server.hub.publish("a", b"1\n2\n")
    server.end_turn()
    assert backplane.counters.dropped_disconnected == 2 and not link.turns
    link.up, link.accept = True, False
    for _ in range(3):
        server.hub.publish("a", b"x\n")
        server.end_turn()
    assert backplane.counters.dropped_overflow == 3
    link.accept = True
    server.hub.publish("a", b"y\n")
    server.end_turn()
    logged = [r.getMessage() for r in caplog.records]
    assert sum("not keeping up" in m for m in logged) == 1  # once per episode
    assert sum("caught up; 3 lines" in m for m in logged) == 1


def test_chat_members_are_told_when_the_link_goes_down_and_comes_back() -> None:
    server, backplane, _ = node(notices=True)
    rust = server.hub.room("#rust")
    server.hub.join("alice", server.hub.lobby)
    server.hub.join("bob", rust)
    backplane.on_link_down()
    assert server.end_turn() == {"#lobby": NOTICE_DOWN, "#rust": NOTICE_DOWN}
    backplane.on_link_back()
    assert server.end_turn() == {"#lobby": NOTICE_BACK, "#rust": NOTICE_BACK}
    assert backplane.counters.reconnects == 1
    assert server.loop.resumed  # a notice made after delivery still goes out next turn
    plain_server, plain, _ = node(notices=False)
    plain_server.hub.join("alice", plain_server.hub.lobby)
    plain.on_link_down()
    assert plain_server.end_turn() == {}  # without --chat, lines are only ever the clients'


def test_prometheus_families() -> None:
    server, backplane, link = node()
    server.hub.join("alice", server.hub.lobby)
    server.hub.publish("alice", b"a\nb\n")
    backplane.receive(encode(new_origin(), 1, "#lobby", b"x\n"))
    server.end_turn()
    link.up = False
    server.hub.publish("alice", b"c\n")
    server.end_turn()
    text = backplane.prometheus()
    assert server.backplane is backplane  # type: ignore[attr-defined]
    lines = text.splitlines()
    for expected in (
        "rat_backplane_lines_forwarded_total 2",
        "rat_backplane_lines_received_total 1",
        "rat_backplane_reconnects_total 0",
        'rat_backplane_dropped_total{reason="overflow"} 0',
        'rat_backplane_dropped_total{reason="disconnected"} 1',
        "# TYPE rat_backplane_lag_seconds histogram",
        'rat_backplane_lag_seconds_bucket{le="+Inf"} 1',
        "rat_backplane_lag_seconds_count 1",
    ):
        assert expected in lines, text
    for name in ("lines_forwarded_total", "dropped_total", "lag_seconds"):
        assert f"# HELP rat_backplane_{name} " in text


# ------------------------------------------------------- the Redis link's writes


class RecordingSocket:
    """A real socket whose `sendmsg` calls are recorded (the bytes each one sent)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writes: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def sendmsg(self, buffers: list[bytes | memoryview]) -> int:
        sent = self.sock.sendmsg(buffers)
        self.writes.append(b"".join(bytes(b) for b in buffers)[:sent])
        return sent


class LoopServer:
    """What the backplane uses of a server, on a real loop."""

    def __init__(self, loop: Loop) -> None:
        self.hub = Hub()
        self.loop = loop
        self.stopping = False

    def publish_remote(self, room: Room, block: bytes) -> None:
        self.hub.publish_remote(block, room)


def turn_until(loop: Loop, done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the loop never got there"
        loop.run_once(0.05)


def read_commands(sock: socket.socket, count: int) -> tuple[list[Any], bytes]:
    """`count` RESP commands from `sock` (blocking, with its timeout), and their bytes."""
    reader = resp.PyReader()
    got: list[Any] = []
    wire = b""
    while len(got) < count:
        data = sock.recv(65536)
        assert data, f"EOF after {got!r}"
        wire += data
        reader.feed(data)
        while (command := reader.gets()) is not False:
            got.append(command)
    return got, wire


def test_a_turn_goes_to_redis_as_one_write_of_pipelined_publishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 15: one pipelined write per turn carrying all of that turn's lines.

    A turn with lines in three rooms reaches the publisher's socket in one
    `sendmsg`: one PUBLISH per room, in the order the rooms were first
    published to that turn, each carrying all of its room's lines in order.
    """
    made: list[RecordingSocket] = []

    def recording_connect(family: int, sockaddr: tuple[object, ...]) -> socket.socket:
        made.append(RecordingSocket(start_connect(family, sockaddr)))
        return made[-1]  # type: ignore[return-value]

    monkeypatch.setattr(redis_link, "start_connect", recording_connect)
    fake_redis = socket.create_server(("127.0.0.1", 0))
    fake_redis.settimeout(5)
    loop = Loop(make_poller())
    server = LoopServer(loop)
    backplane = Backplane(server, new_origin(), notices=True)  # type: ignore[arg-type]
    link = redis_link.RedisLink(
        loop,
        backplane,
        redis_link.parse_url("redis://127.0.0.1"),
        "rat",
        rooms=True,
        addrinfo=[(socket.AF_INET, fake_redis.getsockname())],
    )
    backplane.link = link
    accepted: list[socket.socket] = []
    try:
        link.start()
        accepted = [fake_redis.accept()[0] for _ in range(2)]
        pub_sock, sub_sock = made  # the link opens the publisher first
        by_peer = {sock.getpeername(): sock for sock in accepted}
        pub_side = by_peer[pub_sock.getsockname()]
        sub_side = by_peer[sub_sock.getsockname()]
        for sock in accepted:
            sock.settimeout(5)
        turn_until(loop, lambda: bool(sub_sock.writes))
        assert read_commands(sub_side, 1)[0] == [[b"PSUBSCRIBE", b"rat:#*"]]
        sub_side.sendall(b"*3\r\n$10\r\npsubscribe\r\n$6\r\nrat:#*\r\n:1\r\n")
        turn_until(loop, lambda: link.up)
        assert pub_sock.writes == []  # no password: nothing to say before the first turn

        hub = server.hub
        rust, go = hub.room("#rust"), hub.room("#go")
        hub.publish("alice", b"a1\n")
        hub.publish("bob", b"r1\n", rust)
        hub.publish("alice", b"a2\na3\n")
        hub.publish("carol", b"g1\n", go)
        hub.publish("bob", b"r2\n", rust)
        loop.run_once(0)  # the turn ends: the backplane hands it to the link

        assert len(pub_sock.writes) == 1, pub_sock.writes  # one syscall for the whole turn
        commands, wire = read_commands(pub_side, 3)
        assert wire == pub_sock.writes[0]  # and nothing else on the wire
        assert [command[:2] for command in commands] == [
            [b"PUBLISH", b"rat:#lobby"],
            [b"PUBLISH", b"rat:#rust"],
            [b"PUBLISH", b"rat:#go"],
        ]
        messages = [decode(command[2]) for command in commands]
        assert [(m.room, m.payload) for m in messages if m is not None] == [
            ("#lobby", b"a1\na2\na3\n"),
            ("#rust", b"r1\nr2\n"),
            ("#go", b"g1\n"),
        ]
        assert backplane.counters.lines_forwarded == 6

        hub.publish("alice", b"next turn\n")
        loop.run_once(0)
        assert len(pub_sock.writes) == 2  # the next turn is the next write
        assert read_commands(pub_side, 1)[0][0][:2] == [b"PUBLISH", b"rat:#lobby"]
        assert len(sub_sock.writes) == 1  # the subscriber only ever sent its PSUBSCRIBE
    finally:
        link.close()
        loop.close()
        for sock in accepted:
            sock.close()
        fake_redis.close()


# ----------------------------------------------------- the supervisor's restarts

KILLED = signal.SIGKILL  # the wait status of a child killed by SIGKILL
FAILED = 1 << 8  # the wait status of a child that exited with status 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def supervised() -> Iterator[tuple[Supervisor, FakeClock, list[int]]]:
    """A supervisor of two running, ready workers; a restart records the slot, forks nothing."""
    clock = FakeClock()

    def no_build(*args: object) -> int:
        raise AssertionError("no worker is built in these tests")

    supervisor = Supervisor(Config(workers=2), no_build, [], clock=clock)
    restarted: list[int] = []

    def restart(slot: Any) -> None:  # what _restart/_fork record of a new worker
        restarted.append(slot.index)
        slot.pid = 9000 + len(restarted)
        slot.started = clock()
        slot.ready = False
        slot.restart_at = None

    supervisor._restart = restart  # type: ignore[method-assign]
    for slot in supervisor.slots:
        slot.pid, slot.ready, slot.started = 100 + slot.index, True, clock()
    try:
        yield supervisor, clock, restarted
    finally:
        supervisor._wake_r.close()
        supervisor._wake_w.close()


def die_and_restart(supervisor: Supervisor, clock: FakeClock, lived: float) -> float:
    """Worker 1 dies after `lived` seconds; return the delay before its restart (checked)."""
    slot = supervisor.slots[0]
    clock.now = slot.started + lived
    assert not supervisor._exited(slot, KILLED)
    assert slot.pid == 0 and slot.restart_at is not None and not slot.done
    delay = slot.restart_at - clock.now
    clock.now = slot.restart_at - 0.001
    supervisor._restart_due()
    assert slot.pid == 0  # not before its time
    clock.now = slot.restart_at
    supervisor._restart_due()
    assert slot.pid != 0  # restarted when due
    return delay


def test_a_worker_that_keeps_dying_waits_longer_each_time_up_to_the_cap(
    supervised: tuple[Supervisor, FakeClock, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    supervisor, clock, restarted = supervised
    delays = [die_and_restart(supervisor, clock, lived=1.0) for _ in range(9)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert delays[0] == pytest.approx(RESTART_FIRST) and max(delays) == pytest.approx(RESTART_CAP)
    assert restarted == [1] * 9
    assert supervisor.slots[1].pid == 102  # the other worker was left alone
    assert "worker 1 (pid 101) died (killed by SIGKILL) after 1.0 s" in caplog.text
    assert "restarting it in 0.1 s" in caplog.text


def test_a_worker_that_lived_long_enough_restarts_soon_again(
    supervised: tuple[Supervisor, FakeClock, list[int]],
) -> None:
    supervisor, clock, _ = supervised
    for _ in range(7):
        die_and_restart(supervisor, clock, lived=1.0)  # at the cap now
    assert die_and_restart(supervisor, clock, lived=STABLE_AFTER - 0.1) == pytest.approx(5.0)
    assert die_and_restart(supervisor, clock, lived=STABLE_AFTER) == pytest.approx(0.1)
    assert die_and_restart(supervisor, clock, lived=1.0) == pytest.approx(0.2)  # grows again


def test_a_worker_that_exits_0_or_during_the_stop_is_not_restarted(
    supervised: tuple[Supervisor, FakeClock, list[int]],
) -> None:
    supervisor, clock, restarted = supervised
    first, second = supervisor.slots
    assert not supervisor._exited(first, 0)
    assert first.done and first.restart_at is None
    supervisor.stopping = True
    assert not supervisor._exited(second, FAILED)
    assert second.done and second.restart_at is None and second.status == 1
    clock.now += 60
    supervisor._restart_due()
    assert restarted == []


def test_a_worker_that_dies_before_any_is_ready_fails_the_start(
    supervised: tuple[Supervisor, FakeClock, list[int]],
) -> None:
    supervisor, _, restarted = supervised
    for slot in supervisor.slots:
        slot.ready = False
    first = supervisor.slots[0]
    assert supervisor._exited(first, FAILED)  # the supervisor stops: no restart loop
    assert first.done and first.restart_at is None and restarted == []
