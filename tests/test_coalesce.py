"""--coalesce-ms: deliveries that come close together are held and merged, never delayed long.

Driven in-process with a fake clock, so the test says exactly what is held
and when it goes out, without sleeping or timing anything.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from rat.config import Config
from rat.net import open_listeners
from rat.poller import make_poller
from rat.server import Server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["epoll", "select"])
def setup(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Server, FakeClock, socket.socket, socket.socket]]:
    listeners = open_listeners("127.0.0.1", 0)
    server = Server(listeners, make_poller(str(request.param)), Config(coalesce_ms=5))
    clock = FakeClock()
    server.loop.clock = clock
    port = listeners[0].getsockname()[1]
    sender = socket.create_connection(("127.0.0.1", port))
    receiver = socket.create_connection(("127.0.0.1", port))
    for sock in (sender, receiver):
        sock.setblocking(False)
    while server.clients < 2:
        server.loop.run_once(0.05)
    yield server, clock, sender, receiver
    sender.close()
    receiver.close()
    server.close()


def turn_until_read(server: Server, sock: socket.socket) -> bytes:
    """Run turns (no clock change) until the server has read what was sent."""
    before = server.counters.lines_in
    for _ in range(100):
        server.loop.run_once(0.01)
        if server.counters.lines_in > before:
            break
    return received(sock)


def received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""


def test_a_line_after_a_quiet_spell_goes_at_once(
    setup: tuple[Server, FakeClock, socket.socket, socket.socket],
) -> None:
    server, _, sender, receiver = setup
    sender.sendall(b"first\n")
    assert turn_until_read(server, receiver) == b"first\n"


def test_lines_close_together_are_held_then_sent_together(
    setup: tuple[Server, FakeClock, socket.socket, socket.socket],
) -> None:
    server, clock, sender, receiver = setup
    start = clock.now
    sender.sendall(b"first\n")
    assert turn_until_read(server, receiver) == b"first\n"
    clock.now += 0.001  # 1 ms later: within the 5 ms window
    sender.sendall(b"second\n")
    assert turn_until_read(server, receiver) == b""  # held
    clock.now += 0.002
    sender.sendall(b"third\n")
    assert turn_until_read(server, receiver) == b""  # still held
    clock.now = start + 0.00501  # 5 ms after the first delivery: the window is over
    server.loop.run_once(0.01)
    assert received(receiver) == b"second\nthird\n"  # one delivery, one send


def test_nothing_is_held_past_the_window(
    setup: tuple[Server, FakeClock, socket.socket, socket.socket],
) -> None:
    """The hold sets a timer, so the loop wakes for it even if nothing else happens."""
    server, clock, sender, receiver = setup
    sender.sendall(b"first\n")
    assert turn_until_read(server, receiver) == b"first\n"
    sender.sendall(b"second\n")
    assert turn_until_read(server, receiver) == b""
    due = server.loop.timers.next_due()
    assert due is not None and due <= clock.now + 0.005
    clock.now = due
    server.loop.run_once(0.01)
    assert received(receiver) == b"second\n"


def test_a_stop_delivers_held_lines_at_once(
    setup: tuple[Server, FakeClock, socket.socket, socket.socket],
) -> None:
    server, _, sender, receiver = setup
    sender.sendall(b"first\n")
    assert turn_until_read(server, receiver) == b"first\n"
    sender.sendall(b"held\n")
    assert turn_until_read(server, receiver) == b""
    server.begin_stop("test")
    receiver.setblocking(True)
    receiver.settimeout(5)
    assert receiver.recv(65536) == b"held\n"
