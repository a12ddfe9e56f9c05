"""`rat bench`: the checking logic alone, then short real runs (the CI smoke).

The pure parts (line format, sequence tracking, percentiles, RESP) are tested
without sockets, with hypothesis where a property says more than examples.
Then the generator runs for real, for a second or two, against the asyncio
peer, against rat, against Redis when `redis-server` is installed, and
against a deliberately faulty relay: it must count exactly the faults the
relay injects, which proves the fast path (comparison with the reference
stream) hands every anomaly to the exact slow path.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchkit import (
    CHAT,
    FANOUT,
    FANOUT2,
    IDLE,
    IDS,
    PEERS,
    FaultyRelay,
    PeerProcess,
    assert_clean,
    bench,
    faulty_relays,
    run_ratbench,
)
from conftest import ServerProcess
from ratbench import add_arguments, config_from_args
from ratbench.check import LatencyHistogram, SeqTracker, percentiles, round_down_3
from ratbench.connect import is_timed
from ratbench.wire import (
    MIN_LINE_SIZE,
    LineEncoder,
    LineWire,
    RedisWire,
    RespReader,
    encode_line,
    parse_line,
    resp_command,
    sync_line,
)

# -- the line format -------------------------------------------------------------


@given(
    pubid=st.integers(0, 99999),
    seq=st.integers(0, 10**10 - 1),
    stamp=st.integers(0, 10**19 - 1),
    size=st.integers(MIN_LINE_SIZE, 300),
)
def test_encode_parse_round_trip(pubid: int, seq: int, stamp: int, size: int) -> None:
    line = encode_line(pubid, seq, stamp, size)
    assert len(line) == size
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_line(line, size) == (pubid, seq, stamp)


@given(first=st.integers(0, 10**6), count=st.integers(0, 50), size=st.integers(37, 128))
def test_encoder_batch_matches_encode_line(first: int, count: int, size: int) -> None:
    lines = LineEncoder(42, size).lines(first, count, 123456789)
    assert lines == [encode_line(42, first + i, 123456789, size) for i in range(count)]


@given(
    size=st.integers(MIN_LINE_SIZE, 120),
    data=st.data(),
)
def test_any_changed_byte_is_malformed(size: int, data: st.DataObject) -> None:
    """A line with any one byte changed either fails to parse or parses differently."""
    line = bytearray(encode_line(7, 1234, 987654321, size))
    pos = data.draw(st.integers(0, size - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != line[pos]))
    line[pos] = new
    assert parse_line(bytes(line), size) != (7, 1234, 987654321)


@given(size=st.integers(MIN_LINE_SIZE, 100), data=st.data())
def test_frame_regex_agrees_with_parse_line(size: int, data: st.DataObject) -> None:
    """The reference receiver's in-place regex check accepts exactly what parse_line does."""
    line = bytearray(encode_line(12, 345, 6789, size))
    for _ in range(data.draw(st.integers(0, 2))):
        line[data.draw(st.integers(0, size - 1))] = data.draw(st.integers(0, 255))
    raw = bytes(line)
    for wire in (LineWire(size), RedisWire(size)):
        frame = raw if isinstance(wire, LineWire) else wire.frame_prefix + raw[:-1] + b"\r\n"
        if raw[-1:] != b"\n":
            frame = frame[:-1] + b"!"  # keep the frame's size, break its end
        m = wire.frame_re.fullmatch(frame)
        got = None if m is None else (int(m[1]), int(m[2]), int(m[3]))
        assert got == parse_line(raw, size)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\n",
        b"00001 0000000001 0000000000000000001\n"[:-2] + b"\n",  # short
        b"0000a 0000000001 0000000000000000001 xxxxxxxxxxxxxxxxxxxxxxxxxx\n",
        b"00001 00000000+1 0000000000000000001 xxxxxxxxxxxxxxxxxxxxxxxxxx\n",
        b"00001 0000000001 0000000000000000001 xxxxxxxxxxxxxxxxxxxxxxxxxy\n",
        b"00001_0000000001 0000000000000000001 xxxxxxxxxxxxxxxxxxxxxxxxxx\n",
        b"00001 0000000001 0000000000000000001 xxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ],
)
def test_malformed_lines(bad: bytes) -> None:
    assert parse_line(bad, 64) is None


def test_two_lines_spliced_do_not_parse() -> None:
    a = encode_line(1, 5, 1000, 64)
    b = encode_line(2, 9, 2000, 64)
    assert parse_line(a[:30] + b[30:], 64) in (None, (1, 5, 2000))  # never a clean 2nd line
    assert parse_line(a[:40] + b[:24], 64) is None


def test_line_size_bounds() -> None:
    with pytest.raises(ValueError):
        encode_line(1, 1, 1, MIN_LINE_SIZE - 1)
    with pytest.raises(ValueError):
        encode_line(100000, 1, 1, 64)
    assert len(sync_line(12345, 64)) == 64
    assert parse_line(sync_line(12345, 64), 64) is None


# -- Redis framing and the RESP reader -----------------------------------------------


@given(size=st.integers(MIN_LINE_SIZE, 200), seqs=st.lists(st.integers(0, 10**6), max_size=5))
def test_redis_frames(size: int, seqs: list[int]) -> None:
    wire = RedisWire(size)
    lines = [encode_line(3, s, 99, size) for s in seqs]
    reader = RespReader()
    reader.feed(wire.publish(lines))
    commands = []
    while (item := reader.next()) is not RespReader.NEED_MORE:
        commands.append(item)
    assert commands == [[b"PUBLISH", b"rat", line[:-1]] for line in lines]
    for line in lines:  # what a subscriber receives, and back
        frame = resp_command(b"message", b"rat", line[:-1]).replace(b"*3", b"*3", 1)
        assert len(frame) == wire.frame_size
        assert wire.payload_line(frame) == line


@given(chunks=st.lists(st.integers(1, 7), min_size=1, max_size=40))
def test_resp_reader_any_chunking(chunks: list[int]) -> None:
    stream = (
        b"*3\r\n$9\r\nsubscribe\r\n$3\r\nrat\r\n:1\r\n"
        + b"+OK\r\n-ERR bad\r\n$-1\r\n"
        + resp_command(b"message", b"rat", b"a\r\nb")
    )
    reader = RespReader()
    items: list[object] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = chunks[i % len(chunks)]
        i += 1
        reader.feed(stream[pos : pos + step])
        pos += step
        while (item := reader.next()) is not RespReader.NEED_MORE:
            items.append(item)
    assert items[0] == [b"subscribe", b"rat", 1]
    assert items[1] == b"OK"
    assert isinstance(items[2], Exception)
    assert items[3] is None
    assert items[4] == [b"message", b"rat", b"a\r\nb"]
    assert len(items) == 5


def test_resp_reader_rejects_garbage() -> None:
    reader = RespReader()
    reader.feed(b"hello\r\n")
    with pytest.raises(ValueError):
        reader.next()


def test_line_wire_is_identity() -> None:
    wire = LineWire(64)
    lines = [encode_line(1, i, 5, 64) for i in range(3)]
    assert wire.publish(lines) == b"".join(lines)
    assert wire.frame_size == 64 and not wire.echo and not wire.split_connections


# -- sequence tracking -----------------------------------------------------------------


arrivals = st.lists(st.tuples(st.integers(1, 3), st.integers(0, 30)), max_size=80)


@given(events=arrivals, published=st.fixed_dictionaries({p: st.integers(0, 31) for p in (1, 2, 3)}))
def test_seq_tracker_matches_a_model(
    events: list[tuple[int, int]], published: dict[int, int]
) -> None:
    """Lost, reordered, duplicated and unexpected agree with a plain set-based model."""
    tracker = SeqTracker()
    seen: dict[int, set[int]] = {}
    highest: dict[int, int] = {}
    reordered = duplicated = 0
    for pubid, seq in events:
        tracker.observe(pubid, seq)
        got = seen.setdefault(pubid, set())
        if seq in got:
            duplicated += 1
        elif seq < highest.get(pubid, -1):
            reordered += 1
        got.add(seq)
        highest[pubid] = max(highest.get(pubid, -1), seq)
    lost = sum(n - len({s for s in seen.get(p, set()) if s < n}) for p, n in published.items())
    unexpected = sum(len({s for s in seen.get(p, set()) if s >= published.get(p, 0)}) for p in seen)
    assert tracker.reordered == reordered
    assert tracker.duplicated == duplicated
    assert tracker.lost(published) == lost
    assert tracker.unexpected(published) == unexpected
    assert tracker.lines == len(events)
    for p in (1, 2, 3):
        assert tracker.lost(published, exclude=p) == lost - (
            published[p] - len({s for s in seen.get(p, set()) if s < published[p]})
        )


def test_seq_tracker_in_order_and_start_at() -> None:
    tracker = SeqTracker()
    tracker.start_at(1, 10)  # 0..9 arrived on the fast path
    for seq in range(10, 20):
        tracker.observe(1, seq)
    assert tracker.lost({1: 20}) == 0
    assert tracker.lost({1: 25}) == 5  # 20..24 never came
    assert tracker.reordered == tracker.duplicated == 0
    tracker.observe(1, 5)
    assert tracker.duplicated == 1


def test_seq_tracker_gap_filled_late() -> None:
    tracker = SeqTracker()
    for seq in (0, 1, 4, 2, 5, 3):
        tracker.observe(9, seq)
    assert tracker.reordered == 2
    assert tracker.lost({9: 6}) == 0
    assert tracker.next_seq(9) == 6


# -- percentiles and the histogram ------------------------------------------------------


def nearest_rank(values: list[int], q: float) -> int:
    ordered = sorted(values)
    rank = max(1, -(-round(q * len(ordered) * 10**6) // 10**6))
    return ordered[rank - 1]


@given(
    values=st.lists(st.integers(0, 10**6), min_size=1, max_size=300),
    q=st.sampled_from([0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0]),
)
def test_percentiles_nearest_rank(values: list[int], q: float) -> None:
    hist = LatencyHistogram(fold_at=10**9)
    hist.add_many(values)
    assert hist.percentiles([q]) == [nearest_rank(values, q)]
    assert hist.total == len(values)


def test_percentiles_examples() -> None:
    hist = {v: 1 for v in range(1, 101)}  # 1..100
    assert percentiles(hist, [0.5, 0.99, 0.999, 1.0]) == [50, 99, 100, 100]
    assert percentiles({}, [0.5]) == [None]
    with pytest.raises(ValueError):
        percentiles(hist, [1.5])


@given(value=st.integers(-(10**12), 10**12))
def test_round_down_3_keeps_three_digits(value: int) -> None:
    rounded = round_down_3(value)
    assert abs(rounded) <= abs(value)
    assert abs(value) - abs(rounded) <= max(0, abs(value) // 100)
    assert round_down_3(rounded) == rounded


@given(count=st.integers(1, 2000), want=st.integers(-1, 2100))
def test_timed_receivers_are_spread_over_the_connection_order(count: int, want: int) -> None:
    """`want` of `count`, evenly spaced: not just the first ones a server accepted."""
    chosen = [i for i in range(count) if is_timed(i, count, want)]
    assert len(chosen) == (count if want < 0 else min(want, count))
    if 0 < want < count:
        gap = count / want
        for k, i in enumerate(chosen):  # the k-th falls in the k-th of `want` equal stretches
            assert k * gap - 1 < i < (k + 1) * gap
        if want >= 2:
            assert chosen[-1] >= count - gap  # one sits at the end too


@given(values=st.lists(st.integers(-(10**8), 10**8), min_size=1, max_size=300))
def test_fold_rounds_every_value_like_round_down_3(values: list[int]) -> None:
    hist = LatencyHistogram(fold_at=10**9)
    hist.add_many(values)
    hist.fold()
    assert hist.counts == Counter(round_down_3(v) for v in values)


@settings(max_examples=30)
@given(values=st.lists(st.integers(0, 10**7), min_size=1, max_size=500))
def test_folded_histogram_is_close(values: list[int]) -> None:
    exact = LatencyHistogram(fold_at=10**9)
    folded = LatencyHistogram(fold_at=10)
    exact.add_many(values)
    folded.add_many(values)
    folded.fold()
    assert folded.total == exact.total
    for e, f in zip(
        exact.percentiles([0.5, 0.99, 1.0]), folded.percentiles([0.5, 0.99, 1.0]), strict=True
    ):
        assert e is not None and f is not None
        assert f <= e and e - f <= max(0, e // 100)


# -- the command line ------------------------------------------------------------------------


def parse(*argv: str) -> Any:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_arguments() -> None:
    cfg = config_from_args(parse("chat", "--clients", "7", "--rate", "300", "--port", "9"))
    assert (cfg.scenario, cfg.clients, cfg.rate, cfg.port) == ("chat", 7, 300.0, 9)
    cfg = config_from_args(parse("fanout", "--subscribers", "5", "--window", "16"))
    assert (cfg.subscribers, cfg.window, cfg.rate) == (5, 16, 0.0)
    cfg = config_from_args(parse("idle", "--connections", "3", "--hold", "0.5"))
    assert (cfg.connections, cfg.hold) == (3, 0.5)
    with pytest.raises(SystemExit):
        parse("chat", "--line-size", "10")
    with pytest.raises(SystemExit):
        parse("nonsense")


# -- real runs ----------------------------------------------------------------------------------


@pytest.fixture
def asyncio_peer() -> Iterator[PeerProcess]:
    peer = PeerProcess(
        [sys.executable, str(PEERS / "asyncio_server.py"), "--host", "127.0.0.1", "--port", "0"]
    )
    yield peer
    peer.stop()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [CHAT, FANOUT, FANOUT2, IDLE], ids=IDS)
def test_smoke_asyncio_peer(asyncio_peer: PeerProcess, scenario: list[str]) -> None:
    s = bench(asyncio_peer.port, *scenario, pid=asyncio_peer.proc.pid)
    assert_clean(s)
    assert s["server_metrics"]["cpu_s"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [CHAT, FANOUT, FANOUT2, IDLE], ids=IDS)
def test_smoke_rat(rat_server: Callable[..., ServerProcess], scenario: list[str]) -> None:
    server = rat_server()
    s = bench(server.port, *scenario, pid=server.proc.pid)
    assert_clean(s)
    sm = s["server_metrics"]
    assert sm["pid"] == server.proc.pid and sm["rss_kib_end"] > 0
    if scenario is IDLE:
        assert sm["rss_growth_kib_per_conn"] < 64


@pytest.mark.slow
def test_smoke_rat_table_output(rat_server: Callable[..., ServerProcess]) -> None:
    """Without --json: the human table, exit status 0."""
    server = rat_server()
    proc = run_ratbench(*CHAT, "--port", str(server.port))
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    for word in ("published", "delivered", "latency", "lost 0", "generator", "verdict"):
        assert word in out


def test_unreachable_server_fails_cleanly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        proc = run_ratbench("chat", "--port", str(port), "--duration", "1")
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert "rat bench: cannot connect to 127.0.0.1:" in err and "Traceback" not in err
    assert "is the server running" in err


@pytest.fixture
def redis_port() -> Iterator[tuple[int, int]]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [CHAT, FANOUT, IDLE], ids=["chat", "fanout", "idle"])
def test_smoke_redis(redis_port: tuple[int, int], scenario: list[str]) -> None:
    port, pid = redis_port
    s = bench(port, *scenario, "--proto", "redis", pid=pid)
    assert_clean(s)


# -- a faulty relay: every injected fault must be counted exactly ---------------------------


@pytest.fixture
def faulty() -> Iterator[Callable[..., FaultyRelay]]:
    """`faulty(fault, echo=False, host=...)` starts a `FaultyRelay`."""
    yield from faulty_relays()


def faulty_chat(relay: FaultyRelay) -> dict[str, Any]:
    return bench(
        relay.port, "chat", "--clients", "3", "--rate", "300", "--max-lines", "240",
        "--duration", "3", "--grace", "2",
    )  # fmt: skip


def test_faithful_relay_is_clean(faulty: Callable[..., FaultyRelay]) -> None:
    s = faulty_chat(faulty(lambda r, n, line: [line]))
    assert_clean(s)
    assert s["slow_path_receivers"] == 0  # all checked on the fast path


@pytest.mark.parametrize("victim", [1, 3], ids=["reference", "third-client"])
def test_dropped_line_is_lost(faulty: Callable[..., FaultyRelay], victim: int) -> None:
    s = faulty_chat(faulty(lambda r, n, line: [] if (r, n) == (victim, 40) else [line]))
    assert s["lost"] == 1
    assert s["reordered"] == s["duplicated"] == s["malformed"] == 0
    assert s["delivered"] == s["expected"] - 1


def test_swapped_lines_are_reordered(faulty: Callable[..., FaultyRelay]) -> None:
    held: dict[int, bytes] = {}

    def swap(r: int, n: int, line: bytes) -> list[bytes]:
        if n == 30:
            held[r] = line
            return []
        if n == 31:
            return [line, held.pop(r)]
        return [line]

    relay = faulty(swap)
    s = bench(
        relay.port, "fanout", "--subscribers", "3", "--max-lines", "200", "--rate", "400",
        "--duration", "3", "--grace", "2",
    )  # fmt: skip
    # One publisher: each of the 3 subscribers gets its line 31 before its line 30.
    assert s["reordered"] == 3
    assert s["lost"] == s["duplicated"] == s["malformed"] == 0
    assert s["delivered"] == s["expected"] == 600


def test_duplicate_and_corrupt_lines(faulty: Callable[..., FaultyRelay]) -> None:
    def fault(r: int, n: int, line: bytes) -> list[bytes]:
        if r == 1 and n == 20:
            return [line, line]  # duplicated
        if r == 1 and n == 50:
            return [line[:-3] + b"?x\n"]  # malformed (and so its line is lost)
        return [line]

    s = faulty_chat(faulty(fault))
    assert s["duplicated"] == 1
    assert s["malformed"] == 1
    assert s["lost"] == 1
    assert s["reordered"] == 0


def test_echo_is_counted(faulty: Callable[..., FaultyRelay]) -> None:
    """A server that echoes lines to their sender: every echo is counted."""
    s = faulty_chat(faulty(lambda r, n, line: [line], echo=True))
    # The run ends once every expected line arrived, so the last echo or two
    # may still be on the way: nearly all of them, and never more.
    assert s["published"] == 240
    assert 200 <= s["echoed"] <= 240
    assert s["lost"] == s["reordered"] == s["duplicated"] == s["malformed"] == 0


def test_repeated_sync_lines_are_not_data(faulty: Callable[..., FaultyRelay]) -> None:
    """The coordinator may repeat the sync line; receivers drop the copies."""
    s = faulty_chat(faulty(lambda r, n, line: [line, line, line] if n == 0 else [line]))
    assert_clean(s)
