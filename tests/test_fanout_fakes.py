"""The delivery rules, deterministically: fake sockets, a fake poller, no kernel.

Real sockets decide for themselves how much a `send` takes, so a test over
loopback cannot say "this receiver took 7 bytes, that one nothing".  Here
every connection's socket is a `FakeSocket`: `recv` returns scripted bytes,
`send`/`sendmsg` take a scripted number of bytes (0: `BlockingIOError`) and
count their calls.  A `FakePoller` reports what the test scripts (READABLE
for senders with input this turn) plus WRITABLE for every fd that asked for
it, as a kernel with room again would.  The `Server` and its `Conn`s are
the real ones: the fakes are duck-typed to what `Conn` uses.

Two properties of the fan-out (see `rat.server`, "Delivery, the fast path"):

(a) one `send`/`sendmsg` per receiver per turn, however many lines from
    however many senders the turn holds, whatever each send takes;
(b) the fast path (a receiver with nothing queued is sent the shared turn
    bytes directly) delivers byte for byte what the queued path delivers,
    under any pattern of partial sends: checked with hypothesis against a
    server whose every delivery goes through the queue.
"""

from __future__ import annotations

import itertools
import socket
from collections import deque
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rat.config import Config
from rat.connection import Conn
from rat.hub import Room, Turn
from rat.poller import READABLE, WRITABLE, Event, Poller
from rat.server import TURN_BYTES, Server

FAKE_FD_BASE = 1_000_000  # far above any real descriptor: ioctl() on it fails cleanly
ALL = 1 << 30  # a send budget that takes everything


class FakeSocket:
    """What `Conn` needs of a socket, scripted: inbound chunks and send budgets."""

    def __init__(self, fd: int, budgets: Iterator[int]) -> None:
        self.fd = fd
        self.budgets = budgets  # bytes the next send/sendmsg takes (0: kernel full)
        self.inbound: deque[bytes] = deque()
        self.wire = bytearray()  # what the "kernel" accepted from the server
        self.sends = 0  # send + sendmsg calls
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def setblocking(self, flag: bool) -> None:
        del flag

    def setsockopt(self, *args: object) -> None:
        del args

    def getsockopt(self, level: int, option: int, *args: object) -> int:
        del level, args
        return 65536 if option == socket.SO_SNDBUF else 0  # SO_ERROR: no error

    def recv(self, size: int) -> bytes:
        """Like the kernel: everything that has arrived, up to `size` bytes."""
        if not self.inbound:
            raise BlockingIOError
        data = b"".join(self.inbound)
        self.inbound.clear()
        if len(data) > size:
            self.inbound.append(data[size:])
            data = data[:size]
        return data

    def recv_into(self, buffer: bytearray, size: int = 0) -> int:
        chunk = self.recv(size or len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def _take(self, data: bytes) -> int:
        self.sends += 1
        taken = min(len(data), next(self.budgets))
        if not taken:
            raise BlockingIOError
        self.wire += data[:taken]
        return taken

    def send(self, data: bytes | memoryview) -> int:
        return self._take(bytes(data))

    def sendmsg(self, buffers: list[bytes | memoryview]) -> int:
        return self._take(b"".join(bytes(b) for b in buffers))

    def shutdown(self, how: int) -> None:
        del how

    def close(self) -> None:
        self.closed = True


class FakePoller(Poller):
    """Reports the scripted events, plus WRITABLE for every fd that wants it."""

    name = "fake"
    edge_triggered = True

    def __init__(self) -> None:
        self.interest: dict[int, int] = {}
        self.next_events: list[Event] = []

    def register(self, fd: int, interest: int) -> None:
        self.interest[fd] = interest

    def modify(self, fd: int, interest: int) -> None:
        self.interest[fd] = interest

    def unregister(self, fd: int) -> None:
        self.interest.pop(fd, None)

    def poll(self, timeout: float | None) -> list[Event]:
        del timeout  # never sleeps
        events, self.next_events = self.next_events, []
        scripted = {fd for fd, _ in events}
        events += [
            (fd, WRITABLE)
            for fd, interest in self.interest.items()
            if interest & WRITABLE and fd not in scripted and fd >= FAKE_FD_BASE
        ]
        return events

    def close(self) -> None:
        self.interest.clear()


class QueuedOnlyServer(Server):
    """The reference: every receiver takes the queued path (`_enqueue`), none the fast path."""

    def _deliver_turn(self, room: Room, turn: Turn, now: float) -> None:
        for conn in list(room.plain):
            self._enqueue(conn, turn, now)


class Rig:
    """A real server with fake clients; `turn(inputs)` runs one loop turn."""

    def __init__(self, server_class: type[Server], budgets: list[Callable[[], Iterator[int]]]):
        self.poller = FakePoller()
        # Coalescing off: these properties are about what one turn delivers
        # (coalescing only decides which turns deliver; tests/test_coalesce.py).
        self.server = server_class([], self.poller, Config(coalesce_ms=0))
        self.socks: list[FakeSocket] = []
        self.conns: list[Conn] = []
        for i, make_budgets in enumerate(budgets):
            sock = FakeSocket(FAKE_FD_BASE + i, make_budgets())
            # The real admission path (`Acceptor` calls this for a real socket).
            self.server.on_accept(Conn, sock, f"fake:{i}")  # type: ignore[arg-type]
            self.socks.append(sock)
            self.conns.append(self.server.loop.handlers[sock.fd])  # type: ignore[arg-type]

    def turn(self, inputs: list[tuple[int, list[bytes]]] | None = None) -> None:
        """One turn in which client i's socket holds `chunks` (in this order of events)."""
        for i, chunks in inputs or []:
            self.socks[i].inbound.extend(chunks)
            self.poller.next_events.append((self.socks[i].fd, READABLE))
        self.server.loop.run_once(0)

    def drain(self) -> None:
        """Turn until nothing is queued anywhere (the budgets must let it)."""
        for _ in range(10_000):
            if not any(conn.pending for conn in self.conns):
                return
            self.turn()
        raise AssertionError("output never drained")

    def close(self) -> None:
        self.server.close()


def takes(*budgets: int) -> Callable[[], Iterator[int]]:
    """Send budgets: these, then everything."""
    return lambda: itertools.chain(budgets, itertools.repeat(ALL))


def lines_from(sender: int, count: int, tag: int = 0) -> list[bytes]:
    return [b"%d:%d:%03d:" % (sender, tag, n) + b"p" * (n % 17) + b"\n" for n in range(count)]


# --------------------------------------------------------- (a) one send per turn


@pytest.mark.parametrize("lines_per_sender", [1, 10, 300])
def test_one_send_per_receiver_per_turn(
    lines_per_sender: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Clients 0-2 send (and receive each other's lines); 3-8 only receive.
    # Receivers' first sends take: everything, half a line, nothing, 1 byte, ...
    budgets = [takes(), takes(5), takes(), takes(), takes(40), takes(0), takes(1), takes(7, 0)]
    rig = Rig(Server, [*budgets, takes()])
    enqueued: list[Conn] = []
    real_enqueue = Server._enqueue

    def spy(self: Server, conn: Conn, turn: Turn, now: float) -> None:
        enqueued.append(conn)
        real_enqueue(self, conn, turn, now)

    monkeypatch.setattr(Server, "_enqueue", spy)
    try:
        streams = {i: lines_from(i, lines_per_sender) for i in range(3)}
        # Each sender's lines arrive in several recv() chunks, cut mid-line.
        inputs = []
        for i, lines in streams.items():
            data = b"".join(lines)
            cuts = [0, len(data) // 3, len(data) // 3 + 1, len(data)]
            inputs.append((i, [data[a:b] for a, b in itertools.pairwise(cuts) if b > a]))
        assert sum(len(d) for _, chunks in inputs for d in chunks) < TURN_BYTES
        rig.turn(inputs)

        assert [sock.sends for sock in rig.socks] == [1] * len(rig.socks)
        # Receivers with nothing queued took the fast path; only the senders queued.
        assert {conn.fd for conn in enqueued} == {rig.socks[i].fd for i in range(3)}

        # Next turn: nothing new; only those left with a backlog send, once each.
        blocked = [i for i, conn in enumerate(rig.conns) if conn.pending]
        assert blocked, "the scripted budgets left nobody blocked"
        assert all(rig.poller.interest[rig.socks[i].fd] & WRITABLE for i in blocked)
        before = [sock.sends for sock in rig.socks]
        rig.turn()
        assert [s.sends - b for s, b in zip(rig.socks, before, strict=True)] == [
            1 if i in blocked else 0 for i in range(len(rig.socks))
        ]
        rig.drain()
        everything = b"".join(line for lines in streams.values() for line in lines)
        for i, sock in enumerate(rig.socks):
            own = b"".join(streams.get(i, []))
            assert bytes(sock.wire) == (everything.replace(own, b"") if own else everything)
    finally:
        rig.close()


# ------------------------------------------ (b) fast path == queued path, byte for byte

SENDERS = 3
RECEIVERS = 2  # pure receivers, besides the senders (who receive each other's lines)

turn_inputs = st.lists(
    st.tuples(st.integers(0, SENDERS - 1), st.integers(1, 6), st.integers(1, 4)),
    unique_by=lambda t: t[0],  # a poller reports an fd once per poll
    max_size=SENDERS,
)


def run_scenario(
    server_class: type[Server],
    turns: list[list[tuple[int, int, int]]],
    budgets: list[list[int]],
) -> list[bytes]:
    """What each client received, over `turns` of input and the scripted send budgets."""
    rig = Rig(server_class, [takes(*b) for b in budgets])
    try:
        for t, turn in enumerate(turns):
            inputs = []
            for sender, count, pieces in turn:
                data = b"".join(lines_from(sender, count, tag=t))
                step = max(1, len(data) // pieces)
                inputs.append((sender, [data[k : k + step] for k in range(0, len(data), step)]))
            rig.turn(inputs)
        rig.drain()
        return [bytes(sock.wire) for sock in rig.socks]
    finally:
        rig.close()


def expected(turns: list[list[tuple[int, int, int]]], client: int) -> bytes:
    """Every line in the global order (turn, then order of events), minus the client's own."""
    return b"".join(
        b"".join(lines_from(sender, count, tag=t))
        for t, turn in enumerate(turns)
        for sender, count, _ in turn
        if sender != client
    )


@settings(max_examples=150, deadline=None)
@given(
    turns=st.lists(turn_inputs, min_size=1, max_size=8),
    budgets=st.lists(
        st.lists(st.integers(0, 120), max_size=20),
        min_size=SENDERS + RECEIVERS,
        max_size=SENDERS + RECEIVERS,
    ),
)
def test_fast_path_delivers_what_the_queued_path_delivers(
    turns: list[list[tuple[int, int, int]]], budgets: list[list[int]]
) -> None:
    fast = run_scenario(Server, turns, budgets)
    queued = run_scenario(QueuedOnlyServer, turns, budgets)
    assert fast == queued
    assert fast == [expected(turns, client) for client in range(SENDERS + RECEIVERS)]
