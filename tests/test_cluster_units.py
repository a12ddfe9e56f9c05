"""Scale-out logic without sockets: the message envelope, RESP, the back-off, the backplane.

The backplane is driven through a real `Hub` and a stand-in server and link:
what a turn forwards, what arrives, what is dropped and counted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rat.cluster import resp
from rat.cluster.backoff import backoff_delay
from rat.cluster.backplane import NOTICE_BACK, NOTICE_DOWN, Backplane, Histogram, Outgoing
from rat.cluster.message import Message, decode, encode, header, new_origin
from rat.hub import Hub, Room

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
