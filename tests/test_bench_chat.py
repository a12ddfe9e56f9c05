"""`rat bench --chat [--rooms R]`: the generator against a server in chat mode.

First without sockets: the framing of relayed lines (`<nick> ` in front,
checked against the publisher in the line), what counts as a notice, and
the checker fed streams with notices anywhere, in any chunking.  Then short
real runs against `rat serve --chat`: clean, on the fast path, in one room
and in several, with history, and the clear failures (a raw server, a chat
server without --chat, a nick already taken).
"""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Callable
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchkit import assert_clean, bench, run_ratbench
from conftest import ServerProcess, recv_lines
from ratbench.check import LatencyHistogram
from ratbench.plan import WorkerResult, place, room_of
from ratbench.receive import Checker, Receiver, merge_latency
from ratbench.wire import (
    CHAT_PREFIX_SIZE,
    MIN_LINE_SIZE,
    LineWire,
    Wire,
    encode_line,
    sync_line,
)
from ratbench.ws import OP_PING, WsWire, frame_header

PING = bytes([0x80 | OP_PING, 2]) + b"hi"  # a WebSocket ping, as a server sends it

# -- framing ---------------------------------------------------------------------------


@settings(deadline=None)  # a loaded machine must not fail it
@given(pubid=st.integers(1, 99999), seq=st.integers(0, 10**9), size=st.integers(MIN_LINE_SIZE, 200))
def test_relayed_frames_carry_the_senders_nick(pubid: int, seq: int, size: int) -> None:
    line = encode_line(pubid, seq, 12345, size)
    for wire in (LineWire(size, chat=True), WsWire(size, chat=True)):
        frame = wire.received(line, pubid)
        assert len(frame) == wire.frame_size == len(wire.received(line, 0))
        assert b"<b%05d> " % pubid + line[:-1] in frame
        m = wire.frame_re.fullmatch(frame)
        assert m is not None and (int(m[1]), int(m[2]), int(m[3])) == (pubid, seq, 12345)
        # the server named the wrong sender: not a valid frame
        other = wire.received(line, pubid % 99999 + 1)
        assert wire.frame_re.fullmatch(other) is None
        assert wire.payload_line(frame) == line and wire.payload_line(other) is None


def test_unprefix() -> None:
    wire = LineWire(64, chat=True)
    line = encode_line(42, 1, 2, 64)
    assert wire.unprefix(b"<b00042> " + line) == line
    for bad in (line, b"<b00043> " + line, b"<x00042> " + line, b"<b0004a> " + line, b"* hi\n"):
        assert wire.unprefix(bad) is None
    assert LineWire(64).unprefix(line) == line  # raw mode: nothing to take off
    assert len(b"<b00042> ") == CHAT_PREFIX_SIZE


def test_skippable_notices_and_control_frames() -> None:
    wire = LineWire(64, chat=True)
    data = wire.received(encode_line(1, 0, 0, 64), 1)
    notice = b"* b00003 joined #r1\n"
    assert wire.skippable(notice + data, 0) == len(notice)
    assert wire.skippable(data + notice, len(data)) == len(notice)
    assert wire.skippable(data, 0) == 0
    assert wire.skippable(notice[:5], 0) == -1 and wire.skippable(b"*", 0) == -1
    assert LineWire(64).skippable(notice, 0) == 0  # raw mode has no notices
    ws = WsWire(64, chat=True)
    frame = frame_header(len(notice) - 1, masked=False) + notice[:-1]
    assert ws.skippable(frame, 0) == len(frame) and ws.frame(notice) == frame
    assert ws.skippable(PING + frame, 0) == len(PING)
    assert ws.skippable(ws.received(encode_line(1, 0, 0, 64), 1), 0) == 0
    assert ws.skippable(frame[:1], 0) == -1 and ws.skippable(frame[:4], 0) == -1
    assert WsWire(64).skippable(PING, 0) == len(PING)  # pings are skipped in raw mode too


def test_place_puts_every_room_on_every_node() -> None:
    spots = [place(i, 100, 2) for i in range(1000)]
    assert {spot: spots.count(spot) for spot in set(spots)} == {
        (room, node): 5 for room in range(100) for node in range(2)
    }
    assert [place(i, 1, 2) for i in range(4)] == [(0, 0), (0, 1), (0, 0), (0, 1)]
    assert [room_of(p, 3) for p in (0, 1, 2, 3, 4)] == [None, 0, 1, 2, 0]


# -- the checker, fed by hand ------------------------------------------------------------

SIZE = 64
NOTICES = [b"* b00009 joined #lobby\n", b"* guest7 is now b00009\n", b"* end of history\n"]


def stream(
    wire: Wire, order: list[tuple[int, int]], skip: int, rng: random.Random
) -> tuple[bytes, int]:
    """What a receiver with publisher id `skip` gets: frames, notices (pings) in between."""
    parts = [wire.received(sync_line(7, SIZE))]
    skipped = 0

    def notice() -> None:
        nonlocal skipped
        parts.append(wire.frame(rng.choice(NOTICES)))
        if wire.control_frames and rng.random() < 0.5:
            parts.append(PING)
            skipped += 1
        skipped += 1

    for pubid, seq in order:
        if rng.random() < 0.1:
            notice()
        if pubid != skip:
            parts.append(wire.received(encode_line(pubid, seq, 10**15 + seq, SIZE), pubid))
    if rng.random() < 0.5:
        notice()
    return b"".join(parts), skipped


def chunks(data: bytes, rng: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, 200)
        out.append(data[pos : pos + n])
        pos += n
    return out


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    lines=st.integers(1, 60),
    corrupt=st.booleans(),
    websocket=st.booleans(),
)
def test_checker_cuts_notices_out_anywhere(
    seed: int, lines: int, corrupt: bool, websocket: bool
) -> None:
    """Notices (and pings) at any place, bytes in any chunking: all checked on the fast path.

    With one line corrupted on one receiver, that one (only) goes to the slow
    path, which counts it as malformed and still skips the notices.
    """
    rng = random.Random(seed)
    wire: Wire = WsWire(SIZE, chat=True) if websocket else LineWire(SIZE, chat=True)
    order = [(rng.randint(1, 3), 0) for _ in range(lines)]
    counts: dict[int, int] = {}
    for i, (pubid, _) in enumerate(order):
        order[i] = (pubid, counts.get(pubid, 0))
        counts[pubid] = counts.get(pubid, 0) + 1
    result = WorkerResult(0)
    checker = Checker(wire, result, wire.received(sync_line(7, SIZE)))
    sock = cast(socket.socket, None)  # never used: the bytes are fed by hand
    receivers = [Receiver(sock, pubid, LatencyHistogram(), wire) for pubid in (0, 1, 2, 0)]
    checker.attach(receivers, reference=True)
    feeds, notices = [], 0
    for rx in receivers:
        data, n = stream(wire, order, rx.pubid, rng)
        notices += n
        if corrupt and rx is receivers[3]:  # the padding of its last line
            at = data.rindex(b"x" * 20)
            data = data[:at] + b"y" + data[at + 1 :]
        feeds.append([(rx, c) for c in chunks(data, rng)])
    t = 2 * 10**12  # us, after every send time
    while any(feeds):  # the receivers' chunks interleaved, the reference's first
        for queue in feeds:
            take = rng.randint(1, 3)
            for rx, chunk in queue[:take]:
                t += 1
                checker.on_data(rx, chunk, t)
            del queue[:take]
            checker.unblock()
    published = dict(counts)
    checker.finish(published)
    merge_latency(receivers, result)
    broken = 1 if corrupt else 0  # the corrupted line: malformed, so its line is lost
    assert result.reordered == result.duplicated == 0
    assert result.malformed == result.lost == broken
    assert result.slow_path_receivers == (1 if broken else 0)
    assert result.notices == notices
    expected = sum(checker.expected_lines(rx, published) for rx in receivers)
    assert result.delivered == result.expected == expected
    assert sum(result.latency.values()) == expected - broken


def test_receivers_far_ahead_of_the_reference_are_checked_in_full() -> None:
    """A receiver that gets megabytes before the reference has them keeps them, in order.

    Its unchecked bytes grow in place (no copy of the backlog per arrival) and
    the checked ones are dropped as it goes; every line is still compared
    with the reference and timed once, and a changed byte is still found.
    """
    wire = LineWire(SIZE)
    lines = 20_000  # 1.28 MB per receiver: far past the compaction threshold
    order = [(1 + k % 3, k // 3) for k in range(lines)]
    result = WorkerResult(0)
    checker = Checker(wire, result, wire.received(sync_line(7, SIZE)))
    sock = cast(socket.socket, None)
    hist = LatencyHistogram()
    ref, ahead, late = (Receiver(sock, 0, hist, wire) for _ in range(3))
    checker.attach([ref, ahead, late], reference=True)
    data = b"".join(
        [wire.received(sync_line(7, SIZE))]
        + [encode_line(p, q, 10**15 + k, SIZE) for k, (p, q) in enumerate(order)]
    )
    bad = bytearray(data)
    bad[-2] ^= 1  # the padding of the last line
    rng = random.Random(5)
    t = 2 * 10**12
    for chunk in chunks(data, rng):  # everything reaches `ahead` before the reference
        t += 1
        checker.on_data(ahead, chunk, t)
    assert checker.blocked == {ahead}
    ref_chunks, late_chunks = chunks(data, rng), chunks(bytes(bad), rng)
    while ref_chunks or late_chunks:  # the reference and `late` side by side
        for rx, queue in ((ref, ref_chunks), (late, late_chunks)):
            for chunk in queue[:50]:
                t += 1
                checker.on_data(rx, chunk, t)
            del queue[:50]
        checker.unblock()
    published = {1: 6667, 2: 6667, 3: 6666}
    checker.finish(published)
    merge_latency([ref, ahead, late], result)
    assert ahead.fast and ahead.g == lines
    assert not late.fast and result.malformed == 1 and result.lost == 1
    assert result.delivered == result.expected == 3 * lines  # the malformed one arrived
    assert sum(result.latency.values()) == 3 * lines - 1  # one shared histogram, counted once


# -- real runs --------------------------------------------------------------------------

CHAT = ["chat", "--chat", "--clients", "6", "--rate", "300", "--duration", "1", "--grace", "5"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "argv"),
    [
        ((), [*CHAT]),
        ((), [*CHAT, "--rooms", "3"]),
        (("--history", "5"), [*CHAT, "--rooms", "2"]),
        ((), ["fanout", "--chat", "--publishers", "2", "--subscribers", "6", "--rooms", "2",
              "--duration", "1"]),
        ((), ["idle", "--chat", "--connections", "60", "--hold", "0.2", "--rooms", "4"]),
    ],
    ids=["chat", "rooms", "history", "fanout-rooms", "idle-rooms"],
)  # fmt: skip
def test_chat_mode_against_rat(
    rat_server: Callable[..., ServerProcess], flags: tuple[str, ...], argv: list[str]
) -> None:
    server = rat_server("--chat", *flags)
    for _ in range(2):  # the second run finds the first one's history in the rooms
        s = bench(server.port, *argv, pid=server.proc.pid)
        assert_clean(s)
        assert s["proto"] == "line+chat" and s["slow_path_receivers"] == 0
    rooms = s["params"]["rooms"]
    if argv[0] == "chat":
        # each line reaches the others of its room and one reference per room
        clients = s["params"]["clients"]
        assert s["delivered"] == s["published"] * (clients // rooms)
    if rooms > 1:
        assert s["notices"] > 0  # the probe moving from room to room


@pytest.mark.slow
def test_rooms_are_real_rooms(rat_server: Callable[..., ServerProcess]) -> None:
    """An observer in #r1 hears only that room's publishers, with their nicks."""
    server = rat_server("--chat")
    observer = server.connect()
    recv_lines(observer, 1)  # the greeting
    observer.sendall(b"/join #r1\n")
    assert recv_lines(observer, 1)[0].startswith(b"* you joined #r1")
    s = bench(server.port, *CHAT, "--rooms", "2", "--max-lines", "40")
    assert_clean(s)
    observer.settimeout(0.5)
    heard = b""
    try:
        while chunk := observer.recv(65536):
            heard += chunk
    except TimeoutError:
        pass
    observer.close()
    nicks = {line[:9] for line in heard.splitlines() if line.startswith(b"<b")}
    # the probe (b00000, the sync line), and publishers 2, 4 and 6: those of #r1
    assert nicks == {b"<b00000> ", b"<b00002> ", b"<b00004> ", b"<b00006> "}


def test_chat_against_a_raw_server(rat_server: Callable[..., ServerProcess]) -> None:
    server = rat_server()
    proc = run_ratbench(*CHAT, "--port", str(server.port), "--setup-timeout", "1")
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "entering chat mode" in err and "rat serve --chat" in err and "Traceback" not in err


def test_chat_server_without_chat(rat_server: Callable[..., ServerProcess]) -> None:
    server = rat_server("--chat")
    proc = run_ratbench("chat", "--clients", "2", "--duration", "1", "--port", str(server.port))
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "looks like a chat server's greeting: give --chat" in err


def test_nick_taken(rat_server: Callable[..., ServerProcess]) -> None:
    server = rat_server("--chat")
    squatter = server.connect()
    recv_lines(squatter, 1)
    squatter.sendall(b"/nick b00002\n")
    assert recv_lines(squatter, 1) == [b"* you are now b00002\n"]
    proc = run_ratbench(*CHAT, "--port", str(server.port), "--json")
    squatter.close()
    assert proc.returncode == 3
    error = json.loads(proc.stdout)["error"]
    assert "'/nick b00002'" in error and "is another benchmark running" in error


BAD = [
    (["chat", "--rooms", "2"], "--rooms needs --chat"),
    (["chat", "--chat", "--proto", "redis"], "not with --proto redis"),
    (["chat", "--chat", "--clients", "3", "--rooms", "4"], "some rooms would have no publisher"),
    (["fanout", "--chat", "--rooms", "2"], "some rooms would have no publisher"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[m for _, m in BAD])
def test_chat_usage_errors(argv: list[str], message: str) -> None:
    proc = run_ratbench(*argv)
    assert proc.returncode == 2
    assert message in proc.stderr.decode()
    assert run_ratbench("chat", "--chat", "--rooms", "0").returncode == 2
