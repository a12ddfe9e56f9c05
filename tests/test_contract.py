"""The connection contract, in-process: every poller backend x every transport.

Each test builds a real `Server` on a loopback listener (`inprocess.Harness`)
and drives it turn by turn from the test thread, with non-blocking client
sockets and no threads, so it can look inside the server at the moment that
matters: what a connection has queued, what the poller was asked to watch,
which timer fired.  The same tests run for every backend (`epoll`, `select`)
and every transport in `inprocess.TRANSPORTS` (plain TCP today; TLS and
WebSocket transports join by registering there).

Where a test needs output to back up in the server, it makes the kernel's
buffers small on both ends (the client's receive buffer before connect, the
server socket's send buffer right after accept), so a few kilobytes are
enough and no test needs megabytes of traffic.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Callable, Iterator

import pytest

from inprocess import TRANSPORTS, Harness, Peer, writable_changes
from rat.config import Config, Limits
from rat.connection import CLOSED, OPEN
from rat.poller import WRITABLE

pytestmark = pytest.mark.timeout(60)

ERR_SLOW = b"ERR slow consumer\n"
ERR_TOO_LONG = b"ERR line too long\n"
SMALL_BUFFER = 4096  # bytes: client SO_RCVBUF and server-side SO_SNDBUF for a stuck reader

MakeHarness = Callable[..., Harness]


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    """Run the test once per transport."""
    return str(request.param)


@pytest.fixture
def make_harness(backend: str, transport: str) -> Iterator[MakeHarness]:
    """Factory: `make_harness(max_pending=...)` builds a harness with those limits."""
    made: list[Harness] = []

    def make(**limits: float) -> Harness:
        config = Config(limits=Limits(**limits))  # type: ignore[arg-type]
        harness = Harness(backend, TRANSPORTS[transport](), config)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


def stuck_reader(harness: Harness) -> Peer:
    """A client that does not read, with small kernel buffers on both ends."""
    peer = harness.connect(rcvbuf=SMALL_BUFFER)
    peer.reading = False
    conn = harness.conn_of(peer)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    return peer


def numbered_lines(tag: bytes, count: int, size: int = 100) -> list[bytes]:
    return [b"%s-%06d:" % (tag, i) + b"x" * (size - len(tag) - 9) + b"\n" for i in range(count)]


def flood_in_lock_step(
    harness: Harness,
    sender: Peer,
    readers: list[Peer],
    lines: list[bytes],
    *,
    batch: int = 64,
    stop: Callable[[], bool] = lambda: False,
) -> bytes:
    """Send `lines` a batch at a time, each batch read by every reader; return what was sent."""
    sent = bytearray()
    already = [len(r.inbox) for r in readers]
    for start in range(0, len(lines), batch):
        chunk = b"".join(lines[start : start + batch])
        sender.send(chunk)
        sent += chunk
        want = [n + len(sent) for n in already]

        def caught_up(want: list[int] = want) -> bool:
            return all(len(r.inbox) >= n for r, n in zip(readers, want, strict=True))

        harness.run_until(caught_up, what="readers keep up")
        if stop():
            break
    return bytes(sent)


def read_to_eof(harness: Harness, peer: Peer) -> bytes:
    peer.reading = True
    harness.run_until(lambda: peer.eof, what=f"EOF at {peer.addr}")
    return bytes(peer.inbox)


# ----------------------------------------------------------------- lines


def test_lines_stay_atomic_and_ordered_with_several_senders(make_harness: MakeHarness) -> None:
    harness = make_harness()
    senders = [harness.connect() for _ in range(3)]
    listeners = [harness.connect() for _ in range(2)]
    rnd = random.Random(7)
    streams = []
    for i, _ in enumerate(senders):
        lines = [
            b"s%d-%04d:" % (i, n)
            + bytes(rnd.choice(b"abc\r\0") for _ in range(rnd.randrange(40)))
            + b"\n"
            for n in range(200)
        ]
        data = b"".join(lines)
        cuts = sorted(rnd.sample(range(1, len(data)), 60))
        streams.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])
    sent_lines = {
        i: [line + b"\n" for line in b"".join(parts).split(b"\n")[:-1]]
        for i, parts in enumerate(streams)
    }
    # Every sender sends its next fragment each turn: fragments of the three
    # streams reach the server interleaved, and lines are cut anywhere.
    while any(streams):
        for sender, parts in zip(senders, streams, strict=True):
            if parts:
                sender.send(parts.pop(0))
        harness.turn()
    total = sum(map(len, sent_lines.values()))
    harness.run_until(
        lambda: (
            all(len(p.lines()) == total for p in listeners)
            and all(len(s.lines()) == total - len(sent_lines[i]) for i, s in enumerate(senders))
        ),
        what="every line everywhere",
    )
    order = listeners[0].lines()
    assert listeners[1].lines() == order, "receivers disagree on the global order"
    for i, lines in sent_lines.items():
        # Atomic and in order: this sender's lines, whole, in the order sent.
        assert [line for line in order if line.startswith(b"s%d-" % i)] == lines
        # A sender sees the same global order, minus its own lines.
        assert senders[i].lines() == [line for line in order if not line.startswith(b"s%d-" % i)]


def test_writable_interest_only_while_output_is_queued(make_harness: MakeHarness) -> None:
    harness = make_harness()
    slow = stuck_reader(harness)
    sender, reader = harness.connect(), harness.connect()
    slow_conn = harness.conn_of(slow)
    sent = flood_in_lock_step(harness, sender, [reader], numbered_lines(b"w", 2000))

    # The stuck reader's output backed up: the server watches it for WRITABLE.
    assert slow_conn.pending > 0
    assert slow_conn.interest & WRITABLE
    assert writable_changes(harness.poller, slow_conn.fd)

    slow.reading = True
    harness.run_until(lambda: len(slow.inbox) == len(sent), what="the slow reader catches up")
    assert bytes(slow.inbox) == sent
    harness.run_for(0.05)

    conns = {harness.conn_of(peer).fd: harness.conn_of(peer) for peer in (slow, sender, reader)}
    for fd, conn in conns.items():
        changes = [c for c in harness.poller.changes if c.fd == fd]
        asked = False
        for change in changes:
            if change.interest & WRITABLE:
                assert change.pending, f"fd {fd} asked for WRITABLE with nothing queued"
                asked = True
            elif asked:
                assert change.pending == 0, f"fd {fd} dropped WRITABLE with output queued"
                asked = False
        # Drained: nobody is watched for WRITABLE any more.
        assert not conn.interest & WRITABLE, f"fd {fd} still watched for WRITABLE"
        assert not conn.pending


# ------------------------------------------------------------------ limits


def test_slow_consumer_is_cut_while_others_get_every_line(make_harness: MakeHarness) -> None:
    harness = make_harness(max_pending=65536)
    slow = stuck_reader(harness)
    sender, reader = harness.connect(), harness.connect()
    slow_conn = harness.conn_of(slow)
    lines = numbered_lines(b"s", 40000)  # 4 MB at most; the cut comes long before
    sent = flood_in_lock_step(
        harness, sender, [reader], lines[:20000], stop=lambda: slow_conn.state != OPEN
    )
    assert slow_conn.state != OPEN, "never cut"
    assert slow_conn.close_reason == "slow_consumer"
    # The others keep receiving every line, in order.
    sent += flood_in_lock_step(harness, sender, [reader], lines[20000:20640])
    assert bytes(reader.inbox) == sent

    got = read_to_eof(harness, slow)
    harness.run_until(lambda: slow_conn.state == CLOSED, what="the close")
    assert got.endswith(ERR_SLOW), got[-60:]
    body = got[: -len(ERR_SLOW)]
    assert sent.startswith(body), "the slow consumer's stream is not a prefix of the broadcast"
    assert body.endswith(b"\n"), "the cut left a partial line"
    assert harness.server.counters.closed.get("slow_consumer") == 1


@pytest.mark.parametrize("shape", ["whole", "growing"])
def test_line_too_long_gets_err_then_close(make_harness: MakeHarness, shape: str) -> None:
    harness = make_harness(max_line=100)
    bad, a, b = harness.connect(), harness.connect(), harness.connect()
    bad.send(b"fine\n")
    if shape == "whole":
        bad.send(b"L" * 100 + b"\n")  # 101 bytes with its newline
    else:
        for _ in range(30):  # a line that never ends
            bad.send(b"g" * 10)
            harness.turn()
    assert read_to_eof(harness, bad) == ERR_TOO_LONG
    harness.run_until(lambda: a.lines() == [b"fine\n"] and b.lines() == [b"fine\n"])
    harness.run_for(0.05)
    assert a.lines() == [b"fine\n"], "part of the long line was relayed"
    a.send(b"still here\n")
    harness.run_until(lambda: b.lines() == [b"fine\n", b"still here\n"])


def test_half_closed_client_keeps_receiving(make_harness: MakeHarness) -> None:
    harness = make_harness()
    half, a, b = harness.connect(), harness.connect(), harness.connect()
    half.send(b"last words")
    half.shutdown_write()
    harness.run_until(lambda: a.lines() == [b"last words\n"] == b.lines())
    conn = harness.conn_of(half)
    assert conn.eof and conn.state == OPEN
    assert conn in harness.server.half_closed
    for n in range(3):
        a.send(b"to the half-closed %d\n" % n)
    harness.run_until(lambda: len(half.lines()) == 3, what="broadcasts reach a half-closed client")
    assert half.lines() == [b"to the half-closed %d\n" % n for n in range(3)]
    assert not half.eof


def test_write_timeout_fires_on_the_loop_clock(
    make_harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """A 30 s write timeout, tested without waiting 30 s: the test moves the loop's clock."""
    harness = make_harness(write_timeout=30.0)
    stuck = stuck_reader(harness)
    sender, reader = harness.connect(), harness.connect()
    stuck_conn = harness.conn_of(stuck)
    sent = flood_in_lock_step(harness, sender, [reader], numbered_lines(b"t", 1000))
    assert stuck_conn.pending > 0, "nothing backed up"
    # Let the last window updates arrive: from here on the kernel takes nothing.
    harness.run_until(lambda: harness.clock() - stuck_conn.last_progress > 0.3)

    harness.clock.advance(29.0)
    harness.run_for(0.1)
    assert stuck_conn.state == OPEN, "cut before the timeout"

    with caplog.at_level(logging.WARNING, logger="rat"):
        harness.clock.advance(2.0)
        harness.run_until(lambda: stuck_conn.state != OPEN, what="the write timeout")
    assert stuck_conn.close_reason == "write_timeout"
    assert any(
        "write timeout" in r.getMessage() and stuck.addr in r.getMessage() for r in caplog.records
    )

    got = read_to_eof(harness, stuck)
    harness.run_until(lambda: stuck_conn.state == CLOSED, what="the close")
    assert got.endswith(ERR_SLOW)
    assert sent.startswith(got[: -len(ERR_SLOW)])
    # The reader, idle for as long, was not timed out.
    sender.send(b"after the timeout\n")
    harness.run_until(lambda: reader.inbox.endswith(b"after the timeout\n"))
    assert harness.conn_of(reader).state == OPEN
    assert harness.server.counters.closed.get("write_timeout") == 1
